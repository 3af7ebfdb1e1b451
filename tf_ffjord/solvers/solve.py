"""The entry point: `solve(fn, y0, t0, t1, method=, controller=, adjoint=)` -> `Result`."""

from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf

from tf_ffjord.solvers import tableaux
from tf_ffjord.solvers.adjoint import Backprop, BacksolveAdjoint
from tf_ffjord.solvers.fixed_grid import ConstantStepSize
from tf_ffjord.solvers.protocols import Adjoint, StepSizeController
from tf_ffjord.solvers.result import Result, check_status
from tf_ffjord.solvers.step_size import AdaptiveStepSize
from tf_ffjord.solvers.tableaux import Tableau

__all__ = ["solve", "method_and_controller"]


def method_and_controller(
    method: Tableau | str, controller: StepSizeController | None = None,
) -> tuple[Tableau, StepSizeController]:
  """A method (a `Tableau` or its name) and its controller, checked.

  The one place that reads method names and picks the default controller:
  `AdaptiveStepSize()` for a method with an error estimate,
  `ConstantStepSize()` (4 steps) for the others.

  Raises:
    TypeError: a method that is no `Tableau`, or a controller that is no
      `StepSizeController`.
    ValueError: an unknown method name, or the library's adaptive steps
      with a method that has no error estimate (`b_error`).
  """
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
  if not isinstance(controller, StepSizeController):
    raise TypeError(
        f"Solver controller must be a solvers.StepSizeController "
        f"(AdaptiveStepSize, ConstantStepSize or your subclass), got "
        f"{type(controller).__name__}.")
  if isinstance(controller, AdaptiveStepSize) and not method.embedded:
    raise ValueError(
        f"Adaptive steps need a method with an error estimate (b_error); "
        f"{method.name!r} has none. Use ConstantStepSize(num_steps), or a "
        "method such as dopri5, tsit5 or bosh3.")
  return method, controller

def _integrator(method, jit_compile, jit_compile_backward=None):
  """`run(fn, t0, t1, ys, cs, controller, first_step=None)`: the loop.

  With `jit_compile`, each call traces the loop into its own
  `tf.function(jit_compile=True)`, inside whatever graph calls it, so an
  outer plain `tf.function` gets an XLA-compiled loop; the variables the
  dynamics reads are captured by that function (and seen by tapes and
  custom gradients as read by the call).
  """

  def run(fn, t0, t1, ys, cs, controller, first_step=None, record=False):
    # One evaluation unit (the dynamics, or the adjoint's dynamics with its
    # VJP) is traced once and called at every stage: building its ops for
    # each of a step's 6-7 stages was most of a step's tracing time. The
    # unit must hold its own gradient: a VJP taken from outside of a traced
    # function passes the function's shape intermediates (a concat's axis,
    # a broadcast's shapes) across the call as tensors, and XLA's constant
    # analysis then demands every input of the compiled loop, the weights
    # included, as a compile-time constant: a recompile per training step.
    unit = tf.function(fn, autograph=False)

    def loop(t0, t1, ys, cs, first_step):
      step_fn = lambda t, y: unit(t, y, cs)
      return controller.integrate(step_fn, t0, t1, ys, method,
                                  first_step=first_step, record=record)

    if jit_compile and not record:  # the record's buffers grow: no XLA
      loop = tf.function(loop, jit_compile=True, autograph=False)
    out = loop(t0, t1, list(ys), list(cs), first_step)
    return (list(out[0]),) + tuple(out[1:])

  # The adjoint's backward loop (see adjoint.py) compiles like the forward
  # one unless told otherwise: dynamics built on pfor (the exact trace's
  # batch Jacobian) get their weights folded into the compiled program as
  # constants, so that loop would compile again after every weight update.
  if jit_compile_backward is None or jit_compile_backward == jit_compile:
    run.backward = run
  else:
    run.backward = _integrator(method, jit_compile_backward)
  return run


def solve(fn: Callable[..., Any], y0: Any, t0: float | tf.Tensor,
          t1: float | tf.Tensor,
          constants: Mapping[str, tf.Tensor] | None = None,
          method: Tableau | str = tableaux.DOPRI5,
          controller: StepSizeController | None = None,
          adjoint: Adjoint | None = None, jit_compile: bool = False,
          jit_compile_backward: bool | None = None,
          name: str = "ode_solve") -> Result:
  """Solves dy/dt = fn(t, y, **constants) from t0 to t1.

  Args:
    fn: the dynamics; `y` (and its result) have the structure of `y0`.
    y0: initial state: a tensor or a nest of float tensors of one dtype.
    t0: initial time (float or scalar tensor).
    t1: final time; may be below `t0` (the solve then runs backwards).
    constants: optional dict of tensors passed to `fn` as keyword arguments;
      they receive gradients (like the variables `fn` reads).
    method: a `tableaux.Tableau` or its name (`"dopri5"`, `"rk4"`,
      `"midpoint"`, `"euler"`).
    controller: a `StepSizeController`: `AdaptiveStepSize` (default for
      methods with an error estimate), `ConstantStepSize` (default for the
      others: 4 steps) or your own.
    adjoint: an `Adjoint`: `BacksolveAdjoint()` (default),
      `InterpolatedAdjoint()`, `Backprop()` or your own.
    jit_compile: run the forward integration loop as an XLA-compiled
      function (except `Backprop` through adaptive steps: TF cannot
      differentiate a while loop across an XLA function's boundary, so that
      loop stays uncompiled, and so does the recording forward loop of
      `InterpolatedAdjoint`).
    jit_compile_backward: the same for the adjoint's backward loop; `None`
      follows `jit_compile`. Set it to False for dynamics that use pfor
      (`tf.vectorized_map`, `batch_jacobian`): XLA would compile that loop
      again after every weight update.
    name: name scope.

  Returns:
    A `Result`: `state` (structured like `y0`), `nfe` of this solve,
    `status` and `last_step`.

  Raises:
    InvalidArgumentError: outside XLA, when the solve exceeds the step limit
      or meets NaN/inf; under XLA the states come back NaN instead and
      `status` says why.
    ValueError: adaptive steps with a method without an error estimate, or
      `error_weights` of the wrong length.

  #### Examples

  >>> r = solve(lambda t, y: -y, tf.ones([2], tf.float64), 0.0, 1.0,
  ...           controller=AdaptiveStepSize(rtol=1e-8, atol=1e-8))
  >>> round(float(r.state[0]), 6), int(r.status)
  (0.367879, 0)
  >>> r = solve(lambda t, y, k: -k * y, tf.ones([2]), 0.0, 1.0,
  ...           constants={"k": tf.constant(2.0)}, method="rk4",
  ...           controller=ConstantStepSize(10))
  >>> round(float(r.state[0]), 4), int(r.nfe)
  (0.1353, 40)
  """
  method, controller = method_and_controller(method, controller)
  if adjoint is None:
    adjoint = BacksolveAdjoint()
  constants = {} if constants is None else dict(constants)
  with tf.name_scope(name):
    state = tf.nest.map_structure(tf.convert_to_tensor, y0)
    consts = tf.nest.map_structure(tf.convert_to_tensor, constants)
    flat_y, flat_c = tf.nest.flatten(state), tf.nest.flatten(consts)
    dtype = flat_y[0].dtype
    t0 = tf.cast(t0, dtype)
    t1 = tf.cast(t1, dtype)

    def flat_fn(t, ys, cs):
      out = fn(tf.cast(t, dtype), tf.nest.pack_sequence_as(state, list(ys)),
               **tf.nest.pack_sequence_as(consts, list(cs)))
      return [tf.convert_to_tensor(o) for o in tf.nest.flatten(out)]

    if (isinstance(adjoint, Backprop)
        and not isinstance(controller, ConstantStepSize)):
      # TF cannot differentiate a while loop across the boundary of an XLA
      # function (its TensorList accumulators cannot cross it): backprop
      # through the adaptive loop runs it uncompiled, unless the caller's
      # whole graph is compiled.
      jit_compile = False
    run = _integrator(method, jit_compile, jit_compile_backward)
    integrate = lambda t0, t1, ys, cs: adjoint(run, flat_fn, t0, t1, ys, cs,
                                               controller)
    if jit_compile and tf.executing_eagerly():
      # An eager tape would record the compiled loop with its while-loop
      # gradient accumulators, which cannot leave XLA; inside a graph the
      # loop's own gradient is never built (the adjoint replaces it).
      integrate = tf.function(integrate, autograph=False)
    y1, nfe, status, h = integrate(t0, t1, flat_y, flat_c)
    y1 = check_status(status, y1, "forward",
                      getattr(controller, "max_num_steps", None))
    return Result(tf.nest.pack_sequence_as(state, y1), nfe, status, h)
