"""ODE solvers split by idea: methods, step-size controllers, adjoints, one `solve`.

- `tableaux`: Butcher tableaux (`EULER`, `MIDPOINT`, `RK4`, `DOPRI5`) and the
  one stage combiner every method uses.
- `fixed_grid`: `ConstantStepSize` and the fixed-grid loop.
- `step_size`: `AdaptiveStepSize` (tolerances, error weights, Hairer's first
  step, the step limit) and the adaptive loop.
- `adjoint`: `BacksolveAdjoint` (seminorm adjoint), `InterpolatedAdjoint`
  (the state from the forward's dense output) and `Backprop`.
- `dense_output`: the forward solve's state between its steps (dopri5's
  continuous extension).
- `solve`: `solve(fn, y0, t0, t1, constants=, method=, controller=, adjoint=,
  jit_compile=)` -> `Result`; `solve_tfp` for a `tfp.math.ode.Solver`.
- `xla`: when compiling the solve with XLA pays (`use_xla`).

#### Examples

>>> s = make_solver("dopri5", rtol=1e-6, atol=1e-6)
>>> r = solve(lambda t, y: -y, tf.ones([3]), 0.0, 1.0, method=s.method,
...           controller=s.controller)
>>> round(float(r.state[0]), 5)
0.36788
"""

import collections

import tensorflow_probability as tfp

from tf_ffjord.solvers.adjoint import Backprop, BacksolveAdjoint
from tf_ffjord.solvers.adjoint import InterpolatedAdjoint
from tf_ffjord.solvers.fixed_grid import ConstantStepSize
from tf_ffjord.solvers.result import Result, STATUS
from tf_ffjord.solvers.solve import solve, solve_tfp
from tf_ffjord.solvers.step_size import AdaptiveStepSize
from tf_ffjord.solvers.tableaux import DOPRI5, EULER, METHODS, MIDPOINT, RK4
from tf_ffjord.solvers.tableaux import Tableau
from tf_ffjord.solvers.xla import use_xla

__all__ = [
    "solve", "solve_tfp", "Result", "STATUS", "Tableau", "EULER", "MIDPOINT",
    "RK4", "DOPRI5", "METHODS", "ConstantStepSize", "AdaptiveStepSize",
    "BacksolveAdjoint", "InterpolatedAdjoint", "Backprop", "Solver", "make_solver", "use_xla",
    "ADAPTIVE_SOLVERS", "FIXED_SOLVERS",
]

ADAPTIVE_SOLVERS = ("dopri5", "bdf")
FIXED_SOLVERS = ("rk4", "midpoint", "euler")


class Solver(collections.namedtuple("Solver", ["method", "controller"])):
  """A method and its step-size controller, as `make_solver` builds them."""
  __slots__ = ()

  @property
  def adaptive(self):
    return isinstance(self.controller, AdaptiveStepSize)


def make_solver(solver="dopri5", rtol=1e-5, atol=1e-5, max_num_steps=1000,
                step_size=0.25, first_step_size=None):
  """A solver from its name and the options `FFJORD` takes.

  Args:
    solver: `"dopri5"`, `"rk4"`, `"midpoint"`, `"euler"` (ours), `"bdf"`
      (`tfp.math.ode.BDF`; slow for training: it builds dense Jacobians), or a
      `tfp.math.ode.Solver` instance, returned as is.
    rtol: relative tolerance of the adaptive solvers.
    atol: absolute tolerance of the adaptive solvers.
    max_num_steps: step limit of the adaptive solvers (`None`: 100,000).
    step_size: step of the fixed-grid solvers on a unit time interval
      (`num_steps = round(1 / step_size)`).
    first_step_size: first trial step of `"dopri5"` on that unit interval;
      `None` chooses it from the dynamics.

  Returns:
    A `Solver` (method and controller), or a `tfp.math.ode.Solver`.

  Raises:
    ValueError: an unknown name or a non-positive tolerance or step.
    TypeError: neither a name nor a `tfp.math.ode.Solver`.
  """
  if isinstance(solver, tfp.math.ode.Solver):
    return solver
  if not isinstance(solver, str):
    raise TypeError(f"solver must be a name or a tfp.math.ode.Solver, got "
                    f"{type(solver).__name__}.")
  if solver in ADAPTIVE_SOLVERS:
    limit = 100_000 if max_num_steps is None else max_num_steps
    controller = AdaptiveStepSize(rtol=rtol, atol=atol, max_num_steps=limit,
                                  first_step=first_step_size)
    if solver == "bdf":
      return tfp.math.ode.BDF(rtol=rtol, atol=atol,
                              max_num_steps=max_num_steps)
    return Solver(DOPRI5, controller)
  if solver in FIXED_SOLVERS:
    if not step_size > 0:
      raise ValueError(f"step_size must be positive, got {step_size}.")
    return Solver(METHODS[solver],
                  ConstantStepSize(max(1, int(round(1.0 / step_size)))))
  raise ValueError(f"Unknown solver {solver!r}; expected one of "
                   f"{ADAPTIVE_SOLVERS + FIXED_SOLVERS} or a "
                   "tfp.math.ode.Solver instance.")
