"""ODE solvers: name lookup for `tfp.math.ode` solvers and fixed-grid Runge-Kutta."""

import collections

import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["FixedGrid", "make_solver", "ADAPTIVE_SOLVERS", "FIXED_SOLVERS"]

ode = tfp.math.ode

ADAPTIVE_SOLVERS = ("dopri5", "bdf")
FIXED_SOLVERS = ("rk4", "euler", "midpoint")

# Butcher tableaux (a, b, c) of the explicit fixed-grid methods.
_TABLEAUX = {
    "euler": ((), (1.0,), (0.0,)),
    "midpoint": (((0.5,),), (0.0, 1.0), (0.0, 0.5)),
    "rk4": (((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
            (1 / 6, 1 / 3, 1 / 3, 1 / 6), (0.0, 0.5, 0.5, 1.0)),
}

_FixedDiagnostics = collections.namedtuple(
    "_FixedDiagnostics",
    ["num_ode_fn_evaluations", "num_jacobian_evaluations",
     "num_matrix_factorizations", "status"])


class _Diagnostics(_FixedDiagnostics, ode.Diagnostics):
  """Diagnostics of a `FixedGrid` solve (always successful)."""


class FixedGrid(ode.Solver):
  """Explicit Runge-Kutta on a fixed grid, as a `tfp.math.ode.Solver`.

  The number of steps is fixed when the solver is built, so the solve is a
  Python-unrolled loop: XLA-friendly, and cheap to differentiate by backprop
  (the regime of RNODE-style training, which uses RK4 at step 0.25).

  Args:
    method: `"rk4"`, `"midpoint"` or `"euler"`.
    num_steps: number of equal steps between the initial and the final time.
    make_adjoint_solver_fn: see `tfp.math.ode.Solver`.
    name: name scope.

  #### Examples

  >>> solver = FixedGrid("rk4", num_steps=8)
  >>> r = solver.solve(lambda t, y: -y, 0.0, tf.ones([2]), solution_times=[1.0])
  >>> round(float(r.states[-1][0]), 4)
  0.3679
  """

  def __init__(self, method="rk4", num_steps=4, make_adjoint_solver_fn=None,
               name="fixed_grid"):
    if method not in _TABLEAUX:
      raise ValueError(f"Unknown fixed-grid method {method!r}; expected one of "
                       f"{sorted(_TABLEAUX)}.")
    if int(num_steps) < 1:
      raise ValueError(f"num_steps must be >= 1, got {num_steps}.")
    super().__init__(make_adjoint_solver_fn=make_adjoint_solver_fn,
                     validate_args=False, name=name)
    self.method = method
    self.num_steps = int(num_steps)

  @property
  def evaluations_per_step(self):
    return len(_TABLEAUX[self.method][1])

  def _step(self, ode_fn, t, y, dt):
    a, b, c = _TABLEAUX[self.method]
    ks = []
    for i, ci in enumerate(c):
      yi = y
      if i:
        yi = tf.nest.map_structure(
            lambda y_, *k_: y_ + dt * sum(w * kk for w, kk in zip(a[i - 1], k_)
                                          if w),
            y, *ks)
      ks.append(ode_fn(t + ci * dt, yi))
    return tf.nest.map_structure(
        lambda y_, *k_: y_ + dt * sum(w * kk for w, kk in zip(b, k_) if w),
        y, *ks)

  def _solve(self, ode_fn, initial_time, initial_state, solution_times,
             jacobian_fn=None, jacobian_sparsity=None, batch_ndims=None,
             previous_solver_internal_state=None):
    del jacobian_fn, jacobian_sparsity, batch_ndims
    del previous_solver_internal_state
    with tf.name_scope(self.name):
      if isinstance(solution_times, ode.ChosenBySolver):
        final_time = solution_times.final_time
      else:
        times = tf.convert_to_tensor(solution_times)
        if times.shape.rank != 1 or times.shape[0] != 1:
          raise ValueError("FixedGrid supports a single solution time.")
        final_time = times[0]
      y = tf.nest.map_structure(tf.convert_to_tensor, initial_state)
      dtype = tf.nest.flatten(y)[0].dtype
      t0 = tf.cast(initial_time, dtype)
      t1 = tf.cast(final_time, dtype)
      dt = (t1 - t0) / self.num_steps
      for n in range(self.num_steps):
        y = self._step(ode_fn, t0 + n * dt, y, dt)
      nfe = self.num_steps * self.evaluations_per_step
      return ode.Results(
          times=tf.reshape(t1, [1]),
          states=tf.nest.map_structure(lambda s: s[tf.newaxis], y),
          diagnostics=_Diagnostics(tf.constant(nfe), tf.constant(0),
                                   tf.constant(0), tf.constant(0)),
          solver_internal_state=())

  def _initialize_solver_internal_state(self, ode_fn, initial_time,
                                        initial_state):
    return ()


def make_solver(solver="dopri5", rtol=1e-5, atol=1e-5, max_num_steps=1000,
                step_size=0.25, first_step_size=1e-2):
  """Returns a `tfp.math.ode.Solver` for a name, or the instance passed in.

  Args:
    solver: `"dopri5"` (`tfp.math.ode.DormandPrince`), `"bdf"`
      (`tfp.math.ode.BDF`; slow for training: it builds dense Jacobians),
      `"rk4"`, `"midpoint"`, `"euler"` (`FixedGrid`), or a
      `tfp.math.ode.Solver` instance, returned as is.
    rtol: relative tolerance of the adaptive solvers.
    atol: absolute tolerance of the adaptive solvers.
    max_num_steps: step limit of the adaptive solvers; beyond it the solve
      fails with an error instead of looping (dynamics that return NaN make
      an unbounded DormandPrince loop forever).
    step_size: step of the fixed-grid solvers on the unit time interval the
      bijector integrates over (`num_steps = ceil(1 / step_size)`).
    first_step_size: first trial step of DormandPrince, on that unit interval.

  Returns:
    A `tfp.math.ode.Solver`.

  Raises:
    ValueError: for an unknown name or a non-positive tolerance.
  """
  if isinstance(solver, ode.Solver):
    return solver
  if not isinstance(solver, str):
    raise TypeError(f"solver must be a name or a tfp.math.ode.Solver, got "
                    f"{type(solver).__name__}.")
  if solver in ADAPTIVE_SOLVERS:
    if not (rtol > 0 and atol > 0):
      raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}.")
    if max_num_steps is not None and int(max_num_steps) < 1:
      raise ValueError(f"max_num_steps must be >= 1, got {max_num_steps}.")
  if solver == "dopri5":
    return ode.DormandPrince(rtol=rtol, atol=atol,
                             first_step_size=first_step_size,
                             max_num_steps=max_num_steps)
  if solver == "bdf":
    return ode.BDF(rtol=rtol, atol=atol, max_num_steps=max_num_steps)
  if solver in FIXED_SOLVERS:
    if not step_size > 0:
      raise ValueError(f"step_size must be positive, got {step_size}.")
    num_steps = max(1, int(round(1.0 / step_size)))
    return FixedGrid(solver, num_steps=num_steps)
  raise ValueError(f"Unknown solver {solver!r}; expected one of "
                   f"{ADAPTIVE_SOLVERS + FIXED_SOLVERS} or a "
                   "tfp.math.ode.Solver instance.")
