"""FFJORDModel: training with fit, metrics, evaluation, sampling, config, export."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import FFJORDModel, ODENet
from tf_ffjord.datasets import toy


def small_model(**kwargs):
  kwargs.setdefault("solver", "rk4")
  kwargs.setdefault("step_size", 0.25)
  return FFJORDModel((2,), dynamics=ODENet(hidden=(32, 32), dim=2),
                     time_length=0.5, **kwargs)


def test_fit_lowers_test_nll_on_8gaussians():
  model = small_model(train_time=True)
  model.compile(keras.optimizers.Adam(3e-3))
  test = toy.sample("8gaussians", 2000, seed=1)
  before = -float(np.mean(model.log_prob(test, exact=True)))
  hist = model.fit(toy.sample("8gaussians", 256 * 300, seed=0),
                   batch_size=256, epochs=1, verbose=0)
  after = -float(np.mean(model.log_prob(test, exact=True)))
  assert set(hist.history) == {"nll", "nfe", "nfe_backward"}
  assert hist.history["nfe"][-1] == 16  # rk4, 4 steps
  assert after < before - 1.0, (before, after)
  assert after < 3.9
  # evaluate reports the exact-trace NLL
  ev = model.evaluate(test, batch_size=1000, verbose=0, return_dict=True)
  assert ev["nll"] == pytest.approx(after, abs=1e-3)
  # the end time trained
  assert float(model.bijector.time_length) != pytest.approx(0.5, abs=1e-4)


def test_adaptive_solver_reports_nfe_forward_and_backward():
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(16,), dim=2),
                      rtol=1e-4, atol=1e-4)
  model.compile(keras.optimizers.Adam(1e-3))
  hist = model.fit(toy.sample("moons", 128, seed=0), batch_size=64,
                   epochs=1, verbose=0)
  assert hist.history["nfe"][-1] >= 7  # at least one Dormand-Prince step
  assert hist.history["nfe_backward"][-1] >= 7


def test_sample_and_log_prob_shapes_and_seeds():
  model = small_model()
  s1, s2 = model.sample(10, seed=3), model.sample(10, seed=3)
  assert s1.shape == (10, 2)
  np.testing.assert_array_equal(s1, s2)
  assert model.log_prob(s1).shape == (10,)


def test_hutchinson_and_exact_log_prob_agree_on_average():
  model = small_model()
  x = np.tile(toy.sample("rings", 1, seed=0), [4000, 1])
  exact = model.log_prob(x[:1], exact=True).numpy()[0]
  hutch = model.log_prob(x).numpy()
  assert abs(hutch.mean() - exact) < 4 * hutch.std() / np.sqrt(len(hutch)) + 1e-5


def test_bad_input_is_named():
  model = small_model()
  with pytest.raises(ValueError, match=r"FFJORDModel expects examples of "
                     r"shape \(2,\), got data of shape \(4, 3\)"):
    model.log_prob(np.zeros([4, 3], np.float32))
  with pytest.raises(ValueError, match="FFJORDModel expects float data, got "
                     "dtype int32"):
    model.log_prob(np.zeros([4, 2], np.int32))
  with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
    model.log_prob(np.array([[0.0, np.nan]], np.float32))
  model.compile(keras.optimizers.Adam(1e-3))
  with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
    model.fit(np.array([[0.0, np.inf]] * 4, np.float32), verbose=0)


def test_config_round_trip_gives_the_same_density():
  model = small_model(trace="exact", train_time=True)
  clone = FFJORDModel.from_config(model.get_config())
  clone.set_weights(model.get_weights())
  x = toy.sample("circles", 16, seed=0)
  np.testing.assert_allclose(clone.log_prob(x), model.log_prob(x), atol=1e-5)


def test_export_reloads_with_same_log_prob(tmp_path):
  model = small_model()
  x = toy.sample("pinwheel", 8, seed=0)
  path = str(tmp_path / "saved")
  model.export(path)
  loaded = tf.saved_model.load(path)
  np.testing.assert_allclose(loaded.log_prob(tf.constant(x))["log_prob"],
                             model.log_prob(x, exact=True), atol=1e-5)
  assert loaded.sample(tf.constant(5), tf.constant(1))["x"].shape == (5, 2)
