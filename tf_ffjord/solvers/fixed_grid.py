"""Integration on a fixed grid of equal steps: `ConstantStepSize` and its loop."""

from collections.abc import Sequence
import dataclasses

import tensorflow as tf

from tf_ffjord._types import OdeFn
from tf_ffjord.solvers import tableaux
from tf_ffjord.solvers.protocols import StepSizeController
from tf_ffjord.solvers.result import STATUS

__all__ = ["ConstantStepSize", "integrate_fixed"]


@dataclasses.dataclass(frozen=True)
class ConstantStepSize(StepSizeController):
  """Step-size controller of a fixed grid: `num_steps` equal steps.

  The loop is unrolled in Python, so the graph is fixed (XLA-friendly) and
  backprop through it is exact and cheap: the regime of RNODE-style training
  (RK4 at step 0.25).

  Args:
    num_steps: number of equal steps between the initial and final time.
  """
  num_steps: int = 4

  def __post_init__(self):
    if int(self.num_steps) < 1:
      raise ValueError(f"num_steps must be >= 1, got {self.num_steps}.")
    object.__setattr__(self, "num_steps", int(self.num_steps))

  def integrate(self, fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor,
                y0: Sequence[tf.Tensor], method: tableaux.Tableau,
                first_step: tf.Tensor | None = None,
                record: bool = False) -> tuple:
    """The fixed-grid loop (`integrate_fixed`); no first step, no record."""
    del first_step, record
    return integrate_fixed(fn, t0, t1, y0, method, self)


def integrate_fixed(
    fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor, y0: Sequence[tf.Tensor],
    tableau: tableaux.Tableau, controller: ConstantStepSize,
) -> tuple[list[tf.Tensor], tf.Tensor, tf.Tensor, tf.Tensor]:
  """Integrates dy/dt = fn(t, y) on a grid of `controller.num_steps` steps.

  Args:
    fn: `fn(t, y) -> dy/dt` on lists of tensors.
    t0: scalar tensor, the initial time.
    t1: scalar tensor, the final time (may be below t0).
    y0: list of state tensors.
    tableau: a `tableaux.Tableau`.
    controller: a `ConstantStepSize`.

  Returns:
    `(y1, nfe, status, h)`: the end state, the number of evaluations, the
    status (`NON_FINITE` if the end state holds NaN or inf, else `SUCCESS`;
    see `result.STATUS`) and the step size.
  """
  n = controller.num_steps
  h = (t1 - t0) / n
  y = list(y0)
  nfe = 0
  for i in range(n):
    y, _, evals = tableaux.rk_step(fn, tableau, t0 + i * h, y, h)
    nfe += evals
  finite = tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in y])
  status = tf.where(finite, STATUS["success"], STATUS["non_finite"])
  return y, tf.constant(nfe, tf.int32), status, tf.abs(h)
