"""Tests of the shared input policy (tf_ffjord.validation)."""

import re

import numpy as np
import pytest
import tensorflow as tf

import tf_ffjord

from tf_ffjord import ODENet
from tf_ffjord import validation
from tf_ffjord.validation import InputError

SHAPE_MSG = (r"^FFJORD expects events of shape \[2\] \(inputs \[batch\.\.\., "
             r"2\]\); got shape \[4, 3\]\.$")


def first_line(err):
  return str(err.value).splitlines()[0]


def test_shape_error_first_line_is_the_same_eager_and_traced():
  with pytest.raises(InputError) as eager:
    validation.check_events(tf.zeros([4, 3]), [2])
  traced_fn = tf.function(lambda x: validation.check_events(x, [2]))
  with pytest.raises(ValueError) as traced:
    traced_fn(tf.zeros([4, 3]))
  assert first_line(eager) == first_line(traced)
  assert tf.errors.InvalidArgumentError not in type(traced.value).__mro__
  assert re.match(SHAPE_MSG, first_line(traced))


@pytest.mark.parametrize("shape", [[3], [4, 3], [2, 2, 1], []])
def test_dynamic_shapes_are_checked_in_the_graph(shape):
  fn = tf.function(lambda x: validation.check_events(x, [2]),
                   input_signature=[tf.TensorSpec(None)])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"FFJORD expects events of shape \[2\].*got shape"):
    fn(tf.zeros(shape))
  assert fn(tf.zeros([0, 2])).shape == (0, 2)
  assert fn(tf.ones([3, 5, 2])).numpy().sum() == 30


def test_batch_ndims_is_enforced():
  with pytest.raises(InputError, match=r"inputs \[batch, 2\]\); got shape "
                     r"\[1, 4, 2\]"):
    validation.check_events(tf.zeros([1, 4, 2]), [2], batch_ndims=1)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16,
                                   np.float32, np.float64])
def test_real_numbers_are_cast_to_the_flow_dtype(dtype):
  x = np.array([[1, 2], [3, 4]], dtype)
  for flow in (tf.float32, tf.float64):
    out = validation.check_events(x, [2], flow)
    assert out.dtype == flow
    np.testing.assert_array_equal(out.numpy(), [[1, 2], [3, 4]])


def test_flow_dtype_follows_keras_dynamics_then_input():
  assert validation.flow_dtype(ODENet(hidden=(4,), dtype="float64"),
                               tf.float32) == tf.float64
  assert validation.flow_dtype(ODENet(hidden=(4,)), tf.float64) == tf.float32
  assert validation.flow_dtype(lambda t, z: z, tf.float16) == tf.float16
  assert validation.flow_dtype(lambda t, z: z, tf.int64) == tf.float32


@pytest.mark.parametrize("value,dtype", [
    ([[True, False]], "bool"), ([["a", "b"]], "string"),
    (np.ones([1, 2], np.complex64), "complex64")])
def test_other_dtypes_are_refused_naming_both(value, dtype):
  with pytest.raises(InputError, match=f"floats or ints.*got dtype {dtype}"):
    validation.check_events(value, [2], tf.float32)


def test_unconvertible_input_is_refused():
  with pytest.raises(InputError, match="real-valued tensor; got object"):
    validation.check_events(object(), [2])


def test_non_finite_after_the_cast():
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="FFJORD input contains NaN or inf"):
    validation.check_events(np.array([[1e300, 0.0]]), [2], tf.float32)


def test_count():
  assert int(validation.check_count(np.int64(5))) == 5
  for bad in (-1, 2.5, True, tf.constant([1, 2])):
    with pytest.raises(InputError, match="n >= 0"):
      validation.check_count(bad)
  fn = tf.function(validation.check_count,
                   input_signature=[tf.TensorSpec([], tf.int32)])
  assert int(fn(0)) == 0
  with pytest.raises(tf.errors.InvalidArgumentError, match="n >= 0"):
    fn(-3)


# -- the bijector ------------------------------------------------------------

import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top,wrong-import-position

from tf_ffjord import FFJORD  # pylint: disable=g-import-not-at-top,wrong-import-position

tfd = tfp.distributions
A = np.array([[0.3, -0.5], [0.2, -0.1]], np.float32)  # Tr(A) = 0.2


class Linear:
  """f(t, z) = A z, counting its Python calls (one per trace of the solve)."""

  def __init__(self, a=A):
    self.a = tf.Variable(a)
    self.calls = 0

  def __call__(self, t, z):
    self.calls += 1
    return tf.linalg.matvec(self.a, z)


def _dist(bijector):
  return tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(2)), bijector)


def _expected_log_prob(x, t_len=1.0):
  # Data sit at t0: z = expm(T A) x, log p(x) = log N(z) + T Tr(A).
  import scipy.linalg  # pylint: disable=g-import-not-at-top
  z = x @ scipy.linalg.expm(t_len * A).T
  return (-0.5 * np.sum(z**2, -1) - np.log(2 * np.pi) + t_len * np.trace(A))


def test_declared_event_shape_refuses_a_wrong_width_and_stays_usable():
  f = ODENet(hidden=(8,))
  dist = _dist(FFJORD(f, trace="exact", solver="rk4", event_shape=[2]))
  traced = tf.function(dist.log_prob)
  for call in (dist.log_prob, traced):
    with pytest.raises(ValueError) as err:
      call(tf.zeros([4, 3]))
    assert re.match(SHAPE_MSG, first_line(err))
  assert not f.built or f.dim == 2
  x = tf.random.normal([5, 2], seed=1)
  eager = dist.log_prob(x)
  np.testing.assert_allclose(traced(x), eager, rtol=1e-5)
  assert f.dim == 2 and eager.shape == (5,)


def test_first_call_pins_the_shape_of_an_undeclared_flow():
  bij = FFJORD(Linear(), trace="exact", solver="rk4")
  assert bij.solve(tf.zeros([4, 2])).state.shape == (4, 2)
  with pytest.raises(InputError, match=r"\[2\].*got shape \[4, 3\]"):
    bij.solve(tf.zeros([4, 3]))
  traced = tf.function(lambda x: bij.solve(x).log_det)
  with pytest.raises(InputError, match=r"got shape \[3, 1\]"):
    traced(tf.zeros([3, 1]))
  np.testing.assert_allclose(traced(tf.zeros([3, 2])), [0.2] * 3, atol=1e-5)


def test_a_built_net_gives_the_event_shape():
  f = ODENet(hidden=(8,))
  f(0.0, tf.zeros([1, 2]))
  bij = FFJORD(f, solver=tf_ffjord.make_solver("euler", step_size=1.0))
  with pytest.raises(InputError, match=r"shape \[2\].*got shape \[1, 5\]"):
    bij.forward(tf.zeros([1, 5]))
  assert bij.forward(tf.zeros([1, 2])).shape == (1, 2)


def test_event_shape_must_match_event_ndims():
  with pytest.raises(ValueError, match="event_ndims"):
    FFJORD(Linear(), event_shape=[2, 2])


@pytest.mark.parametrize("solver", [
    "dopri5", "rk4", "euler", tfp.math.ode.DormandPrince()])
def test_empty_batches_with_every_solver(solver):
  f = Linear()
  dist = _dist(FFJORD(f, trace="exact", solver=solver, event_shape=[2]))
  empty = tf.zeros([0, 2])
  with tf.GradientTape() as tape:
    traced = tf.function(dist.log_prob)(empty)
    loss = tf.reduce_sum(traced)
  grad = tape.gradient(loss, f.a)
  assert traced.shape == (0,)
  np.testing.assert_array_equal(grad, np.zeros_like(A))
  assert dist.log_prob(empty).shape == (0,)  # eager
  assert dist.sample(0, seed=1).shape == (0, 2)
  assert tf.function(lambda: dist.sample(0, seed=1))().shape == (0, 2)
  x = np.array([[0.5, -1.0]], np.float32)  # and still right after
  np.testing.assert_allclose(dist.log_prob(x), _expected_log_prob(x),
                             rtol=1e-3)


def test_repeated_eager_calls_do_not_retrace():
  f = Linear()
  dist = _dist(FFJORD(f, trace="exact", solver="dopri5"))
  x = np.array([[0.5, -1.0], [1.0, 0.2]], np.float32)
  np.testing.assert_allclose(dist.log_prob(x), _expected_log_prob(x),
                             rtol=1e-4)
  traced = f.calls
  assert traced > 0
  for batch in (x, x + 1.0, np.zeros([7, 2], np.float32)):
    dist.log_prob(batch)
  dist.bijector.forward(x)  # another direction: one more trace ...
  after_forward = f.calls
  dist.bijector.forward(x[:1])  # ... and then none
  assert f.calls == after_forward and after_forward > traced
  with tf.GradientTape() as tape:  # gradients through the cached function
    loss = -tf.reduce_sum(dist.log_prob(x))
  assert tape.gradient(loss, f.a) is not None


@pytest.mark.parametrize("dtype", [np.float64, np.int32])
def test_every_entry_point_casts_real_dtypes_alike(dtype):
  bij = FFJORD(ODENet(hidden=(8,)), trace="exact", solver="rk4")
  x = np.array([[1, 0], [0, 2]], dtype)
  ref = np.array(x, np.float32)
  for method in (bij.forward, bij.inverse):
    out = method(x)
    assert out.dtype == tf.float32
    np.testing.assert_allclose(out, method(ref), rtol=1e-6)
  for method in (bij.forward_log_det_jacobian,
                 bij.inverse_log_det_jacobian):
    np.testing.assert_allclose(method(x, 1), method(ref, 1), rtol=1e-6)
  with pytest.raises(InputError, match="got dtype bool"):
    bij.inverse(np.zeros([2, 2], bool))


def test_unknown_rank_is_refused_with_advice():
  bij = FFJORD(Linear(), event_shape=[2],
               solver=tf_ffjord.make_solver("euler", step_size=1.0))
  fn = tf.function(bij.forward, input_signature=[tf.TensorSpec(None)])
  with pytest.raises(InputError, match=r"known rank.*input_signature, e\.g\. "
                     r"\[None, 2\]"):
    fn(tf.zeros([1, 2]))


def test_a_traced_width_mix_is_checked_in_the_graph():
  bij = FFJORD(Linear(), trace="exact", solver="rk4", event_shape=[2])
  fn = tf.function(lambda x: bij.solve(x).log_det,
                   input_signature=[tf.TensorSpec([None, None])])
  np.testing.assert_allclose(fn(tf.zeros([3, 2])), [0.2] * 3, atol=1e-5)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"shape \[2\].*got shape\] \[3 5\]"):
    fn(tf.zeros([3, 5]))
  fresh = FFJORD(Linear(), solver="rk4")
  with pytest.raises(InputError, match="does not know its event shape"):
    tf.function(fresh.forward, input_signature=[tf.TensorSpec([None, None])])(
        tf.zeros([1, 2]))
