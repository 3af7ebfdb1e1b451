"""`Solver(method, controller)`, the names that stand for a solver (`make_solver`), and the adjoint rule (`choose_adjoint`)."""

import collections
from collections.abc import Callable, Mapping
import dataclasses
from typing import Any, cast

import tensorflow as tf

from tf_ffjord.solvers import tableaux
from tf_ffjord.solvers import tfp_solver
from tf_ffjord.solvers import xla
from tf_ffjord.solvers.adjoint import Backprop, BacksolveAdjoint
from tf_ffjord.solvers.adjoint import InterpolatedAdjoint
from tf_ffjord.solvers.fixed_grid import ConstantStepSize
from tf_ffjord.solvers.protocols import Adjoint, ODESolver, SolveOptions
from tf_ffjord.solvers.protocols import StepSizeController
from tf_ffjord.solvers.result import Result
from tf_ffjord.solvers.solve import method_and_controller, solve
from tf_ffjord.solvers.step_size import AdaptiveStepSize  # (doctests)
from tf_ffjord.solvers.tableaux import Tableau

__all__ = ["Solver", "make_solver", "choose_adjoint", "ADAPTIVE_SOLVERS",
           "FIXED_SOLVERS", "GRADIENTS", "SOLVER_OPTIONS"]

# Names `make_solver` (and `FFJORD(solver=...)`) take; "bdf" is TFP's.
ADAPTIVE_SOLVERS = ("dopri5", "tsit5", "bosh3", "bdf")
FIXED_SOLVERS = ("rk4", "midpoint", "euler")
# Adjoint names (`FFJORD(adjoint=...)` shorthands, `choose_adjoint`).
GRADIENTS = ("auto", "adjoint", "interpolated", "backprop")
# The loose options `make_solver` and `Solver.replace` take.
SOLVER_OPTIONS = ("rtol", "atol", "max_num_steps", "step_size",
                  "first_step_size")
_CONTROLLER_FIELDS = {"rtol": "rtol", "atol": "atol",
                      "max_num_steps": "max_num_steps",
                      "first_step_size": "first_step"}


def _check_options(options):
  unknown = sorted(set(options) - set(SOLVER_OPTIONS))
  if unknown:
    raise TypeError(f"Unknown solver options {unknown}; expected some of "
                    f"{SOLVER_OPTIONS}.")


class Solver(collections.namedtuple("Solver", ["method", "controller"]),
             ODESolver):
  """An explicit Runge-Kutta method and its step-size controller.

  Args:
    method: a `Tableau` (the library's, e.g. `TSIT5`, or one of your own)
      or a method name (`"dopri5"`, `"tsit5"`, `"bosh3"`, `"rk4"`,
      `"midpoint"`, `"euler"`).
    controller: a `StepSizeController`: `AdaptiveStepSize(rtol=, atol=,
      max_num_steps=, ...)`, `ConstantStepSize(num_steps)` (steps on
      FFJORD's unit interval) or your own subclass; `None` picks
      `AdaptiveStepSize()` for a method with an error estimate and
      `ConstantStepSize()` (4 steps) for the others.

  Raises:
    TypeError: a method that is no `Tableau`, or a controller that is no
      `StepSizeController`.
    ValueError: an unknown method name, or adaptive steps with a method
      that has no error estimate (`b_error`).

  #### Examples

  >>> s = Solver(tableaux.TSIT5, AdaptiveStepSize(rtol=1e-6, atol=1e-6))
  >>> s.adaptive, s.dense_output
  (True, True)
  >>> Solver("rk4", ConstantStepSize(8)).controller.num_steps
  8
  >>> s.replace(rtol=1e-3).controller.rtol
  0.001
  """
  __slots__ = ()

  def __new__(cls, method: Tableau | str,
              controller: StepSizeController | None = None,
              ) -> "Solver":
    return super().__new__(cls, *method_and_controller(method, controller))

  @property
  def adaptive(self) -> bool:
    """Whether its steps are chosen by an error estimate."""
    return self.controller.adaptive

  @property
  def dense_output(self) -> bool:
    """Whether its adaptive solves have a dense output (for `InterpolatedAdjoint`)."""
    return (self.adaptive and self.controller.dense_output
            and self.method.dense_output)

  def replace(self, **options: Any) -> "Solver":
    """This solver with other loose options (see `make_solver`).

    `rtol`, `atol`, `max_num_steps` and `first_step_size` set the fields of
    a dataclass controller that has them, `step_size` the number of steps
    of a `ConstantStepSize`; options that do not apply are ignored.

    Raises:
      TypeError: an unknown option.
    """
    _check_options(options)
    controller = self.controller
    if isinstance(controller, ConstantStepSize):
      if "step_size" in options:
        controller = ConstantStepSize(_num_steps(options["step_size"]))
    elif dataclasses.is_dataclass(controller):
      names = {f.name for f in dataclasses.fields(controller)}
      fields = {_CONTROLLER_FIELDS[k]: v for k, v in options.items()
                if _CONTROLLER_FIELDS.get(k) in names}
      if fields.get("max_num_steps", 0) is None:
        fields["max_num_steps"] = 100_000
      controller = dataclasses.replace(cast(Any, controller), **fields)
    if controller == self.controller:
      return self
    return Solver(self.method, controller)

  def integrate(self, fn: Callable[..., Any], y0: Any, t0: Any, t1: Any,
                constants: Mapping[str, tf.Tensor] | None = None,
                options: SolveOptions = SolveOptions()) -> Result:
    """Solves with this method and controller (`solve`; see `ODESolver`)."""
    controller, adjoint = self.controller, options.adjoint
    if options.error_weights is not None:
      controller = controller.with_error_weights(options.error_weights)
    if adjoint is not None and options.nfe_backward is not None:
      adjoint = adjoint.with_backward_nfe(options.nfe_backward.assign)
    return solve(fn, y0, t0, t1, constants=constants, method=self.method,
                 controller=controller, adjoint=adjoint,
                 jit_compile=options.jit_compile,
                 jit_compile_backward=options.jit_compile_backward)


def _describe(solver):
  method = getattr(solver, "method", None)
  if method is None:
    return type(solver).__name__
  return (f"{getattr(method, 'name', method)!r} with "
          f"{type(solver.controller).__name__}")


def _num_steps(step_size):
  if not step_size > 0:
    raise ValueError(f"step_size must be positive, got {step_size}.")
  return max(1, int(round(1.0 / step_size)))


# An option not given to `make_solver` (None is a value: no step limit).
_UNSET: Any = object()


def make_solver(solver: Any = "dopri5", *, rtol: float = _UNSET,
                atol: float = _UNSET, max_num_steps: int | None = _UNSET,
                step_size: float = _UNSET,
                first_step_size: float | None = _UNSET) -> ODESolver:
  """A solver from a name, a tableau, or a solver object, with loose options.

  The one translation of loose solve options into a solver object: a name
  or a bare `Tableau` is built with them (defaults: `rtol` = `atol` = 1e-5,
  `max_num_steps` 1000, `step_size` 0.25); a `Solver` takes them through
  `Solver.replace`; a `tfp.math.ode.Solver` is wrapped in a `TFPSolver`
  (its own tolerances kept). Options of another kind of solver (`rtol` for
  a fixed grid, `step_size` for adaptive steps) are ignored.

  Args:
    solver: a name: `"dopri5"`, `"tsit5"`, `"bosh3"` (adaptive), `"rk4"`,
      `"midpoint"`, `"euler"` (fixed grid), `"bdf"` (`tfp.math.ode.BDF`;
      slow for training: it builds dense Jacobians); a `Tableau` (adaptive
      if it has an error estimate, else fixed grid); a `Solver`; any
      `ODESolver` (e.g. a `TFPSolver`); or a `tfp.math.ode.Solver`.
    rtol: relative tolerance of adaptive steps.
    atol: absolute tolerance of adaptive steps.
    max_num_steps: their step limit (`None`: 100,000).
    step_size: step of fixed grids on a unit time interval (`num_steps =
      round(1 / step_size)`).
    first_step_size: first trial step of adaptive steps (`None` chooses it
      from the dynamics).

  Returns:
    An `ODESolver`: a `Solver` (method and controller) or a `TFPSolver`.

  Raises:
    ValueError: an unknown name or a non-positive tolerance or step.
    TypeError: an unknown option, or a solver of none of the kinds above.

  #### Examples

  >>> make_solver("tsit5", rtol=1e-4).controller.rtol
  0.0001
  >>> make_solver("rk4", step_size=0.5).controller.num_steps
  2
  >>> make_solver(make_solver("dopri5"), atol=1e-7).controller.atol
  1e-07
  """
  given = dict(rtol=rtol, atol=atol, max_num_steps=max_num_steps,
               step_size=step_size, first_step_size=first_step_size)
  options: dict[str, Any] = {k: v for k, v in given.items()
                            if v is not _UNSET}
  if isinstance(solver, ODESolver):
    return solver.replace(**options)
  tfp_wrapped = tfp_solver.adapt(solver)
  if tfp_wrapped is not None:
    return tfp_wrapped
  if solver == "bdf":
    return tfp_solver.TFPSolver.named("bdf", **options)
  if isinstance(solver, str):
    if solver not in ADAPTIVE_SOLVERS + FIXED_SOLVERS:
      raise ValueError(f"Unknown solver {solver!r}; expected one of "
                       f"{ADAPTIVE_SOLVERS + FIXED_SOLVERS}, a Tableau, a "
                       "Solver or a tfp.math.ode.Solver instance.")
    solver = tableaux.METHODS[solver]
  if not isinstance(solver, tableaux.Tableau):
    raise TypeError(f"solver must be a name, a Tableau, a Solver (or another "
                    f"solvers.ODESolver) or a tfp.math.ode.Solver, got "
                    f"{type(solver).__name__}.")
  defaults = {"rtol": 1e-5, "atol": 1e-5, "max_num_steps": 1000,
              "step_size": 0.25, "first_step_size": None}
  return Solver(solver).replace(**{**defaults, **options})


def choose_adjoint(
    solver: ODESolver, adjoint: str | Adjoint = "auto",
    xla_loop: bool = False,
) -> type[Adjoint] | Adjoint | None:
  """The adjoint that differentiates a solve with `solver`.

  - an `Adjoint` instance (yours, or a configured built-in): itself,
    checked against the solver.
  - `"backprop"`: `Backprop` (through the solver's operations).
  - `"adjoint"`: `BacksolveAdjoint`.
  - `"interpolated"`: `InterpolatedAdjoint`; needs adaptive steps with a
    dense output (`Solver.dense_output`, e.g. dopri5).
  - `"auto"`: `Backprop` on fixed grids; on adaptive steps
    `InterpolatedAdjoint` where the method has a dense output, the forward
    loop runs plain (`xla_loop=False`) and no XLA compile surrounds the
    solve (its recording loop cannot be compiled), else `BacksolveAdjoint`.

  A solver with `own_adjoint` (a `TFPSolver`) is differentiated by its own
  adjoint: the answer is `None`, and only `"auto"` and `"adjoint"` are
  allowed.

  Args:
    solver: an `ODESolver` (e.g. from `make_solver`).
    adjoint: an `Adjoint`, or one of `GRADIENTS`.
    xla_loop: whether the forward loop is XLA-compiled.

  Returns:
    The `Adjoint` instance given, a class (`Backprop`, `BacksolveAdjoint`,
    `InterpolatedAdjoint`) for a name, or `None`.

  Raises:
    ValueError: an unknown name, or an adjoint the solver cannot take.
    TypeError: an adjoint that is neither a name nor an `Adjoint`.

  #### Examples

  >>> choose_adjoint(make_solver("rk4")).__name__
  'Backprop'
  >>> choose_adjoint(make_solver("bosh3")).__name__
  'BacksolveAdjoint'
  """
  if not isinstance(adjoint, (str, Adjoint)):
    raise TypeError(f"adjoint must be a solvers.Adjoint or one of "
                    f"{GRADIENTS}, got {type(adjoint).__name__}.")
  if isinstance(adjoint, str) and adjoint not in GRADIENTS:
    raise ValueError(f"Unknown adjoint {adjoint!r}; expected one of "
                     f"{GRADIENTS} or a solvers.Adjoint.")
  if solver.own_adjoint:
    if adjoint not in ("auto", "adjoint"):
      raise ValueError(f"adjoint={adjoint!r} needs one of tf_ffjord's "
                       "solvers; a tfp.math.ode.Solver differentiates by its "
                       "own adjoint (use adjoint='adjoint').")
    return None
  if adjoint == "interpolated" or isinstance(adjoint, InterpolatedAdjoint):
    if not solver.dense_output:
      raise ValueError(
          f"The interpolated adjoint reads the state from a dense output: it "
          f"needs adaptive steps and a method with b_mid (e.g. dopri5), got "
          f"{_describe(solver)}.")
  if isinstance(adjoint, Adjoint):
    return adjoint
  if adjoint == "interpolated":
    return InterpolatedAdjoint
  if adjoint == "backprop" or (adjoint == "auto" and not solver.adaptive):
    return Backprop
  if (adjoint == "auto" and solver.dense_output and not xla_loop
      and not xla.in_xla_context()):
    return InterpolatedAdjoint
  return BacksolveAdjoint
