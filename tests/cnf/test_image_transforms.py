"""Image bijectors (tf_ffjord/cnf/image_transforms.py, multiscale.py): logit, squeeze, ODENVP against numeric Jacobians and round trips."""


import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import make_solver
from tf_ffjord.cnf import composite as flows
from tf_ffjord.cnf.ffjord import FFJORD
from tf_ffjord.nets.conv import ConvODENet
from tf_ffjord.cnf.image_transforms import LogitTransform, Squeeze
from tf_ffjord.cnf.multiscale import ODENVP, default_num_scales

tfb = tfp.bijectors

def numeric_jacobian(fn, x, eps=1e-5):
  """Central-difference Jacobian of a batched map on one example `x` [1, ...].

  All 2D perturbed inputs go through `fn` as a single batch.
  """
  d = x.size
  basis = np.eye(d).reshape((d,) + x.shape[1:])
  y = np.asarray(fn(np.concatenate([x + eps * basis, x - eps * basis])))
  return ((y[:d] - y[d:]).reshape(d, d) / (2 * eps)).T  # J[i, j] = dy_i/dx_j


def test_logit_round_trip_and_log_det():
  b = LogitTransform(alpha=0.05)
  x = np.random.default_rng(0).uniform(0.001, 0.999, [1, 2, 2, 1])
  y = b.inverse(x)
  np.testing.assert_allclose(b.forward(y), x, rtol=0, atol=1e-12)
  np.testing.assert_allclose(b.inverse(b.forward(y)), y, rtol=1e-10)
  jac = numeric_jacobian(lambda v: b.inverse(v).numpy().reshape(len(v), -1),
                         x, eps=1e-6)
  expected = np.linalg.slogdet(jac)[1]
  ildj = b.inverse_log_det_jacobian(x, event_ndims=3)
  np.testing.assert_allclose(ildj, [expected], rtol=1e-7)
  np.testing.assert_allclose(b.forward_log_det_jacobian(y, event_ndims=3),
                             -ildj, rtol=1e-10)
  # The paper's MNIST alpha keeps pixel 0 finite.
  assert np.isfinite(LogitTransform(1e-6).inverse(0.0).numpy())
  with pytest.raises(ValueError, match="alpha"):
    LogitTransform(0.5)


def test_squeeze_round_trip_permutation_and_log_det():
  b = Squeeze()
  x = np.random.default_rng(1).normal(size=[3, 4, 6, 2])
  y = b.forward(x)
  assert y.shape == (3, 2, 3, 8)
  np.testing.assert_array_equal(b.inverse(y), x)  # exact
  np.testing.assert_array_equal(np.sort(np.ravel(y)), np.sort(np.ravel(x)))
  # Pixel (0, 1) of channel 0 lands in the first block's channels.
  assert float(y[0, 0, 0, 2]) == x[0, 0, 1, 0]
  jac = numeric_jacobian(lambda v: b.forward(v).numpy().reshape(len(v), -1),
                         x[:1, :2, :2], eps=1e-3)
  np.testing.assert_allclose(np.abs(jac).sum(0), 1.0)  # a permutation
  assert abs(np.linalg.slogdet(jac)[1]) < 1e-9
  assert float(b.forward_log_det_jacobian(x, event_ndims=3)) == 0.0
  assert b.forward_event_shape([4, 6, 2]) == [2, 3, 8]
  assert b.inverse_event_shape([2, 3, 8]) == [4, 6, 2]
  with pytest.raises(ValueError, match="divisible"):
    b.forward(np.zeros([1, 3, 4, 1]))


def test_default_num_scales_follows_the_paper():
  assert default_num_scales(28, 28) == 3
  assert default_num_scales(32, 32) == 4
  assert default_num_scales(8, 8) == 2


def test_odenvp_packs_every_dimension_with_analytic_flows():
  # Elementwise scalings with known log-dets: the stack must keep every value
  # (a permutation times the scalings) and sum the log-dets.
  shapes = ODENVP.flow_shapes((8, 8, 2), num_blocks=1)
  assert shapes == [(8, 8, 2), (4, 4, 8), (4, 4, 4)]
  stack = ODENVP([tfb.Scale(np.float64(k + 2)) for k in range(3)], (8, 8, 2),
                 num_blocks=1)
  assert stack.num_scales == 2 and len(stack.all_flows) == 3
  x = np.random.default_rng(2).normal(size=[2, 8, 8, 2])
  sol = stack.solve(x, "inverse")
  assert sol.state.shape == x.shape
  expected = -sum(np.prod(shape) * np.log(k + 2)
                  for k, shape in enumerate(shapes))
  np.testing.assert_allclose(sol.log_det, [expected] * 2, rtol=1e-12)
  back = stack.solve(sol.state, "forward")
  np.testing.assert_allclose(back.state, x, rtol=1e-12)
  np.testing.assert_allclose(back.log_det, -sol.log_det, rtol=1e-12)
  # With identity flows the stack is a pure permutation of the pixels.
  ident = ODENVP([tfb.Identity()] * 6, (8, 8, 2), num_blocks=2)
  z = ident.inverse(x)
  np.testing.assert_array_equal(np.sort(np.ravel(z)), np.sort(np.ravel(x)))
  np.testing.assert_array_equal(ident.forward(z), x)
  with pytest.raises(ValueError, match="needs 3 flows"):
    ODENVP([tfb.Identity()], (8, 8, 2), num_blocks=1)


def _ffjord_stack(shape, trace="exact", **kwargs):
  blocks = []
  for index, s in enumerate(ODENVP.flow_shapes(shape, num_blocks=1)):
    net = ConvODENet(dims=(4,), layer="concatsquash", activation="tanh",
                     channels=s[-1], dtype="float64", name=f"net{index}")
    net(tf.constant(0.0, tf.float64), tf.zeros([1, *s], tf.float64))
    # Non-trivial dynamics: scale up the random initial weights.
    net.set_weights([2.0 * w for w in net.get_weights()])
    blocks.append(FFJORD(net, trace=trace, event_ndims=3, **kwargs))
  return ODENVP(blocks, shape, num_blocks=1)


def test_odenvp_log_det_matches_numeric_jacobian():
  stack = _ffjord_stack((4, 4, 1),
                        solver=make_solver("dopri5", rtol=1e-10, atol=1e-10))
  x = np.random.default_rng(3).normal(size=[1, 4, 4, 1])
  fn = tf.function(lambda v: stack.solve(v, "inverse"), autograph=False)
  sol = fn(tf.constant(x))
  assert int(sol.nfe) > 0
  log_det = sol.log_det
  jac = numeric_jacobian(
      lambda v: fn(tf.constant(v)).state.numpy().reshape(len(v), -1), x)
  sign, expected = np.linalg.slogdet(jac)
  assert sign != 0 and abs(expected) > 0.05  # a non-trivial map
  np.testing.assert_allclose(float(log_det[0]), expected, atol=1e-5)


def test_odenvp_forward_inverts_inverse():
  stack = _ffjord_stack((4, 4, 1),
                        solver=make_solver("dopri5", rtol=1e-8, atol=1e-8))
  z = np.random.default_rng(4).normal(size=[2, 4, 4, 1])
  fwd = tf.function(lambda v: stack.solve(v, "forward")[:2], autograph=False)
  inv = tf.function(lambda v: stack.solve(v, "inverse")[:2], autograph=False)
  x, fldj = fwd(tf.constant(z))
  z_back, ildj = inv(x)
  assert float(tf.reduce_max(tf.abs(x - z))) > 1e-2  # it did move
  np.testing.assert_allclose(z_back, z, atol=1e-6)
  np.testing.assert_allclose(ildj, -fldj, atol=1e-6)
