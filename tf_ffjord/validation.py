"""The one input policy of every public entry point: shapes, dtypes, finiteness, counts.

The bijector (`FFJORD.forward`/`inverse`/log-dets, so also TFP's
`TransformedDistribution`), `FlowModel` (`log_prob`/`sample`/`fit`/
`evaluate`) and the exported SavedModel functions all check their input here,
before any solve:

- **Shape.** Events must have the flow's event shape: a wrong width or rank
  raises `InputError` (a `ValueError`) whose first line names the expected and
  the received shape, e.g. ``FFJORD expects events of shape [2] (inputs
  [batch..., 2]); got shape [4, 3].`` It is raised while Python runs (eager,
  or while `tf.function` traces) whenever the static shape decides it, with
  the same first line in both; a shape known only when the graph runs is
  checked in the graph, by an `InvalidArgumentError` with the same message.
- **Dtype.** Real numbers are cast to the flow's dtype: ints and floats of any
  width become the dynamics' variable dtype (a Keras net's `dtype`), or, for
  dynamics that do not say, the input's float dtype (ints: `floatx()`,
  float32 by default). Results come back in the flow's dtype. Anything else
  (bool, string, complex) raises `InputError` naming both dtypes.
- **Values.** NaN or inf raises `InvalidArgumentError: FFJORD input contains
  NaN or inf` when the graph runs (the check follows the cast, so a float64
  beyond float32's range counts as inf).
- **Empty batches are legal**: 0 rows in, 0 rows out. A sample count must be
  an integer >= 0 (`sample(0)` gives `[0, *event]`).

`InputError` sets `ag_pass_through`, the attribute by which TensorFlow's own
errors (e.g. `UnliftableError`) ask AutoGraph not to wrap them in an ``in user
code:`` report: inside a `tf.function` the error a user sees is this one.
"""

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord._types import DTypeLike, Dynamics, ShapeLike, TensorLike

__all__ = ["InputError", "check_count", "check_events", "check_finite",
           "check_shape", "flow_dtype", "format_shape", "real_input"]


class InputError(ValueError):
  """Bad input to a public entry point: a wrong shape, rank, dtype or count."""

  # Read by AutoGraph: re-raise this error unchanged inside tf.function.
  ag_pass_through = True


def format_shape(shape: ShapeLike | None) -> str:
  """A shape as text, `?` for unknown sizes.

  >>> format_shape(tf.TensorShape([None, 2]))
  '[?, 2]'
  >>> format_shape(None)
  '<unknown rank>'
  """
  known = tf.TensorShape(shape)
  if known.rank is None:
    return "<unknown rank>"
  return "[" + ", ".join("?" if d is None else str(d) for d in known) + "]"


def _checked(x, ok, data, fallback):
  """`x` if `ok` holds, else an `InvalidArgumentError` printing `data`.

  The failing branch returns `fallback`, a harmless value (an empty batch):
  graph optimizations may run ops downstream before the check, and these
  must not fail first with an error of their own (a reshape's, say).
  """
  def fail():
    with tf.control_dependencies([tf.debugging.Assert(False, data)]):
      return tf.identity(fallback)
  return tf.cond(ok, lambda: tf.identity(x), fail)


def _expected(owner, what, event_shape, batch_ndims):
  event = tf.TensorShape(event_shape)
  batch = "batch..." if batch_ndims is None else ", ".join(["batch"] * batch_ndims)
  inputs = format_shape(event)[1:-1]
  inputs = f"[{batch}, {inputs}]" if inputs else f"[{batch}]"
  return (f"{owner} expects {what} of shape {format_shape(event)} "
          f"(inputs {inputs})")


def real_input(x: TensorLike, owner: str = "FFJORD") -> tf.Tensor:
  """Converts `x` to a tensor and refuses non-real dtypes.

  Args:
    x: array-like input.
    owner: the name the error messages start with.

  Returns:
    `x` as a tensor (its dtype unchanged: a float or an integer).

  Raises:
    InputError: `x` is not convertible to a tensor, or is bool, string or
      complex.

  >>> real_input([1, 2]).dtype
  tf.int32
  """
  try:
    x = tf.convert_to_tensor(x)
  except (TypeError, ValueError) as err:
    raise InputError(f"{owner} expects a real-valued tensor; got "
                     f"{type(x).__name__} ({err}).") from None
  if not (x.dtype.is_floating or x.dtype.is_integer) or x.dtype.is_quantized:
    raise InputError(f"{owner} expects real numbers (floats or ints, cast to "
                     f"the flow's dtype); got dtype {x.dtype.name}.")
  return x


def flow_dtype(dynamics: Dynamics | None = None,
               input_dtype: DTypeLike | None = None) -> tf.DType:
  """The dtype a flow solves in.

  Args:
    dynamics: the dynamics; a Keras layer's variable dtype decides.
    input_dtype: the input's dtype, the fallback when it is a float.

  Returns:
    A float `tf.DType`.

  >>> flow_dtype(None, tf.float64).name
  'float64'
  >>> flow_dtype(None, tf.int32).name
  'float32'
  """
  if isinstance(dynamics, keras.layers.Layer):
    return tf.as_dtype(dynamics.dtype)
  if input_dtype is not None and tf.as_dtype(input_dtype).is_floating:
    return tf.as_dtype(input_dtype)
  return tf.as_dtype(keras.config.floatx())


def check_shape(x: tf.Tensor, event_shape: ShapeLike, owner: str = "FFJORD",
                what: str = "events", batch_ndims: int | None = None,
                in_graph: bool = False) -> tf.Tensor:
  """Checks that `x` is `[*batch, *event_shape]`.

  Args:
    x: a tensor.
    event_shape: the expected event shape (`None` entries match any size).
    owner: the name the error messages start with.
    what: what one event is called in the messages.
    batch_ndims: the number of batch dimensions (`None`: any, even 0).
    in_graph: check in the graph even where the static shape fits: for
      served functions, whose callers (a loaded signature, TF Serving) can
      pass tensors of other shapes than the signature's.

  Returns:
    `x`, behind an in-graph check where the static shape cannot decide.

  Raises:
    InputError: the static shape does not fit.

  >>> check_shape(tf.zeros([4, 2]), [2]).shape
  TensorShape([4, 2])
  >>> check_shape(tf.zeros([4, 3]), [2])
  Traceback (most recent call last):
  ...
  tf_ffjord.validation.InputError: FFJORD expects events of shape [2] (inputs [batch..., 2]); got shape [4, 3].
  """
  event = tf.TensorShape(event_shape)
  k = event.rank
  message = _expected(owner, what, event, batch_ndims)
  shape = x.shape
  fail = InputError(f"{message}; got shape {format_shape(shape)}.")
  if shape.rank is not None:
    if shape.rank < k or (batch_ndims is not None
                          and shape.rank != k + batch_ndims):
      raise fail
    if not event.is_compatible_with(shape[shape.rank - k:]):
      raise fail
    known = [i for i, d in enumerate(event) if d is not None]
    if not in_graph and all(shape[shape.rank - k + i] is not None
                            for i in known):
      return x
  dims = tf.shape(x)
  rank = tf.size(dims)
  ok = rank >= k if batch_ndims is None else tf.equal(rank, k + batch_ndims)
  want = [d if d is not None else -1 for d in event]
  if k:
    tail = dims[tf.maximum(rank - k, 0):]
    tail = tf.concat([tf.fill([k - tf.minimum(rank, k)], -2), tail], 0)
    ok &= tf.reduce_all(tf.equal(tail, want) | tf.equal(want, -1))
  fallback = x  # unknown rank: no harmless value of the same rank
  if shape.rank is not None:  # an empty batch of events of the right shape
    fallback = tf.zeros([0] * (shape.rank - k)
                        + [0 if d is None else d for d in event], x.dtype)
  checked = _checked(x, ok, [f"{message}; got shape", dims], fallback)
  checked.set_shape(shape)
  return checked


def check_finite(x: tf.Tensor, owner: str = "FFJORD") -> tf.Tensor:
  """`x`, with an in-graph check that it holds no NaN or inf.

  >>> check_finite(tf.constant([float("nan")]))
  Traceback (most recent call last):
  ...
  tensorflow.python.framework.errors_impl.InvalidArgumentError: ...
  """
  return tf.debugging.assert_all_finite(x, f"{owner} input contains NaN or inf")


def check_events(x: TensorLike, event_shape: ShapeLike,
                 dtype: DTypeLike | None = None, owner: str = "FFJORD",
                 what: str = "events", batch_ndims: int | None = None,
                 dynamics: Dynamics | None = None,
                 in_graph: bool = False) -> tf.Tensor:
  """Applies the whole policy to one batch of events.

  Args:
    x: array-like `[*batch, *event_shape]` input; 0 rows are legal.
    event_shape: the expected event shape (`None` entries match any size).
    dtype: the flow's dtype; `None` takes `flow_dtype(dynamics, x.dtype)`.
    owner: the name the error messages start with.
    what: what one event is called in the messages.
    batch_ndims: the number of batch dimensions (`None`: any).
    dynamics: used for the dtype when `dtype` is `None`.
    in_graph: also check the shape in the graph (see `check_shape`).

  Returns:
    `x` as a tensor of the flow's dtype, behind the finiteness check.

  Raises:
    InputError: a non-real dtype or a shape that does not fit (statically).
    tf.errors.InvalidArgumentError: NaN or inf, or a shape that does not fit
      when the graph runs.

  #### Examples

  >>> check_events(np.zeros([3, 2], np.float64), [2], tf.float32).dtype
  tf.float32
  >>> check_events(tf.zeros([0, 2]), [2]).shape
  TensorShape([0, 2])
  >>> check_events([[True, False]], [2])
  Traceback (most recent call last):
  ...
  tf_ffjord.validation.InputError: FFJORD expects real numbers (floats or ints, cast to the flow's dtype); got dtype bool.
  """
  x = real_input(x, owner)
  x = check_shape(x, event_shape, owner, what, batch_ndims, in_graph)
  dtype = tf.as_dtype(dtype) if dtype is not None else flow_dtype(
      dynamics, x.dtype)
  if x.dtype != dtype:
    x = tf.cast(x, dtype)
  return check_finite(x, owner)


def check_count(n: int | np.integer | tf.Tensor,
                owner: str = "FFJORD") -> tf.Tensor:
  """Checks a sample count: an integer >= 0.

  Args:
    n: a Python or numpy integer, or an integer tensor.
    owner: the name the error messages start with.

  Returns:
    `n` as an int32 tensor (behind an in-graph check if its value is not
    known while tracing).

  Raises:
    InputError: `n` is negative, or not an integer.

  >>> int(check_count(0))
  0
  >>> check_count(-1)
  Traceback (most recent call last):
  ...
  tf_ffjord.validation.InputError: FFJORD.sample expects a sample count n >= 0; got n = -1.
  """
  prefix = f"{owner}.sample expects a sample count n >= 0"
  if isinstance(n, (bool, np.bool_)) or not (
      isinstance(n, (int, np.integer))
      or (tf.is_tensor(n) and n.dtype.is_integer and n.shape.rank == 0)):
    raise InputError(f"{prefix} (an integer scalar); got {n!r}.")
  value = tf.get_static_value(n)
  if value is not None:
    if int(value) < 0:
      raise InputError(f"{prefix}; got n = {int(value)}.")
    return tf.constant(int(value), tf.int32)
  n = tf.cast(n, tf.int32)
  return _checked(n, n >= 0, [f"{prefix}; got n =", n], tf.constant(0))
