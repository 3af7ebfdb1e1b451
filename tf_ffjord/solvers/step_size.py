"""Adaptive step-size control (`AdaptiveStepSize`) and the adaptive integration loop."""

from collections.abc import Sequence
import dataclasses
from typing import Optional, Tuple

import tensorflow as tf

from tf_ffjord._types import OdeFn
from tf_ffjord.solvers import tableaux
from tf_ffjord.solvers.protocols import AdaptiveController
from tf_ffjord.solvers.dense_output import DenseOutput, step_polynomial
from tf_ffjord.solvers.result import STATUS

__all__ = ["AdaptiveStepSize", "integrate_adaptive", "error_norm"]


@dataclasses.dataclass(frozen=True)
class AdaptiveStepSize(AdaptiveController):
  """Step-size controller from an embedded error estimate.

  A step is accepted when the weighted RMS of error / (atol + rtol
  max(|y|, |y_new|)) is at most 1; the next step is the current one times
  `safety * ratio^(-1/5)`, clipped to `[min_factor, max_factor]` (and to at
  most 1 after a rejection).

  Args:
    rtol: relative tolerance.
    atol: absolute tolerance.
    error_weights: `None` (every state component weighs 1) or one weight per
      flattened state component; 0 leaves a component out of step control
      (regularizer integrals, the parameter adjoints of a backward solve).
    first_step: first trial step; `None` picks it from the dynamics
      (Hairer, Norsett & Wanner, 1993, II.4; one extra evaluation).
    safety: step size safety factor.
    min_factor: smallest step size change per step.
    max_factor: largest step size change per step.
    max_num_steps: limit on attempted steps (accepted or rejected). It sits
      in the loop condition, so dynamics that return NaN or need too many
      steps end the loop even under XLA, where assertions are no-ops.

  Raises:
    ValueError: a non-positive tolerance, step or step limit.
  """
  rtol: float = 1e-5
  atol: float = 1e-5
  error_weights: Optional[Tuple[float, ...]] = None
  first_step: Optional[float] = None
  safety: float = 0.9
  min_factor: float = 0.2
  max_factor: float = 10.0
  max_num_steps: int = 1000

  def __post_init__(self):
    if not (self.rtol > 0 and self.atol > 0):
      raise ValueError(f"rtol and atol must be positive, got {self.rtol}, "
                       f"{self.atol}.")
    if self.max_num_steps is None or int(self.max_num_steps) < 1:
      raise ValueError(f"max_num_steps must be >= 1, got "
                       f"{self.max_num_steps}.")
    if self.first_step is not None and not self.first_step > 0:
      raise ValueError(f"first_step must be positive, got {self.first_step}.")
    if not 0 < self.min_factor <= 1 <= self.max_factor:
      raise ValueError("Need 0 < min_factor <= 1 <= max_factor, got "
                       f"{self.min_factor}, {self.max_factor}.")
    object.__setattr__(self, "max_num_steps", int(self.max_num_steps))
    if self.error_weights is not None:
      object.__setattr__(self, "error_weights",
                         tuple(float(w) for w in self.error_weights))

  def weights(self, n: int) -> tuple[float, ...]:
    """The error weight of each of n state components."""
    if self.error_weights is None:
      return (1.0,) * n
    if len(self.error_weights) != n:
      raise ValueError(f"error_weights has {len(self.error_weights)} entries "
                       f"for a state of {n} components.")
    return self.error_weights


def error_norm(values: Sequence[tf.Tensor], y0: Sequence[tf.Tensor],
               y1: Sequence[tf.Tensor], weights: Sequence[float],
               rtol: float, atol: float) -> tf.Tensor:
  """Weighted RMS of values / (atol + rtol max(|y0|, |y1|)); 0-weights skipped."""
  num, den = [], []
  for v, a, b, w in zip(values, y0, y1, weights):
    if not w:
      continue
    scale = atol + rtol * tf.maximum(tf.abs(a), tf.abs(b))
    num.append(w * tf.reduce_sum(tf.square(v / scale)))
    den.append(w * tf.cast(tf.size(v), v.dtype))
  if not num:
    return tf.zeros([], values[0].dtype)
  # An empty batch has no error to control: 0, not 0/0.
  return tf.sqrt(tf.math.divide_no_nan(tf.add_n(num), tf.add_n(den)))


def _first_step(fn, t0, y0, f0, direction, span, weights, c, order):
  """Hairer's starting step (one extra evaluation)."""
  norm = lambda v: error_norm(v, y0, y0, weights, c.rtol, c.atol)
  d0, d1 = norm(y0), norm(f0)
  small = (d0 < 1e-5) | (d1 < 1e-5)
  h0 = tf.where(small, 1e-6 * tf.ones_like(d0),
                0.01 * d0 / tf.where(small, tf.ones_like(d1), d1))
  h0 = tf.minimum(h0, span)
  f1 = fn(t0 + direction * h0,
          [y + direction * h0 * f for y, f in zip(y0, f0)])
  d2 = norm([a - b for a, b in zip(f1, f0)]) / h0
  dmax = tf.maximum(d1, d2)
  h1 = tf.where(dmax <= 1e-15, tf.maximum(1e-6 * tf.ones_like(h0), 1e-3 * h0),
                tf.pow(0.01 / tf.maximum(dmax, 1e-15), 1.0 / (order + 1)))
  return tf.minimum(100.0 * h0, h1)


def integrate_adaptive(fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor,
                       y0: Sequence[tf.Tensor], tableau: tableaux.Tableau,
                       controller: AdaptiveStepSize,
                       first_step: tf.Tensor | None = None,
                       record: bool = False) -> tuple:
  """Integrates dy/dt = fn(t, y) from t0 to t1 with adaptive steps.

  Args:
    fn: `fn(t, y) -> dy/dt` on lists of tensors.
    t0: scalar tensor, the initial time.
    t1: scalar tensor, the final time (may be below t0).
    y0: list of state tensors.
    tableau: a `tableaux.Tableau` with an error estimate (`b_error`); with
      `record`, also with a dense output.
    controller: an `AdaptiveStepSize`.
    first_step: optional scalar tensor overriding the first trial step (the
      adjoint passes the forward solve's last step); a zero or non-finite
      value falls back to a small step.
    record: also return a `DenseOutput` of the accepted steps (a few
      state-sized tensors per step; the loop cannot then run under XLA,
      whose loops need buffers of a size known when compiling).

  Returns:
    `(y1, nfe, status, h)`: the end state (NaN if the solve failed), the
    number of evaluations, the `STATUS` code and the proposed next step;
    with `record`, `(y1, nfe, status, h, dense)`.
  """
  if tableau.b_error is None:
    raise ValueError(f"Adaptive steps need a method with an error estimate "
                     f"(b_error), e.g. dopri5; got {tableau.name!r}. Use "
                     "ConstantStepSize for it.")
  if record and not tableau.dense_output:
    raise ValueError(f"A recorded solve needs a method with a dense output "
                     f"(b_mid, FSAL), e.g. dopri5; got {tableau.name!r}.")
  c = controller
  weights = c.weights(len(y0))
  dtype = y0[0].dtype
  span = tf.abs(t1 - t0)
  direction = tf.where(t1 >= t0, tf.ones([], dtype), -tf.ones([], dtype))
  f0 = list(fn(t0, y0))
  nfe = tf.constant(1, tf.int32)
  if first_step is not None:
    h = tf.cast(first_step, dtype)
  elif c.first_step is not None:
    h = tf.constant(c.first_step, dtype)
  else:
    h = _first_step(fn, t0, y0, f0, direction, span, weights, c,
                    tableau.order)
    nfe += 1
  h = tf.where(tf.math.is_finite(h) & (h > 0), h, 1e-3 * span)
  # The first stage is f at the step's start: with FSAL the last stage of
  # the step before, else one more evaluation after each accepted step.
  stage_evals = len(tableau.c) - 1
  exponent = -1.0 / tableau.order

  def cond(tau, h, y, k1, steps, nfe, status, rec):
    del h, y, k1, nfe, rec
    return (tau < span) & tf.equal(status, 0) & (steps < c.max_num_steps)

  def body(tau, h, y, k1, steps, nfe, status, rec):
    tau_old, y_old = tau, y
    last = h >= span - tau
    h_step = tf.minimum(h, span - tau)
    dt = direction * h_step
    y_new, ks, _ = tableaux.rk_step(fn, tableau, t0 + direction * tau, y, dt,
                                    k1=k1)
    err = tableaux.combine(None, dt, tableau.b_error, ks)
    ratio = error_norm(err, y, y_new, weights, c.rtol, c.atol)
    finite = tf.math.is_finite(ratio)
    accept = finite & (ratio <= 1.0)
    factor = c.safety * tf.pow(tf.maximum(ratio, 1e-10), exponent)
    factor = tf.clip_by_value(factor, c.min_factor, c.max_factor)
    factor = tf.where(accept, factor, tf.minimum(factor, 1.0))
    h_next = tf.where(finite, h_step * factor, h_step)
    # A last step clipped to the end keeps the unclipped proposal.
    h_next = tf.where(accept & last, tf.maximum(h_next, h), h_next)
    tau = tf.where(accept, tf.where(last, span, tau + h_step), tau)
    y = [tf.where(accept, a, b) for a, b in zip(y_new, y)]
    nfe += stage_evals
    if tableau.fsal:
      k1 = [tf.where(accept, a, b) for a, b in zip(ks[-1], k1)]
    else:
      t_new = t0 + direction * tau
      k1 = tf.cond(accept, lambda: list(fn(t_new, y)), lambda: list(k1))
      nfe += tf.cast(accept, tf.int32)
    status = tf.where(finite, status, STATUS["non_finite"])
    if not rec:
      return tau, h_next, y, k1, steps + 1, nfe, status, rec
    # Every attempt is written at its own index; the rejected ones are
    # dropped after the loop.
    polys = step_polynomial(tableau, y_old, y_new, ks, dt)
    flat = [accept, tau_old, h_step] + [x for p in polys for x in p]
    rec = [ta.write(steps, v) for ta, v in zip(rec, flat)]
    return tau, h_next, y, k1, steps + 1, nfe, status, rec

  rec = []
  if record:
    rec = [tf.TensorArray(tf.bool, size=0, dynamic_size=True),
           tf.TensorArray(dtype, size=0, dynamic_size=True),
           tf.TensorArray(dtype, size=0, dynamic_size=True)]
    rec += [tf.TensorArray(v.dtype, size=0, dynamic_size=True,
                           element_shape=v.shape)
            for v in y0 for _ in range(5)]
  loop_vars = (tf.zeros([], dtype), h, list(y0), f0,
               tf.constant(0, tf.int32), nfe, tf.constant(0, tf.int32), rec)
  tau, h, y, _, _, nfe, status, rec = tf.while_loop(
      cond, body, loop_vars, maximum_iterations=c.max_num_steps)
  status = tf.where(tf.equal(status, 0) & (tau < span),
                    STATUS["max_num_steps"], status)
  ok = tf.equal(status, STATUS["success"])
  nan = tf.constant(float("nan"), dtype)
  y = [tf.where(ok, v, nan) for v in y]
  if not record:
    return y, nfe, status, h
  keep = rec[0].stack()
  flat = [tf.boolean_mask(ta.stack(), keep) for ta in rec[1:]]
  return y, nfe, status, h, DenseOutput.from_tensors(flat)
