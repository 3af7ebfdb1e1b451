"""`FFJORD`: a continuous normalizing flow as a `tfp.bijectors.Bijector`."""

from collections.abc import Iterable
import dataclasses
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import _internal_apis
from tf_ffjord._types import (Dynamics, SeedLike, ShapeLike, TensorLike,
                              TimeLength)
from tf_ffjord.cnf.regularizers import RegularizerLike
from tf_ffjord.cnf import augmented_ode as augmented
from tf_ffjord.cnf import inputs as bijector_input
from tf_ffjord.cnf import contract
from tf_ffjord.cnf import trace_estimators as divergence
from tf_ffjord.cnf import end_time
from tf_ffjord.cnf import regularizers as regs
from tf_ffjord import solvers
from tf_ffjord.cnf import tracking
from tf_ffjord.cnf.augmented_ode import Solution

__all__ = ["FFJORD", "Solution"]

tfb = tfp.bijectors

GRADIENTS = solvers.GRADIENTS


class FFJORD(tfp.bijectors.Bijector):
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
    time_length: positive T: a float, a tensor, a variable, an `EndTime`, or
      a zero-argument callable returning a scalar tensor (read at every
      solve, so it may wrap a variable owned elsewhere).
    train_time: learn T: a float `time_length` becomes an `EndTime` (a
      softplus-parameterized Keras weight, so T stays > 0); `copy()` and
      `parameters` carry that `EndTime` itself, so copies share the
      learned value.
    initial_time: t0, the time of the data end.
    trace: a `divergence.TraceEstimator` (`Exact()`, `Hutchinson(noise,
      probes)` or your own subclass), or a name: `"hutchinson"` (with
      `noise`) or `"exact"`.
    noise: Hutchinson probe of the name `"hutchinson"`, `"rademacher"` or
      `"gaussian"`.
    solver: a name (`"dopri5"`, `"tsit5"`, `"bosh3"`, `"bdf"`, `"rk4"`,
      `"midpoint"`, `"euler"`), a `solvers.Tableau` (your own method), a
      `solvers.Solver(method, controller)`, or a `tfp.math.ode.Solver`
      instance (solved through its public `solve`, differentiated by TFP's
      adjoint). See `solvers.make_solver`.
    rtol: relative tolerance of a named (or bare `Tableau`) adaptive solver.
    atol: absolute tolerance, likewise.
    max_num_steps: step limit, likewise; exceeding it raises.
    step_size: step of a named fixed-grid solver on the unit interval.
      These four loose options apply to names and bare tableaux only: a
      solver object carries its own controller.
    gradient: `"adjoint"` (the seminorm adjoint, memory constant in the
      number of steps), `"interpolated"` (reads the state from the forward
      solve's dense output: fewer backward steps, a few state-sized tensors
      per forward step, no XLA on the forward loop; adaptive methods with
      `b_mid`, e.g. dopri5), `"backprop"`, or `"auto"`, decided per solve
      by `solvers.choose_adjoint`. A `tfp.math.ode.Solver` always uses TFP's
      adjoint.
    jit_compile: `True`, `False` or `"auto"`: whether the forward and the
      adjoint's backward integration loops run XLA-compiled inside whatever
      graph calls the bijector (so a plain `tf.function` around `log_prob`
      gets XLA; not the backward loop of an estimator that `uses_pfor`).
      `"auto"` decides per solve by `solvers.use_xla`: on for GPUs; on CPU
      for dense dynamics whose weights x batch is small, off for conv ones.
    event_ndims: number of event dimensions (1 for vectors, 3 for images).
    event_shape: the shape of one event, e.g. `[2]`; `None` takes it from
      dynamics that know it (a built `ODENet`) or else from the first call.
      Once known, a call of another shape raises a `ValueError` naming both
      and leaves the flow unchanged (see `tf_ffjord.cnf.inputs`).
    validate_args: passed to `tfb.Bijector`.
    name: name scope.

  Raises:
    ValueError: an unknown option, a non-positive time length, or
      `train_time` with a time length that is neither a number nor an
      `EndTime`.

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

  #### References

  [1]: Will Grathwohl, Ricky T. Q. Chen, Jesse Bettencourt, Ilya Sutskever,
       David Duvenaud. FFJORD: Free-form Continuous Dynamics for Scalable
       Reversible Generative Models. ICLR 2019. https://arxiv.org/abs/1810.01367
  [2]: Chris Finlay, Joern-Henrik Jacobsen, Levon Nurbekyan, Adam Oberman. How
       to train your neural ODE. ICML 2020. https://arxiv.org/abs/2002.02798
  """

  # One solve gives both the state and its log-det; the greedy cache stores
  # the log-det next to the state, so log_prob costs a single solve.
  _cache = _internal_apis.greedy_bijector_cache(
      forward_name="_augmented_forward", inverse_name="_augmented_inverse")

  def __init__(self, dynamics: Dynamics, time_length: TimeLength = 1.0,
               train_time: bool = False, initial_time: float = 0.0,
               trace: str | divergence.TraceEstimator = "hutchinson",
               noise: str = "rademacher",
               solver: str | solvers.Tableau | solvers.Solver
               | tfp.math.ode.Solver = "dopri5",
               rtol: float = 1e-5, atol: float = 1e-5,
               max_num_steps: int | None = 1000, step_size: float = 0.25,
               gradient: str = "auto", jit_compile: bool | str = "auto",
               event_ndims: int = 1, event_shape: ShapeLike | None = None,
               validate_args: bool = False, name: str = "ffjord") -> None:
    parameters = dict(locals())
    if not callable(dynamics):
      raise contract.DynamicsError(
          f"{contract.CONTRACT}; got {type(dynamics).__name__}, which is not "
          "callable.")
    estimator = divergence.make_estimator(trace, noise)
    solver = solvers.make_solver(
        solver, rtol=rtol, atol=atol, max_num_steps=max_num_steps,
        step_size=step_size)
    solvers.choose_adjoint(solver, gradient)  # validates the pair
    solvers.use_xla(jit_compile, 0, 1)  # validates the option
    with tf.name_scope(name) as scope:
      self._dynamics = dynamics
      # Variables that neither Keras nor tf.Module tracking sees (a function
      # closing over a net), found by the first call on zeros (`_probe`).
      object.__setattr__(self, "_found_variables", [])
      object.__setattr__(self, "_probed", False)
      # Copies rebuild from `parameters`: give them a learned T itself, not
      # the float it started from.
      self._time_length = parameters["time_length"] = end_time.resolve(
          time_length, train_time, name=f"{name}_end_time")
      self._initial_time = float(initial_time)
      self._trace = estimator
      self._solver = solver
      self._requested_gradient = gradient
      self._jit_compile = jit_compile
      self._event_ndims = int(event_ndims)
      self._event_shape = bijector_input.declared_event_shape(
          event_shape, self._event_ndims)
      # The backward NFE of the last gradient: the adjoint's custom gradient
      # returns only gradients, so it reports through this variable. ON_READ
      # so that each replica keeps its own count under tf.distribute.
      with tf.init_scope():
        self._nfe_backward = tf.Variable(
            0, dtype=tf.int32, trainable=False, name="nfe_backward",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      report = self._nfe_backward.assign
      # One instance per adjoint class, built once (choose_adjoint picks).
      # (keyed by class name: tf.Module's variable search sorts the keys).
      self._adjoints: dict[str, Any] = {
          cls.__name__: cls(on_backward_nfe=report) for cls in (
              solvers.BacksolveAdjoint, solvers.InterpolatedAdjoint)}
      self._adjoints["Backprop"] = solvers.Backprop()
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
  def trace(self) -> divergence.TraceEstimator:
    """The trace estimator (a `divergence.TraceEstimator`; it equals its name)."""
    return self._trace

  @property
  def solver(self) -> solvers.Solver | tfp.math.ode.Solver:
    return self._solver

  @property
  def gradient(self) -> str:
    """How gradients are computed: `"adjoint"`, `"interpolated"` or `"backprop"`.

    Under `"auto"` an adaptive solve may still take the interpolated adjoint
    per solve (see `solvers.choose_adjoint`); this names the fallback.
    """
    if self._requested_gradient != "auto":
      return self._requested_gradient
    adjoint = solvers.choose_adjoint(self._solver, "auto", xla_loop=True)
    return "backprop" if adjoint is solvers.Backprop else "adjoint"

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

  def _check_input(self, x, context=None):
    return bijector_input.check_input(self, x, context)

  def solve(self, x: TensorLike, direction: str = "inverse",
            context: TensorLike | None = None, seed: SeedLike = None,
            regularizers: Iterable[RegularizerLike] = ()) -> Solution:
    """Integrates the flow once and returns a `Solution`.

    The steps: check the input, flatten it to `[batch, *event]`, build the
    dynamics for its event shape (`_build_dynamics`), set up the augmented
    ODE (`augmented.AugmentedODE`: state, log-det, regularizer integrals),
    integrate it (`_integrate`), and reshape the end state back.

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
      InvalidArgumentError: non-finite input, a solve beyond `max_num_steps`,
        or NaN/inf met in the solve.
    """
    if direction not in ("inverse", "forward"):
      raise ValueError(f"direction must be 'inverse' or 'forward', got "
                       f"{direction!r}.")
    checked = regs.check(regularizers, self._trace)
    if tf.executing_eagerly():  # one cached tf.function, not a retrace per call
      return bijector_input.eager_solve(self, x, direction, context, seed,
                                        checked)
    if bijector_input.pads_empty_batches(self, x):  # TFP solvers: see there
      return bijector_input.solve_padded(self, x, direction, context, seed,
                                         checked)
    x = self._check_input(x, context)
    y0, batch_shape = augmented.flatten_batch(x, self._event_ndims)
    context = augmented.flatten_context(context, y0, x.shape.rank,
                                        self._event_ndims)
    self._build_dynamics(y0.shape[1:], y0.dtype,
                         None if context is None else context.shape[1:])
    dtype = y0.dtype
    ours = isinstance(self._solver, solvers.Solver)
    ode = augmented.AugmentedODE(
        self._dynamics, self._trace,
        self._trace.sample(tf.shape(y0), dtype, seed), direction,
        tf.constant(self._initial_time, dtype), self._event_ndims,
        checked,
        on_evaluation=None if ours else
        lambda: self._nfe_backward.assign_add(1))
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
                        for r, v in zip(checked, final[2:])},
        nfe=result.nfe)

  def _build_declared(self):
    """Builds Keras dynamics now if the event shape is known (`event_shape=`, `dim`).

    Then `optimizer.build(dist.trainable_variables)` works before the first
    call, a train step's `tf.function` that creates no variables traces
    once, not twice, and a net that breaks the contract says so at once.
    Our nets know their context width; a user's net is built without a
    context unless its call needs one (then the first solve builds it).
    """
    if not isinstance(self._dynamics, keras.layers.Layer):
      return  # a function's dtype is known at the first solve only
    shape = bijector_input.event_shape(self)
    context_dim = getattr(self._dynamics, "context_dim", None)
    if context_dim is None:  # a user's net
      try:
        contract.check_signature(self._dynamics, with_context=False)
      except contract.DynamicsError:
        return
      context_dim = 0
    if shape.is_fully_defined():
      self._build_dynamics(shape, getattr(
          self._dynamics, "variable_dtype", None) or tf.float32,
                           [context_dim] if context_dim else None)

  def _build_dynamics(self, event_shape, dtype, context_shape=None):
    """Builds lazy dynamics, checks their contract, finds their variables.

    Keras nets that are not built yet, and once any other dynamics, are
    called on zeros outside any graph (`contract.probe`): weights are never
    created in a compiled loop, they decide `jit_compile="auto"`, and they
    are exposed to TFP's variable tracking with those a function reads.
    """
    # Once per trace (not per eager call): the signature the solve will use.
    contract.check_signature(self._dynamics, context_shape is not None)
    event_shape = tf.TensorShape(event_shape)
    if not event_shape.is_fully_defined() or not (
        context_shape is None
        or tf.TensorShape(context_shape).is_fully_defined()):
      return
    dynamics = self._dynamics
    if isinstance(dynamics, keras.layers.Layer):
      if not dynamics.built:
        contract.probe(dynamics, event_shape, dtype, context_shape)
    elif not self._probed:
      read = contract.probe(dynamics, event_shape, dtype, context_shape)
      own = {id(v) for v in getattr(dynamics, "trainable_variables", ())}
      object.__setattr__(self, "_found_variables",
                         [v for v in read if id(v) not in own])
      object.__setattr__(self, "_probed", True)
      if not read and not own:
        contract.warn_no_variables(dynamics)
    self._expose_variables()

  def _integrate(self, ode, state0, constants):
    """Solves the augmented ODE over s in [0, 1]; returns a `solvers.Result`."""
    if not isinstance(self._solver, solvers.Solver):
      result = solvers.solve_tfp(self._solver, ode, state0, 0.0, 1.0,
                                 constants=constants)
      # ode counted the backward evaluations of TFP's adjoint into
      # nfe_backward: reset it after the forward solve.
      with tf.control_dependencies(tf.nest.flatten(result.state)):
        reset = self._nfe_backward.assign(0)
      with tf.control_dependencies([reset]):
        return result._replace(state=[tf.identity(v) for v in result.state])
    method, controller = self._solver
    if self._solver.adaptive:
      controller = dataclasses.replace(controller,
                                       error_weights=ode.error_weights())
    y0 = state0[0]
    xla = self._use_xla(y0)
    return solvers.solve(
        ode, state0, 0.0, 1.0, constants=constants, method=method,
        controller=controller, adjoint=self._adjoint_for(xla),
        jit_compile=xla,
        jit_compile_backward=xla and not self._trace.uses_pfor(
            y0.shape[1:].num_elements()))

  def _adjoint_for(self, xla):
    """The adjoint instance of one solve (`solvers.choose_adjoint`)."""
    return self._adjoints[solvers.choose_adjoint(
        self._solver, self._requested_gradient, xla_loop=xla).__name__]

  def _use_xla(self, y0):
    """Resolves `jit_compile` for this solve (see `solvers.use_xla`)."""
    if self._jit_compile in (True, False):
      return self._jit_compile
    return solvers.use_xla(
        "auto", solvers.xla.num_weights(self._dynamics), y0.shape[0],
        self._event_ndims, solvers.xla.device_type(y0))

  # -- the Bijector interface -------------------------------------------

  def _augmented(self, x, direction, context=None, seed=None):
    sol = self.solve(x, direction, context=context, seed=seed)
    if direction == "inverse":
      return sol.state, {"ildj": sol.log_det, "fldj": -sol.log_det}
    return sol.state, {"fldj": sol.log_det, "ildj": -sol.log_det}

  def _augmented_forward(self, x, **kwargs):
    return self._augmented(x, "forward", **kwargs)

  def _augmented_inverse(self, y, **kwargs):
    return self._augmented(y, "inverse", **kwargs)

  def _forward(self, x, **kwargs):
    return self._augmented_forward(x, **kwargs)[0]

  def _inverse(self, y, **kwargs):
    return self._augmented_inverse(y, **kwargs)[0]

  def _forward_log_det_jacobian(self, x, **kwargs):
    cached = self._cache.forward_attributes(x, **kwargs)
    if "fldj" not in cached:
      cached.update(self._augmented_forward(x, **kwargs)[1])
    return cached["fldj"]

  def _inverse_log_det_jacobian(self, y, **kwargs):
    cached = self._cache.inverse_attributes(y, **kwargs)
    if "ildj" not in cached:
      cached.update(self._augmented_inverse(y, **kwargs)[1])
    return cached["ildj"]
