"""What a solve returns: the `Result`, its status codes, and the check that raises on failure."""

from collections.abc import Sequence
from typing import Any, NamedTuple

import tensorflow as tf

__all__ = ["Result", "STATUS", "check_status"]

# Status of a solve, as in `Result.status`.
STATUS = {"success": 0, "max_num_steps": 1, "non_finite": 2}

class Result(NamedTuple):
  """Result of one ODE solve.

  Fields:
    state: the state at the final time, structured like the initial state
      (NaN where the solve failed under XLA, where no error can be raised).
    nfe: int32 scalar, evaluations of the dynamics in this (forward) solve.
    status: int32 scalar, a value of `STATUS`.
    last_step: the size of the last step (the proposed next one for adaptive
      solves), a scalar of the state's dtype.
  """
  state: Any
  nfe: tf.Tensor
  status: tf.Tensor
  last_step: tf.Tensor


def check_status(status: tf.Tensor, tensors: Sequence[tf.Tensor], what: str,
                 max_num_steps: int | None = None) -> list[tf.Tensor]:
  """Raises `InvalidArgumentError` on a failed solve; passes tensors through.

  The assertions are no-ops inside XLA clusters; there the NaN states the
  loops return are the signal.

  Args:
    status: int32 scalar, a value of `STATUS`.
    tensors: list of tensors to return once the check has run.
    what: which solve, for the message (`"forward"`, `"adjoint (backward)"`).
    max_num_steps: the step limit, named in the message.
  """
  limit = "" if max_num_steps is None else f"={max_num_steps}"
  checks = [
      tf.debugging.Assert(
          tf.not_equal(status, STATUS["max_num_steps"]),
          [f"The {what} ODE solve exceeded max_num_steps{limit}. The dynamics "
           "may be stiff or fast: loosen the tolerances (rtol/atol) or raise "
           "max_num_steps."]),
      tf.debugging.Assert(
          tf.not_equal(status, STATUS["non_finite"]),
          [f"The {what} ODE solve met NaN or inf in the dynamics or the "
           "state: check the inputs and the parameters (a diverging model "
           "may need a lower learning rate)."]),
  ]
  with tf.control_dependencies(checks):
    return [tf.identity(t) for t in tensors]
