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

Empty batches take the same path (a TFP solver's needs with them are its
adapter's, `solvers.TFPSolver`). These are pure functions: they take what
they need and return values; `FFJORD` keeps the event shape they find, the
variables they probe and the functions they build.
"""

from collections.abc import Callable
from typing import Any

import keras
import tensorflow as tf

from tf_ffjord import validation
from tf_ffjord._types import Dynamics, SeedLike, ShapeLike, TensorLike
from tf_ffjord.cnf import contract
from tf_ffjord.cnf.regularizers import Regularizer
from tf_ffjord.cnf.augmented_ode import Solution
from tf_ffjord.solvers import xla

__all__ = ["build_dynamics", "check_input", "declared_build",
           "declared_event_shape", "eager_call", "event_shape"]


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


def event_shape(pinned: tf.TensorShape | None, ndims: int,
                dynamics: Dynamics) -> tf.TensorShape:
  """A flow's event shape as far as it is known (`None` for unknown sizes).

  `pinned` (declared, or pinned by a first call), else the width of
  `tf_ffjord` dynamics that know it (`dim`, for vector events).
  """
  if pinned is not None:
    return pinned
  dim = getattr(dynamics, "dim", None)
  if ndims == 1 and isinstance(dim, int) and _is_ours(dynamics):
    return tf.TensorShape([dim])
  return tf.TensorShape([None] * ndims)


def _is_ours(dynamics):
  from tf_ffjord.nets import dense as dynamics_lib  # pylint: disable=g-import-not-at-top
  return isinstance(dynamics, dynamics_lib.DynamicsNet)


def check_input(x: TensorLike, expected: tf.TensorShape,
                dynamics: Dynamics) -> tf.Tensor:
  """Checks and casts one input of a flow (see `tf_ffjord.validation`).

  Args:
    x: the input, `[*batch, *event]`.
    expected: the flow's event shape as far as it is known (`event_shape`).
    dynamics: the flow's dynamics (their variables' dtype is the flow's).

  Returns:
    `x` as a tensor of the flow's dtype whose static event shape is fully
    known: the flow pins it on the first call that shows it.

  Raises:
    tf_ffjord.validation.InputError: a wrong event shape or rank, or a dtype
      that is not a real number.
    tf.errors.InvalidArgumentError: NaN or inf in `x`.
  """
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
  dtype = validation.flow_dtype(dynamics, x.dtype)
  x = validation.check_events(x, expected, dtype)
  ndims = expected.rank
  merged = expected.merge_with(x.shape[x.shape.rank - ndims:])
  if not merged.is_fully_defined():
    raise validation.InputError(
        f"FFJORD expects events of a static shape; got shape "
        f"{validation.format_shape(x.shape)} and the flow does not know its "
        "event shape yet: pass event_shape= or give tf.function an "
        "input_signature with the event sizes.")
  # Give the solve the static event shape, with no runtime op of its own:
  # an EnsureShape could fail before the check with the library's message.
  x = tf.identity(x)
  x.set_shape(x.shape[:x.shape.rank - ndims].concatenate(merged))
  return x


def _spec(t, batch_ndims):
  return tf.TensorSpec([None] * batch_ndims + t.shape[batch_ndims:], t.dtype)


def eager_call(
    solve: Callable[..., Solution], cache: dict[Any, Callable[..., Solution]],
    x: tf.Tensor, event_ndims: int, direction: str,
    context: TensorLike | None = None, seed: SeedLike = None,
    regularizers: tuple[Regularizer, ...] = ()) -> Solution:
  """`solve(x, direction, context, seed, regularizers)` through a cached `tf.function`.

  One function per call signature (direction, regularizers, context and
  seed present, dtypes, ranks and event sizes) with the batch sizes left
  open, kept in `cache`; it runs `solve` in `xla.any_batch_size`.

  Args:
    solve: the graph solve, called on a checked `x`.
    cache: the caller's dict of functions, filled here.
    x: the checked input (`check_input`).
    event_ndims: number of event dimensions.
    direction: `"inverse"` or `"forward"`.
    context: optional conditioning tensor.
    seed: optional stateless seed.
    regularizers: checked regularizers (`regularizers.check`).

  Returns:
    What `solve` returns.
  """
  batch_ndims = x.shape.rank - event_ndims
  args, specs = [x], [_spec(x, batch_ndims)]
  if context is not None:
    context = tf.convert_to_tensor(context, x.dtype)
    args.append(context)
    specs.append(_spec(context, min(batch_ndims, context.shape.rank)))
  if seed is not None:
    seed = tf.convert_to_tensor(seed)
    args.append(seed)
    specs.append(tf.TensorSpec(seed.shape, seed.dtype))
  key = (direction, regularizers, context is not None, seed is not None,
         tuple((s.shape.as_list(), s.dtype) for s in specs).__repr__())
  if key not in cache:
    has_context, has_seed = context is not None, seed is not None

    def run(x, *rest):
      rest = list(rest)
      ctx = rest.pop(0) if has_context else None
      sd = rest.pop(0) if has_seed else None
      with xla.any_batch_size():  # one trace for every batch size, no compile per size
        return solve(x, direction, ctx, sd, regularizers)

    cache[key] = tf.function(run, input_signature=specs, autograph=False)
  return cache[key](*args)


def declared_build(
    dynamics: Dynamics, shape: tf.TensorShape,
) -> tuple[tf.TensorShape, tf.dtypes.DType, list[int] | None] | None:
  """`build_dynamics`' arguments for Keras dynamics of a known event shape, else None.

  Building at construction (`event_shape=`, `dim`) lets
  `optimizer.build(dist.trainable_variables)` work before the first call,
  a train step's `tf.function` that creates no variables trace once, not
  twice, and a net that breaks the contract say so at once. Our nets know
  their context width; a user's net is built without a context unless its
  call needs one (then the first solve builds it).
  """
  if not isinstance(dynamics, keras.layers.Layer):
    return None  # a function's dtype is known at the first solve only
  context_dim = getattr(dynamics, "context_dim", None)
  if context_dim is None:  # a user's net
    try:
      contract.check_signature(dynamics, with_context=False)
    except contract.DynamicsError:
      return None
    context_dim = 0
  if not shape.is_fully_defined():
    return None
  dtype = getattr(dynamics, "variable_dtype", None) or tf.float32
  return shape, tf.as_dtype(dtype), [context_dim] if context_dim else None


def build_dynamics(dynamics: Dynamics, event_shape: ShapeLike,
                   dtype: tf.dtypes.DType,
                   context_shape: ShapeLike | None = None,
                   probed: bool = False) -> list[tf.Variable] | None:
  """Builds lazy dynamics, checks their contract, finds their variables.

  Keras nets that are not built yet, and once (`probed=False`) any other
  dynamics, are called on zeros outside any graph (`contract.probe`):
  weights are never created in a compiled loop, they decide
  `jit_compile="auto"`, and they are exposed to TFP's variable tracking
  with those a function reads.

  Returns:
    The variables the probe of non-Keras dynamics found beyond their own
    `trainable_variables` (the caller keeps them and marks the dynamics
    probed), or `None` if nothing was probed.
  """
  # Once per trace (not per eager call): the signature the solve will use.
  contract.check_signature(dynamics, context_shape is not None)
  event_shape = tf.TensorShape(event_shape)
  if not event_shape.is_fully_defined() or not (
      context_shape is None
      or tf.TensorShape(context_shape).is_fully_defined()):
    return None
  if isinstance(dynamics, keras.layers.Layer):
    # A layer loaded from its config reports `built` with no weights yet
    # (Keras' default `build`): it is probed once too.
    if not dynamics.built or not (dynamics.weights or probed):
      contract.probe(dynamics, event_shape, dtype, context_shape)
      return []  # its own weights: no others to find
    return None
  if probed:
    return None
  read = contract.probe(dynamics, event_shape, dtype, context_shape)
  own = {id(v) for v in getattr(dynamics, "trainable_variables", ())}
  if not read and not own:
    contract.warn_no_variables(dynamics)
  return [v for v in read if id(v) not in own]
