"""Divergence (Jacobian trace) estimators for the log-density ODE: `TraceEstimator`, `Exact`, `Hutchinson`.

The estimator objects are what `FFJORD(trace=...)` takes (the names
`"hutchinson"` and `"exact"` stand for `Hutchinson(noise)` and `Exact()`);
the functions below them (`hutchinson`, `exact`, `sample_noise`) are their
parts. A new estimator subclasses `TraceEstimator` and is passed in as it is.
"""

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tf_ffjord._types import DTypeLike

__all__ = ["TRACES", "NOISES", "TraceEstimator", "Exact", "Hutchinson",
           "make_estimator", "sample_noise", "replica_seed", "hutchinson",
           "exact", "uses_pfor", "LOOP_MAX_DIM"]

TRACES = ("hutchinson", "exact")
# Dynamics that ignore (part of) the state, e.g. a translation f = 1, have no
# gradient path from f to z: their Jacobian, and so its trace, is zero.
_ZERO = tf.UnconnectedGradients.ZERO
NOISES = ("rademacher", "gaussian")
# (f, trace, probe product or None) of one dynamics evaluation.
_Estimate = tuple[tf.Tensor, tf.Tensor, tf.Tensor | None]
_Fn = Callable[[tf.Tensor], tf.Tensor]


def sample_noise(shape: tf.Tensor | Sequence[int], dtype: DTypeLike,
                 noise: str = "rademacher",
                 seed: tf.Tensor | None = None) -> tf.Tensor:
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


def replica_seed() -> tf.Tensor:
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


def hutchinson(fn: _Fn, y: tf.Tensor, eps: tf.Tensor,
               event_ndims: int = 1) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
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
  vjp = tape.gradient(f, y, output_gradients=eps, unconnected_gradients=_ZERO)
  trace = tf.reduce_sum(vjp * eps, axis=_event_axes(y, event_ndims))
  return f, trace, vjp


# Up to this many dimensions the exact trace takes one VJP per dimension;
# above it, one vectorized batch Jacobian (pfor).
LOOP_MAX_DIM = 16


def exact(fn: _Fn, y: tf.Tensor, event_ndims: int = 1) -> _Estimate:
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
    return f, tf.linalg.trace(tape.batch_jacobian(
        f_flat, flat, unconnected_gradients=_ZERO)), None
  trace = tf.zeros([batch], f_flat.dtype)
  for i in range(dim):
    unit = tf.one_hot(tf.fill([batch], i), dim, dtype=f_flat.dtype)
    trace += tape.gradient(f_flat, flat, output_gradients=unit,
                           unconnected_gradients=_ZERO)[:, i]
  return f, trace, None


def uses_pfor(trace: "str | TraceEstimator", event_size: int) -> bool:
  """Whether `trace` (a name or an estimator) over `event_size` dimensions runs pfor."""
  return make_estimator(trace).uses_pfor(event_size)


class TraceEstimator:
  """Base class of the trace estimators `FFJORD(trace=...)` takes.

  A solve calls `sample` once (the noise is then held fixed along the whole
  solve and reused by the adjoint's backward solve), then the estimator at
  every evaluation of the dynamics. Subclasses override `__call__`, and
  `sample` if they draw noise; their constructor arguments are their
  config (`get_config`), so they copy, compare and serialize with Keras
  (register them with `keras.saving.register_keras_serializable` to load
  a saved model that holds one).

  Attributes:
    name: short name; an estimator also compares equal to it, so code that
      tests `bijector.trace == "exact"` keeps working.
    is_exact: the estimate is the exact trace (no noise).
    has_probe: `__call__` returns a probe product whose per-example sum of
      squares estimates ||df/dy||_F^2 (the RNODE `"jacobian"` regularizer
      needs one).
  """
  name: str | None = None
  is_exact = False
  has_probe = False

  def sample(self, shape: tf.Tensor, dtype: DTypeLike,
             seed: tf.Tensor | None = None) -> Any:
    """The noise of one solve (`None` if it needs none).

    Args:
      shape: `[batch, *event]`, the state's shape (a tensor).
      dtype: its float dtype.
      seed: `None` (a stateful draw) or a `[2]` int stateless seed.
    """
    del shape, dtype, seed
    return None

  def __call__(self, fn: _Fn, y: tf.Tensor, noise: Any,
               event_ndims: int = 1) -> _Estimate:
    """Evaluates the dynamics and estimates their trace.

    Args:
      fn: callable mapping y to dy/dt, same shape.
      y: `[batch, *event]` state.
      noise: what `sample` returned for this solve.
      event_ndims: number of event dimensions.

    Returns:
      `(f, trace, probe)`: f of y's shape, the `[batch]` trace estimate,
      and the probe product of `has_probe` estimators (else `None`).
    """
    raise NotImplementedError

  def uses_pfor(self, event_size: int) -> bool:
    """Whether it runs pfor over `event_size` dimensions (XLA would then
    recompile a compiled backward loop after every weight update)."""
    del event_size
    return False

  def get_config(self) -> dict[str, Any]:
    return {}

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "TraceEstimator":
    return cls(**config)

  def __eq__(self, other):
    if isinstance(other, str):
      return other == self.name
    return (type(other) is type(self)
            and other.get_config() == self.get_config())

  def __hash__(self):
    return hash(self.name)  # equal to its name, so hashed like it

  def __repr__(self):
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable("tf_ffjord")
class Exact(TraceEstimator):
  """The exact trace: one vector-Jacobian product per dimension (`exact`).

  For evaluation and small dimensions; without XLA above `LOOP_MAX_DIM`
  dimensions, where it runs a batch Jacobian.

  #### Examples

  >>> _, tr, _ = Exact()(lambda y: 3.0 * y, tf.ones([2, 4]), None)
  >>> tr.numpy().tolist()
  [12.0, 12.0]
  """
  name = "exact"
  is_exact = True

  def __call__(self, fn: _Fn, y: tf.Tensor, noise: Any,
               event_ndims: int = 1) -> _Estimate:
    del noise
    return exact(fn, y, event_ndims)

  def uses_pfor(self, event_size: int) -> bool:
    return event_size > LOOP_MAX_DIM


@keras.saving.register_keras_serializable("tf_ffjord")
class Hutchinson(TraceEstimator):
  """Hutchinson's estimator: the mean of eps^T (df/dy) eps over k probes.

  Unbiased; each probe costs one vector-Jacobian product, and the variance
  falls like 1/k. The probes are drawn once per solve.

  Args:
    noise: `"rademacher"` (+-1, the lower variance) or `"gaussian"`.
    probes: number of probes k per example.

  Raises:
    ValueError: an unknown noise or fewer than one probe.

  #### Examples

  >>> est = Hutchinson(probes=2)
  >>> eps = est.sample(tf.constant([3, 4]), tf.float32, seed=[1, 2])
  >>> eps.shape
  TensorShape([2, 3, 4])
  >>> _, tr, _ = est(lambda y: 3.0 * y, tf.ones([3, 4]), eps)
  >>> tr.numpy().tolist()
  [12.0, 12.0, 12.0]
  """
  name = "hutchinson"
  has_probe = True

  def __init__(self, noise: str = "rademacher", probes: int = 1) -> None:
    if noise not in NOISES:
      raise ValueError(f"Unknown noise {noise!r}; expected one of {NOISES}.")
    if not (isinstance(probes, int) and probes >= 1):
      raise ValueError(f"probes must be an int >= 1, got {probes!r}.")
    self.noise, self.probes = noise, probes

  def sample(self, shape: tf.Tensor, dtype: DTypeLike,
             seed: tf.Tensor | None = None) -> tf.Tensor:
    if self.probes > 1:
      shape = tf.concat([[self.probes], shape], 0)
    return sample_noise(shape, dtype, self.noise, seed)

  def __call__(self, fn: _Fn, y: tf.Tensor, noise: Any,
               event_ndims: int = 1) -> _Estimate:
    if self.probes == 1:
      return hutchinson(fn, y, noise, event_ndims)
    axes = _event_axes(y, event_ndims)
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(y)
      f = fn(y)
    vjps = [tape.gradient(f, y, output_gradients=noise[k],
                          unconnected_gradients=_ZERO)
            for k in range(self.probes)]
    trace = tf.add_n([tf.reduce_sum(v * noise[k], axis=axes)
                      for k, v in enumerate(vjps)]) / self.probes
    # Side by side and scaled by 1/sqrt(k): the per-example sum of squares
    # is the mean of the k probes' ||eps^T df/dy||^2.
    probe = tf.concat(vjps, axis=-1) * (self.probes ** -0.5)
    return f, trace, probe

  def get_config(self) -> dict[str, Any]:
    return {"noise": self.noise, "probes": self.probes}


def make_estimator(trace: str | TraceEstimator,
                   noise: str = "rademacher") -> TraceEstimator:
  """The estimator of a trace name and a noise (`ffjord_arguments` uses it).

  Args:
    trace: a `TraceEstimator`, returned as is (`noise` is then unused), or
      a name: `"hutchinson"` (`Hutchinson(noise)`) or `"exact"`.
    noise: the Hutchinson noise of the name `"hutchinson"`.

  Raises:
    ValueError: an unknown name or noise.
  """
  if noise not in NOISES:
    raise ValueError(f"Unknown noise {noise!r}; expected one of {NOISES}.")
  if isinstance(trace, TraceEstimator):
    return trace
  if trace == "hutchinson":
    return Hutchinson(noise)
  if trace == "exact":
    return Exact()
  raise ValueError(f"Unknown trace {trace!r}; expected one of {TRACES} or a "
                   "TraceEstimator instance.")
