"""`TFPSolver`: a `tfp.math.ode.Solver` behind the library's `ODESolver` protocol.

TFP solvers are solved through their public `solve` and differentiated by
TFP's own adjoint. What that asks of a solve is this adapter's business
alone:

- TFP's adjoint reports no backward NFE: the adapter counts the dynamics'
  evaluations into the `nfe_backward` variable (reset after the forward
  solve, so after a gradient it holds the backward solve's count);
- a TFP solver would loop for ever on an empty state (the RMS error norm
  of no values is NaN): an empty state is returned as it is, unsolved;
- it takes no `Adjoint` object: only the adjoint names `"auto"` and
  `"adjoint"` (see `solver.choose_adjoint`).
"""

from collections.abc import Callable, Mapping
from typing import Any

import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord.solvers.protocols import ODESolver, SolveOptions
from tf_ffjord.solvers.result import Result

__all__ = ["TFPSolver", "adapt", "solve_tfp"]


def solve_tfp(solver: tfp.math.ode.Solver, fn: Callable[..., Any], y0: Any,
              t0: float | tf.Tensor, t1: float | tf.Tensor,
              constants: Mapping[str, tf.Tensor] | None = None) -> Result:
  """Solves with a `tfp.math.ode.Solver` through its public `solve`.

  Gradients come from TFP's own adjoint (its backward solve uses the same
  solver and controls the error of every adjoint, parameters included).

  Args:
    solver: a `tfp.math.ode.Solver` instance, e.g. `tfp.math.ode.BDF()`.
    fn: the dynamics, as in `solve`.
    y0: initial state, as in `solve`.
    t0: initial time.
    t1: final time.
    constants: optional dict of tensors passed to `fn` as keyword
      arguments, as in `solve`.

  Returns:
    A `Result`; `nfe` is TFP's `num_ode_fn_evaluations`, `status` TFP's
    status (0 on success) and `last_step` NaN (TFP does not report it).

  Raises:
    TypeError: `solver` is not a `tfp.math.ode.Solver`.
  """
  if not isinstance(solver, tfp.math.ode.Solver):
    raise TypeError(f"Expected a tfp.math.ode.Solver, got "
                    f"{type(solver).__name__}.")
  state = tf.nest.map_structure(tf.convert_to_tensor, y0)
  dtype = tf.nest.flatten(state)[0].dtype
  t1 = tf.cast(t1, dtype)
  results = solver.solve(fn, tf.cast(t0, dtype), state,
                         solution_times=tf.reshape(t1, [1]),
                         constants=constants)
  final = tf.nest.map_structure(lambda s: s[-1], results.states)
  diag = results.diagnostics
  return Result(final, tf.cast(diag.num_ode_fn_evaluations, tf.int32),
                tf.cast(diag.status, tf.int32),
                tf.constant(float("nan"), dtype))


class TFPSolver(ODESolver):
  """A `tfp.math.ode.Solver` as an `ODESolver` (see the module docstring).

  Args:
    solver: a `tfp.math.ode.Solver` instance, e.g. `tfp.math.ode.BDF()`.
    name: the name it was made from (`"bdf"`), or `None`; a named solver
      takes new tolerances in `replace`.

  Raises:
    TypeError: `solver` is not a `tfp.math.ode.Solver`.
  """
  own_adjoint = True

  def __init__(self, solver: tfp.math.ode.Solver,
               name: str | None = None) -> None:
    if not isinstance(solver, tfp.math.ode.Solver):
      raise TypeError(f"TFPSolver wraps a tfp.math.ode.Solver, got "
                      f"{type(solver).__name__}.")
    self.solver, self.name = solver, name

  def __repr__(self) -> str:
    return f"TFPSolver({type(self.solver).__name__})"

  def __eq__(self, other: object) -> bool:
    return isinstance(other, TFPSolver) and other.solver is self.solver

  def __hash__(self) -> int:
    return id(self.solver)

  @property
  def adaptive(self) -> bool:
    return True

  @classmethod
  def named(cls, name: str, rtol: float = 1e-5, atol: float = 1e-5,
            max_num_steps: int | None = 1000, **unused: Any) -> "TFPSolver":
    """The TFP solver of a name (`"bdf"`) with loose options."""
    del unused  # options of other kinds of solvers (step_size)
    if name != "bdf":
      raise ValueError(f"Unknown TFP solver name {name!r}; expected 'bdf'.")
    return cls(tfp.math.ode.BDF(rtol=rtol, atol=atol,
                                max_num_steps=max_num_steps), name)

  def replace(self, **options: Any) -> "ODESolver":
    """A named solver with new tolerances; a user's instance as it is."""
    if self.name is None:
      return self
    solver = self.solver
    current = {"rtol": solver._rtol, "atol": solver._atol,  # pylint: disable=protected-access
               "max_num_steps": solver._max_num_steps}  # pylint: disable=protected-access
    return TFPSolver.named(self.name, **{**current, **options})

  def integrate(self, fn: Callable[..., Any], y0: Any, t0: Any, t1: Any,
                constants: Mapping[str, tf.Tensor] | None = None,
                options: SolveOptions = SolveOptions()) -> Result:
    """Solves with TFP (see `ODESolver.integrate`); XLA options are ignored."""
    if options.adjoint is not None:
      raise ValueError(
          f"A tfp.math.ode.Solver differentiates by its own adjoint; it "
          f"takes no {type(options.adjoint).__name__} (use "
          "adjoint='adjoint').")
    nfe_backward = options.nfe_backward
    if nfe_backward is not None:
      fn = _counted(fn, nfe_backward)
    state = tf.nest.map_structure(tf.convert_to_tensor, y0)
    flat = tf.nest.flatten(state)
    if not all(v.shape.rank == 0 or (v.shape[:1].is_fully_defined()
                                     and v.shape[0] > 0) for v in flat):
      fn, state, unpad = _padded(fn, state)
    else:
      unpad = lambda v: v
    result = solve_tfp(self.solver, fn, state, t0, t1, constants)
    final = tf.nest.map_structure(unpad, result.state)
    if nfe_backward is not None:
      # The forward solve's evaluations were counted too: start the
      # backward count from 0.
      with tf.control_dependencies(tf.nest.flatten(final)):
        reset = nfe_backward.assign(0)
      with tf.control_dependencies([reset]):
        final = tf.nest.map_structure(tf.identity, final)
    return result._replace(state=final)


def _padded(fn, state):
  """`(fn, state, unpad)` with a zero row added to each empty component.

  TFP's error norm of an empty state is NaN (its step loop would never
  end), so a component of batch size 0 gets one row of zeros whose time
  derivative is 0; `fn` sees the real rows only, and `unpad` drops the row.
  A component with rows is unchanged (0 rows are added).
  """
  flat = tf.nest.flatten(state)
  sizes = [None if v.shape.rank == 0 else tf.shape(v)[0] for v in flat]
  pads = [None if n is None else tf.cast(tf.equal(n, 0), tf.int32)
          for n in sizes]

  def pad(v, p):
    if p is None:
      return v
    zeros = tf.zeros(tf.concat([[p], tf.shape(v)[1:]], 0), v.dtype)
    # The batch size stays unknown to the graph: a statically empty input
    # would otherwise enter TFP's loop as 1 row and leave it as None rows.
    return tf.compat.v1.placeholder_with_default(
        tf.concat([v, zeros], 0), [None, *v.shape[1:]])

  def padded_fn(t, y, **constants):
    rows = [v if n is None else v[:n]
            for v, n in zip(tf.nest.flatten(y), sizes)]
    out = fn(t, tf.nest.pack_sequence_as(state, rows), **constants)
    return tf.nest.pack_sequence_as(state, [
        pad(tf.convert_to_tensor(v), p)
        for v, p in zip(tf.nest.flatten(out), pads)])

  it = iter(sizes)
  unpad = lambda v: (lambda n: v if n is None else v[:n])(next(it))
  return padded_fn, tf.nest.pack_sequence_as(
      state, [pad(v, p) for v, p in zip(flat, pads)]), unpad


def _counted(fn, counter):
  """`fn` that adds 1 to `counter` at each evaluation."""

  def counted(*args, **kwargs):
    out = fn(*args, **kwargs)
    with tf.control_dependencies([counter.assign_add(1)]):
      return tf.nest.map_structure(tf.identity, out)

  return counted


def adapt(solver: Any) -> TFPSolver | None:
  """`TFPSolver` of a `tfp.math.ode.Solver` or of its bound `solve` (TFP's `ode_solve_fn`), else `None`."""
  owner = getattr(solver, "__self__", None)
  if (isinstance(owner, tfp.math.ode.Solver)
      and getattr(solver, "__name__", None) == "solve"):
    solver = owner  # a Solver's bound `solve`, as TFP users pass it
  if isinstance(solver, tfp.math.ode.Solver):
    return TFPSolver(solver)
  return None
