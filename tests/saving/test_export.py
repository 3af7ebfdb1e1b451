"""Tests of the SavedModel export (served without tf_ffjord) and the .keras round trip."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import FFJORDModel, ImageFlow, MaximumLikelihood, ODENet
from tf_ffjord.cnf import density
from tf_ffjord.saving import export as export_lib
from tf_ffjord.cnf import composite as flows

ROOT = pathlib.Path(__file__).resolve().parents[2]

# Runs in a fresh interpreter that cannot import tf_ffjord or TFP: the
# SavedModel must need TensorFlow only.
_SERVE = textwrap.dedent("""
  import importlib.abc, json, sys
  class _Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
      if name.split(".")[0] in ("tf_ffjord", "tensorflow_probability"):
        raise ImportError("blocked in this test: " + name)
  sys.meta_path.insert(0, _Block())
  import numpy as np
  import tensorflow as tf
  export_dir, inputs, outputs = sys.argv[1:4]
  data = dict(np.load(inputs))
  m = tf.saved_model.load(export_dir)
  out = {}
  out["log_prob"] = m.log_prob(data["x"])["log_prob"].numpy()
  out["serving_default"] = m.signatures["serving_default"](
      x=tf.constant(data["x"]))["log_prob"].numpy()
  inv = m.inverse(data["x"])
  out["z"], out["inverse_log_det"] = inv["z"].numpy(), inv["log_det"].numpy()
  fwd = m.forward(data["z"])
  out["x"], out["forward_log_det"] = fwd["x"].numpy(), fwd["log_det"].numpy()
  out["sample"] = m.sample(n=tf.constant(5), seed=tf.constant(3))["x"].numpy()
  tiled = tf.tile(data["x"][:1], [64, 1])
  out["hutchinson_a"] = m.log_prob_hutchinson(tiled, 7)["log_prob"].numpy()
  out["hutchinson_b"] = m.log_prob_hutchinson(tiled, 7)["log_prob"].numpy()
  out["hutchinson_c"] = m.log_prob_hutchinson(tiled, 8)["log_prob"].numpy()
  dim = data["x"].shape[1]
  try:
    m.log_prob(tf.zeros([2, dim + 1]))
    out["bad_shape_error"] = np.array("")
  except (TypeError, ValueError) as e:
    out["bad_shape_error"] = np.array(str(e)[:200])
  for name in ("log_prob", "inverse"):  # what TF Serving calls
    try:
      m.signatures[name](x=tf.zeros([2, dim + 1]))
      out[f"signature_{name}_error"] = np.array("")
    except tf.errors.InvalidArgumentError as e:
      out[f"signature_{name}_error"] = np.array(str(e)[:400])
  empty = tf.zeros([0, dim])
  out["empty_log_prob"] = m.signatures["log_prob"](x=empty)["log_prob"].numpy()
  out["empty_z"] = m.signatures["inverse"](x=empty)["z"].numpy()
  out["empty_x"] = m.forward(empty)["x"].numpy()
  out["sample_0"] = m.sample(n=tf.constant(0), seed=tf.constant(3))["x"].numpy()
  try:
    m.sample(n=tf.constant(-1), seed=tf.constant(3))
    out["sample_negative_error"] = np.array("")
  except tf.errors.InvalidArgumentError as e:
    out["sample_negative_error"] = np.array(str(e)[:300])
  try:
    m.log_prob(tf.constant([[float("nan")] + [0.0] * (dim - 1)]))
    out["nan_error"] = np.array("")
  except tf.errors.InvalidArgumentError as e:
    out["nan_error"] = np.array(str(e)[:300])
  sigs = {k: {"inputs": {n: [s.dtype.name, s.shape.as_list()] for n, s in
                         f.structured_input_signature[1].items()},
              "outputs": {n: [s.dtype.name, s.shape.as_list()] for n, s in
                          f.structured_outputs.items()}}
          for k, f in m.signatures.items()}
  out["signatures"] = np.array(json.dumps(sigs))
  out["imported"] = np.array(json.dumps(sorted(
      k for k in sys.modules if k.split(".")[0] in ("tf_ffjord", "tensorflow_probability"))))
  np.savez(outputs, **out)
""")


def serve_without_tf_ffjord(export_dir, x, z, tmp_path):
  """Runs `_SERVE` on a SavedModel in a fresh process; returns its outputs.

  Checks that the process succeeded without importing tf_ffjord or TFP.
  """
  np.savez(tmp_path / "in.npz", x=x, z=z)
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  proc = subprocess.run(
      [sys.executable, "-c", _SERVE, str(export_dir), str(tmp_path / "in.npz"),
       str(tmp_path / "out.npz")],
      cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = np.load(tmp_path / "out.npz")
  assert json.loads(str(out["imported"])) == []
  return out


def _tiny_model(**kwargs):
  kwargs = {"solver": "euler", "step_size": 0.5, **kwargs}
  return FFJORDModel((2,), dynamics=ODENet(hidden=(8,)), **kwargs)


def _perturb(model, seed=0):
  """Random weights, so a load that skipped a variable cannot match."""
  rng = np.random.default_rng(seed)
  for v in model.trainable_variables:
    v.assign(0.5 * rng.standard_normal(v.shape).astype(v.dtype))


def test_saved_model_serves_without_tf_ffjord(tmp_path):
  model = _tiny_model(trace="hutchinson")
  _perturb(model)
  path = model.export(tmp_path / "flow")
  rng = np.random.default_rng(1)
  x = rng.standard_normal([6, 2]).astype(np.float32)
  z = rng.standard_normal([6, 2]).astype(np.float32)
  out = serve_without_tf_ffjord(path, x, z, tmp_path)

  live = model.log_prob(x).numpy()  # the evaluation flow: exact trace
  np.testing.assert_allclose(out["log_prob"], live, atol=1e-5)
  np.testing.assert_allclose(out["serving_default"], live, atol=1e-5)
  sol = flows.solve(model.eval_bijector, x, "inverse")
  np.testing.assert_allclose(out["z"], sol.state, atol=1e-5)
  np.testing.assert_allclose(out["inverse_log_det"], sol.log_det, atol=1e-5)
  # forward inverts inverse: x -> z -> x, log-dets cancel.
  back = flows.solve(model.eval_bijector, z, "forward")
  np.testing.assert_allclose(out["x"], back.state, atol=1e-5)
  np.testing.assert_allclose(out["forward_log_det"], back.log_det, atol=1e-5)
  np.testing.assert_allclose(out["sample"], model.sample(5, seed=3),
                             atol=1e-5)

  # Hutchinson: deterministic per seed, different across seeds. With the
  # Euler grid the state ignores the probe and the log-det is the quadratic
  # form eps^T A eps, so the 2-D Rademacher probes give exactly two values
  # (eps and -eps agree) whose mean is the exact trace.
  a, b, c = out["hutchinson_a"], out["hutchinson_b"], out["hutchinson_c"]
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)
  values = np.concatenate([a, c])
  lo, hi = values.min(), values.max()
  assert np.all(np.minimum(abs(values - lo), abs(values - hi)) < 1e-5)
  assert hi - lo > 1e-3
  np.testing.assert_allclose((lo + hi) / 2, live[0], atol=1e-5)

  assert str(out["bad_shape_error"])
  assert "NaN or inf" in str(out["nan_error"])
  for name in ("log_prob", "inverse"):  # the library's message, served
    assert ("FFJORDModel expects examples of shape [2] (inputs [batch, 2]); "
            "got shape] [2 3]") in str(out[f"signature_{name}_error"])
  assert out["empty_log_prob"].shape == (0,)
  assert out["empty_z"].shape == out["empty_x"].shape == (0, 2)
  assert out["sample_0"].shape == (0, 2)
  assert "n >= 0; got n =] [-1]" in str(out["sample_negative_error"])
  sigs = json.loads(str(out["signatures"]))
  assert set(sigs) == {*export_lib.SIGNATURES, "serving_default"}
  assert sigs["log_prob"] == {"inputs": {"x": ["float32", [None, 2]]},
                              "outputs": {"log_prob": ["float32", [None]]}}
  assert sigs["log_prob_hutchinson"]["inputs"] == {
      "x": ["float32", [None, 2]], "seed": ["int32", []]}
  assert sigs["sample"] == {
      "inputs": {"n": ["int32", []], "seed": ["int32", []]},
      "outputs": {"x": ["float32", [None, 2]]}}
  assert sigs["forward"]["outputs"] == {"x": ["float32", [None, 2]],
                                        "log_det": ["float32", [None]]}
  assert sigs["inverse"]["outputs"] == {"z": ["float32", [None, 2]],
                                        "log_det": ["float32", [None]]}


def test_served_log_prob_is_thread_safe(tmp_path):
  """8 threads x 50 calls give exactly the serial results."""
  import concurrent.futures  # pylint: disable=g-import-not-at-top
  model = _tiny_model(trace="exact")
  _perturb(model)
  served = tf.saved_model.load(str(model.export(tmp_path / "flow")))
  log_prob = served.signatures["log_prob"]
  rng = np.random.default_rng(2)
  inputs = [tf.constant(rng.standard_normal([b, 2]).astype(np.float32))
            for b in (1, 3, 8, 17) * 4]
  serial = [log_prob(x=x)["log_prob"].numpy() for x in inputs]
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    got = list(pool.map(lambda i: (i, log_prob(x=inputs[i % 16])[
        "log_prob"].numpy()), range(8 * 50)))
  for i, value in got:
    np.testing.assert_array_equal(value, serial[i % 16])
  np.testing.assert_allclose(serial[0], model.log_prob(inputs[0]), atol=1e-5)


def test_conditional_export_round_trip(tmp_path):
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,), context_dim=1),
                      context_dim=1, solver="euler", step_size=1.0,
                      trace="exact")
  _perturb(model, seed=2)
  loaded = tf.saved_model.load(str(model.export(tmp_path / "cond")))
  x = np.random.default_rng(3).standard_normal([4, 2]).astype(np.float32)
  c = np.array([[-1.0], [0.0], [0.5], [2.0]], np.float32)
  np.testing.assert_allclose(loaded.log_prob(x, c)["log_prob"],
                             model.log_prob(x, c), atol=1e-5)
  # The context matters: the same x under other contexts has other densities.
  assert not np.allclose(loaded.log_prob(x, c[::-1])["log_prob"],
                         loaded.log_prob(x, c)["log_prob"], atol=1e-3)
  np.testing.assert_allclose(loaded.sample(4, 5, c)["x"],
                             model.sample(4, context=c, seed=5), atol=1e-5)


def test_keras_save_round_trip(tmp_path):
  model = _tiny_model(trace="exact", train_time=True, time_length=0.7)
  _perturb(model, seed=4)
  model.compile(keras.optimizers.Adam(1e-3),
                objective=MaximumLikelihood({"kinetic": 0.1}))
  model.save(tmp_path / "flow.keras")
  loaded = keras.saving.load_model(tmp_path / "flow.keras")
  assert isinstance(loaded, FFJORDModel)
  dynamics = loaded.blocks[0].dynamics
  assert isinstance(dynamics, ODENet) and dynamics.hidden == (8,)
  assert loaded.objective.regularization == {"kinetic": 0.1}
  assert loaded.train_time
  assert len(loaded.weights) == len(model.weights)
  for a, b in zip(model.weights, loaded.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  x = np.random.default_rng(5).standard_normal([5, 2]).astype(np.float32)
  np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x),
                             atol=1e-6)
  # The learned end time (a Keras weight, perturbed above) survived.
  assert loaded.end_times == model.end_times != [0.7]


def test_keras_save_keeps_optimizer_state(tmp_path):
  model = _tiny_model(trace="exact", step_size=1.0)
  model.compile(keras.optimizers.Adam(1e-2))
  model.optimizer.build(model.trainable_variables)
  state = [v for v in model.optimizer.variables
           if "learning_rate" not in v.path]
  for v in state:  # iterations and Adam's moments
    v.assign(tf.fill(v.shape, tf.cast(3, v.dtype)))
  model.save(tmp_path / "flow.keras")
  loaded = keras.saving.load_model(tmp_path / "flow.keras")
  assert isinstance(loaded.objective, MaximumLikelihood)
  assert isinstance(loaded.optimizer, keras.optimizers.Adam)
  np.testing.assert_allclose(float(loaded.optimizer.learning_rate), 1e-2)
  loaded_state = [v for v in loaded.optimizer.variables
                  if "learning_rate" not in v.path]
  assert len(loaded_state) == len(state) > 1
  for v in loaded_state:
    np.testing.assert_array_equal(v.numpy(), np.full(v.shape, 3))


def test_image_model_export(tmp_path):
  model = ImageFlow((4, 4, 1), dims=(4,), num_blocks=1, multiscale=False,
                    solver="euler", step_size=1.0, train_time=False,
                    eval_options={"trace": "exact"})
  _perturb(model, seed=6)
  loaded = tf.saved_model.load(str(model.export(tmp_path / "images")))
  x = np.random.default_rng(7).uniform(0.05, 0.95, [3, 4, 4, 1])
  x = x.astype(np.float32)
  np.testing.assert_allclose(loaded.log_prob(x)["log_prob"],
                             model.log_prob(x), atol=1e-4)
  np.testing.assert_allclose(loaded.sample(2, 3)["x"],
                             model.sample(2, seed=3), atol=1e-5)
  inv = loaded.inverse(x)  # includes the logit transform
  np.testing.assert_allclose(
      model.base.log_prob(inv["z"]) + inv["log_det"], model.log_prob(x),
      atol=1e-4)
  a = loaded.log_prob_hutchinson(x, 1)["log_prob"]
  np.testing.assert_array_equal(a, loaded.log_prob_hutchinson(x, 1)["log_prob"])
  assert not np.allclose(a, loaded.log_prob_hutchinson(x, 2)["log_prob"])


# -- served equals model, under every policy --------------------------------

POLICIES = ("float32", "float64", "mixed_bfloat16", "mixed_float16")


def _policy_models():
  """Tiny vector, conditional and image models, built under the policy."""
  return {
      "vector": lambda: _tiny_model(solver="rk4", step_size=0.5),
      "conditional": lambda: FFJORDModel(
          (2,), dynamics=ODENet(hidden=(8,), context_dim=2), context_dim=2,
          solver="rk4", step_size=0.5),
      "image": lambda: ImageFlow(
          (4, 4, 1), dims=(4,), num_blocks=1, multiscale=False,
          solver="rk4", step_size=1.0, train_time=False,
          eval_options={"trace": "exact"}),
  }


@pytest.mark.parametrize("kind", ["vector", "conditional", "image"])
@pytest.mark.parametrize("policy", POLICIES)
def test_served_equals_model_under_every_policy(policy, kind, tmp_path):
  previous = keras.mixed_precision.global_policy()
  keras.mixed_precision.set_global_policy(policy)
  try:
    model = _policy_models()[kind]()
    _perturb(model, seed=8)
    loaded = tf.saved_model.load(str(model.export(tmp_path / kind)))
    dtype = "float64" if policy == "float64" else "float32"
    assert model.variable_dtype == dtype
    rng = np.random.default_rng(9)
    shape = [3, *model.event_shape]
    x = (rng.uniform(0.05, 0.95, shape) if model.dequantize
         else rng.standard_normal(shape)).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    c = ([rng.standard_normal([3, 2]).astype(dtype)] if model.context_dim
         else [])
    spec = loaded.signatures["log_prob"].structured_input_signature[1]["x"]
    assert spec.dtype == dtype
    logp = model.log_prob(x, *c)
    assert logp.dtype == dtype
    served = loaded.log_prob(x, *c)["log_prob"]
    assert served.dtype == dtype
    np.testing.assert_allclose(served, logp, atol=1e-5, rtol=0)
    for direction, fn, arg in (("inverse", loaded.inverse, x),
                               ("forward", loaded.forward, z)):
      sol = flows.solve(model.eval_bijector, tf.constant(arg), direction,
                        *c)
      out = fn(arg, *c)
      state = out["z" if direction == "inverse" else "x"]
      np.testing.assert_allclose(state, sol.state, atol=1e-5, rtol=0)
      np.testing.assert_allclose(out["log_det"], sol.log_det, atol=1e-5,
                                 rtol=0)
    np.testing.assert_allclose(loaded.sample(3, 4, *c)["x"],
                               model.sample(3, context=c[0] if c else None,
                                            seed=4), atol=1e-5, rtol=0)
    hutchinson = flows.with_options(model.eval_bijector, trace="hutchinson")
    np.testing.assert_allclose(
        loaded.log_prob_hutchinson(x, 6, *c)["log_prob"],
        density.log_prob(model.flow_view, tf.constant(x), *c,
                         bijector=hutchinson, seed=tf.constant([6, 0]))[0],
        atol=1e-5, rtol=0)
  finally:
    keras.mixed_precision.set_global_policy(previous)


def test_loading_an_export_is_quiet_and_served_gradients_work(tmp_path):
  """No "unsaved custom gradients" warning; gradients by backprop."""
  import logging  # pylint: disable=g-import-not-at-top
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,)),
                      rtol=1e-3, atol=1e-3)  # dopri5: the adjoint
  _perturb(model, seed=10)
  path = str(model.export(tmp_path / "flow"))

  class Collect(logging.Handler):
    records = []

    def emit(self, record):
      self.records.append(record.getMessage())

  handler = Collect()
  logging.getLogger().addHandler(handler)  # absl logs through `logging`
  try:
    loaded = tf.saved_model.load(path)
  finally:
    logging.getLogger().removeHandler(handler)
  assert not [m for m in handler.records if "custom gradient" in m], (
      handler.records)
  x = tf.constant(np.random.default_rng(11).standard_normal([4, 2]),
                  tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    served = loaded.log_prob(x)["log_prob"]
  grad = tape.gradient(served, x)
  with tf.GradientTape() as tape:
    tape.watch(x)
    live = model(x)  # the evaluation flow, in the model
  np.testing.assert_allclose(served, live, atol=1e-5)
  np.testing.assert_allclose(grad, tape.gradient(live, x), atol=1e-3)
