"""`TFPFFJORD`: `tf_ffjord.FFJORD` behind the constructor and conventions of `tfp.bijectors.FFJORD`."""

from collections.abc import Callable, Iterable
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord.cnf.regularizers import RegularizerLike
from tf_ffjord.cnf import trace_estimators
from tf_ffjord import solvers
from tf_ffjord._types import DTypeLike, SeedLike, TensorLike, TimeLength
from tf_ffjord.cnf.augmented_ode import Solution
from tf_ffjord.cnf.ffjord import FFJORD
from tf_ffjord.cnf.options import ffjord_arguments

__all__ = ["TFPFFJORD", "AugmentationTrace"]

tfb = tfp.bijectors
_TFP_EXACT = tfb.ffjord.trace_jacobian_exact
_TFP_HUTCHINSON = tfb.ffjord.trace_jacobian_hutchinson


class AugmentationTrace(trace_estimators.TraceEstimator):
  """A `tfp.bijectors.FFJORD` `trace_augmentation_fn` as a trace estimator.

  TFP builds the augmented dynamics once per solve from the function
  `trace_augmentation_fn(ode_fn, state_shape, dtype)` (so a Hutchinson
  probe is drawn once per solve) and sums the unreduced trace it returns
  over the event. This does the same inside `tf_ffjord.FFJORD`: `sample`
  builds the augmented dynamics for the solve, `__call__` evaluates them.

  Args:
    augmentation_fn: `trace_augmentation_fn(ode_fn, state_shape, dtype)`
      returning `augmented(time, (state, log_det))` -> `(dstate, trace)`,
      `trace` of the state's shape.

  #### Examples

  >>> est = AugmentationTrace(tfp.bijectors.ffjord.trace_jacobian_exact)
  >>> fn = lambda y: 3.0 * y
  >>> _, tr, _ = est(fn, tf.ones([2, 4]), est.sample([2, 4], tf.float32))
  >>> tr.numpy().tolist()
  [12.0, 12.0]
  """
  name = "tfp_augmentation"

  def __init__(self, augmentation_fn: Callable[..., Any]) -> None:
    if not callable(augmentation_fn):
      raise TypeError("augmentation_fn must be callable as "
                      "fn(ode_fn, state_shape, dtype).")
    self.augmentation_fn = augmentation_fn

  def sample(self, shape: tf.Tensor, dtype: DTypeLike,
             seed: tf.Tensor | None = None) -> tuple[list, Callable[..., Any]]:
    del seed  # the augmentation function draws its own noise
    # The dynamics of each evaluation close over its time, so the augmented
    # function built here reads the latest one from this cell.
    current: list[Callable[[tf.Tensor], tf.Tensor]] = []
    augmented = self.augmentation_fn(
        lambda time, state, **kwargs: current[-1](state), shape, dtype)
    return current, augmented

  def __call__(self, fn: Callable[[tf.Tensor], tf.Tensor], y: tf.Tensor,
               noise: Any, event_ndims: int = 1,
               ) -> tuple[tf.Tensor, tf.Tensor, None]:
    current, augmented = noise
    current[:] = [fn]
    f, trace = augmented(tf.zeros([], y.dtype), (y, tf.zeros_like(y)))
    axes = list(range(y.shape.rank - event_ndims, y.shape.rank))
    return f, tf.reduce_sum(trace, axis=axes), None

  def uses_pfor(self, event_size: int) -> bool:
    del event_size
    return True  # TFP's own estimators vectorize (pfor) or loop in graph

  def get_config(self) -> dict[str, Any]:
    return {"augmentation_fn": self.augmentation_fn}


def _trace_for(trace_augmentation_fn):
  """Our estimator for TFP's `trace_augmentation_fn` (names and ours pass)."""
  if isinstance(trace_augmentation_fn, (str, trace_estimators.TraceEstimator)):
    return trace_estimators.make_estimator(trace_augmentation_fn)
  if trace_augmentation_fn is _TFP_EXACT:
    return trace_estimators.Exact()
  if trace_augmentation_fn is _TFP_HUTCHINSON:
    # TFP's default: one standard normal probe per solve.
    return trace_estimators.Hutchinson("gaussian")
  if callable(trace_augmentation_fn):
    return AugmentationTrace(trace_augmentation_fn)
  raise TypeError(
      "trace_augmentation_fn must be tfp.bijectors.ffjord.trace_jacobian_exact"
      ", tfp.bijectors.ffjord.trace_jacobian_hutchinson, your own function "
      "fn(ode_fn, state_shape, dtype), a tf_ffjord TraceEstimator or a name "
      f"{trace_estimators.TRACES}; got {trace_augmentation_fn!r}.")


def _solver_for(ode_solve_fn):
  """Our `solver=` for TFP's `ode_solve_fn`."""
  if ode_solve_fn is None:
    return "dopri5"
  adapted = solvers.tfp_solver.adapt(ode_solve_fn)
  if adapted is not None:
    return adapted
  if callable(ode_solve_fn) and not isinstance(ode_solve_fn,
                                               solvers.ODESolver):
    raise NotImplementedError(
        "ode_solve_fn must be the `solve` method of a tfp.math.ode.Solver "
        "(e.g. tfp.math.ode.DormandPrince(rtol=1e-5).solve), a "
        "tfp.math.ode.Solver, or None for tf_ffjord's dopri5; a custom solve "
        f"function is not supported, got {ode_solve_fn!r}. Wrap your method "
        "in a tfp.math.ode.Solver subclass, or pass a tf_ffjord solver name "
        "or Solver (see tf_ffjord.make_solver).")
  return ode_solve_fn  # a name or a tf_ffjord solver: checked later


def _keras_owners(fn, variables_owner):
  """The Keras layers behind the dynamics, for models that hold the flow.

  The layer itself, a bound method's layer, and those named by
  `variables_owner` (the flow's variables are found by `contract.probe`).
  """
  named = (list(variables_owner) if isinstance(variables_owner, (list, tuple))
           else [] if variables_owner is None else [variables_owner])
  for owner in named:
    if not isinstance(owner, (keras.layers.Layer, tf.Module, tf.Variable,
                              keras.Variable)):
      raise TypeError(
          "variables_owner must be a Keras layer or model, a tf.Module, a "
          f"variable, or a list of them; got {owner!r}.")
  candidates = [fn, getattr(fn, "__self__", None), *named]
  return named, list({id(c): c for c in candidates
                      if isinstance(c, keras.layers.Layer)}.values())


class _TimeReversed:
  """Our dynamics from TFP's: f(t, z) = -g(t0 + t1 - t, z, **condition).

  Our flow has its data at t0 and integrates towards t0 + T for the
  inverse; TFP's has its data at t1 and its forward integrates from t0 to
  t1. Running TFP's time backwards maps one onto the other.
  """

  def __init__(self, fn, initial_time, read_final_time, variables):
    self.fn, self.t0, self.t1 = fn, initial_time, read_final_time
    self.variables = variables  # () -> what the flow found f reads
    self.layout = None  # condition kwargs: ((name, trailing shape), ...)

  @property
  def trainable_variables(self):
    # Weights count for jit_compile="auto", and are not exposed twice.
    return self.variables()

  def condition(self, context):
    """The condition kwargs packed in `context`, as the user passed them."""
    if context is None:
      return {}
    if self.layout is None:  # a direct solve(context=...): as is
      return {"context": context}
    batch = tf.shape(context)[:1]
    widths = [max(1, int(tf.TensorShape(s).num_elements()))
              for _, s in self.layout]
    parts = tf.split(context, widths, axis=-1)
    return {name: tf.reshape(part, tf.concat([batch, list(shape)], 0))
            for (name, shape), part in zip(self.layout, parts)}

  def __call__(self, t, z, context=None):
    t1 = tf.cast(self.t1(), t.dtype)
    return -self.fn(self.t0 + t1 - t, z, **self.condition(context))


class TFPFFJORD(FFJORD):
  """`tf_ffjord.FFJORD` with the constructor and conventions of `tfp.bijectors.FFJORD`.

  Porting code written for TFP's bijector takes one word: replace
  `tfp.bijectors.FFJORD(...)` by `tf_ffjord.TFPFFJORD(...)` and keep the
  arguments, the time direction (`forward` integrates
  `state_time_derivative_fn` from `initial_time` to `final_time`, so data
  sit at `final_time`), the log-det signs and the condition keyword
  arguments. Under it runs `tf_ffjord.FFJORD`: its solvers and adjoint, its
  exact trace, its regularizers (`solve`), its NFE counts, and a correct
  `inverse` for any `initial_time` (TFP's evaluates the dynamics at
  `final_time - t`, which is right only for `initial_time = 0`).

  Internally the flow has its data at `initial_time` and evaluates
  `f(t, z) = -g(t0 + t1 - t, z)` for the user's `g`.

  Differences from TFP, each raising or documented rather than silent:

  - The log-det is summed over one event dimension
    (`forward_min_event_ndims` is `event_ndims`, 1 by default), where TFP's
    is elementwise (its elements are the Jacobian's diagonal, meaningful
    only summed): use a vector base such as `tfd.MultivariateNormalDiag`.
  - Condition keyword arguments (`forward(x, c=c)`, `log_prob(x,
    bijector_kwargs={"c": c})`) must carry the batch dimensions of `x` in
    front (they are broadcast to it); they reach the dynamics with that
    shape, as keyword arguments, and receive gradients. Their names and
    trailing shapes are fixed by the first call.
  - `ode_solve_fn` is a `tfp.math.ode.Solver`'s `solve` (or the solver,
    or a `tf_ffjord` solver name); a hand-written solve function raises.
  - `initial_time` is a Python float; `final_time` may also be a tensor,
    a variable or a zero-argument callable.

  Args:
    state_time_derivative_fn: `g(time, state, **condition_kwargs)`, TFP's
      dynamics: a function, a Keras layer or model, or a `tf.Module`.
    ode_solve_fn: `None` (tf_ffjord's dopri5 at rtol = atol = 1e-5), the
      `solve` method of a `tfp.math.ode.Solver`, a `tfp.math.ode.Solver`,
      or anything `tf_ffjord.make_solver` takes (`"rk4"`, ...).
    trace_augmentation_fn: `tfp.bijectors.ffjord.trace_jacobian_exact`
      (runs tf_ffjord's `Exact`), `trace_jacobian_hutchinson` (tf_ffjord's
      `Hutchinson("gaussian")`, TFP's default), your own TFP-style function
      (`AugmentationTrace`), or a tf_ffjord `TraceEstimator` or name.
    initial_time: float, the time of `forward`'s input (the base end).
    final_time: the time of the data end; > `initial_time`.
    validate_args: passed to the bijector.
    dtype: the dtype floating input is converted to, as in TFP; `None`
      keeps the input's.
    name: name scope.
    variables_owner: optional Keras layer or model, `tf.Module`, variable,
      or a list of them, holding trainable weights that
      `state_time_derivative_fn` reads. The weights the dynamics read are
      found anyway, by the first solve's call on zeros
      (`tf_ffjord.cnf.contract.probe`), so that
      `TransformedDistribution(base, TFPFFJORD(fn)).trainable_variables`
      lists them, as TFP's training loop needs; named owners (and dynamics
      that are a Keras layer or its bound method) are listed from the
      start, and their Keras layers are the flow's `keras_layers`.
    event_ndims: number of event dimensions the log-det sums over.
    **options: further `tf_ffjord.FFJORD` options: `rtol`, `atol`,
      `max_num_steps`, `step_size`, `gradient`, `jit_compile`,
      `event_shape`, `noise`.

  Raises:
    ValueError: `final_time <= initial_time` (floats), or an option
      `tf_ffjord.FFJORD` rejects.
    TypeError: an option not listed here, or an argument of the wrong kind.
    NotImplementedError: a hand-written `ode_solve_fn`.

  #### Examples

  >>> import tensorflow_probability as tfp
  >>> bij = TFPFFJORD(
  ...     lambda t, z: tf.ones_like(z),
  ...     trace_augmentation_fn=tfp.bijectors.ffjord.trace_jacobian_exact)
  >>> bij.forward(tf.zeros([2, 3])).numpy().tolist()
  [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]]

  #### References

  [1]: Will Grathwohl, Ricky T. Q. Chen, Jesse Bettencourt, Ilya Sutskever,
       David Duvenaud. FFJORD: Free-form Continuous Dynamics for Scalable
       Reversible Generative Models. ICLR 2019. https://arxiv.org/abs/1810.01367
  """

  _OPTIONS = ("rtol", "atol", "max_num_steps", "step_size", "gradient",
              "jit_compile", "event_shape", "noise")

  def __init__(
      self, state_time_derivative_fn: Callable[..., tf.Tensor],
      ode_solve_fn: Callable[..., Any] | tfp.math.ode.Solver | str
      | solvers.Solver | None = None,
      trace_augmentation_fn: Callable[..., Any] | str
      | trace_estimators.TraceEstimator = _TFP_HUTCHINSON,
      initial_time: float = 0., final_time: TimeLength = 1.,
      validate_args: bool = False, dtype: DTypeLike | None = tf.float32,
      name: str = "ffjord", *, variables_owner: Any = None,
      event_ndims: int = 1, **options: Any) -> None:
    parameters = dict(locals())
    parameters.pop("self", None)
    parameters.pop("__class__", None)
    parameters.update(parameters.pop("options"))
    unknown = sorted(set(options) - set(self._OPTIONS))
    if unknown:
      raise TypeError(f"TFPFFJORD got unknown options {unknown}; it takes "
                      f"tfp.bijectors.FFJORD's arguments and {self._OPTIONS}.")
    if not callable(state_time_derivative_fn):
      raise TypeError("state_time_derivative_fn must be callable as "
                      "g(time, state, **condition_kwargs).")
    t0 = float(initial_time)
    read_t1 = final_time if callable(final_time) else lambda: final_time
    if isinstance(final_time, (int, float)):
      if not final_time > t0:
        raise ValueError(
            f"final_time ({final_time}) must be greater than initial_time "
            f"({t0}): swap them, and forward and inverse with them.")
      time_length: TimeLength = float(final_time) - t0
    else:
      time_length = lambda: tf.convert_to_tensor(read_t1()) - t0  # per solve
    trace = _trace_for(trace_augmentation_fn)
    if isinstance(trace, AugmentationTrace):
      # TFP's estimators vectorize with pfor, which XLA would recompile.
      options.setdefault("jit_compile", False)
    named, layers = _keras_owners(state_time_derivative_fn, variables_owner)
    dynamics = _TimeReversed(state_time_derivative_fn, t0, read_t1,
                             lambda: self.trainable_variables)
    # Outside tf.Module's checkpoint tracking (the owners keep their own);
    # plain attributes, so variable tracking still walks them.
    object.__setattr__(self, "_tfp_parameters", parameters)
    object.__setattr__(self, "_tfp_dtype",
                       None if dtype is None else tf.as_dtype(dtype))
    object.__setattr__(self, "_owners", tuple(named))
    object.__setattr__(self, "_owner_layers", tuple(layers))
    super().__init__(dynamics, time_length=time_length, initial_time=t0,
                     event_ndims=event_ndims, validate_args=validate_args,
                     name=name, **ffjord_arguments(dict(
                         options, trace=trace,
                         solver=_solver_for(ode_solve_fn))))

  @property
  def parameters(self) -> dict[str, Any]:
    """The constructor's arguments (TFP's names), as `copy()` rebuilds from them."""
    return dict(self._tfp_parameters)

  @property
  def state_time_derivative_fn(self) -> Callable[..., tf.Tensor]:
    """The user's dynamics g, in TFP's time convention."""
    return self._tfp_parameters["state_time_derivative_fn"]

  @property
  def final_time(self) -> TimeLength:
    return self._tfp_parameters["final_time"]

  @property
  def keras_layers(self) -> tuple[keras.layers.Layer, ...]:
    return super().keras_layers + self._owner_layers

  def solve(self, x: TensorLike, direction: str = "inverse",
            context: TensorLike | None = None, seed: SeedLike = None,
            regularizers: Iterable[RegularizerLike] = ()) -> Solution:
    """`FFJORD.solve` after TFP's conversion of floating input to `dtype`.

    `direction` is ours: `"inverse"` maps data to the base sample.
    """
    return super().solve(self._convert(x), direction, context=context,
                         seed=seed, regularizers=regularizers)

  def _convert(self, x):
    x = tf.convert_to_tensor(x, dtype_hint=self._tfp_dtype)
    if self._tfp_dtype is not None and x.dtype.is_floating:
      x = tf.cast(x, self._tfp_dtype)
    return x

  def _state_and_log_det(self, x, direction, context=None, seed=None,
                         **condition):
    """TFP's condition kwargs, packed into one context, then the one solve."""
    if condition:
      if context is not None:
        condition["context"] = context
      x = self._convert(x)
      context = self._pack(x, condition)
    return super()._state_and_log_det(x, direction, context=context,
                                      seed=seed)

  def _pack(self, x, condition):
    """The condition kwargs as one `[*batch, width]` context tensor."""
    batch_ndims = x.shape.rank - self._event_ndims
    batch_shape = tf.shape(x)[:batch_ndims]
    layout, parts = [], []
    for key in sorted(condition):
      value = tf.convert_to_tensor(condition[key], dtype_hint=x.dtype)
      value = tf.cast(value, x.dtype)
      if value.shape.rank is None or value.shape.rank < batch_ndims:
        raise ValueError(
            f"TFPFFJORD: condition {key!r} of shape {value.shape} must have "
            f"the batch dimensions of x (shape {x.shape}) in front, e.g. "
            f"tf.broadcast_to({key}, [*batch, ...]), or be closed over by "
            "the dynamics.")
      trailing = tuple(value.shape[batch_ndims:])
      if None in trailing:
        raise ValueError(f"TFPFFJORD: condition {key!r} needs a static shape "
                         f"after its batch dimensions, got {value.shape}.")
      value = tf.broadcast_to(value, tf.concat([batch_shape, trailing], 0))
      width = max(1, int(tf.TensorShape(trailing).num_elements()))
      parts.append(tf.reshape(value, tf.concat([batch_shape, [width]], 0)))
      layout.append((key, trailing))
    layout = tuple(layout)
    if self._dynamics.layout is None:
      self._dynamics.layout = layout
    elif layout != self._dynamics.layout:
      raise ValueError(
          f"TFPFFJORD: condition kwargs {layout} (name, shape after the "
          f"batch) differ from those of the first call, "
          f"{self._dynamics.layout}; build one bijector per kind of call.")
    return tf.concat(parts, -1)
