"""How an `FFJORD` bijector takes input: its event shape, the checks, cached eager calls.

The event shape of a flow is known when it is declared (`FFJORD(...,
event_shape=[2])`) or when the dynamics say it (a built `ODENet`, or one made
with `dim=`); otherwise the first call decides it and the flow keeps it.
Once it is known, every call is checked against it (`tf_ffjord.validation`)
before anything touches the dynamics, and the dynamics are built for it: a
call of another width raises and leaves the flow as it was.

TFP's `TransformedDistribution` tells the bijector nothing about the base
before its first `inverse` (it asks for `forward_event_shape` only after
it), so a distribution's flow is protected from its first call on only when
its event shape is declared or its net is built.

Eager calls run one `tf.function` per bijector and call signature (direction,
regularizers, seed and context present, dtype, batch rank) with the batch
sizes left open: after the first call, a repeated eager call neither
retraces nor rebuilds anything, and costs about what a `tf.function` call
does, whatever its batch size. As under `tf.function`, the dynamics are
traced once per signature. Under `jit_compile="auto"` these calls run
plain (`solvers.xla.any_batch_size`): XLA would compile again for every
new batch size.

Empty batches are legal with every solver. The library's own solvers take
them as they are; a `tfp.math.ode.Solver` would loop for ever on one (the
RMS error norm of an empty state is NaN), so for those an empty batch gets
one row of zeros, solved and then dropped.
"""

from collections.abc import Iterable

import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import validation
from tf_ffjord._types import SeedLike, ShapeLike, TensorLike
from tf_ffjord.cnf.regularizers import RegularizerLike
from tf_ffjord.cnf.augmented_ode import Solution
from tf_ffjord.solvers import xla

__all__ = ["check_input", "declared_event_shape", "eager_solve", "event_shape",
           "pads_empty_batches", "solve_padded"]


def declared_event_shape(event_shape: ShapeLike | None,
                         event_ndims: int) -> tf.TensorShape | None:
  """`FFJORD(event_shape=...)` as a `TensorShape` (or `None`), checked against `event_ndims`."""
  if event_shape is None:
    return None
  shape = tf.TensorShape(event_shape)
  if shape.rank != event_ndims:
    raise ValueError(f"event_shape {event_shape} must have event_ndims="
                     f"{event_ndims} dimensions.")
  return shape


def event_shape(bijector: tfp.bijectors.Bijector) -> tf.TensorShape:
  """The bijector's event shape as far as it is known (`None` for unknown sizes).

  Declared or pinned by a first call (`bijector._event_shape`), else the
  width of `tf_ffjord` dynamics that know it (`dim`, for vector events).
  """
  ndims = bijector._event_ndims  # pylint: disable=protected-access
  pinned = getattr(bijector, "_event_shape", None)
  if pinned is not None:
    return pinned
  dim = getattr(bijector.dynamics, "dim", None)
  if ndims == 1 and isinstance(dim, int) and _is_ours(bijector.dynamics):
    return tf.TensorShape([dim])
  return tf.TensorShape([None] * ndims)


def _is_ours(dynamics):
  from tf_ffjord.nets import dense as dynamics_lib  # pylint: disable=g-import-not-at-top
  return isinstance(dynamics, dynamics_lib.DynamicsNet)


def check_input(bijector: tfp.bijectors.Bijector, x: TensorLike,
                context: TensorLike | None = None) -> tf.Tensor:
  """Checks and casts one input of `bijector` (see `tf_ffjord.validation`).

  Pins the event shape on the first call that shows it (the solve then
  builds Keras dynamics for it).

  Returns:
    `x` as a tensor of the flow's dtype.

  Raises:
    tf_ffjord.validation.InputError: a wrong event shape or rank, or a dtype
      that is not a real number.
    tf.errors.InvalidArgumentError: NaN or inf in `x`.
  """
  expected = event_shape(bijector)
  x = validation.real_input(x)
  if x.shape.rank is None:
    # The solve flattens the batch around a static event shape.
    raise validation.InputError(
        f"FFJORD expects events of shape {validation.format_shape(expected)}"
        " in inputs of known rank; got a tensor of unknown rank (a "
        "tf.function with reduce_retracing=True makes one from calls of "
        "different ranks: give it an input_signature, e.g. "
        f"[None, {', '.join('?' if d is None else str(d) for d in expected)}]"
        ").")
  dtype = validation.flow_dtype(bijector.dynamics, x.dtype)
  x = validation.check_events(x, expected, dtype)
  ndims = expected.rank
  merged = expected.merge_with(x.shape[x.shape.rank - ndims:])
  if not merged.is_fully_defined():
    raise validation.InputError(
        f"FFJORD expects events of a static shape; got shape "
        f"{validation.format_shape(x.shape)} and the flow does not know its "
        "event shape yet: pass event_shape= or give tf.function an "
        "input_signature with the event sizes.")
  if not expected.is_fully_defined():
    object.__setattr__(bijector, "_event_shape", merged)
  # Give the solve the static event shape, with no runtime op of its own:
  # an EnsureShape could fail before the check with the library's message.
  x = tf.identity(x)
  x.set_shape(x.shape[:x.shape.rank - ndims].concatenate(merged))
  return x


def _spec(t, batch_ndims):
  return tf.TensorSpec([None] * batch_ndims + t.shape[batch_ndims:], t.dtype)


def eager_solve(bijector: tfp.bijectors.Bijector, x: TensorLike,
                direction: str, context: TensorLike | None = None,
                seed: SeedLike = None,
                regularizers: Iterable[RegularizerLike] = ()) -> Solution:
  """`bijector.solve` called eagerly, through its cached `tf.function`."""
  x = check_input(bijector, x, context)
  batch_ndims = x.shape.rank - bijector._event_ndims  # pylint: disable=protected-access
  args, specs = [x], [_spec(x, batch_ndims)]
  if context is not None:
    context = tf.convert_to_tensor(context, x.dtype)
    args.append(context)
    specs.append(_spec(context, min(batch_ndims, context.shape.rank)))
  if seed is not None:
    seed = tf.convert_to_tensor(seed)
    args.append(seed)
    specs.append(tf.TensorSpec(seed.shape, seed.dtype))
  regularizers = tuple(regularizers)
  key = (direction, regularizers, context is not None, seed is not None,
         tuple((s.shape.as_list(), s.dtype) for s in specs).__repr__())
  cache = bijector.__dict__.get("_eager_solves")
  if cache is None:
    cache = {}
    # Outside tf.Module tracking: these functions are no state to save.
    object.__setattr__(bijector, "_eager_solves", cache)
  if key not in cache:
    has_context, has_seed = context is not None, seed is not None

    def run(x, *rest):
      rest = list(rest)
      ctx = rest.pop(0) if has_context else None
      sd = rest.pop(0) if has_seed else None
      with xla.any_batch_size():  # one trace for every batch size, no compile per size
        return bijector.solve(x, direction, context=ctx, seed=sd,
                              regularizers=regularizers)

    cache[key] = tf.function(run, input_signature=specs, autograph=False)
  return cache[key](*args)


def pads_empty_batches(bijector: tfp.bijectors.Bijector,
                       x: TensorLike) -> bool:
  """Whether `solve_padded` must handle this call (a TFP solver, a batch that may be empty)."""
  from tf_ffjord import solvers  # pylint: disable=g-import-not-at-top
  if isinstance(bijector.solver, solvers.Solver):
    return False
  if getattr(bijector, "_padding", False):
    return False
  shape = getattr(x, "shape", None)
  if shape is None or shape.rank is None:
    return True
  batch = shape[:shape.rank - bijector._event_ndims]  # pylint: disable=protected-access
  return not (batch.is_fully_defined() and batch.num_elements() > 0)


def solve_padded(bijector: tfp.bijectors.Bijector, x: TensorLike,
                 direction: str, context: TensorLike | None = None,
                 seed: SeedLike = None,
                 regularizers: Iterable[RegularizerLike] = ()) -> Solution:
  """`bijector.solve` with one row of zeros added to an empty batch, then dropped."""
  x = check_input(bijector, x, context)
  ndims = bijector._event_ndims  # pylint: disable=protected-access
  rank = x.shape.rank
  shape = tf.shape(x)
  batch_shape = shape[:rank - ndims]
  y = tf.reshape(x, tf.concat([[-1], shape[rank - ndims:]], 0))
  y.set_shape([None, *x.shape[rank - ndims:]])
  batch = tf.shape(y)[0]
  pad = tf.cast(tf.equal(batch, 0), tf.int32)

  def padded(v):
    zeros = tf.zeros(tf.concat([[pad], tf.shape(v)[1:]], 0), v.dtype)
    return tf.concat([v, zeros], 0)

  if context is not None:
    context = tf.convert_to_tensor(context, x.dtype)
    width = context.shape[-1]
    context = tf.reshape(context, [batch, -1])
    context.set_shape([None, width])
    context = padded(context)
  object.__setattr__(bijector, "_padding", True)
  try:
    sol = bijector.solve(padded(y), direction, context=context, seed=seed,
                         regularizers=regularizers)
  finally:
    object.__setattr__(bijector, "_padding", False)
  return sol._replace(
      state=tf.reshape(sol.state[:batch], shape),
      log_det=tf.reshape(sol.log_det[:batch], batch_shape),
      regularization={k: tf.reshape(v[:batch], batch_shape)
                      for k, v in sol.regularization.items()})
