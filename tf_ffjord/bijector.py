"""`FFJORD`: a continuous normalizing flow as a `tfp.bijectors.Bijector`."""

import collections
import dataclasses

import keras
import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

from tf_ffjord import bijector_input
from tf_ffjord import divergence
from tf_ffjord.end_time import EndTime
from tf_ffjord import regularizers as regs
from tf_ffjord import solvers

__all__ = ["FFJORD", "Solution"]

tfb = tfp.bijectors

Solution = collections.namedtuple(
    "Solution", ["state", "log_det", "regularization", "nfe"])
Solution.__doc__ = """Result of one FFJORD solve.

Fields:
  state: the end state, shaped like the input.
  log_det: log |det d state / d input|, one value per example.
  regularization: dict name -> integral of the regularizer, per example.
  nfe: dynamics evaluations of this solve (int32 scalar).
"""

GRADIENTS = ("auto", "adjoint", "interpolated", "backprop")


class FFJORD(tfb.Bijector):
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
    trace: `"hutchinson"` or `"exact"`.
    noise: Hutchinson probe, `"rademacher"` or `"gaussian"`.
    solver: `"dopri5"`, `"bdf"`, `"rk4"`, `"midpoint"`, `"euler"`, or a
      `tfp.math.ode.Solver` instance (solved through its public `solve`,
      differentiated by TFP's adjoint).
    rtol: relative tolerance (adaptive solvers).
    atol: absolute tolerance (adaptive solvers).
    max_num_steps: step limit of adaptive solvers; exceeding it raises.
    step_size: step of the fixed-grid solvers on the unit interval.
    gradient: `"adjoint"` (the seminorm adjoint: memory constant in the
      number of steps), `"interpolated"` (an adjoint that reads the state
      from the forward solve's dense output, so its backward solve controls
      the adjoint only and takes fewer steps; a few state-sized tensors per
      forward step, and the forward loop runs without XLA; `"dopri5"`
      only), `"backprop"` (through the solver's operations), or `"auto"`:
      backprop for fixed-grid solvers; for adaptive ones, per solve, the
      interpolated adjoint where the forward loop runs without XLA and no
      XLA compile surrounds the solve, else the adjoint.
      A `tfp.math.ode.Solver` always uses TFP's adjoint.
    jit_compile: `True`, `False` or `"auto"`: whether the forward integration
      loop and the adjoint's backward loop run as XLA-compiled functions
      inside whatever graph calls the bijector (so a plain `tf.function`
      around `log_prob` gets XLA; the backward loop of an exact trace over
      more than 16 dimensions runs plain, see `divergence.exact`). `"auto"`
      decides per solve
      with `tf_ffjord.solvers.use_xla`: on for GPUs; on CPU on for dense
      dynamics whose weights x batch is small, off for convolutional ones
      (see its docstring for the measurements).
    event_ndims: number of event dimensions (1 for vectors, 3 for images).
    event_shape: the shape of one event, e.g. `[2]`; `None` takes it from
      dynamics that know it (a built `ODENet`) or else from the first call.
      Once known, a call of another shape raises a `ValueError` naming both
      and leaves the flow unchanged (see `tf_ffjord.bijector_input`).
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
  _cache = cache_util.BijectorCacheWithGreedyAttrs(
      forward_name="_augmented_forward", inverse_name="_augmented_inverse")

  def __init__(self, dynamics, time_length=1.0, train_time=False,
               initial_time=0.0, trace="hutchinson", noise="rademacher",
               solver="dopri5", rtol=1e-5, atol=1e-5, max_num_steps=1000,
               step_size=0.25, gradient="auto", jit_compile="auto",
               event_ndims=1, event_shape=None, validate_args=False,
               name="ffjord"):
    parameters = dict(locals())
    if not callable(dynamics):
      raise TypeError("dynamics must be callable as f(t, z[, context]).")
    if trace not in divergence.TRACES:
      raise ValueError(f"Unknown trace {trace!r}; expected one of "
                       f"{divergence.TRACES}.")
    if noise not in divergence.NOISES:
      raise ValueError(f"Unknown noise {noise!r}; expected one of "
                       f"{divergence.NOISES}.")
    if gradient not in GRADIENTS:
      raise ValueError(f"Unknown gradient {gradient!r}; expected one of "
                       f"{GRADIENTS}.")
    solvers.use_xla(jit_compile, 0, 1)  # validates the option
    if isinstance(time_length, (int, float)) and not time_length > 0:
      raise ValueError(f"time_length must be positive, got {time_length}.")
    if train_time and not isinstance(time_length, (int, float, EndTime)):
      raise ValueError(
          "train_time=True learns a float time_length (or takes an EndTime); "
          f"got {type(time_length).__name__}. Pass a float, or pass your own "
          "trainable variable with train_time=False.")
    with tf.name_scope(name) as scope:
      self._dynamics = dynamics
      if train_time and isinstance(time_length, (int, float)):
        time_length = EndTime(float(time_length), name=f"{name}_end_time")
        # Copies rebuild from `parameters`: give them the variable, not the
        # float it started from.
        parameters["time_length"] = time_length
      self._time_length = time_length
      self._initial_time = float(initial_time)
      self._trace = trace
      self._noise = noise
      self._solver = solvers.make_solver(
          solver, rtol=rtol, atol=atol, max_num_steps=max_num_steps,
          step_size=step_size)
      ours = isinstance(self._solver, solvers.Solver)
      # "auto" on adaptive steps picks the adjoint per solve (see `_adjoint_for`).
      self._auto_adjoint = gradient == "auto" and ours and self._solver.adaptive
      if gradient == "auto":
        gradient = ("adjoint" if not ours or self._solver.adaptive
                    else "backprop")
      if gradient == "backprop" and not ours:
        raise ValueError("gradient='backprop' needs one of tf_ffjord's "
                         "solvers; a tfp.math.ode.Solver differentiates by "
                         "its own adjoint (use gradient='adjoint').")
      if gradient == "interpolated" and not (ours and self._solver.adaptive):
        raise ValueError("gradient='interpolated' needs solver='dopri5' (it "
                         "reads the state from dopri5's dense output).")
      self._gradient = gradient
      self._jit_compile = jit_compile
      self._event_ndims = int(event_ndims)
      self._event_shape = None if event_shape is None else tf.TensorShape(
          event_shape)
      if (self._event_shape is not None
          and self._event_shape.rank != self._event_ndims):
        raise ValueError(f"event_shape {event_shape} must have event_ndims="
                         f"{self._event_ndims} dimensions.")
      # The backward NFE of the last gradient: the adjoint's custom gradient
      # returns only gradients, so it reports through this variable. ON_READ
      # so that each replica keeps its own count under tf.distribute.
      with tf.init_scope():
        self._nfe_backward = tf.Variable(
            0, dtype=tf.int32, trainable=False, name="nfe_backward",
            synchronization=tf.VariableSynchronization.ON_READ,
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
      report = self._nfe_backward.assign
      self._adjoint = {
          "adjoint": solvers.BacksolveAdjoint(on_backward_nfe=report),
          "interpolated": solvers.InterpolatedAdjoint(on_backward_nfe=report),
      }.get(gradient, solvers.Backprop())
      self._interpolated = solvers.InterpolatedAdjoint(on_backward_nfe=report)
      super().__init__(forward_min_event_ndims=self._event_ndims,
                       is_constant_jacobian=False,
                       validate_args=validate_args, parameters=parameters,
                       name=scope)
      self._expose_variables()

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def dynamics(self):
    return self._dynamics

  @property
  def keras_layers(self):
    """The Keras layers this bijector reads: its dynamics and learned T.

    A Keras model that holds the bijector must track these to train, save
    and checkpoint their weights (Keras does not look inside a `tf.Module`).
    """
    return tuple(obj for obj in (self._dynamics, self._time_length)
                 if isinstance(obj, keras.layers.Layer))

  def _expose_variables(self):
    """Puts the Keras weights where `tf.Module` variable tracking looks.

    `tf.Module` collects variables by walking instance attributes, and a
    Keras 3 layer is neither a `tf.Module` nor a `tf.Variable`: without this,
    `TransformedDistribution(base, FFJORD(keras_net)).trainable_variables`
    is empty and TFP's canonical training loop silently trains nothing. The
    list holds each Keras weight's backing `tf.Variable`; the weights of a
    frozen (`trainable=False`) Keras layer are left out, since their backing
    variables still say trainable. Runs at construction and after every
    solve, which builds lazily-built dynamics.
    """
    found = []
    for layer in self.keras_layers:
      frozen = {id(w) for w in layer.non_trainable_weights}
      for w in layer.weights:
        var = w.value
        if not isinstance(var, tf.Variable):
          continue
        if id(w) in frozen and var.trainable:
          continue
        found.append(var)
    # object.__setattr__ skips tf.Module's checkpoint tracking: checkpoints
    # already hold these weights through the Keras layers themselves.
    object.__setattr__(self, "_keras_variables", found)

  @property
  def time_length(self):
    """The end time T as a tensor."""
    if isinstance(self._time_length, EndTime):
      return self._time_length.length
    if callable(self._time_length):
      return tf.convert_to_tensor(self._time_length())
    return tf.convert_to_tensor(self._time_length)

  @property
  def initial_time(self):
    """t0, the time of the data end (a float)."""
    return self._initial_time

  @property
  def trace(self):
    return self._trace

  @property
  def solver(self):
    return self._solver

  @property
  def gradient(self):
    """How gradients are computed: `"adjoint"`, `"interpolated"` or `"backprop"`."""
    return self._gradient

  @property
  def nfe_backward(self):
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

  def solve(self, x, direction="inverse", context=None, seed=None,
            regularizers=()):
    """Integrates the flow once and returns a `Solution`.

    Args:
      x: `[*batch, *event]` start state: data for `"inverse"`, base samples
        for `"forward"`.
      direction: `"inverse"` (data -> base, t: t0 -> t0 + T) or `"forward"`.
      context: optional conditioning tensor, passed to the dynamics.
      seed: optional stateless seed of the Hutchinson probe.
      regularizers: names from `tf_ffjord.regularizers.REGULARIZERS` to
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
    regularizers = tuple(regularizers)
    for r in regularizers:
      if r not in regs.REGULARIZERS:
        raise ValueError(f"Unknown regularizer {r!r}; expected one of "
                         f"{regs.REGULARIZERS}.")
      if r == "jacobian" and self._trace != "hutchinson":
        raise ValueError("The 'jacobian' regularizer needs trace="
                         "'hutchinson'.")
    if tf.executing_eagerly():  # one cached tf.function, not a retrace per call
      return bijector_input.eager_solve(self, x, direction, context, seed,
                                        regularizers)
    if bijector_input.pads_empty_batches(self, x):  # TFP solvers: see there
      return bijector_input.solve_padded(self, x, direction, context, seed,
                                         regularizers)
    x = self._check_input(x, context)
    dtype = x.dtype
    shape = tf.shape(x)
    event_shape = x.shape[x.shape.rank - self._event_ndims:]
    batch_shape = shape[:x.shape.rank - self._event_ndims]
    y0 = tf.reshape(x, tf.concat([[-1], event_shape], 0))
    batch = tf.shape(y0)[0]
    if context is not None:
      context = tf.convert_to_tensor(context, dtype=dtype)
      if context.shape.rank is not None and context.shape.rank > 1:
        rank, width = context.shape.rank, context.shape[-1]
        context = tf.reshape(context, [batch, -1])
        if rank == 2 and x.shape.rank - self._event_ndims == 1:
          # Keep the static width through a dynamic batch (layers check it).
          context.set_shape([None, width])

    time_length = tf.cast(self.time_length, dtype)
    t0 = tf.constant(self._initial_time, dtype)
    sign = 1.0 if direction == "inverse" else -1.0
    eps = None
    if self._trace == "hutchinson":
      eps = divergence.sample_noise(tf.shape(y0), dtype, self._noise, seed)
    dynamics = self._dynamics
    event_ndims = self._event_ndims
    trace = self._trace
    ours = isinstance(self._solver, solvers.Solver)
    counter = None if ours else self._nfe_backward

    def ode_fn(s, state, time_length, context=None):
      y = state[0]
      t = t0 + (s if sign > 0 else 1.0 - s) * time_length
      scale = sign * time_length
      if context is None:
        fn = lambda z: scale * dynamics(t, z)
      else:
        fn = lambda z: scale * dynamics(t, z, context)
      if trace == "hutchinson":
        f, tr, vjp = divergence.hutchinson(fn, y, eps, event_ndims)
      else:
        f, tr, vjp = divergence.exact(fn, y, event_ndims)
      if counter is not None:
        # A tfp.math.ode.Solver's adjoint reports no NFE: count the backward
        # evaluations (the counter is reset after the forward solve).
        with tf.control_dependencies([counter.assign_add(1)]):
          f = tf.identity(f)
      out = [f, tr]
      if regularizers:
        # Regularizers are integrals over t, the solve runs over s = t / T.
        f_t = f / scale
        vjp_t = None if vjp is None else vjp / scale
        out += [regs.rate(r, f_t, vjp_t) * time_length for r in regularizers]
      return out

    state0 = [y0, tf.zeros([batch], dtype)]
    state0 += [tf.zeros([batch], dtype) for _ in regularizers]
    constants = {"time_length": time_length}
    if context is not None:
      constants["context"] = context
    if ours:
      method, controller = self._solver
      if self._solver.adaptive:
        # Regularizer integrals need no step size control: weight 0.
        controller = dataclasses.replace(
            controller, error_weights=(1.0, 1.0) + (0.0,) * len(regularizers))
      xla = self._use_xla(y0, context)
      result = solvers.solve(
          ode_fn, state0, 0.0, 1.0, constants=constants, method=method,
          controller=controller, adjoint=self._adjoint_for(xla),
          jit_compile=xla,
          jit_compile_backward=xla and not divergence.uses_pfor(
              self._trace, y0.shape[1:].num_elements()))
    else:
      result = solvers.solve_tfp(self._solver, ode_fn, state0, 0.0, 1.0,
                                 constants=constants)
      with tf.control_dependencies(tf.nest.flatten(result.state)):
        reset = counter.assign(0)
      with tf.control_dependencies([reset]):
        result = result._replace(state=[tf.identity(v) for v in result.state])
    final = result.state
    y1 = tf.debugging.assert_all_finite(
        final[0], "FFJORD: the ODE solve produced NaN or inf")
    self._expose_variables()  # the first call may have built the dynamics
    return Solution(
        state=tf.reshape(y1, shape),
        log_det=tf.reshape(final[1], batch_shape),
        regularization={r: tf.reshape(v, batch_shape)
                        for r, v in zip(regularizers, final[2:])},
        nfe=result.nfe)

  def _adjoint_for(self, xla):
    """The adjoint of one solve.

    Under `gradient="auto"` with adaptive steps: the interpolated adjoint
    where the forward loop runs plain and no XLA compile surrounds it (its
    backward solve takes fewer steps; its recording loop cannot be
    compiled), else the backsolve adjoint.
    """
    if self._auto_adjoint and not xla and not solvers.xla.in_xla_context():
      return self._interpolated
    return self._adjoint

  def _use_xla(self, y0, context):
    """Resolves `jit_compile` for this solve (see `solvers.use_xla`)."""
    if self._jit_compile in (True, False):
      return self._jit_compile
    dynamics = self._dynamics
    if getattr(dynamics, "built", True) is False and y0.shape[1:].is_fully_defined():
      # Build the net eagerly, so its size is known and its weights are not
      # created inside the compiled loop.
      with tf.init_scope():
        z = tf.zeros([1, *y0.shape[1:]], y0.dtype)
        t = tf.zeros([], y0.dtype)
        if context is None:
          dynamics(t, z)
        elif context.shape[1:].is_fully_defined():
          dynamics(t, z, tf.zeros([1, *context.shape[1:]], y0.dtype))
    return solvers.use_xla(
        "auto", solvers.xla.num_weights(dynamics), y0.shape[0],
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
