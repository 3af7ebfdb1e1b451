"""The trace estimators against the true trace of known Jacobians."""

import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord.cnf import trace_estimators as divergence


# 3 dimensions take one VJP each; 20 take the vectorized batch Jacobian.
@pytest.mark.parametrize("dim", [3, divergence.LOOP_MAX_DIM + 4])
def test_exact_trace_of_a_nonlinear_map(dim):
  rng = np.random.default_rng(dim)
  w = tf.constant(rng.normal(size=(dim, dim)), tf.float64)
  y = tf.constant(rng.normal(size=(5, dim)), tf.float64)
  # f = tanh(y W): df/dy = W diag(1 - f^2) per row, trace sum_i W_ii (1-f_i^2).
  f, trace, vjp = tf.function(
      lambda y: divergence.exact(lambda y: tf.tanh(y @ w), y))(y)
  expected = np.sum(np.diag(w.numpy()) * (1 - np.tanh(y @ w) ** 2), axis=1)
  np.testing.assert_allclose(f, np.tanh(y @ w), rtol=1e-12)
  np.testing.assert_allclose(trace, expected, rtol=1e-10)
  assert vjp is None
  assert divergence.uses_pfor("exact", dim) == (dim > divergence.LOOP_MAX_DIM)
  assert not divergence.uses_pfor("hutchinson", 10_000)


def test_exact_trace_of_image_events():
  # A per-pixel scaling of [2, 2, 1] images: the trace is the sum of scales.
  scale = tf.constant(np.arange(1.0, 5.0).reshape(2, 2, 1), tf.float32)
  y = tf.random.normal([3, 2, 2, 1])
  _, trace, _ = divergence.exact(lambda y: y * scale, y, event_ndims=3)
  np.testing.assert_allclose(trace, [10.0] * 3, rtol=1e-6)


def test_hutchinson_mean_is_the_exact_trace():
  w = tf.constant(np.random.default_rng(0).normal(size=(4, 4)), tf.float32)
  y = tf.tile(tf.random.normal([1, 4]), [20000, 1])
  eps = divergence.sample_noise(tf.shape(y), tf.float32, "rademacher",
                                seed=tf.constant([1, 2]))
  fn = lambda y: tf.tanh(y @ w)
  _, est, _ = divergence.hutchinson(fn, y, eps)
  _, exact, _ = divergence.exact(fn, y[:1])
  se = np.std(est) / np.sqrt(len(est))
  assert np.std(est) > 0
  assert abs(np.mean(est) - float(exact[0])) < 4 * se
