"""Mixed precision: the dynamics nets compute in bfloat16/float16, the flow in float32."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ffjord

from tf_ffjord import FFJORD, FFJORDModel, ODENet
from tf_ffjord.nets.conv import ConvODENet
from tf_ffjord.datasets import toy
from tf_ffjord.nets.unet import UNetODENet

MIXED = ("mixed_bfloat16", "mixed_float16")
# Relative error of one rounding: bfloat16 keeps 8 significant bits,
# float16 11; a few layers and a sum over the batch of VJPs stay well
# within 8 roundings.
EPS = {"mixed_bfloat16": 2.0 ** -8, "mixed_float16": 2.0 ** -11}


@pytest.fixture
def global_policy():
  """Sets a global Keras policy for one test and restores the previous one."""
  previous = keras.mixed_precision.global_policy()
  yield keras.mixed_precision.set_global_policy
  keras.mixed_precision.set_global_policy(previous)


def _nets(dtype=None):
  return {
      "odenet": (ODENet(hidden=(16, 16), dtype=dtype), [8, 3]),
      "conv": (ConvODENet(dims=(8,), dtype=dtype), [2, 8, 8, 1]),
      "unet": (UNetODENet(channels=(8, 16), groups=4, time_dim=8,
                          dtype=dtype), [2, 8, 8, 1]),
  }


def _op_dtypes(fn, *args):
  """{op type: set of its T attributes} in the graph of `fn(*args)`."""
  graph = tf.function(fn).get_concrete_function(*args).graph
  found = {}
  for op in graph.get_operations():
    if op.type in ("MatMul", "BatchMatMulV2", "Conv2D"):
      found.setdefault(op.type, set()).add(op.get_attr("T"))
  return found


@pytest.mark.parametrize("policy", MIXED)
def test_global_policy_weights_float32_products_low_output_float32(
    global_policy, policy):
  global_policy(policy)
  low = keras.mixed_precision.Policy(policy).compute_dtype
  for name, (net, shape) in _nets().items():
    x = tf.random.normal(shape)
    y = net(0.5, x)
    assert y.dtype == tf.float32, name
    assert {v.dtype for v in net.weights} == {"float32"}, name
    products = _op_dtypes(lambda z, net=net: net(0.5, z), x)
    assert products, name
    assert all(dtypes == {tf.as_dtype(low)} for dtypes in products.values()), (
        name, products)


@pytest.mark.parametrize("policy", MIXED)
def test_low_precision_output_close_to_float32_with_same_weights(policy):
  full, mixed = _nets(), _nets(policy)
  for name in full:
    f, shape = full[name]
    g, _ = mixed[name]
    x = tf.random.normal(shape)
    t = tf.random.uniform(shape[:1])
    y = f(t, x)
    g(t, x)
    g.set_weights(f.get_weights())
    err = np.max(np.abs(g(t, x) - y)) / np.max(np.abs(y))
    # Close to float32 within a few roundings, but not equal: the products
    # really ran in low precision.
    assert 1e-2 * EPS[policy] < err < 8 * EPS[policy], (name, err)


def _bfloat16_twins(x):
  """A float32 ODENet and a mixed_bfloat16 one with the same weights, built for x."""
  f = ODENet(hidden=(16, 16))
  g = ODENet(hidden=(16, 16), dtype="mixed_bfloat16")
  f(0.0, x), g(0.0, x)
  g.set_weights(f.get_weights())
  return f, g


def test_vjp_through_the_casts_is_float32_and_close():
  x = tf.random.normal([64, 3])
  f, g = _bfloat16_twins(x)
  eps = tf.sign(tf.random.normal([64, 3]))
  vjps = []
  for net in (f, g):
    with tf.GradientTape() as tape:
      tape.watch(x)
      y = net(0.3, x)
    vjps.append(tape.gradient(y, x, output_gradients=eps))
  assert vjps[1].dtype == tf.float32
  err = np.max(np.abs(vjps[1] - vjps[0])) / np.max(np.abs(vjps[0]))
  assert err < 8 * EPS["mixed_bfloat16"], err


def test_solve_state_and_log_det_float32_and_close_to_float32_net():
  x = tf.random.normal([32, 2])
  f, g = _bfloat16_twins(x)
  solver = tf_ffjord.make_solver("dopri5", rtol=1e-4, atol=1e-4)
  sols = [FFJORD(net, trace="exact", solver=solver).solve(x)
          for net in (f, g)]
  assert sols[1].state.dtype == tf.float32
  assert sols[1].log_det.dtype == tf.float32
  np.testing.assert_allclose(sols[1].state, sols[0].state, atol=0.02)
  np.testing.assert_allclose(sols[1].log_det, sols[0].log_det, atol=0.02)
  assert np.max(np.abs(sols[1].log_det - sols[0].log_det)) > 0


def _fm_model(net):
  model = FFJORDModel((2,), dynamics=net)
  model.compile(keras.optimizers.Adam(1e-2), objective="flow_matching")
  return model


def test_flow_matching_trains_in_bfloat16_and_scores_like_float32():
  x = toy.sample("8gaussians", 2048, seed=0)
  model = _fm_model(ODENet(hidden=(16, 16), dtype="mixed_bfloat16"))
  losses = model.fit(x, batch_size=256, epochs=3, verbose=0).history["fm_loss"]
  assert losses[-1] < 0.9 * losses[0], losses
  test = toy.sample("8gaussians", 256, seed=1)
  nll = model.evaluate(test, batch_size=256, verbose=0, return_dict=True)["nll"]
  # The same weights in float32 score the same by the exact-likelihood solve.
  twin = _fm_model(ODENet(hidden=(16, 16)))
  twin.set_weights(model.get_weights())
  nll32 = twin.evaluate(test, batch_size=256, verbose=0,
                        return_dict=True)["nll"]
  assert np.isfinite(nll) and abs(nll - nll32) < 0.05, (nll, nll32)


def test_flow_matching_under_the_global_policy(global_policy):
  global_policy("mixed_bfloat16")
  model = _fm_model(ODENet(hidden=(8,)))
  x = toy.sample("8gaussians", 512, seed=0)
  logs = model.fit(x, batch_size=256, epochs=1, verbose=0).history
  assert np.isfinite(logs["fm_loss"][0])
  assert model.log_prob(x[:8]).dtype == tf.float32




def test_mixed_float16_scales_the_loss_and_unscales_the_gradients(
    global_policy):
  # Keras wraps the optimizer in a LossScaleOptimizer under mixed_float16; its
  # apply_gradients divides by the loss scale, so the step must multiply by it
  # (else every update is 2**15 times too small). One SGD step, same weights
  # and batch, against float32.
  x = toy.sample("8gaussians", 64, seed=0)

  def one_step(policy):
    global_policy(policy)
    keras.utils.set_random_seed(0)
    model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,)))
    model.compile(keras.optimizers.SGD(0.1), objective="flow_matching")
    model.build()
    before = [w.numpy() for w in model.trainable_weights]
    keras.utils.set_random_seed(1)
    model.fit(x, batch_size=64, epochs=1, verbose=0, shuffle=False)
    after = [w.numpy() for w in model.trainable_weights]
    return model, [a - b for a, b in zip(after, before)]

  model16, step16 = one_step("mixed_float16")
  assert isinstance(model16.optimizer, keras.optimizers.LossScaleOptimizer)
  _, step32 = one_step("float32")
  for d16, d32 in zip(step16, step32):
    scale = np.abs(d32).max() + 1e-12
    assert np.abs(d16 - d32).max() < 0.1 * scale, (d16, d32)
