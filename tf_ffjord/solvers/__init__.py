"""ODE solvers split by idea: methods, step-size controllers, adjoints, one `solve`.

- `tableaux`: `Tableau`, an explicit Runge-Kutta method from its Butcher
  tableau alone (`EULER`, `MIDPOINT`, `RK4`, `BOSH3`, `DOPRI5`, `TSIT5`, or
  your own), and the one stage combiner every method uses.
- `protocols`: the strategy protocols, abstract classes a user may
  subclass: `StepSizeController`, `Adjoint`, and `ODESolver` (what FFJORD
  integrates with: `integrate(fn, y0, t0, t1, ...)` -> `Result`).
- `solver`: `Solver(method, controller)`, the library's `ODESolver`;
  `make_solver`, the one translation of names and loose options (`rtol`,
  `step_size`, ...) into a solver; `choose_adjoint`, which adjoint a solve
  takes.
- `tfp_solver`: `TFPSolver`, a `tfp.math.ode.Solver` as an `ODESolver`
  (TFP's adjoint, its backward NFE count, empty states); `solve_tfp`.
- `fixed_grid`: `ConstantStepSize` and the fixed-grid loop.
- `step_size`: `AdaptiveStepSize` (tolerances, error weights, Hairer's first
  step, the step limit) and the adaptive loop.
- `adjoint`: `BacksolveAdjoint` (seminorm adjoint), `InterpolatedAdjoint`
  (the state from the forward's dense output) and `Backprop`.
- `dense_output`: the forward solve's state between its steps (the
  continuous extension of methods with `b_mid`, e.g. dopri5).
- `result`: `Result`, its `STATUS` codes and `check_status`.
- `solve`: `solve(fn, y0, t0, t1, constants=, method=, controller=, adjoint=,
  jit_compile=)` -> `Result`.
- `xla`: when compiling the solve with XLA pays (`use_xla`).

#### Examples

>>> s = make_solver("dopri5", rtol=1e-6, atol=1e-6)
>>> r = solve(lambda t, y: -y, tf.ones([3]), 0.0, 1.0, method=s.method,
...           controller=s.controller)
>>> round(float(r.state[0]), 5)
0.36788
"""

from tf_ffjord.solvers.adjoint import Backprop, BacksolveAdjoint
from tf_ffjord.solvers.adjoint import InterpolatedAdjoint
from tf_ffjord.solvers.fixed_grid import ConstantStepSize
from tf_ffjord.solvers.result import Result, STATUS, check_status
from tf_ffjord.solvers.protocols import Adjoint, ODESolver
from tf_ffjord.solvers.protocols import SolveOptions, StepSizeController
from tf_ffjord.solvers.solve import solve
from tf_ffjord.solvers.solver import ADAPTIVE_SOLVERS, FIXED_SOLVERS
from tf_ffjord.solvers.solver import GRADIENTS, SOLVER_OPTIONS, Solver
from tf_ffjord.solvers.solver import choose_adjoint, make_solver
from tf_ffjord.solvers.tfp_solver import TFPSolver, solve_tfp
from tf_ffjord.solvers.step_size import AdaptiveStepSize
from tf_ffjord.solvers.tableaux import BOSH3, DOPRI5, EULER, METHODS
from tf_ffjord.solvers.tableaux import MIDPOINT, RK4, TSIT5, Tableau
from tf_ffjord.solvers.xla import use_xla

__all__ = [
    "solve", "solve_tfp", "Result", "STATUS", "check_status", "Tableau",
    "EULER", "MIDPOINT", "RK4", "BOSH3", "DOPRI5", "TSIT5", "METHODS",
    "ConstantStepSize", "AdaptiveStepSize", "BacksolveAdjoint",
    "InterpolatedAdjoint", "Backprop", "Solver", "make_solver",
    "choose_adjoint", "use_xla", "ADAPTIVE_SOLVERS", "FIXED_SOLVERS",
    "GRADIENTS", "SOLVER_OPTIONS", "StepSizeController", "Adjoint",
    "ODESolver", "TFPSolver", "SolveOptions",
]
