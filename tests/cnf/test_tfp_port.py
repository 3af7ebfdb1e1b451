"""`TFPFFJORD`: TFP's own FFJORD test cases run on the port, and the port against `tfp.bijectors.FFJORD`."""

import functools

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import TFPFFJORD
from tf_ffjord.cnf.tfp_port import AugmentationTrace

import user_dynamics

tfb, tfd = tfp.bijectors, tfp.distributions
EXACT = tfb.ffjord.trace_jacobian_exact
DTYPES = [np.float32, np.float64]
MODES = ["eager", "function"]


def _run(mode, fn, *args):
  return (tf.function(fn) if mode == "function" else fn)(*args)


def _close(a, b, **kw):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kw)


def _check_case(bijector, mode, x, y, ildj, fldj, state_atol, rtol=0.0):
  """forward(x) = y, inverse(y) = x, and both log-dets, as TFP's cases check them."""
  out = _run(mode, lambda x, y: (
      bijector.forward(x), bijector.inverse(y),
      bijector.inverse_log_det_jacobian(y, event_ndims=1),
      bijector.forward_log_det_jacobian(x, event_ndims=1)), x, y)
  _close(out[0], y, rtol=rtol, atol=state_atol)
  _close(out[1], x, rtol=rtol, atol=state_atol)
  _close(out[2], ildj, rtol=1e-6, atol=1e-6)
  _close(out[3], fldj, rtol=1e-6, atol=1e-6)
  return out


# -- TFP's ffjord_test.py, case by case, on the port --------------------------
# Dynamics, inputs, expected values and tolerances as TFP's test has them
# (assertAllClose's default is rtol = atol = 1e-6); TFP runs each in graph and
# eager mode, here eagerly and inside a tf.function.


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tfp_bijector(dtype, mode):
  bijector = TFPFFJORD(trace_augmentation_fn=EXACT,
                       state_time_derivative_fn=lambda t, z: tf.ones_like(z),
                       dtype=tf.as_dtype(dtype))
  x = np.zeros((2, 5), dtype=dtype)
  y = np.ones((2, 5), dtype=dtype)
  expected_log_det_jacobian = np.zeros(2, dtype=dtype)
  assert bijector.name.startswith("ffjord")
  out = _check_case(bijector, mode, x, y, expected_log_det_jacobian,
                    expected_log_det_jacobian, state_atol=1e-6, rtol=1e-6)
  assert all(o.dtype == dtype for o in out)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tfp_bijector_condition_kwargs(dtype, mode):
  tf_dtype = tf.as_dtype(dtype)

  def conditional_ode_fn(t, z, c):
    del t  # unused.
    return tf.ones_like(z) * c ** 2

  bijector = TFPFFJORD(trace_augmentation_fn=EXACT,
                       state_time_derivative_fn=conditional_ode_fn,
                       dtype=tf_dtype)
  x = tf.zeros((2, 5), dtype=tf_dtype)
  y = tf.ones((2, 5), dtype=tf_dtype) * 4
  c = tf.ones((2, 5), dtype=tf_dtype) * 2
  expected_log_det_jacobian = np.zeros(2, dtype=dtype)
  expected_dy_dc = np.ones((2, 5), dtype=dtype) * 4

  def grad_fn(c):
    return bijector.forward(x, c=c)

  def all_of_it(c):
    dy_dc = tfp.math.value_and_gradient(grad_fn, c)[1]
    return (dy_dc, bijector.forward(x, c=c), bijector.inverse(y, c=c),
            bijector.inverse_log_det_jacobian(y, event_ndims=1, c=c),
            bijector.forward_log_det_jacobian(x, event_ndims=1, c=c))

  dy_dc, fwd, inv, ildj, fldj = _run(mode, all_of_it, c)
  assert bijector.name.startswith("ffjord")
  _close(fwd, y, atol=1e-5)
  _close(inv, x, atol=1e-5)
  _close(ildj, expected_log_det_jacobian, rtol=1e-6, atol=1e-6)
  _close(fldj, expected_log_det_jacobian, rtol=1e-6, atol=1e-6)
  _close(dy_dc, expected_dy_dc, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tfp_jacobian_scaling(dtype, mode):
  scaling_by_two_exp = np.log(2.0).astype(dtype)
  bijector = TFPFFJORD(trace_augmentation_fn=EXACT,
                       state_time_derivative_fn=lambda t, z: (
                           scaling_by_two_exp * z),
                       dtype=tf.as_dtype(dtype))
  x = np.array([[0.0], [1.0]], dtype=dtype)
  y = np.array([[0.0], [2.0]], dtype=dtype)
  expected_fldj = np.array([np.log(2.0)] * 2, dtype=dtype)
  expected_ildj = np.array([np.log(0.5)] * 2, dtype=dtype)
  _check_case(bijector, mode, x, y, expected_ildj, expected_fldj,
              state_atol=1e-4)


def _diagonal_case(dtype, seed=0):
  num_dims = 10
  rng = np.random.default_rng(seed)
  matrix_diagonal = rng.uniform(size=[num_dims]).astype(dtype)
  scaling_matrix = np.diag(matrix_diagonal).astype(dtype)
  scale_ode_fn = lambda t, z: tf.linalg.matvec(scaling_matrix, z)
  x = rng.uniform(size=[1, num_dims]).astype(dtype)
  y = np.matmul(x, np.diag(np.exp(matrix_diagonal))).astype(dtype)
  fldj = np.array([np.log(np.prod(np.exp(matrix_diagonal)))])
  return scale_ode_fn, x, y, fldj


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_tfp_jacobian_diagonal_scaling(dtype, mode):
  scale_ode_fn, x, y, expected_fldj = _diagonal_case(dtype)
  bijector = TFPFFJORD(trace_augmentation_fn=EXACT,
                       state_time_derivative_fn=scale_ode_fn,
                       dtype=tf.as_dtype(dtype))
  _check_case(bijector, mode, x, y, -expected_fldj, expected_fldj,
              state_atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_tfp_hutchinsons_normal_estimator(dtype):
  # TFP's own trace_augmentation_fn, wrapping its Hutchinson estimator with
  # 128 probes: it runs unchanged (AugmentationTrace).
  scale_ode_fn, x, y, expected_fldj = _diagonal_case(dtype, seed=1)

  def trace_augmentation_fn(ode_fn, z_shape, dtype):
    return tfb.ffjord.trace_jacobian_hutchinson(
        ode_fn, z_shape, dtype, num_samples=128, seed=42)

  bijector = TFPFFJORD(trace_augmentation_fn=trace_augmentation_fn,
                       state_time_derivative_fn=scale_ode_fn,
                       dtype=tf.as_dtype(dtype))
  assert isinstance(bijector.trace, AugmentationTrace)
  _close(bijector.forward(x), y, rtol=0.0, atol=1e-3)
  _close(bijector.inverse(y), x, rtol=0.0, atol=1e-3)
  ildj = bijector.inverse_log_det_jacobian(y, event_ndims=1)
  fldj = bijector.forward_log_det_jacobian(x, event_ndims=1)
  _close(ildj, -expected_fldj, atol=7e-1)
  _close(fldj, expected_fldj, atol=7e-1)
  # Not the exact value: it is an estimate (TFP's tolerance is that loose).
  assert abs(float(fldj[0]) - expected_fldj[0]) > 1e-6


# -- the port against tfp.bijectors.FFJORD itself ------------------------------


def _tight(dtype):
  return dict(rtol=1e-9, atol=1e-9) if dtype == np.float64 else dict(
      rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("trace", ["exact", "hutchinson_seeded"])
def test_port_matches_tfp_ffjord(dtype, trace):
  g = user_dynamics.tfp_style_net(dtype)
  tight = _tight(dtype)
  if trace == "exact":
    aug = EXACT
  else:  # the same probe in both: TFP's estimator with a fixed seed
    aug = functools.partial(tfb.ffjord.trace_jacobian_hutchinson,
                            seed=tf.constant([4, 2]),
                            sample_fn=tf.random.stateless_normal)
  ref = tfb.FFJORD(g, ode_solve_fn=tfp.math.ode.DormandPrince(**tight).solve,
                   trace_augmentation_fn=aug, dtype=tf.as_dtype(dtype))
  port = TFPFFJORD(g, trace_augmentation_fn=aug, dtype=tf.as_dtype(dtype),
                   **tight)
  x = np.random.default_rng(1).normal(size=(6, 2)).astype(dtype)
  y = np.random.default_rng(2).normal(size=(6, 2)).astype(dtype)
  tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(
      rtol=1e-7, atol=1e-7)
  both = lambda b: (b.forward(x), b.inverse(y), b.forward_log_det_jacobian(
      x, 1), b.inverse_log_det_jacobian(y, 1))
  for got, want in zip(both(port), tf.function(both)(ref)):  # TFP eager: slow
    _close(got, want, **tol)
  # The log-det is not zero: the comparison above can fail.
  assert np.mean(np.abs(port.forward_log_det_jacobian(x, 1))) > 0.1
  # Same density under TransformedDistribution.
  base = tfd.MultivariateNormalDiag(tf.zeros(2, dtype))
  _close(tfd.TransformedDistribution(base, port).log_prob(y),
         tf.function(lambda: tfd.TransformedDistribution(
             base, ref).log_prob(y))(), **tol)


def test_signs_of_linear_dynamics_on_a_shifted_interval():
  # f = A z over [t0, t1]: forward log-det +(t1 - t0) Tr(A), as in TFP.
  a = np.array([[0.3, -0.5], [0.2, -0.1]])  # Tr(A) = 0.2
  g = lambda t, z: tf.linalg.matvec(tf.constant(a), z)
  port = TFPFFJORD(g, trace_augmentation_fn=EXACT, initial_time=0.5,
                   final_time=2.0, dtype=tf.float64, rtol=1e-9, atol=1e-9)
  x = np.array([[1.0, -2.0], [0.5, 0.3]])
  y = x @ _expm(1.5 * a).T
  _close(port.forward(x), y, atol=1e-7)
  _close(port.forward_log_det_jacobian(x, 1), [0.3, 0.3], atol=1e-8)
  _close(port.inverse(y.copy()), x, atol=1e-7)
  _close(port.inverse_log_det_jacobian(y.copy(), 1), [-0.3, -0.3], atol=1e-8)


def _expm(m):
  return tf.linalg.expm(tf.constant(m)).numpy()


def test_time_dependent_dynamics_with_nonzero_initial_time():
  # dz/dt = t z on [1, 2]: forward multiplies by e^1.5. The forward and its
  # log-det agree with TFP; the inverse inverts the forward, where TFP's,
  # which evaluates g at final_time - t, does not.
  g = lambda t, z: t * z
  tight = _tight(np.float64)
  ref = tfb.FFJORD(g, ode_solve_fn=tfp.math.ode.DormandPrince(**tight).solve,
                   trace_augmentation_fn=EXACT, initial_time=1.0,
                   final_time=2.0, dtype=tf.float64)
  port = TFPFFJORD(g, trace_augmentation_fn=EXACT, initial_time=1.0,
                   final_time=2.0, dtype=tf.float64, **tight)
  x = np.array([[1.0], [-0.5]])
  y = x * np.exp(1.5)
  ref_fwd, ref_fldj, ref_inv = tf.function(lambda: (  # TFP eager: slow
      ref.forward(x), ref.forward_log_det_jacobian(x, 1), ref.inverse(y)))()
  _close(port.forward(x), ref_fwd, rtol=1e-7)
  _close(port.forward(x), y, rtol=1e-7)
  _close(port.forward_log_det_jacobian(x, 1), ref_fldj, rtol=1e-7)
  _close(port.inverse(y.copy()), x, rtol=1e-7)
  _close(port.inverse_log_det_jacobian(y.copy(), 1), [-1.5, -1.5], rtol=1e-7)
  assert np.max(np.abs(ref_inv - x)) > 0.1


def test_final_time_may_be_a_variable():
  t1 = tf.Variable(2.0, dtype=tf.float64)
  g = lambda t, z: t * z
  port = TFPFFJORD(g, trace_augmentation_fn=EXACT, initial_time=1.0,
                   final_time=t1, dtype=tf.float64, rtol=1e-9, atol=1e-9)
  x = np.array([[1.0]])
  with tf.GradientTape() as tape:
    fldj = port.forward_log_det_jacobian(x, 1)
  # fldj = (t1^2 - 1) / 2: d/dt1 = t1.
  _close(fldj, [1.5], rtol=1e-7)
  _close(tape.gradient(fldj, t1), 2.0, rtol=1e-5)
  t1.assign(3.0)
  _close(port.forward_log_det_jacobian(x.copy(), 1), [4.0], rtol=1e-7)
