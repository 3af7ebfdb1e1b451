"""`FFJORD`: a continuous normalizing flow as a `tfp.bijectors.Bijector`."""

from collections.abc import Iterable
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord._types import (Dynamics, SeedLike, ShapeLike, TensorLike,
                              TimeLength)
from tf_ffjord.cnf.regularizers import RegularizerLike
from tf_ffjord import solvers
from tf_ffjord.cnf import augmented_ode
from tf_ffjord.cnf import contract
from tf_ffjord.cnf import end_time
from tf_ffjord.cnf import inputs
from tf_ffjord.cnf import one_solve
from tf_ffjord.cnf import options as loose_options
from tf_ffjord.cnf import regularizers as regs
from tf_ffjord.cnf import trace_estimators
from tf_ffjord.cnf import tracking
from tf_ffjord.cnf.augmented_ode import Solution

__all__ = ["FFJORD", "Solution"]

tfb = tfp.bijectors


class FFJORD(one_solve.OneSolveBijector):
  """Free-form continuous dynamics (FFJORD) as a bijector.

  The flow integrates dz/dt = f(t, z) from data (t = t0) to the base sample
  (t = t0 + T). Following TFP, `forward` maps a base sample to data and
  `inverse` maps data to the base, so `tfd.TransformedDistribution(base,
  FFJORD(f))` is the model density. `inverse_log_det_jacobian(x)` is the
  integral of Tr(df/dz) along the path, estimated with Hutchinson's estimator
  (one probe per example, drawn once per solve and reused by the adjoint) or
  computed exactly.

  Every solve runs on the unit interval s in [0, 1] with t = t0 + s T and
  dz/ds = T f: the end time T is then an ODE constant, so a trainable T
  receives its gradient through the adjoint like any other parameter, and the
  backward solve evaluates f at the same t as the forward one for any t0.

  Args:
    dynamics: callable `f(t, z)` or `f(t, z, context)`, e.g. an `ODENet`;
      `t` is a scalar tensor and `z` is `[batch, *event]`.
    time_length: positive T: a float, a tensor, a variable, an `EndTime`
      (a softplus-parameterized Keras weight: a learned T that stays > 0;
      `copy()` and `parameters` carry it, so copies share the learned
      value), or a zero-argument callable returning a scalar tensor (read
      at every solve, so it may wrap a variable owned elsewhere).
    initial_time: t0, the time of the data end.
    trace: a `trace_estimators.TraceEstimator` (`Exact()`, `Hutchinson(noise,
      probes)` or your own subclass), or a name: `"hutchinson"`
      (Rademacher probes) or `"exact"`.
    solver: a `solvers.ODESolver` (`make_solver(name, rtol=, atol=,
      max_num_steps=, step_size=)`, `Solver(method, controller)` with a
      `StepSizeController` of yours or the library's, a `TFPSolver`) or what
      `make_solver` takes with default options: a name (`"dopri5"`,
      `"tsit5"`, `"bosh3"`, `"bdf"`, `"rk4"`, `"midpoint"`, `"euler"`), a
      `Tableau`, a `tfp.math.ode.Solver` (differentiated by TFP's adjoint).
    adjoint: a `solvers.Adjoint` (`BacksolveAdjoint(seminorm=False)`, your
      subclass, ...) or a name: `"adjoint"` (seminorm adjoint, memory
      constant in the steps), `"interpolated"` (the state from the forward
      solve's dense output: fewer backward steps, no XLA on the forward
      loop; methods with `b_mid`, e.g. dopri5), `"backprop"`, or `"auto"`,
      decided per solve by `solvers.choose_adjoint`.
    jit_compile: `True`, `False` or `"auto"`: whether the forward and the
      adjoint's backward integration loops run XLA-compiled inside whatever
      graph calls the bijector (so a plain `tf.function` around `log_prob`
      gets XLA; not the backward loop of an estimator that `uses_pfor`).
      `"auto"` decides per solve by `solvers.use_xla`: on for GPUs; on CPU
      for dense dynamics whose weights x batch is small, off for conv ones.
    event_shape: the shape of one event, e.g. `[2]`; `None` takes it from
      dynamics that know it (a built `ODENet`) or else from the first call.
      Once known, a call of another shape raises a `ValueError` naming both
      and leaves the flow unchanged (see `tf_ffjord.cnf.inputs`).
    event_ndims: number of event dimensions (1 for vectors, 3 for images).
    validate_args: passed to `tfb.Bijector`.
    name: name scope.

  Raises:
    ValueError: an unknown option or a non-positive time length.
    TypeError: a loose option (`rtol=`, `gradient=`, `noise=`, ...), naming
      the argument that replaces it (see `tf_ffjord.cnf.options`).

  The weights of Keras dynamics (and of a learned `EndTime`) are exposed to
  TFP's variable tracking, so `bijector.trainable_variables`,
  `tfd.TransformedDistribution(base, bijector).trainable_variables` and
  those of a `tfb.Chain` list them (once the dynamics are built, e.g. after
  the first solve). Input follows `tf_ffjord.validation`: real numbers are
  cast to the flow's dtype (a Keras net's variable dtype, else the input's
  float dtype), other dtypes, wrong shapes and NaN/inf raise. Eager calls run
  through a cached `tf.function` (no retrace per call).

  #### Examples

  >>> import tensorflow_probability as tfp
  >>> f = ODENet(hidden=(16,))
  >>> flow = tfp.distributions.TransformedDistribution(
  ...     tfp.distributions.MultivariateNormalDiag(tf.zeros(2)),
  ...     FFJORD(f, trace="exact"))
  >>> flow.log_prob(tf.zeros([5, 2])).shape
  TensorShape([5])
  >>> tight = FFJORD(
  ...     f, solver=tf_ffjord.make_solver("dopri5", rtol=1e-7, atol=1e-7),
  ...     adjoint="adjoint", time_length=tf_ffjord.EndTime(0.5))

  #### References

  [1]: Will Grathwohl, Ricky T. Q. Chen, Jesse Bettencourt, Ilya Sutskever,
       David Duvenaud. FFJORD: Free-form Continuous Dynamics for Scalable
       Reversible Generative Models. ICLR 2019. https://arxiv.org/abs/1810.01367
  [2]: Chris Finlay, Joern-Henrik Jacobsen, Levon Nurbekyan, Adam Oberman. How
       to train your neural ODE. ICML 2020. https://arxiv.org/abs/2002.02798
  """

  def __init__(self, dynamics: Dynamics, time_length: TimeLength = 1.0,
               initial_time: float = 0.0,
               trace: str | trace_estimators.TraceEstimator = "hutchinson",
               solver: Any = "dopri5",
               adjoint: str | solvers.Adjoint = "auto",
               jit_compile: bool | str = "auto",
               event_shape: ShapeLike | None = None, event_ndims: int = 1,
               validate_args: bool = False, name: str = "ffjord",
               **removed: Any) -> None:
    parameters = dict(locals())
    loose_options.reject_loose(parameters.pop("removed"),
                               owner=type(self).__name__)
    if not callable(dynamics):
      raise contract.DynamicsError(
          f"{contract.CONTRACT}; got {type(dynamics).__name__}, which is not "
          "callable.")
    estimator = trace_estimators.make_estimator(trace)
    solver = solvers.make_solver(solver)
    solvers.choose_adjoint(solver, adjoint)  # validates the pair
    solvers.use_xla(jit_compile, 0, 1)  # validates the option
    with tf.name_scope(name) as scope:
      self._dynamics = dynamics
      # Variables that neither Keras nor tf.Module tracking sees (a function
      # closing over a net), found by the first call on zeros (`_probe`).
      object.__setattr__(self, "_found_variables", [])
      object.__setattr__(self, "_probed", False)
      # Eager calls' tf.functions (`inputs.eager_call`): no state to save.
      object.__setattr__(self, "_eager_solves", {})
      self._time_length = end_time.resolve(time_length)
      self._initial_time, self._trace = float(initial_time), estimator
      self._solver, self._adjoint = solver, adjoint
      self._jit_compile = jit_compile
      self._event_ndims = int(event_ndims)
      object.__setattr__(self, "_event_shape", inputs.declared_event_shape(
          event_shape, self._event_ndims))
      # The backward NFE of the last gradient: the adjoint's custom gradient
      # returns only gradients, so it reports through this variable. ON_READ
      # so that each replica keeps its own count under tf.distribute.
      with tf.init_scope():
        self._nfe_backward = tf.Variable(
            0, dtype=tf.int32, trainable=False, name="nfe_backward",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      super().__init__(forward_min_event_ndims=self._event_ndims,
                       is_constant_jacobian=False,
                       validate_args=validate_args, parameters=parameters,
                       name=scope)
      self._build_declared()
      self._expose_variables()

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def dynamics(self) -> Dynamics:
    return self._dynamics

  @property
  def keras_layers(self) -> tuple[keras.layers.Layer, ...]:
    """The Keras layers this bijector reads: its dynamics and learned T.

    A Keras model that holds the bijector must track these to train, save
    and checkpoint their weights (Keras does not look inside a `tf.Module`).
    """
    return tuple(obj for obj in (self._dynamics, self._time_length)
                 if isinstance(obj, keras.layers.Layer))

  def _expose_variables(self):
    """Puts the Keras weights where `tf.Module` variable tracking looks.

    Runs at construction and whenever a solve may have built the dynamics.
    object.__setattr__ skips tf.Module's checkpoint tracking: checkpoints
    already hold these weights through the Keras layers themselves.
    """
    object.__setattr__(self, "_keras_variables",
                       tracking.backing_variables(self.keras_layers)
                       + self._found_variables)

  @property
  def time_length(self) -> tf.Tensor:
    """The end time T as a tensor."""
    return end_time.as_tensor(self._time_length)

  @property
  def initial_time(self) -> float:
    """t0, the time of the data end (a float)."""
    return self._initial_time

  @property
  def trace(self) -> trace_estimators.TraceEstimator:
    """The trace estimator (a `trace_estimators.TraceEstimator`; it equals its name)."""
    return self._trace

  @property
  def solver(self) -> solvers.ODESolver:
    """The `solvers.ODESolver` (a `Solver` or a `TFPSolver`)."""
    return self._solver

  @property
  def adjoint(self) -> str | solvers.Adjoint:
    """How gradients are computed: an `Adjoint`, or `"adjoint"`, `"interpolated"` or `"backprop"`.

    Under `"auto"` an adaptive solve may still take the interpolated adjoint
    per solve (see `solvers.choose_adjoint`); this names the fallback.
    """
    if self._adjoint != "auto":
      return self._adjoint
    chosen = solvers.choose_adjoint(self._solver, "auto", xla_loop=True)
    return "backprop" if chosen is solvers.Backprop else "adjoint"

  @property
  def nfe_backward(self) -> tf.Variable:
    """Dynamics evaluations of the last gradient's backward solve (a variable).

    Set by the adjoint when a gradient is taken (0 under `"backprop"`, which
    has no backward solve). The forward NFE is `Solution.nfe`.
    """
    return self._nfe_backward

  def _is_increasing(self):
    return False

  # -- the solve ---------------------------------------------------------

  def _check_input(self, x):
    """`x` checked and cast (`inputs.check_input`); pins the event shape."""
    expected = inputs.event_shape(self._event_shape, self._event_ndims,
                                  self._dynamics)
    x = inputs.check_input(x, expected, self._dynamics)
    if not expected.is_fully_defined():
      object.__setattr__(self, "_event_shape",
                         x.shape[x.shape.rank - self._event_ndims:])
    return x

  def solve(self, x: TensorLike, direction: str = "inverse",
            context: TensorLike | None = None, seed: SeedLike = None,
            regularizers: Iterable[RegularizerLike] = ()) -> Solution:
    """Integrates the flow once and returns a `Solution`.

    Checks the input once (`inputs.check_input`), then runs `_solve`:
    eagerly through one cached `tf.function` per call signature
    (`inputs.eager_call`), in a graph directly. `_solve` builds the
    dynamics (`_build_dynamics`), sets up the augmented ODE
    (`augmented_ode.AugmentedODE`) and integrates it with the solver.

    Args:
      x: `[*batch, *event]` start state: data for `"inverse"`, base samples
        for `"forward"`.
      direction: `"inverse"` (data -> base, t: t0 -> t0 + T) or `"forward"`.
      context: optional conditioning tensor, passed to the dynamics.
      seed: optional stateless seed of the trace estimator's noise.
      regularizers: names from `tf_ffjord.cnf.regularizers.REGULARIZERS` to
        integrate along this solve (RNODE penalties, in
        `Solution.regularization`). They are extra states with error weight
        0: step sizes, NFE and the solution do not change.

    Returns:
      A `Solution`; `log_det` is log|det d state/d x| and `nfe` the forward
      solve's evaluations (the backward NFE of a gradient is `nfe_backward`).

    Raises:
      ValueError: a wrong event shape or rank, a dtype that is not a real
        number (see `tf_ffjord.validation`), or an unknown regularizer.
      InvalidArgumentError: non-finite input, a solve beyond the solver's
        step limit, or NaN/inf met in the solve.
    """
    one_solve.check_direction(direction)
    checked = regs.check(regularizers, self._trace)
    x = self._check_input(x)
    if tf.executing_eagerly():  # one cached tf.function, not a retrace per call
      return inputs.eager_call(self._solve, self._eager_solves, x,
                               self._event_ndims, direction, context, seed,
                               checked)
    return self._solve(x, direction, context, seed, checked)

  def _solve(self, x, direction, context, seed, regularizers):
    """The solve of a checked input, in a graph (see `solve`)."""
    y0, batch_shape = augmented_ode.flatten_batch(x, self._event_ndims)
    context = augmented_ode.flatten_context(context, y0, x.shape.rank,
                                        self._event_ndims)
    self._build_dynamics(y0.shape[1:], y0.dtype,
                         None if context is None else context.shape[1:])
    dtype = y0.dtype
    ode = augmented_ode.AugmentedODE(
        self._dynamics, self._trace,
        self._trace.sample(tf.shape(y0), dtype, seed), direction,
        tf.constant(self._initial_time, dtype), self._event_ndims, regularizers)
    constants = {"time_length": tf.cast(self.time_length, dtype)}
    if context is not None:
      constants["context"] = context
    result = self._integrate(ode, ode.initial_state(y0), constants)
    final = result.state
    self._expose_variables()  # dynamics of unknown event shape build in it
    y1 = tf.debugging.assert_all_finite(
        final[0], "FFJORD: the ODE solve produced NaN or inf")
    return Solution(
        state=tf.reshape(y1, tf.shape(x)),
        log_det=tf.reshape(final[1], batch_shape),
        regularization={r.name: tf.reshape(v, batch_shape)
                        for r, v in zip(regularizers, final[2:])},
        nfe=result.nfe)

  def _build_declared(self):
    """Builds Keras dynamics now if the event shape is known (`inputs.declared_build`)."""
    args = inputs.declared_build(self._dynamics, inputs.event_shape(
        self._event_shape, self._event_ndims, self._dynamics))
    if args is not None:
      self._build_dynamics(*args)

  def _build_dynamics(self, event_shape, dtype, context_shape=None):
    """Builds lazy dynamics and finds their variables (`inputs.build_dynamics`)."""
    found = inputs.build_dynamics(self._dynamics, event_shape, dtype,
                                  context_shape, probed=self._probed)
    if found is not None:
      object.__setattr__(self, "_found_variables", found)
      object.__setattr__(self, "_probed", True)
    self._expose_variables()

  def _integrate(self, ode, state0, constants):
    """Solves the augmented ODE over s in [0, 1] with the solver; returns a `solvers.Result`."""
    y0 = state0[0]
    xla = self._use_xla(y0)
    options = solvers.SolveOptions(
        adjoint=self._adjoint_for(xla), error_weights=ode.error_weights(),
        jit_compile=xla, jit_compile_backward=xla and not self._trace.uses_pfor(
            y0.shape[1:].num_elements()), nfe_backward=self._nfe_backward)
    return self._solver.integrate(ode, state0, 0.0, 1.0, constants, options)

  def _adjoint_for(self, xla):
    """The adjoint instance of one solve (`solvers.choose_adjoint`), or None."""
    adjoint = solvers.choose_adjoint(self._solver, self._adjoint,
                                     xla_loop=xla)
    return adjoint() if isinstance(adjoint, type) else adjoint

  def _use_xla(self, y0):
    """Resolves `jit_compile` for this solve (see `solvers.use_xla`)."""
    if self._jit_compile in (True, False):
      return self._jit_compile
    return solvers.use_xla(
        "auto", solvers.xla.num_weights(self._dynamics), y0.shape[0],
        self._event_ndims, solvers.xla.device_type(y0))
