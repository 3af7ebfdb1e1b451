"""Divergence (Jacobian trace) estimators for the log-density ODE."""

import tensorflow as tf

__all__ = ["TRACES", "NOISES", "sample_noise", "replica_seed", "hutchinson",
           "exact", "uses_pfor", "LOOP_MAX_DIM"]

TRACES = ("hutchinson", "exact")
NOISES = ("rademacher", "gaussian")


def sample_noise(shape, dtype, noise="rademacher", seed=None):
  """Draws a Hutchinson probe: Rademacher (+-1) or standard Gaussian.

  Args:
    shape: shape of the probe (that of the state: one probe per example).
    dtype: float dtype.
    noise: `"rademacher"` or `"gaussian"`.
    seed: `None` for a stateful draw (a fresh probe per call, different on each
      replica), or a stateless seed (shape `[2]` int tensor).

  Returns:
    A tensor of `shape` and `dtype`.
  """
  if noise not in NOISES:
    raise ValueError(f"Unknown noise {noise!r}; expected one of {NOISES}.")
  if seed is None:
    if noise == "gaussian":
      return tf.random.normal(shape, dtype=dtype)
    bits = tf.random.uniform(shape, maxval=2, dtype=tf.int32)
  else:
    if noise == "gaussian":
      return tf.random.stateless_normal(shape, seed, dtype=dtype)
    bits = tf.random.stateless_uniform(shape, seed, maxval=2, dtype=tf.int32)
  return tf.cast(2 * bits - 1, dtype)


def replica_seed():
  """A fresh stateless probe seed (`[2]` int32), distinct per replica.

  Call it inside the training step. A stateful draw alone repeats on every
  worker of a multi-worker run (the same graph under the same global seed),
  so the global replica id is folded in.
  """
  ctx = tf.distribute.get_replica_context()
  replica = 0 if ctx is None else ctx.replica_id_in_sync_group
  draw = tf.random.uniform([2], maxval=tf.int32.max, dtype=tf.int32)
  return tf.random.experimental.stateless_fold_in(
      draw, tf.cast(replica, tf.int32))


def _event_axes(y, event_ndims):
  return list(range(y.shape.rank - event_ndims, y.shape.rank))


def hutchinson(fn, y, eps, event_ndims=1):
  """f = fn(y) and the unbiased estimate eps^T (df/dy) eps, in one tape.

  One vector-Jacobian product per call: O(D) instead of O(D^2).

  Args:
    fn: callable mapping y to dy/dt, same shape.
    y: `[batch, *event]` state.
    eps: probe of y's shape, held fixed for the whole solve.
    event_ndims: number of event dimensions summed over.

  Returns:
    `(f, trace, vjp)`: f of y's shape, trace `[batch]`, and eps^T df/dy (y's
    shape; regularizers reuse it for the Jacobian Frobenius norm).
  """
  with tf.GradientTape() as tape:
    tape.watch(y)
    f = fn(y)
  vjp = tape.gradient(f, y, output_gradients=eps)
  trace = tf.reduce_sum(vjp * eps, axis=_event_axes(y, event_ndims))
  return f, trace, vjp


# Up to this many dimensions the exact trace takes one VJP per dimension;
# above it, one vectorized batch Jacobian (pfor).
LOOP_MAX_DIM = 16


def exact(fn, y, event_ndims=1):
  """f = fn(y) and the exact trace of df/dy.

  Costs D vector-Jacobian products, so use it for evaluation and small D.
  Up to `LOOP_MAX_DIM` dimensions they are D plain VJPs on one tape: a small
  graph, quick to trace, that XLA compiles once. Above it they run
  vectorized by `batch_jacobian` (pfor), whose graph XLA cannot compile once
  for all weights: it folds the variables' values into the program as
  constants, so a compiled loop that takes its gradient is compiled again
  after every weight update (see `uses_pfor`).

  Args:
    fn: callable mapping y to dy/dt, same shape.
    y: `[batch, *event]` state.
    event_ndims: number of event dimensions.

  Returns:
    `(f, trace, None)`, as `hutchinson` without a probe product.
  """
  event_shape = y.shape[y.shape.rank - event_ndims:]
  dim = event_shape.num_elements()
  batch = tf.shape(y)[0]
  flat = tf.reshape(y, [batch, dim])
  with tf.GradientTape(persistent=dim <= LOOP_MAX_DIM) as tape:
    tape.watch(flat)
    f = fn(tf.reshape(flat, tf.concat([[batch], event_shape], 0)))
    f_flat = tf.reshape(f, [batch, dim])
  if dim > LOOP_MAX_DIM:
    return f, tf.linalg.trace(tape.batch_jacobian(f_flat, flat)), None
  trace = tf.zeros([batch], f_flat.dtype)
  for i in range(dim):
    unit = tf.one_hot(tf.fill([batch], i), dim, dtype=f_flat.dtype)
    trace += tape.gradient(f_flat, flat, output_gradients=unit)[:, i]
  return f, trace, None


def uses_pfor(trace, event_size):
  """Whether `trace` over `event_size` dimensions runs a batch Jacobian."""
  return trace == "exact" and event_size > LOOP_MAX_DIM
