"""What a Keras user does next works: callbacks' defaults, monitoring nll with no mode, best-model saving, TensorBoard; evaluation at its own tolerance."""

import glob
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.callbacks import monitor_callback

from tf_ffjord import FFJORDModel, ODENet
from tf_ffjord.cnf import density
from tf_ffjord.datasets import toy


def tiny_model(**kwargs):
  kwargs = {"solver": "rk4", "step_size": 0.5, "time_length": 0.5,
            "dynamics": ODENet(hidden=(8,), dim=2), **kwargs}
  return FFJORDModel((2,), **kwargs)


def fit_args(n=64):
  keras.utils.set_random_seed(0)
  return dict(x=toy.sample("8gaussians", n, seed=0), batch_size=32,
              verbose=0)


def test_loss_is_logged_beside_nll_in_train_and_validation():
  model = tiny_model()
  model.compile(keras.optimizers.Adam(1e-3))
  hist = model.fit(**fit_args(), epochs=1, validation_split=0.5).history
  assert {"loss", "nll", "val_loss", "val_nll", "val_nfe"} <= set(hist)
  # Maximum likelihood without regularizers: the loss is the NLL, and the
  # validation loss the exact-likelihood val_nll.
  assert hist["loss"] == pytest.approx(hist["nll"], rel=1e-6)
  assert hist["val_loss"] == pytest.approx(hist["val_nll"], rel=1e-6)
  ev = model.evaluate(toy.sample("8gaussians", 32, seed=1), verbose=0,
                      return_dict=True)
  assert ev["loss"] == pytest.approx(ev["nll"], rel=1e-6)


def test_regularized_loss_is_nll_plus_weighted_penalty():
  from tf_ffjord import MaximumLikelihood  # pylint: disable=g-import-not-at-top
  model = tiny_model()
  model.compile(keras.optimizers.Adam(1e-3),
                objective=MaximumLikelihood({"kinetic": 10.0}))
  hist = model.fit(**fit_args(32), epochs=1).history
  assert hist["kinetic"][0] > 0
  assert hist["loss"][0] == pytest.approx(
      hist["nll"][0] + 10.0 * hist["kinetic"][0], rel=1e-5)


def test_early_stopping_defaults_stop_when_val_loss_stops_improving():
  model = tiny_model()
  # A zero learning rate: val_loss never improves after the first epoch.
  model.compile(keras.optimizers.SGD(0.0))
  stop = keras.callbacks.EarlyStopping(patience=1)  # monitor="val_loss"
  hist = model.fit(**fit_args(), epochs=10, validation_split=0.5,
                   callbacks=[stop]).history
  # Epoch 0 sets the best, epoch 1 does not improve: stop (without a
  # val_loss log, EarlyStopping would warn and run all 10 epochs).
  assert len(hist["val_loss"]) == 2, hist["val_loss"]
  assert stop.stopped_epoch == 1


@pytest.mark.parametrize("monitor", ["val_nll", "nll", "val_loss", "loss"])
def test_monitoring_nll_needs_no_mode(monitor):
  model = tiny_model()
  model.compile(keras.optimizers.Adam(1e-3))
  callbacks = [keras.callbacks.EarlyStopping(monitor=monitor, patience=5),
               keras.callbacks.ReduceLROnPlateau(monitor=monitor, patience=5)]
  model.fit(**fit_args(), epochs=2, validation_split=0.5,
            callbacks=callbacks)
  for cb in callbacks:
    assert cb.monitor_op is keras.ops.less, (cb, monitor)


def test_image_models_bpd_direction_is_down():
  from tf_ffjord import ImageFlow  # pylint: disable=g-import-not-at-top
  model = ImageFlow((4, 4, 1), dims=(4,), num_blocks=1, multiscale=False,
                    solver="euler", step_size=1.0, train_time=False)
  model.compile("adam")
  for monitor in ("val_bpd", "bpd", "val_nll"):
    cb = keras.callbacks.EarlyStopping(monitor=monitor)
    cb.set_model(model)
    cb._set_monitor_op()  # pylint: disable=protected-access
    assert cb.monitor_op is keras.ops.less, monitor
  # An NFE has no direction: Keras still asks for a mode.
  cb = keras.callbacks.EarlyStopping(monitor="val_nfe")
  cb.set_model(model)
  with pytest.raises(ValueError, match="maximized or minimized"):
    cb._set_monitor_op()  # pylint: disable=protected-access


def test_keras_still_reads_directions_the_way_monitorable_relies_on():
  """Fails if Keras changes how its callbacks find a metric's direction.

  `tf_ffjord.model.steps.monitorable` relies on `_set_monitor_op` reading
  the private `_direction` of metrics inside `compile_utils.MetricsList`.
  If this fails, revisit `monitorable` (and look for a public route).
  """
  source = open(monitor_callback.__file__, encoding="utf-8").read()
  assert "_direction" in source and "MetricsList" in source, (
      "Keras' MonitorCallback no longer reads _direction from a "
      "MetricsList: revisit tf_ffjord.model.steps.monitorable.")
  model = tiny_model()
  model.compile("adam")
  assert [m.name for m in model.metrics][:4] == ["loss", "nll", "nfe",
                                                "nfe_backward"]
  # The directions entry has no state and logs nothing.
  assert model.metrics[-1].variables == []
  assert model.get_metrics_result().keys() == {"loss", "nll", "nfe",
                                              "nfe_backward"}


def test_model_checkpoint_save_best_only_writes_the_best(tmp_path):
  model = tiny_model()
  model.compile(keras.optimizers.Adam(1e-2))
  path = str(tmp_path / "best.keras")
  best = keras.callbacks.ModelCheckpoint(path, save_best_only=True)
  hist = model.fit(**fit_args(), epochs=3, validation_split=0.5,
                   callbacks=[best]).history
  assert os.path.exists(path)
  assert best.best == pytest.approx(min(hist["val_loss"]))
  loaded = keras.saving.load_model(path)
  x = toy.sample("8gaussians", 8, seed=2)
  assert np.all(np.isfinite(loaded.log_prob(x)))


def _scalars(logdir):
  tags = set()
  for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"),
                        recursive=True):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        tags.add((os.path.basename(os.path.dirname(path)), value.tag))
  return tags


def test_tensorboard_shows_nll_nfe_and_loss(tmp_path):
  model = tiny_model()
  model.compile(keras.optimizers.Adam(1e-3))
  logdir = str(tmp_path / "logs")
  model.fit(**fit_args(), epochs=1, validation_split=0.5,
            callbacks=[keras.callbacks.TensorBoard(logdir)])
  tags = _scalars(logdir)
  for name in ("nll", "nfe", "nfe_backward", "loss"):
    assert ("train", f"epoch_{name}") in tags, tags
  for name in ("nll", "nfe", "loss"):
    assert ("validation", f"epoch_{name}") in tags, tags


# -- evaluation at its own tolerance ----------------------------------------


def test_eval_tolerance_is_tight_whatever_the_training_one(tmp_path):
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(16, 16), dim=2),
                      rtol=1e-3, atol=1e-3, time_length=1.0)
  assert model.eval_options["rtol"] == model.eval_options["atol"] == 1e-5
  assert model.get_config()["eval_options"]["rtol"] == 1e-5
  # A field that a loose solve gets wrong by more than 1e-4 nats.
  rng = np.random.default_rng(0)
  for v in model.trainable_variables:
    v.assign(0.5 * rng.standard_normal(v.shape).astype(v.dtype))
  model.compile(keras.optimizers.Adam(1e-4))
  hist = model.fit(**fit_args(128), epochs=1).history
  x = toy.sample("8gaussians", 64, seed=1)
  logp, eval_nfe = model.log_prob(x, return_nfe=True)
  assert int(eval_nfe) > hist["nfe"][-1], (int(eval_nfe), hist["nfe"])
  # A tight rescoring at 1e-7: the same density.
  tight = FFJORDModel((2,), dynamics=model.blocks[0].dynamics,
                      rtol=1e-3, atol=1e-3,
                      eval_options={"rtol": 1e-7, "atol": 1e-7,
                                    "trace": "exact"})
  np.testing.assert_allclose(logp, tight.log_prob(x), atol=1e-4)
  # (which a solve at the training tolerance is not)
  loose = FFJORDModel((2,), dynamics=model.blocks[0].dynamics,
                      eval_options={"rtol": 1e-3, "atol": 1e-3,
                                    "trace": "exact"})
  assert np.max(np.abs(loose.log_prob(x) - tight.log_prob(x))) > 1e-4
  # evaluate scores at the same tolerance
  ev = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
  assert ev["nll"] == pytest.approx(-float(np.mean(logp)), abs=1e-5)
  assert ev["nfe"] == int(eval_nfe)
  # The .keras round trip carries the evaluation options.
  path = str(tmp_path / "m.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.eval_options == model.eval_options
  np.testing.assert_allclose(loaded.log_prob(x), logp, atol=1e-6)


def test_eval_options_fill_the_tolerances_only():
  assert density.eval_options({"solver": "bosh3"}, 2) == {
      "rtol": 1e-5, "atol": 1e-5, "solver": "bosh3"}
  assert density.eval_options({"atol": 1e-6}, 784) == {
      "rtol": 1e-5, "atol": 1e-6}
  assert density.eval_options(None, 65) == {"rtol": 1e-5, "atol": 1e-5}
