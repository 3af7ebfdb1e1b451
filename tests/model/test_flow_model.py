"""FlowModel and its constructors: one parametrized check over every model, then fit, metrics, objectives, errors."""

import re

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import (FFJORDModel, FlowMatching, ImageFlow,
                       MaximumLikelihood, ODENet)
from tf_ffjord.cnf import composite as flows
from tf_ffjord.cnf.trace_estimators import Exact
from tf_ffjord.datasets import toy
from tf_ffjord.saving import export_model

import user_dynamics


def vector_model(**kwargs):
  kwargs = {"solver": "rk4", "step_size": 0.25, "time_length": 0.5,
            "dynamics": ODENet(hidden=(32, 32), dim=2), **kwargs}
  return FFJORDModel((2,), **kwargs)


# Every kind of model: (builder, training data).
MODELS = {
    "user-keras-layer": lambda: (
        vector_model(dynamics=user_dynamics.TimeMLP(2, hidden=(16,)),
                     trace="exact"),
        toy.sample("moons", 32, seed=0)),
    "one-block-exact": lambda: (
        vector_model(trace="exact", train_time=True),
        toy.sample("8gaussians", 32, seed=0)),
    "two-blocks-adjoint": lambda: (
        FFJORDModel((3,), num_blocks=2, train_time=True, rtol=1e-4,
                    atol=1e-4, dynamics=[ODENet(hidden=(8,), dim=3)
                                         for _ in range(2)]),
        np.random.default_rng(0).normal(size=(32, 3)).astype("float32")),
    "conditional": lambda: (
        FFJORDModel((2,), context_dim=3, solver="rk4", trace="exact",
                    dynamics=ODENet(hidden=(8,), dim=2, context_dim=3)),
        (toy.sample("moons", 32, seed=0),
         np.random.default_rng(0).normal(size=(32, 3)).astype("float32"))),
    "multiscale-images": lambda: (
        ImageFlow((4, 4, 1), dims=(4,), num_blocks=1, solver="euler",
                  step_size=0.5),
        np.random.default_rng(0).integers(0, 256, (8, 4, 4, 1), np.uint8)),
    "unet-image-cnf": lambda: (
        ImageFlow((4, 4, 1), net="unet", dims=(4, 8), groups=2,
                  activation="swish", multiscale=False, num_blocks=1,
                  solver="euler", step_size=0.5, alpha=0.05),
        np.random.default_rng(0).integers(0, 256, (8, 4, 4, 1), np.uint8)),
}


# Models whose log-det is not checked against an autodiff Jacobian here. The
# U-Net's graph is large (about 2,000 ops an evaluation with its VJP), and
# TF's graph optimizer takes seconds per evaluation site of the Jacobian's
# graph. Its flow's log-det is the same FFJORD solve as the multiscale
# image model's, which is checked; the U-Net's own gradients are checked in
# tests/nets/test_unet.py.
NO_JACOBIAN_CHECK = ("unet-image-cnf",)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_model(name, tmp_path):
  model, data = MODELS[name]()
  x, context = data if isinstance(data, tuple) else (data, None)
  xf = x.astype("float32") / 256.0 + 1e-3 if model.dequantize else x

  # log_prob shape, and one training step moves every weight.
  assert model.log_prob(xf, context).shape == (len(x),)
  model.compile(keras.optimizers.Adam(1e-2))
  before = [w.numpy().copy() for w in model.trainable_weights]
  assert before, "the model has no trainable weights"
  model.fit(data if context is None else (x, context), batch_size=len(x),
            epochs=1, verbose=0)
  moved = [np.any(b != w.numpy()) for b, w in zip(before,
                                                   model.trainable_weights)]
  assert all(moved), [w.path for w, m in zip(model.trainable_weights, moved)
                      if not m]

  # forward(inverse(x)) = x, up to the solver's error (an adaptive copy).
  adaptive = flows.with_options(model.bijector, solver="dopri5", rtol=1e-5,
                                atol=1e-5)

  @tf.function
  def round_trip(x):
    z = flows.solve(adaptive, x, "inverse", context).state
    return flows.solve(adaptive, z, "forward", context).state

  np.testing.assert_allclose(round_trip(tf.constant(xf)), xf, atol=2e-3)

  if name not in NO_JACOBIAN_CHECK:
    # The log-det against the autodiff Jacobian of x -> z, through copies on
    # a fine grid (where the integrated trace matches the discrete map): the
    # map's Jacobian through a Hutchinson copy (the state does not depend on
    # the trace; a Jacobian of the exact trace's own Jacobians is slow to
    # build), the log-det from an exact-trace copy.
    grid = dict(solver="rk4", step_size=0.25, gradient="backprop")
    state_map = flows.with_options(model.bijector, trace="hutchinson", **grid)
    exact = flows.with_options(model.bijector, trace="exact", **grid)

    c2 = None if context is None else context[:2]

    @tf.function
    def jac_and_log_det(x):
      with tf.GradientTape() as tape:
        tape.watch(x)
        z = tf.reshape(flows.solve(state_map, x, "inverse", c2).state,
                       [len(x), -1])
      return (tape.batch_jacobian(z, x),
              flows.solve(exact, x, "inverse", c2).log_det)

    jac, log_det = jac_and_log_det(tf.constant(xf[:2]))
    jac = tf.reshape(jac, [2, model.event_size, model.event_size])
    np.testing.assert_allclose(np.linalg.slogdet(jac.numpy())[1], log_det,
                               rtol=1e-4, atol=1e-3)

  # The `.keras` file loads as the same model (same density), and the
  # SavedModel serves the model's own (`log_prob` with an exact evaluation
  # trace, else `log_prob_hutchinson` with the model's probes).
  lp = model.log_prob(xf, context, seed=[3, 0])
  model.save(tmp_path / "flow.keras")
  loaded = keras.saving.load_model(tmp_path / "flow.keras")
  assert type(loaded) is type(model)
  np.testing.assert_allclose(loaded.log_prob(xf, context, seed=[3, 0]), lp,
                             rtol=1e-5, atol=1e-4)
  served = tf.saved_model.load(export_model(model, str(tmp_path / "served")))
  inputs = {"x": tf.constant(xf)}
  if context is not None:
    inputs["context"] = tf.constant(context)
  exact = all(isinstance(b.trace, Exact)
              for b in flows.ffjord_blocks(model.eval_bijector))
  out = (served.log_prob(**inputs) if exact else
         served.log_prob_hutchinson(seed=tf.constant(3), **inputs))
  np.testing.assert_allclose(out["log_prob"], lp, rtol=1e-5, atol=1e-4)
  assert type(model).__name__ in repr(model) or model.name in repr(model)

  # Flow matching trains every weight of a model it applies to, and says
  # why it does not apply to the others.
  fresh, _ = MODELS[name]()
  try:
    fresh.compile(keras.optimizers.Adam(1e-2), objective=FlowMatching())
  except ValueError as error:
    assert re.search("single FFJORD block|train_time=False", str(error))
    return
  before = [w.numpy().copy() for w in fresh.trainable_weights]
  assert before
  fresh.fit(data if context is None else (x, context), batch_size=len(x),
            epochs=1, verbose=0)
  assert all(np.any(b != w.numpy())
             for b, w in zip(before, fresh.trainable_weights))


def test_fit_lowers_test_nll_on_8gaussians():
  model = vector_model(train_time=True)
  model.compile(keras.optimizers.Adam(3e-3))
  test = toy.sample("8gaussians", 2000, seed=1)
  before = -float(np.mean(model.log_prob(test)))
  hist = model.fit(toy.sample("8gaussians", 256 * 300, seed=0),
                   batch_size=256, epochs=1, verbose=0)
  after = -float(np.mean(model.log_prob(test)))
  assert set(hist.history) == {"loss", "nll", "nfe", "nfe_backward"}
  assert hist.history["nfe"][-1] == 16  # rk4, 4 steps
  assert after < before - 1.0, (before, after)
  assert after < 3.9
  # evaluate reports the exact-trace NLL (the evaluation flow)
  ev = model.evaluate(test, batch_size=1000, verbose=0, return_dict=True)
  assert ev["nll"] == pytest.approx(after, abs=1e-3)
  assert model.end_times[0] != pytest.approx(0.5, abs=1e-4)  # T trained


def test_adaptive_solver_reports_nfe_forward_and_backward():
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(16,), dim=2),
                      rtol=1e-4, atol=1e-4)
  model.compile(keras.optimizers.Adam(1e-3))
  hist = model.fit(toy.sample("moons", 128, seed=0), batch_size=64,
                   epochs=1, verbose=0)
  assert hist.history["nfe"][-1] >= 7  # at least one Dormand-Prince step
  assert hist.history["nfe_backward"][-1] >= 7


def test_sample_and_log_prob_shapes_and_seeds():
  model = vector_model()
  s1, s2 = model.sample(10, seed=3), model.sample(10, seed=3)
  assert s1.shape == (10, 2)
  np.testing.assert_array_equal(s1, s2)
  assert model.log_prob(s1).shape == (10,)


def test_hutchinson_training_flow_agrees_with_exact_evaluation_on_average():
  model = vector_model()
  x = np.tile(toy.sample("rings", 1, seed=0), [4000, 1])
  exact = model.log_prob(x[:1]).numpy()[0]  # the evaluation flow: exact
  hutch = tf.function(lambda x: model(x, training=True))(x).numpy()
  assert hutch.std() > 0
  assert abs(hutch.mean() - exact) < 4 * hutch.std() / np.sqrt(len(hutch)) + 1e-5


def test_bad_input_is_named():
  model = vector_model()
  with pytest.raises(ValueError, match=r"FFJORDModel expects examples of "
                     r"shape \[2\] \(inputs \[batch, 2\]\); got shape "
                     r"\[4, 3\]"):
    model.log_prob(np.zeros([4, 3], np.float32))
  with pytest.raises(ValueError, match="FFJORDModel expects real numbers.*"
                     "got dtype string"):
    model.log_prob(np.array([["a", "b"]]))
  with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
    model.log_prob(np.array([[0.0, np.nan]], np.float32))
  model.compile(keras.optimizers.Adam(1e-3))
  with pytest.raises(tf.errors.InvalidArgumentError, match="NaN or inf"):
    model.fit(np.array([[0.0, np.inf]] * 4, np.float32), verbose=0)
  with pytest.raises(ValueError, match="context_dim"):
    model.log_prob(np.zeros([4, 2], np.float32), np.zeros([4, 1], np.float32))


def test_objectives_are_checked_at_compile():
  with pytest.raises(ValueError, match="objective"):
    vector_model().compile("adam", objective="score_matching")
  with pytest.raises(ValueError, match="single FFJORD block.*one-block"):
    FFJORDModel((2,), num_blocks=2, solver="rk4").compile(
        "adam", objective="flow_matching")
  with pytest.raises(ValueError, match="single FFJORD block"):
    ImageFlow((4, 4, 1), dims=(4,), num_blocks=1).compile(
        "adam", objective=FlowMatching())
  with pytest.raises(ValueError, match="train_time=False"):
    vector_model(train_time=True).compile("adam", objective="flow_matching")
  with pytest.raises(ValueError, match="XLA"):
    vector_model().compile("adam", objective=FlowMatching(ot=True),
                           jit_compile=True)
  with pytest.raises(ValueError, match="regularizer"):
    MaximumLikelihood({"entropy": 1.0})
  with pytest.raises(ValueError, match="probing trace"):
    vector_model(trace="exact").compile(
        "adam", objective=MaximumLikelihood({"jacobian": 0.1}))


def test_flow_matching_trains_a_one_block_image_cnf():
  model = ImageFlow((4, 4, 1), net="unet", dims=(4, 8), groups=2,
                    activation="swish", multiscale=False, num_blocks=1,
                    train_time=False, alpha=0.05, solver="euler",
                    step_size=0.5)
  model.compile(keras.optimizers.Adam(1e-2), objective="flow_matching")
  x = np.random.default_rng(0).integers(0, 256, (64, 4, 4, 1), np.uint8)
  hist = model.fit(x, batch_size=32, epochs=5, verbose=0)
  assert set(hist.history) == {"loss", "fm_loss"}
  assert hist.history["fm_loss"][-1] < hist.history["fm_loss"][0]
  ev = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)
  assert np.isfinite(ev["bpd"]) and ev["nfe"] > 0


def test_keras_file_round_trip_keeps_density_and_objective(tmp_path):
  model = vector_model(trace="exact", train_time=True)
  model.compile(keras.optimizers.Adam(1e-3),
                objective=MaximumLikelihood({"kinetic": 0.1}))
  x = toy.sample("circles", 64, seed=0)
  model.fit(x, batch_size=32, verbose=0)
  path = str(tmp_path / "flow.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  np.testing.assert_allclose(loaded.log_prob(x[:16]), model.log_prob(x[:16]),
                             atol=1e-5)
  assert loaded.end_times == pytest.approx(model.end_times)
  assert loaded.objective.regularization == {"kinetic": 0.1}
  assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations)
