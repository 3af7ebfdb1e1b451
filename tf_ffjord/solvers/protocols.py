"""The strategy protocols of a solve: `StepSizeController`, `Adjoint` and `ODESolver`.

A solve takes three small strategy objects, each an abstract class here that
a user may subclass:

- a `StepSizeController` runs the integration loop of one method
  (`integrate`): `ConstantStepSize` (a fixed grid), `AdaptiveStepSize`
  (steps from an error estimate), or your own (e.g. a grid of chosen times);
- an `Adjoint` differentiates the solve (`__call__` wraps the loop):
  `Backprop`, `BacksolveAdjoint`, `InterpolatedAdjoint`, or your own;
- an `ODESolver` is what `FFJORD` integrates with (`integrate`):
  `Solver(method, controller)`, the library's explicit Runge-Kutta methods,
  or `TFPSolver`, the adapter of a `tfp.math.ode.Solver`.

#### Examples

A fixed grid of chosen times, as a user's controller:

>>> from tf_ffjord.solvers import tableaux
>>> class Grid(StepSizeController):
...   def __init__(self, times):
...     self.times = times
...   def integrate(self, fn, t0, t1, y0, method, first_step=None,
...                 record=False):
...     y, nfe = list(y0), 0
...     for a, b in zip(self.times[:-1], self.times[1:]):
...       ta, tb = t0 + a * (t1 - t0), t0 + b * (t1 - t0)
...       y, _, n = tableaux.rk_step(fn, method, ta, y, tb - ta)
...       nfe += n
...     return y, tf.constant(nfe), tf.constant(0), tf.abs(t1 - t0)
>>> from tf_ffjord.solvers import Solver
>>> s = Solver("rk4", Grid([0.0, 0.25, 1.0]))
>>> r = s.integrate(lambda t, y: -y, tf.ones([2]), 0.0, 1.0)
>>> int(r.nfe)
8
"""

import abc
from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any, ClassVar, cast

import tensorflow as tf

from tf_ffjord._types import OdeFn

__all__ = ["StepSizeController", "AdaptiveController", "Adjoint",
           "ODESolver", "SolveOptions"]


class StepSizeController(abc.ABC):
  """How the steps of a solve are chosen: the integration loop of a method.

  Subclasses implement `integrate`. Set the class attribute `adaptive` (the
  steps follow an error estimate) and `dense_output` (`integrate` can
  `record` a dense output, which `InterpolatedAdjoint` reads) if true, and
  give a `max_num_steps` attribute if the loop has a step limit (error
  messages name it).
  """
  adaptive: ClassVar[bool] = False
  dense_output: ClassVar[bool] = False

  @abc.abstractmethod
  def integrate(self, fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor,
                y0: Sequence[tf.Tensor], method: Any,
                first_step: tf.Tensor | None = None,
                record: bool = False) -> tuple:
    """The loop: steps of `method` from t0 to t1 (t1 may be below t0).

    Args:
      fn: the time derivative: a list of tensors from `fn(t, y)`, `y` a
        list of tensors shaped like `y0`.
      t0: the start, and `t1` the end (scalar tensors); `y0` the state at t0.
      t1: see `t0`.
      y0: see `t0`.
      method: a `tableaux.Tableau`; `tableaux.rk_step` takes one step.
      first_step: an optional first trial step (the adjoint passes the
        forward solve's last one); a controller may ignore it.
      record: also return a dense output (only if `dense_output`).

    Returns:
      `(y1, nfe, status, h)`: the end state (a list), the number of
      evaluations and the status (int32 scalars, see `result.STATUS`) and
      the last step size; with `record`, a `DenseOutput` as fifth element.
    """

  def with_error_weights(self,
                         weights: Sequence[float]) -> "StepSizeController":
    """This controller with one error weight per state component.

    A solve calls it with 0 for components left out of step control
    (regularizer integrals); controllers without error control return
    themselves.
    """
    del weights
    return self


class AdaptiveController(StepSizeController):
  """Base of the dataclass controllers that the adaptive loop runs.

  `AdaptiveStepSize` is one; a subclass with other fields of the same names
  (`rtol`, `atol`, `error_weights`, `max_num_steps`, ...) runs the same
  loop (`step_size.integrate_adaptive`).
  """
  adaptive: ClassVar[bool] = True
  dense_output: ClassVar[bool] = True

  def integrate(self, fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor,
                y0: Sequence[tf.Tensor], method: Any,
                first_step: tf.Tensor | None = None,
                record: bool = False) -> tuple:
    # step_size.py imports this module for its class line.
    from tf_ffjord.solvers import step_size  # pylint: disable=g-import-not-at-top
    return step_size.integrate_adaptive(fn, t0, t1, y0, method,
                                        cast(Any, self), first_step=first_step,
                                        record=record)

  def with_error_weights(self,
                         weights: Sequence[float]) -> "StepSizeController":
    return dataclasses.replace(self, error_weights=tuple(weights))  # type: ignore[type-var]


class Adjoint(abc.ABC):
  """How a solve is differentiated.

  `__call__(run, fn, t0, t1, ys, cs, controller)` runs the forward solve
  through `run(fn, t0, t1, ys, cs, controller, first_step=None,
  record=False) -> (y1, nfe, status, h)` (the possibly XLA-compiled loop)
  and returns its `(y1, nfe, status, h)`, with whatever gradient it defines
  (a `tf.custom_gradient`, or none: autodiff then sees the loop, as under
  `Backprop`; subclass `Backprop` for that, so that adaptive loops run
  uncompiled, as TF's while-loop gradient needs). `run.backward` is the
  loop a backward solve should use.
  """

  @abc.abstractmethod
  def __call__(self, run: Callable[..., tuple], fn: OdeFn, t0: tf.Tensor,
               t1: tf.Tensor, ys: Sequence[tf.Tensor],
               cs: Sequence[tf.Tensor], controller: Any) -> tuple:
    """Runs the forward solve; returns `(y1, nfe, status, h)`."""

  def with_backward_nfe(self, callback: Callable[[tf.Tensor], Any]
                        ) -> "Adjoint":
    """This adjoint reporting its backward NFE to `callback`.

    Adjoints with an `on_backward_nfe` dataclass field left `None` get the
    callback there; others are returned as they are.
    """
    if (dataclasses.is_dataclass(self) and "on_backward_nfe" in {
        f.name for f in dataclasses.fields(self)}
        and getattr(self, "on_backward_nfe") is None):
      return dataclasses.replace(self, on_backward_nfe=callback)  # type: ignore[type-var]
    return self


@dataclasses.dataclass(frozen=True)
class SolveOptions:
  """What one solve asks of an `ODESolver.integrate` besides the ODE.

  A solver uses what applies to it and ignores the rest (a TFP solver
  has its own adjoint and no XLA loop).

  Attributes:
    adjoint: the `Adjoint` of this solve (`None`: the solver's default).
    error_weights: one weight per flattened state component (0: out of
      step control), for adaptive steps.
    jit_compile: XLA-compile the forward loop.
    jit_compile_backward: the same for a backward loop (`None`: follow
      `jit_compile`).
    nfe_backward: an int32 variable that receives the NFE of the gradient's
      backward solve.
  """
  adjoint: Adjoint | None = None
  error_weights: tuple[float, ...] | None = None
  jit_compile: bool = False
  jit_compile_backward: bool | None = None
  nfe_backward: tf.Variable | None = None


class ODESolver(abc.ABC):
  """What `FFJORD` integrates with: `integrate` solves an ODE over [t0, t1].

  Attributes:
    adaptive: whether steps follow an error estimate.
    dense_output: whether adaptive solves record a dense output (for
      `InterpolatedAdjoint`).
    own_adjoint: the solver differentiates itself (a TFP solver): it takes
      no `Adjoint` and only the adjoint names `"auto"` and `"adjoint"`.
  """
  own_adjoint: ClassVar[bool] = False

  @property
  @abc.abstractmethod
  def adaptive(self) -> bool:
    """Whether steps follow an error estimate."""

  @property
  def dense_output(self) -> bool:
    """Whether adaptive solves can record a dense output."""
    return False

  @abc.abstractmethod
  def integrate(self, fn: Callable[..., Any], y0: Any, t0: Any, t1: Any,
                constants: Mapping[str, tf.Tensor] | None = None,
                options: SolveOptions = SolveOptions()) -> Any:
    """Solves dy/dt = fn(t, y, **constants) from t0 to t1; returns a `Result`.

    Args:
      fn: the dynamics; `y` has the structure of `y0`.
      y0: the initial state (a nest of float tensors of one dtype).
      t0: initial time (a float or a scalar tensor).
      t1: final time.
      constants: tensors passed to `fn` as keyword arguments (they receive
        gradients).
      options: the `SolveOptions` of this solve.
    """

  def replace(self, **options: Any) -> "ODESolver":
    """This solver with other loose options (`rtol`, `step_size`, ...).

    Options that do not apply to it are ignored (as `make_solver` ignores
    `rtol` for a fixed grid); the default keeps the solver as it is.
    """
    del options
    return self
