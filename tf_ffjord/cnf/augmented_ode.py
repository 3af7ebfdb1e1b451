"""The augmented ODE of an FFJORD solve: time change, divergence, regularizer rates, on the unit interval."""

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import tensorflow as tf

from tf_ffjord.cnf.regularizers import RegularizerLike
from tf_ffjord.cnf import contract
from tf_ffjord.cnf import regularizers as regs
from tf_ffjord._types import Dynamics, TensorLike
from tf_ffjord.cnf.trace_estimators import TraceEstimator

__all__ = ["Solution", "AugmentedODE", "flatten_batch", "flatten_context"]


class Solution(NamedTuple):
  """Result of one FFJORD solve (`FFJORD.solve`).

  Fields:
    state: the end state, shaped like the input.
    log_det: log |det d state / d input|, one value per example.
    regularization: dict name -> integral of the regularizer, per example.
    nfe: dynamics evaluations of this solve (int32 scalar).
  """
  state: tf.Tensor
  log_det: tf.Tensor
  regularization: dict[str, tf.Tensor]
  nfe: tf.Tensor


def flatten_batch(x: tf.Tensor,
                  event_ndims: int) -> tuple[tf.Tensor, tf.Tensor]:
  """`(y0, batch_shape)`: x as `[batch, *event]` and its batch shape (a tensor)."""
  event_shape = x.shape[x.shape.rank - event_ndims:]
  batch_shape = tf.shape(x)[:x.shape.rank - event_ndims]
  return tf.reshape(x, tf.concat([[-1], event_shape], 0)), batch_shape


def flatten_context(context: TensorLike | None, y0: tf.Tensor, x_rank: int,
                    event_ndims: int) -> tf.Tensor | None:
  """The conditioning tensor as `[batch, -1]` rows of y0's dtype (or None)."""
  if context is None:
    return None
  context = tf.convert_to_tensor(context, dtype=y0.dtype)
  if context.shape.rank is not None and context.shape.rank > 1:
    rank, width = context.shape.rank, context.shape[-1]
    context = tf.reshape(context, [tf.shape(y0)[0], -1])
    if rank == 2 and x_rank - event_ndims == 1:
      # Keep the static width through a dynamic batch (layers check it).
      context.set_shape([None, width])
  return context


class AugmentedODE:
  """d/ds [z, log_det, r_1, ...] for s in [0, 1], the system one solve integrates.

  The solve runs on the unit interval with t = t0 + s T (`"inverse"`, data
  to base) or t = t0 + (1 - s) T (`"forward"`), so with scale = +-T:

  - dz/ds = scale f(t, z);
  - d log_det/ds = Tr(d (scale f) / dz), by the trace estimator;
  - dr/ds = T rate_r(f) for each regularizer r (integrals over t).

  T is an argument of the call (a constant of the solve), so a trainable T
  gets its gradient from the adjoint like any other parameter.

  Args:
    dynamics: `f(t, z)` or `f(t, z, context)`.
    estimator: a `divergence.TraceEstimator`.
    noise: the estimator's noise for this solve (held fixed along it).
    direction: `"inverse"` or `"forward"`.
    initial_time: t0, a scalar tensor of the state's dtype.
    event_ndims: number of event dimensions.
    regularizers: checked `regularizers.Regularizer` objects (or names).
  """

  def __init__(self, dynamics: Dynamics, estimator: TraceEstimator,
               noise: Any, direction: str, initial_time: tf.Tensor,
               event_ndims: int = 1,
               regularizers: Iterable[RegularizerLike] = ()) -> None:
    self.dynamics, self.estimator, self.noise = dynamics, estimator, noise
    self.sign = 1.0 if direction == "inverse" else -1.0
    self.t0, self.event_ndims = initial_time, event_ndims
    self.regularizers = tuple(regularizers)

  def time(self, s: tf.Tensor, time_length: tf.Tensor) -> tf.Tensor:
    """The dynamics' time t at solve time s."""
    return self.t0 + (s if self.sign > 0 else 1.0 - s) * time_length

  def initial_state(self, y0: tf.Tensor) -> list[tf.Tensor]:
    """[z0, zero log-det, zero regularizer integrals]."""
    zeros = lambda: tf.zeros(tf.shape(y0)[:1], y0.dtype)
    return [y0, zeros()] + [zeros() for _ in self.regularizers]

  def error_weights(self) -> tuple[float, ...]:
    """Step control weighs z and the log-det; regularizer integrals weigh 0."""
    return (1.0, 1.0) + (0.0,) * len(self.regularizers)

  def __call__(self, s: tf.Tensor, state: Sequence[tf.Tensor],
               time_length: tf.Tensor,
               context: tf.Tensor | None = None) -> list[tf.Tensor]:
    t = self.time(s, time_length)
    scale = self.sign * time_length
    fn = lambda z: scale * contract.call(self.dynamics, t, z, context)
    f, trace, probe = self.estimator(fn, state[0], self.noise,
                                     self.event_ndims)
    out = [f, trace]
    if self.regularizers:
      # Regularizers are integrals over t, the solve runs over s = t / T.
      f_t = f / scale
      probe_t = None if probe is None else probe / scale
      out += [regs.rate(r, f_t, probe_t) * time_length
              for r in self.regularizers]
    return out
