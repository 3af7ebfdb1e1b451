"""Dense output of an adaptive solve: per step, the quartic through its ends, end slopes and midpoint."""

from collections.abc import Sequence

import tensorflow as tf

from tf_ffjord.solvers import tableaux

__all__ = ["step_polynomial", "DenseOutput"]


def step_polynomial(tableau: tableaux.Tableau, y0: Sequence[tf.Tensor],
                    y1: Sequence[tf.Tensor],
                    ks: Sequence[Sequence[tf.Tensor]],
                    dt: tf.Tensor) -> list[list[tf.Tensor]]:
  """The coefficients of one step's interpolant, lowest power first.

  With theta in [0, 1] across the step, the interpolant is
  `p(theta) = sum_j coeffs[j] theta^j`: the quartic with p(0) = y0,
  p(1) = y1, p'(0) = dt f(y0), p'(1) = dt f(y1) and, at theta = 1/2, the
  method's 4th-order midpoint value (`tableau.b_mid`). For dopri5 that is
  Shampine's continuous extension (tsit5 has one too), accurate to the order of the embedded
  error estimate that controls the step.

  Args:
    tableau: an FSAL `Tableau` with `b_mid` (dopri5, tsit5).
    y0: list of state tensors at the start of the step.
    y1: list of state tensors at its end.
    ks: the step's stages (the last is f at y1).
    dt: the signed step.

  Returns:
    A list over state components of 5-lists of tensors.
  """
  if tableau.b_mid is None or not tableau.fsal:
    raise ValueError(f"Dense output needs an FSAL method with midpoint "
                     f"weights (b_mid, e.g. dopri5), got {tableau.name!r}.")
  mid = tableaux.combine(y0, dt, tableau.b_mid, ks)
  out = []
  for j, (a, b, m) in enumerate(zip(y0, y1, mid)):
    f0, f1 = dt * ks[0][j], dt * ks[-1][j]
    d1, d2, d3 = b - a - f0, f1 - f0, m - a - 0.5 * f0
    # The theta^4, theta^3, theta^2 coefficients solve p(1) = y1,
    # p'(1) = dt f1 and p(1/2) = mid.
    out.append([a, f0, -5.0 * d1 + d2 + 16.0 * d3,
                14.0 * d1 - 3.0 * d2 - 32.0 * d3,
                -8.0 * d1 + 2.0 * d2 + 16.0 * d3])
  return out


class DenseOutput:
  """The state of a finished solve at any time between its ends.

  Built from the accepted steps of `integrate_adaptive(..., record=True)`.
  Times are given as offsets `tau = |t - t0|` from the solve's start, so one
  object serves solves in either direction.

  Args:
    starts: `[steps]` offsets of the accepted steps' starts (increasing).
    spans: `[steps]` their lengths (positive).
    coeffs: per state component, 5 tensors `[steps, *shape]`
      (`step_polynomial`, stacked over the steps).
  """

  def __init__(self, starts: tf.Tensor, spans: tf.Tensor,
               coeffs: Sequence[Sequence[tf.Tensor]]) -> None:
    self.starts, self.spans, self.coeffs = starts, spans, coeffs

  def __call__(self, tau: tf.Tensor) -> list[tf.Tensor]:
    """The interpolated state (a list of tensors) at offset `tau`."""
    n = tf.shape(self.starts)[0]
    i = tf.reduce_sum(tf.cast(self.starts <= tau, tf.int32)) - 1
    i = tf.clip_by_value(i, 0, tf.maximum(n - 1, 0))
    theta = (tau - tf.gather(self.starts, i)) / tf.gather(self.spans, i)
    out = []
    for comp in self.coeffs:
      c = [tf.gather(x, i) for x in comp]
      out.append(c[0] + theta * (c[1] + theta * (c[2] + theta * (
          c[3] + theta * c[4]))))
    return out

  def tensors(self) -> list[tf.Tensor]:
    """Every tensor it holds, flat (to pass into compiled functions)."""
    return [self.starts, self.spans] + [x for comp in self.coeffs
                                        for x in comp]

  @classmethod
  def from_tensors(cls, tensors: Sequence[tf.Tensor]) -> "DenseOutput":
    """Inverse of `tensors`."""
    rest = list(tensors[2:])
    return cls(tensors[0], tensors[1],
               [rest[k:k + 5] for k in range(0, len(rest), 5)])
