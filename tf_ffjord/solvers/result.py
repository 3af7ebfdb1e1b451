"""What a solve returns: the `Result` and its status codes."""

import collections

__all__ = ["Result", "STATUS"]

# Status of a solve, as in `Result.status`.
STATUS = {"success": 0, "max_num_steps": 1, "non_finite": 2}

Result = collections.namedtuple("Result", ["state", "nfe", "status",
                                           "last_step"])
Result.__doc__ = """Result of one ODE solve.

Fields:
  state: the state at the final time, structured like the initial state
    (NaN where the solve failed under XLA, where no error can be raised).
  nfe: int32 scalar, evaluations of the dynamics in this (forward) solve.
  status: int32 scalar, a value of `STATUS`.
  last_step: the size of the last step (the proposed next one for adaptive
    solves), a scalar of the state's dtype.
"""
