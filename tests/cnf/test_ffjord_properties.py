"""Property-based tests of the bijector's input contract (hypothesis): every input gives the right result or the documented error."""

import functools

import hypothesis
from hypothesis import strategies as st
import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord import FFJORD
from tf_ffjord.validation import InputError

tfd = tfp.distributions
T = 0.5
SETTINGS = hypothesis.settings(
    max_examples=15, deadline=None, database=None,
    suppress_health_check=list(hypothesis.HealthCheck))


class LinearField(keras.layers.Layer):
  """f(t, z) = A z as a Keras layer: its float32 weight sets the flow dtype."""

  def __init__(self, a):
    super().__init__()
    self.kernel = self.add_weight(
        shape=a.shape, initializer=keras.initializers.Constant(a),
        name="kernel")
    self.built = True

  def call(self, t, z):
    del t
    return tf.linalg.matvec(self.kernel, z)


def matrix(dim):
  rng = np.random.default_rng(dim)
  return (0.4 * rng.standard_normal([dim, dim])).astype(np.float32)


@functools.lru_cache(maxsize=None)
def flow(dim):
  """One flow per width, reused across examples (as a user would)."""
  # RK4 with 4 steps of 0.125 on |A| < 1.5: error ~ (h|A|)^5 / 120 < 1e-6.
  bijector = FFJORD(LinearField(matrix(dim)), time_length=T, trace="exact",
                    event_shape=[dim],
                    solver=tf_ffjord.make_solver("rk4", step_size=0.25))
  return bijector, tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(dim)), bijector)


@functools.lru_cache(maxsize=None)
def calls(dim, traced, rank=None):
  """The entry points, eager or as one `tf.function` each (per width, rank).

  One function per rank: `reduce_retracing` would generalize calls of
  different ranks to an unknown rank, which FFJORD refuses (its solve
  flattens the batch).
  """
  bijector, dist = flow(dim)
  fns = {"forward": bijector.forward, "inverse": bijector.inverse,
         "ildj": lambda v: bijector.inverse_log_det_jacobian(v, 1),
         "fldj": lambda v: bijector.forward_log_det_jacobian(v, 1),
         "log_prob": dist.log_prob}
  if traced:
    fns = {k: tf.function(f, reduce_retracing=True) for k, f in fns.items()}
  return fns


def expected_inverse(x, dim):
  return x @ scipy.linalg.expm(T * matrix(dim)).T


def still_works(dim):
  bijector, dist = flow(dim)
  x = np.linspace(-1, 1, 2 * dim, dtype=np.float32).reshape(2, dim)
  np.testing.assert_allclose(bijector.inverse(x), expected_inverse(x, dim),
                             rtol=1e-4, atol=1e-5)
  z = expected_inverse(x, dim)
  want = (-0.5 * np.sum(z**2, -1) - 0.5 * dim * np.log(2 * np.pi)
          + T * np.trace(matrix(dim)))
  np.testing.assert_allclose(dist.log_prob(x), want, rtol=1e-4, atol=1e-4)


dims = st.integers(1, 3)
batch_shapes = st.lists(st.integers(0, 3), min_size=0, max_size=2)
real_dtypes = st.sampled_from(
    [np.float16, np.float32, np.float64, np.int32, np.int64])


@SETTINGS
@hypothesis.given(dim=dims, batch=batch_shapes, dtype=real_dtypes,
                  seed=st.integers(0, 2**16), traced=st.booleans())
def test_real_inputs_give_the_closed_form(dim, batch, dtype, seed, traced):
  fn = calls(dim, traced, len(batch) + 1)
  rng = np.random.default_rng(seed)
  x = (3 * rng.standard_normal([*batch, dim])).astype(dtype)
  x32 = x.astype(np.float32)
  z = fn["inverse"](x)
  assert z.dtype == tf.float32 and z.shape == (*batch, dim)
  np.testing.assert_allclose(z, expected_inverse(x32, dim), rtol=1e-4,
                             atol=1e-4)
  np.testing.assert_allclose(fn["forward"](z), x32, rtol=1e-4, atol=1e-4)
  ildj, fldj = fn["ildj"](x), fn["fldj"](x)
  trace = T * np.trace(matrix(dim))
  np.testing.assert_allclose(ildj, np.full(batch, trace), atol=1e-5)
  np.testing.assert_allclose(fldj, np.full(batch, -trace), atol=1e-5)
  z = expected_inverse(x32, dim)
  want = (-0.5 * np.sum(z**2, -1) - 0.5 * dim * np.log(2 * np.pi) + trace)
  np.testing.assert_allclose(fn["log_prob"](x), want, rtol=1e-4, atol=1e-3)


@SETTINGS
@hypothesis.given(dim=dims, width=st.integers(1, 4),
                  batch=batch_shapes, traced=st.booleans(),
                  method=st.sampled_from(["forward", "inverse", "ildj",
                                          "log_prob"]))
def test_wrong_shapes_raise_the_documented_error(dim, width, batch, traced,
                                                 method):
  hypothesis.assume(width != dim)
  for bad in (np.zeros([*batch, width], np.float32),
              np.zeros([], np.float32)):
    call = calls(dim, traced, bad.ndim)[method]
    if method == "ildj" and not bad.shape:
      # TFP checks a log-det's rank before the bijector sees the input.
      with pytest.raises(ValueError, match="rank at least 1. Saw: 0"):
        call(bad)
      continue
    expected = (f"FFJORD expects events of shape [{dim}] (inputs "
                f"[batch..., {dim}]); got shape")
    # A traced function that has generalized its input shape (e.g. [?, ?]
    # after calls of two widths) checks in the graph, with the same words.
    with pytest.raises((InputError, tf.errors.InvalidArgumentError)) as err:
      call(bad)
    if isinstance(err.value, InputError):
      assert str(err.value).splitlines()[0] == (
          f"{expected} [{', '.join(map(str, bad.shape))}].")
    else:
      assert traced and f"[{expected}] [{' '.join(map(str, bad.shape))}]" in (
          str(err.value))
  still_works(dim)


@SETTINGS
@hypothesis.given(dim=dims, batch=st.lists(st.integers(1, 3), min_size=1,
                                            max_size=2),
                  where=st.integers(0, 100), value=st.sampled_from(
                      [np.nan, np.inf, -np.inf]),
                  traced=st.booleans())
def test_non_finite_values_raise_and_leave_the_flow_working(
    dim, batch, where, value, traced):
  x = np.zeros([*batch, dim], np.float32)
  x.flat[where % x.size] = value
  call = calls(dim, traced, len(batch) + 1)["inverse"]
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="FFJORD input contains NaN or inf"):
    call(x)
  still_works(dim)


@SETTINGS
@hypothesis.given(dim=dims, dtype=st.sampled_from(
    [np.bool_, np.complex64, np.complex128, np.str_]))
def test_other_dtypes_are_refused_naming_them(dim, dtype):
  bijector, _ = flow(dim)
  x = np.zeros([2, dim]).astype(dtype)
  name = tf.as_dtype(tf.convert_to_tensor(x).dtype).name
  with pytest.raises(InputError, match=f"got dtype {name}"):
    bijector.forward(x)
  still_works(dim)
