"""ODE solvers: a lean XLA-safe Dormand-Prince with its own adjoint, and fixed-grid Runge-Kutta."""

import collections

import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["DormandPrince", "FixedGrid", "make_solver", "ADAPTIVE_SOLVERS",
           "FIXED_SOLVERS", "STATUS"]

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


def _final_time(solver, solution_times, dtype):
  """The one final time of a solve (these solvers report no other times)."""
  if isinstance(solution_times, ode.ChosenBySolver):
    return tf.cast(solution_times.final_time, dtype)
  times = tf.cast(tf.convert_to_tensor(solution_times), dtype)
  if times.shape.rank != 1 or times.shape[0] != 1:
    raise ValueError(f"{type(solver).__name__} supports a single solution "
                     f"time, got solution_times of shape {times.shape}.")
  return times[0]


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
      y = tf.nest.map_structure(tf.convert_to_tensor, initial_state)
      dtype = tf.nest.flatten(y)[0].dtype
      t0 = tf.cast(initial_time, dtype)
      t1 = _final_time(self, solution_times, dtype)
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


# Solve status, as reported in `Diagnostics.status`.
STATUS = {"success": 0, "max_num_steps": 1, "non_finite": 2}

# Dormand-Prince 5(4) (Dormand & Prince, 1980): nodes, stages, 5th-order
# weights (the last stage is f at the new point, reused as the next first
# stage) and error weights (5th minus embedded 4th order, 7 stages).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = ((1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
         (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
         (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656))
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
_DP_E = (71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200, 22 / 525,
         -1 / 40)


def _combine(y, h, coeffs, ks):
  """[y_j + h * sum_i coeffs[i] * ks[i][j]] (y may be None for a pure sum)."""
  out = []
  for j in range(len(ks[0])):
    acc = None
    for c, k in zip(coeffs, ks):
      if c:
        acc = c * k[j] if acc is None else acc + c * k[j]
    acc = h * acc
    out.append(acc if y is None else y[j] + acc)
  return out


class DormandPrince(ode.Solver):
  """Adaptive Dormand-Prince 5(4) with its own adjoint, XLA-safe.

  A lean replacement for `tfp.math.ode.DormandPrince` for one final time:
  - the step limit sits in the `tf.while_loop` condition, so dynamics that
    return NaN stop the loop (status `non_finite`) instead of spinning, even
    under XLA where graph assertions are no-ops; a failed solve returns NaN
    states, and outside XLA it raises `InvalidArgumentError`;
  - the last stage of an accepted step is the next step's first (FSAL):
    6 evaluations per step;
  - `error_weights` weigh each state component in the RMS error norm (0
    leaves it out: e.g. regularizer integrals that need no step control);
  - `solve` differentiates by the adjoint method with a seminorm: the
    backward solve controls the error of the state and its adjoint only, not
    of the parameter adjoints (Kidger et al., 2021), and starts from the
    forward solve's last step size. `_solve` is differentiable by backprop
    through the loop (memory then grows with the number of steps).

  Args:
    rtol: relative tolerance.
    atol: absolute tolerance.
    first_step_size: first trial step; `None` picks it from the dynamics
      (Hairer, Norsett & Wanner, 1993, II.4; one extra evaluation).
    max_num_steps: limit on attempted steps (accepted or rejected) per solve.
    safety: step size safety factor.
    min_step_factor: smallest step size change per step.
    max_step_factor: largest step size change per step.
    error_weights: `None` (all components weigh 1) or one weight per
      flattened state component.
    validate_status: add assertions that raise on a failed solve (no-ops
      under XLA, where the NaN states still signal the failure).
    name: name scope.

  #### Examples

  >>> solver = DormandPrince(rtol=1e-6, atol=1e-6)
  >>> r = solver.solve(lambda t, y: -y, 0.0, tf.ones([2]), solution_times=[1.0])
  >>> round(float(r.states[-1][0]), 5)
  0.36788

  #### References

  [1]: J. R. Dormand, P. J. Prince. A family of embedded Runge-Kutta
       formulae. J. Comp. Appl. Math. 6(1), 1980.
  [2]: E. Hairer, S. P. Norsett, G. Wanner. Solving Ordinary Differential
       Equations I, 2nd ed. Springer, 1993.
  [3]: Patrick Kidger, Ricky T. Q. Chen, Terry Lyons. "Hey, that's not an
       ODE": Faster ODE Adjoints via Seminorms. ICML 2021.
       https://arxiv.org/abs/2009.09457
  """

  def __init__(self, rtol=1e-5, atol=1e-5, first_step_size=None,
               max_num_steps=1000, safety=0.9, min_step_factor=0.2,
               max_step_factor=10.0, error_weights=None,
               validate_status=True, name="dormand_prince"):
    if not (rtol > 0 and atol > 0):
      raise ValueError(f"rtol and atol must be positive, got {rtol}, {atol}.")
    if max_num_steps is None or int(max_num_steps) < 1:
      raise ValueError(f"max_num_steps must be >= 1, got {max_num_steps}.")
    if first_step_size is not None and not first_step_size > 0:
      raise ValueError(f"first_step_size must be positive, got "
                       f"{first_step_size}.")
    super().__init__(make_adjoint_solver_fn=None, validate_args=False,
                     name=name)
    self.rtol = float(rtol)
    self.atol = float(atol)
    self.first_step_size = first_step_size
    self.max_num_steps = int(max_num_steps)
    self.safety = float(safety)
    self.min_step_factor = float(min_step_factor)
    self.max_step_factor = float(max_step_factor)
    self.error_weights = (None if error_weights is None
                          else tuple(float(w) for w in error_weights))
    self.validate_status = bool(validate_status)

  # -- the integrator ----------------------------------------------------

  def _norm(self, values, y0, y1, weights):
    """Weighted RMS of values / (atol + rtol max(|y0|, |y1|))."""
    num, den = [], []
    for v, a, b, w in zip(values, y0, y1, weights):
      if not w:
        continue
      scale = self.atol + self.rtol * tf.maximum(tf.abs(a), tf.abs(b))
      num.append(w * tf.reduce_sum(tf.square(v / scale)))
      den.append(w * tf.cast(tf.size(v), v.dtype))
    if not num:
      return tf.zeros([], values[0].dtype)
    return tf.sqrt(tf.add_n(num) / tf.add_n(den))

  def _initial_step(self, fn, t0, y0, f0, direction, span, weights):
    """Hairer's starting step: one extra evaluation."""
    d0 = self._norm(y0, y0, y0, weights)
    d1 = self._norm(f0, y0, y0, weights)
    small = (d0 < 1e-5) | (d1 < 1e-5)
    h0 = tf.where(small, tf.constant(1e-6, d0.dtype),
                  0.01 * d0 / tf.where(small, tf.ones_like(d1), d1))
    h0 = tf.minimum(h0, span)
    f1 = fn(t0 + direction * h0,
            [y + direction * h0 * f for y, f in zip(y0, f0)])
    d2 = self._norm([a - b for a, b in zip(f1, f0)], y0, y0, weights) / h0
    dmax = tf.maximum(d1, d2)
    h1 = tf.where(dmax <= 1e-15, tf.maximum(1e-6 * tf.ones_like(h0), h0 * 1e-3),
                  tf.pow(0.01 / tf.maximum(dmax, 1e-15), 0.2))
    return tf.minimum(100.0 * h0, h1)

  def _integrate(self, fn, t0, t1, y0, weights, first_step=None):
    """Integrates dy/dt = fn(t, y) (lists of tensors) from t0 to t1.

    Returns:
      `(y1, nfe, status, h)`: the end state (NaN on failure), the number of
      evaluations, the status code and the proposed next step size.
    """
    dtype = y0[0].dtype
    t0 = tf.cast(t0, dtype)
    t1 = tf.cast(t1, dtype)
    span = tf.abs(t1 - t0)
    direction = tf.where(t1 >= t0, tf.ones([], dtype), -tf.ones([], dtype))
    f0 = [tf.convert_to_tensor(f) for f in fn(t0, y0)]
    nfe = tf.constant(1, tf.int32)
    if first_step is not None:
      h = tf.cast(first_step, dtype)
    elif self.first_step_size is not None:
      h = tf.constant(self.first_step_size, dtype)
    else:
      h = self._initial_step(fn, t0, y0, f0, direction, span, weights)
      nfe += 1
    # Guard against a zero or non-finite step passed in (e.g. from a failed
    # forward solve): fall back to a small step.
    h = tf.where(tf.math.is_finite(h) & (h > 0), h, 1e-3 * span)
    safety, lo, hi = self.safety, self.min_step_factor, self.max_step_factor

    def cond(tau, h, y, k1, steps, nfe, status):
      del h, y, k1, nfe
      return (tau < span) & tf.equal(status, 0) & (steps < self.max_num_steps)

    def body(tau, h, y, k1, steps, nfe, status):
      last = h >= span - tau
      h_step = tf.minimum(h, span - tau)
      dt = direction * h_step
      t = t0 + direction * tau
      ks = [k1]
      for i, a in enumerate(_DP_A):
        yi = _combine(y, dt, a, ks)
        ks.append([tf.convert_to_tensor(f) for f in fn(t + _DP_C[i + 1] * dt, yi)])
      y_new = _combine(y, dt, _DP_B, ks)
      k7 = [tf.convert_to_tensor(f) for f in fn(t + dt, y_new)]
      err = _combine(None, dt, _DP_E, ks + [k7])
      ratio = self._norm(err, y, y_new, weights)
      finite = tf.math.is_finite(ratio)
      accept = finite & (ratio <= 1.0)
      factor = safety * tf.pow(tf.maximum(ratio, 1e-10), -0.2)
      factor = tf.clip_by_value(factor, lo, hi)
      factor = tf.where(accept, factor, tf.minimum(factor, 1.0))
      h_next = tf.where(finite, h_step * factor, h_step)
      # After a clipped last step keep the unclipped proposal.
      h_next = tf.where(accept & last, tf.maximum(h_next, h), h_next)
      tau = tf.where(accept, tf.where(last, span, tau + h_step), tau)
      y = [tf.where(accept, a, b) for a, b in zip(y_new, y)]
      k1 = [tf.where(accept, a, b) for a, b in zip(k7, k1)]
      status = tf.where(finite, status, STATUS["non_finite"])
      return tau, h_next, y, k1, steps + 1, nfe + 6, status

    loop_vars = (tf.zeros([], dtype), h, list(y0), f0,
                 tf.constant(0, tf.int32), nfe, tf.constant(0, tf.int32))
    tau, h, y, _, _, nfe, status = tf.while_loop(
        cond, body, loop_vars, maximum_iterations=self.max_num_steps)
    status = tf.where(tf.equal(status, 0) & (tau < span),
                      STATUS["max_num_steps"], status)
    ok = tf.equal(status, 0)
    nan = tf.constant(float("nan"), dtype)
    y = [tf.where(ok, v, nan) for v in y]
    return y, nfe, status, h

  def _check(self, status, tensors, what):
    """Raises on a failed solve outside XLA; passes tensors through."""
    if not self.validate_status:
      return tensors
    checks = [
        tf.debugging.Assert(
            tf.not_equal(status, STATUS["max_num_steps"]),
            [f"{type(self).__name__}: the {what} ODE solve exceeded "
             f"max_num_steps={self.max_num_steps}. The dynamics may be stiff "
             "or fast: loosen the tolerances (rtol/atol) or raise "
             "max_num_steps."]),
        tf.debugging.Assert(
            tf.not_equal(status, STATUS["non_finite"]),
            [f"{type(self).__name__}: the {what} ODE solve met NaN or inf "
             "(in the dynamics or the initial state)."]),
    ]
    with tf.control_dependencies(checks):
      return [tf.identity(t) for t in tensors]

  def _weights(self, n):
    if self.error_weights is None:
      return (1.0,) * n
    if len(self.error_weights) != n:
      raise ValueError(f"error_weights has {len(self.error_weights)} entries "
                       f"for a state of {n} components.")
    return self.error_weights

  def _results(self, t1, state, y1, nfe, status):
    return ode.Results(
        times=tf.reshape(t1, [1]),
        states=tf.nest.map_structure(lambda s: s[tf.newaxis],
                                     tf.nest.pack_sequence_as(state, y1)),
        diagnostics=_Diagnostics(nfe, tf.constant(0), tf.constant(0), status),
        solver_internal_state=())

  # -- the tfp.math.ode.Solver interface ----------------------------------

  def _solve(self, ode_fn, initial_time, initial_state, solution_times,
             jacobian_fn=None, jacobian_sparsity=None, batch_ndims=None,
             previous_solver_internal_state=None):
    """Solves without the adjoint: autodiff runs through the loop."""
    del jacobian_fn, jacobian_sparsity, batch_ndims
    del previous_solver_internal_state
    with tf.name_scope(self.name):
      state = tf.nest.map_structure(tf.convert_to_tensor, initial_state)
      flat = tf.nest.flatten(state)
      dtype = flat[0].dtype
      t0 = tf.cast(initial_time, dtype)
      t1 = _final_time(self, solution_times, dtype)

      def fn(t, ys):
        return tf.nest.flatten(ode_fn(t, tf.nest.pack_sequence_as(state, ys)))

      y1, nfe, status, _ = self._integrate(fn, t0, t1, flat,
                                           self._weights(len(flat)))
      y1 = self._check(status, y1, "forward")
      return self._results(t1, state, y1, nfe, status)

  def solve(self, ode_fn, initial_time, initial_state, solution_times,
            jacobian_fn=None, jacobian_sparsity=None, batch_ndims=None,
            previous_solver_internal_state=None, constants=None):
    """Solves to one final time; gradients by the seminorm adjoint.

    Args as `tfp.math.ode.Solver.solve`; `solution_times` must hold a single
    time (or be `ChosenBySolver`). Gradients flow to the initial state, the
    `constants` and the trainable variables that `ode_fn` reads.
    """
    del jacobian_fn, jacobian_sparsity, batch_ndims
    del previous_solver_internal_state
    constants = {} if constants is None else constants
    with tf.name_scope(self.name):
      state = tf.nest.map_structure(tf.convert_to_tensor, initial_state)
      consts = tf.nest.map_structure(tf.convert_to_tensor, constants)
      flat_y, flat_c = tf.nest.flatten(state), tf.nest.flatten(consts)
      dtype = flat_y[0].dtype
      t0 = tf.cast(initial_time, dtype)
      t1 = _final_time(self, solution_times, dtype)
      n_y, n_c = len(flat_y), len(flat_c)
      weights = self._weights(n_y)

      def fn(t, ys, cs):
        out = ode_fn(t, tf.nest.pack_sequence_as(state, ys),
                     **tf.nest.pack_sequence_as(consts, cs))
        return [tf.convert_to_tensor(o) for o in tf.nest.flatten(out)]

      @tf.custom_gradient
      def adjoint_solve(*args):
        ys, cs = list(args[:n_y]), list(args[n_y:])
        y1, nfe, status, h_last = self._integrate(
            lambda t, y: fn(t, y, cs), t0, t1, ys, weights)

        def grad_fn(*dys, variables=None):
          variables = list(variables or [])
          train = [v for v in variables if v.dtype.is_floating]
          dy = [tf.zeros_like(y) if d is None else d
                for y, d in zip(y1, dys[:n_y])]

          def aug_fn(t, aug):
            y, a = aug[:n_y], aug[n_y:2 * n_y]
            with tf.GradientTape(watch_accessed_variables=False) as tape:
              tape.watch(y)
              tape.watch(cs)
              for v in train:
                tape.watch(v)
              f = fn(t, y, cs)
            g = tape.gradient(f, y + cs + train, output_gradients=a,
                              unconnected_gradients="zero")
            return f + [-gi for gi in g]

          aug0 = (y1 + dy + [tf.zeros_like(c) for c in cs]
                  + [tf.zeros(v.shape, v.dtype) for v in train])
          # Seminorm: step control on the state and its adjoint only.
          aug_weights = (tuple(weights) * 2
                         + (0.0,) * (n_c + len(train)))
          out, _, bstatus, _ = self._integrate(
              aug_fn, t1, t0, aug0, aug_weights, first_step=h_last)
          out = self._check(bstatus, out, "adjoint (backward)")
          grads = out[n_y:2 * n_y] + out[2 * n_y:2 * n_y + n_c]
          if not variables:
            return grads
          it = iter(out[2 * n_y + n_c:])
          return grads, [next(it) if v.dtype.is_floating else None
                         for v in variables]

        return y1 + [nfe, status], grad_fn

      out = adjoint_solve(*(flat_y + flat_c))
      y1, nfe, status = out[:n_y], out[n_y], out[n_y + 1]
      y1 = self._check(status, y1, "forward")
      return self._results(t1, state, y1, nfe, status)

  def _initialize_solver_internal_state(self, ode_fn, initial_time,
                                        initial_state):
    return ()

  def _adjust_solver_internal_state_for_state_jump(self, *args, **kwargs):
    return ()


def make_solver(solver="dopri5", rtol=1e-5, atol=1e-5, max_num_steps=1000,
                step_size=0.25, first_step_size=None, error_weights=None):
  """Returns a `tfp.math.ode.Solver` for a name, or the instance passed in.

  Args:
    solver: `"dopri5"` (this module's `DormandPrince`), `"bdf"`
      (`tfp.math.ode.BDF`; slow for training: it builds dense Jacobians),
      `"rk4"`, `"midpoint"`, `"euler"` (`FixedGrid`), or a
      `tfp.math.ode.Solver` instance, returned as is.
    rtol: relative tolerance of the adaptive solvers.
    atol: absolute tolerance of the adaptive solvers.
    max_num_steps: step limit of the adaptive solvers; beyond it the solve
      fails with an error instead of looping.
    step_size: step of the fixed-grid solvers on the unit time interval the
      bijector integrates over (`num_steps = round(1 / step_size)`).
    first_step_size: first trial step of `"dopri5"` on that unit interval;
      `None` chooses it from the dynamics.
    error_weights: `"dopri5"` only: a weight per flattened state component in
      the error norm (0 excludes a component from step size control).

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
    return DormandPrince(rtol=rtol, atol=atol,
                         first_step_size=first_step_size,
                         max_num_steps=(100000 if max_num_steps is None
                                        else max_num_steps),
                         error_weights=error_weights)
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
