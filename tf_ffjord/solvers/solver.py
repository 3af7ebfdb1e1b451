"""`Solver(method, controller)`, the names that stand for one (`make_solver`), and the adjoint rule (`choose_adjoint`)."""

import collections

import tensorflow_probability as tfp

from tf_ffjord.solvers import tableaux
from tf_ffjord.solvers import xla
from tf_ffjord.solvers.adjoint import Backprop, BacksolveAdjoint
from tf_ffjord.solvers.adjoint import InterpolatedAdjoint
from tf_ffjord.solvers.fixed_grid import ConstantStepSize
from tf_ffjord.solvers.step_size import AdaptiveStepSize
from tf_ffjord.solvers.tableaux import Tableau

__all__ = ["Solver", "make_solver", "choose_adjoint", "ADAPTIVE_SOLVERS",
           "FIXED_SOLVERS", "GRADIENTS"]

# Names `make_solver` (and `FFJORD(solver=...)`) take; "bdf" is TFP's.
ADAPTIVE_SOLVERS = ("dopri5", "tsit5", "bosh3", "bdf")
FIXED_SOLVERS = ("rk4", "midpoint", "euler")
GRADIENTS = ("auto", "adjoint", "interpolated", "backprop")


class Solver(collections.namedtuple("Solver", ["method", "controller"])):
  """An explicit Runge-Kutta method and its step-size controller.

  Args:
    method: a `Tableau` (the library's, e.g. `TSIT5`, or one of your own)
      or a method name (`"dopri5"`, `"tsit5"`, `"bosh3"`, `"rk4"`,
      `"midpoint"`, `"euler"`).
    controller: `AdaptiveStepSize(rtol=, atol=, max_num_steps=, ...)` or
      `ConstantStepSize(num_steps)` (steps on FFJORD's unit interval);
      `None` picks `AdaptiveStepSize()` for a method with an error estimate
      and `ConstantStepSize()` (4 steps) for the others.

  Raises:
    TypeError: a method that is no `Tableau`, or another controller.
    ValueError: an unknown method name, or adaptive steps with a method
      that has no error estimate (`b_error`).

  #### Examples

  >>> s = Solver(tableaux.TSIT5, AdaptiveStepSize(rtol=1e-6, atol=1e-6))
  >>> s.adaptive, s.dense_output
  (True, True)
  >>> Solver("rk4", ConstantStepSize(8)).controller.num_steps
  8
  """
  __slots__ = ()

  def __new__(cls, method: Tableau | str,
              controller: AdaptiveStepSize | ConstantStepSize | None = None,
              ) -> "Solver":
    if isinstance(method, str):
      if method not in tableaux.METHODS:
        raise ValueError(f"Unknown method {method!r}; expected one of "
                         f"{sorted(tableaux.METHODS)} or a Tableau.")
      method = tableaux.METHODS[method]
    if not isinstance(method, tableaux.Tableau):
      raise TypeError(f"Solver method must be a Tableau or a method name, "
                      f"got {type(method).__name__}.")
    if controller is None:
      controller = (AdaptiveStepSize() if method.embedded
                    else ConstantStepSize())
    if not isinstance(controller, (AdaptiveStepSize, ConstantStepSize)):
      raise TypeError(f"Solver controller must be AdaptiveStepSize or "
                      f"ConstantStepSize, got {type(controller).__name__}.")
    if isinstance(controller, AdaptiveStepSize) and not method.embedded:
      raise ValueError(
          f"Adaptive steps need a method with an error estimate (b_error); "
          f"{method.name!r} has none. Use ConstantStepSize(num_steps), or a "
          "method such as dopri5, tsit5 or bosh3.")
    return super().__new__(cls, method, controller)

  @property
  def adaptive(self) -> bool:
    """Whether its steps are chosen by an error estimate."""
    return isinstance(self.controller, AdaptiveStepSize)

  @property
  def dense_output(self) -> bool:
    """Whether its adaptive solves have a dense output (for `InterpolatedAdjoint`)."""
    return self.adaptive and self.method.dense_output


def make_solver(
    solver: str | Tableau | Solver | tfp.math.ode.Solver = "dopri5",
    rtol: float = 1e-5, atol: float = 1e-5, max_num_steps: int | None = 1000,
    step_size: float = 0.25, first_step_size: float | None = None,
) -> Solver | tfp.math.ode.Solver:
  """A solver from a name, a tableau, or a solver object.

  The loose options (`rtol`, `atol`, `max_num_steps`, `step_size`,
  `first_step_size`) build the controller of a name or a bare `Tableau`
  only; a `Solver` or a `tfp.math.ode.Solver` carries its own and is
  returned as is.

  Args:
    solver: a name: `"dopri5"`, `"tsit5"`, `"bosh3"` (adaptive), `"rk4"`,
      `"midpoint"`, `"euler"` (fixed grid), `"bdf"` (`tfp.math.ode.BDF`;
      slow for training: it builds dense Jacobians); a `Tableau` (adaptive
      if it has an error estimate, else fixed grid); a `Solver`; or a
      `tfp.math.ode.Solver` instance.
    rtol: relative tolerance of adaptive steps.
    atol: absolute tolerance of adaptive steps.
    max_num_steps: step limit of adaptive steps (`None`: 100,000).
    step_size: step of fixed grids on a unit time interval
      (`num_steps = round(1 / step_size)`).
    first_step_size: first trial step of adaptive steps on that unit
      interval; `None` chooses it from the dynamics.

  Returns:
    A `Solver` (method and controller), or a `tfp.math.ode.Solver`.

  Raises:
    ValueError: an unknown name or a non-positive tolerance or step.
    TypeError: none of the above.

  #### Examples

  >>> make_solver("tsit5", rtol=1e-4).controller.rtol
  0.0001
  >>> make_solver("rk4", step_size=0.5).controller.num_steps
  2
  """
  if isinstance(solver, (Solver, tfp.math.ode.Solver)):
    return solver
  if solver == "bdf":
    return tfp.math.ode.BDF(rtol=rtol, atol=atol, max_num_steps=max_num_steps)
  if isinstance(solver, str):
    if solver not in ADAPTIVE_SOLVERS + FIXED_SOLVERS:
      raise ValueError(f"Unknown solver {solver!r}; expected one of "
                       f"{ADAPTIVE_SOLVERS + FIXED_SOLVERS}, a Tableau, a "
                       "Solver or a tfp.math.ode.Solver instance.")
    solver = tableaux.METHODS[solver]
  if not isinstance(solver, tableaux.Tableau):
    raise TypeError(f"solver must be a name, a Tableau, a Solver or a "
                    f"tfp.math.ode.Solver, got {type(solver).__name__}.")
  if solver.embedded:
    limit = 100_000 if max_num_steps is None else max_num_steps
    return Solver(solver, AdaptiveStepSize(
        rtol=rtol, atol=atol, max_num_steps=limit, first_step=first_step_size))
  if not step_size > 0:
    raise ValueError(f"step_size must be positive, got {step_size}.")
  return Solver(solver, ConstantStepSize(max(1, int(round(1.0 / step_size)))))


def choose_adjoint(
    solver: Solver | tfp.math.ode.Solver, gradient: str = "auto",
    xla_loop: bool = False,
) -> type[Backprop | BacksolveAdjoint | InterpolatedAdjoint] | None:
  """The adjoint class that differentiates a solve with `solver`.

  - `"backprop"`: `Backprop` (through the solver's operations).
  - `"adjoint"`: `BacksolveAdjoint`.
  - `"interpolated"`: `InterpolatedAdjoint`; needs adaptive steps with a
    dense output (`Solver.dense_output`, e.g. dopri5).
  - `"auto"`: `Backprop` on fixed grids; on adaptive steps
    `InterpolatedAdjoint` where the method has a dense output, the forward
    loop runs plain (`xla_loop=False`) and no XLA compile surrounds the
    solve (its recording loop cannot be compiled), else `BacksolveAdjoint`.

  A `tfp.math.ode.Solver` is differentiated by TFP's own adjoint: the answer
  is `None`, and only `"auto"` and `"adjoint"` are allowed.

  Args:
    solver: a `Solver` or a `tfp.math.ode.Solver`.
    gradient: one of `GRADIENTS`.
    xla_loop: whether the forward loop is XLA-compiled.

  Returns:
    `Backprop`, `BacksolveAdjoint`, `InterpolatedAdjoint` or `None`.

  Raises:
    ValueError: an unknown gradient, or one the solver cannot take.

  #### Examples

  >>> choose_adjoint(make_solver("rk4")).__name__
  'Backprop'
  >>> choose_adjoint(make_solver("bosh3")).__name__
  'BacksolveAdjoint'
  """
  if gradient not in GRADIENTS:
    raise ValueError(f"Unknown gradient {gradient!r}; expected one of "
                     f"{GRADIENTS}.")
  if not isinstance(solver, Solver):
    if gradient not in ("auto", "adjoint"):
      raise ValueError(f"gradient={gradient!r} needs one of tf_ffjord's "
                       "solvers; a tfp.math.ode.Solver differentiates by its "
                       "own adjoint (use gradient='adjoint').")
    return None
  if gradient == "backprop" or (gradient == "auto" and not solver.adaptive):
    return Backprop
  if gradient == "interpolated":
    if not solver.dense_output:
      raise ValueError(
          f"gradient='interpolated' reads the state from a dense output: it "
          f"needs adaptive steps and a method with b_mid (e.g. dopri5), got "
          f"{solver.method.name!r} with {type(solver.controller).__name__}.")
    return InterpolatedAdjoint
  if (gradient == "auto" and solver.dense_output and not xla_loop
      and not xla.in_xla_context()):
    return InterpolatedAdjoint
  return BacksolveAdjoint
