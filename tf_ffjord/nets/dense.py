"""Time-conditioned Keras layers and the `ODENet` dynamics network f(t, x)."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import keras
import tensorflow as tf

from tf_ffjord._types import BuildShape, TensorLike

__all__ = ["ConcatSquashDense", "ConcatDense", "IgnoreDense", "SquashDense",
           "BlendDense", "ODENet", "LAYER_TYPES", "ACTIVATIONS",
           "time_features", "batch_features", "apply_time_layers",
           "DynamicsNet", "TimeConditionedNet", "Activation", "get_activation"]

ACTIVATIONS = ("tanh", "softplus", "elu", "swish", "relu")
# An activation: a name of `ACTIVATIONS`, a callable (e.g. a Keras
# activation), or a callable's Keras config (as `get_config` stores it).
Activation: TypeAlias = str | Callable[[tf.Tensor], tf.Tensor] | dict[str, Any]


def get_activation(activation: Activation) -> tuple[
    Callable[[tf.Tensor], tf.Tensor], str | dict[str, Any]]:
  """The activation function and its config (a name or a Keras config).

  Args:
    activation: a name of `ACTIVATIONS`, a callable, or a callable's Keras
      config. A callable of your own must be registered with
      `keras.saving.register_keras_serializable` for a saved net to load.

  Raises:
    ValueError: an unknown name or something not callable.

  #### Examples

  >>> fn, config = get_activation(keras.activations.gelu)
  >>> config["config"], float(fn(tf.constant(0.0)))
  ('gelu', 0.0)
  """
  if isinstance(activation, dict):
    activation = keras.saving.deserialize_keras_object(activation)
  if isinstance(activation, str):
    if activation not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {activation!r}; expected one of "
                       f"{ACTIVATIONS} or a callable (a Keras activation).")
    return keras.activations.get(activation), activation
  if not callable(activation):
    raise ValueError(f"activation must be one of {ACTIVATIONS} or a "
                     f"callable, got {type(activation).__name__}.")
  return activation, keras.saving.serialize_keras_object(activation)


def time_features(t: tf.Tensor, x: tf.Tensor,
                  context: tf.Tensor | None = None) -> tf.Tensor:
  """Returns the conditioning features [t, context] of a dynamics call.

  Without a context and with a scalar t, the features are one row that the
  layers broadcast over the batch: the time layers (gates, hyper-biases)
  then cost one row per evaluation instead of one per example, which matters
  inside a solver that calls them hundreds of times per step.

  Args:
    t: scalar, `[1]` or `[batch]` time.
    x: `[batch, ...]` state; fixes the batch size and dtype.
    context: optional `[batch, k]` (or `[k]`, broadcast) context.

  Returns:
    A `[1, 1]` tensor (scalar t, no context) or `[batch, 1 + k]`.
  """
  t = tf.reshape(tf.cast(t, x.dtype), [-1, 1])
  if context is None:
    return t
  batch = tf.shape(x)[0]
  t = tf.broadcast_to(t, [batch, 1])
  context = tf.cast(context, x.dtype)
  if context.shape.rank == 1:
    context = tf.broadcast_to(context[tf.newaxis], [batch, context.shape[0]])
  return tf.concat([t, context], axis=-1)


def batch_features(tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
  """Broadcasts features from `time_features` to one row per example of x."""
  return tf.broadcast_to(tc, tf.stack([tf.shape(x)[0], tf.shape(tc)[-1]]))


def apply_time_layers(net: keras.layers.Layer, t: tf.Tensor, x: tf.Tensor,
                      context: tf.Tensor | None = None) -> tf.Tensor:
  """Runs a dynamics net's time-conditioned layers: f(t, x[, context]).

  `net` has `hidden_layers`, `out_layer`, `activation` and `context_dim`;
  every layer is called as `layer(tc, h)` with `tc = time_features(...)`.

  Raises:
    ValueError: a context is missing, unexpected, or of the wrong width.
  """
  name = type(net).__name__
  if context is None and net.context_dim:
    raise ValueError(f"This {name} was built with context_dim="
                     f"{net.context_dim}; pass a context.")
  if context is not None and context.shape[-1] != net.context_dim:
    raise ValueError(f"Context has {context.shape[-1]} features; this "
                     f"{name} expects context_dim={net.context_dim}.")
  tc = time_features(t, x, context)
  h = x
  for layer in net.hidden_layers:
    h = net.activation(layer(tc, h))
  return net.out_layer(tc, h)


class _TimeDense(keras.layers.Layer):
  """Base of the dense layers that take (features tc, state x)."""

  def __init__(self, units: int, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.units = int(units)
    self.linear = self._dense("linear")

  def _dense(self, name, units=None, use_bias=True):
    # Sublayers share this layer's dtype policy, so float64 nets stay float64.
    return keras.layers.Dense(self.units if units is None else units,
                              use_bias=use_bias, name=name,
                              dtype=self.dtype_policy)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "units": self.units}


@keras.saving.register_keras_serializable("tf_ffjord")
class ConcatSquashDense(_TimeDense):
  """y = (W x + b) * sigmoid(G tc + g) + B tc: the paper's default layer."""

  def __init__(self, units: int, **kwargs: Any) -> None:
    super().__init__(units, **kwargs)
    self.gate = self._dense("gate")
    self.bias = self._dense("bias", use_bias=False)

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    return self.linear(x) * tf.sigmoid(self.gate(tc)) + self.bias(tc)


@keras.saving.register_keras_serializable("tf_ffjord")
class ConcatDense(_TimeDense):
  """y = W [tc, x] + b."""

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    return self.linear(tf.concat([batch_features(tc, x), x], axis=-1))


@keras.saving.register_keras_serializable("tf_ffjord")
class IgnoreDense(_TimeDense):
  """y = W x + b (time-independent dynamics)."""

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    del tc
    return self.linear(x)


@keras.saving.register_keras_serializable("tf_ffjord")
class SquashDense(_TimeDense):
  """y = (W x + b) * sigmoid(G tc + g)."""

  def __init__(self, units: int, **kwargs: Any) -> None:
    super().__init__(units, **kwargs)
    self.gate = self._dense("gate")

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    return self.linear(x) * tf.sigmoid(self.gate(tc))


@keras.saving.register_keras_serializable("tf_ffjord")
class BlendDense(_TimeDense):
  """y = L0(x) + (L1(x) - L0(x)) * t: linear interpolation in time.

  With a context, t is replaced by a learned scalar of [t, context].
  """

  def __init__(self, units: int, **kwargs: Any) -> None:
    super().__init__(units, **kwargs)
    self.linear1 = self._dense("linear1")
    self.mix = None

  def build(self, tc_shape: BuildShape, x_shape: BuildShape) -> None:
    if tc_shape[-1] != 1:  # a context is present: learn the blend weight
      self.mix = self._dense("mix", units=1)

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    w = tc if self.mix is None else self.mix(tc)
    y0 = self.linear(x)
    return y0 + (self.linear1(x) - y0) * w


LAYER_TYPES = {
    "concatsquash": ConcatSquashDense,
    "concat": ConcatDense,
    "ignore": IgnoreDense,
    "squash": SquashDense,
    "blend": BlendDense,
}


class DynamicsNet(keras.Model):
  """Base of the Keras dynamics nets, called as f(t, x[, context]).

  Keras only takes tensors as positional inputs, and t is often a Python
  float: the call converts t (and the context) to tensors of x's dtype.

  Mixed precision: under a Keras policy such as `"mixed_bfloat16"` (global,
  or `dtype=` on the net) the layers compute in the policy's compute dtype
  while the weights stay in its variable dtype, and the net returns its
  output cast to the variable dtype (float32). A solver, its error norm,
  the trace and the log-det accumulator therefore never see bfloat16, and
  the trace's VJP flows back through the casts in float32. The net itself
  does not autocast: t, x and the context reach `call` in the caller's
  dtype, and each layer casts its own inputs, so time features that need
  more than bfloat16's 3 digits (a U-Net's sinusoids) can be formed in
  float32 first.
  """

  def __init__(self, **kwargs: Any) -> None:
    kwargs.setdefault("autocast", False)
    super().__init__(**kwargs)

  def __call__(self, t: TensorLike, x: TensorLike,
               context: TensorLike | None = None, **kwargs: Any) -> tf.Tensor:
    x = tf.convert_to_tensor(x)
    t = tf.convert_to_tensor(t, dtype=x.dtype)
    if context is not None:
      context = tf.convert_to_tensor(context, dtype=x.dtype)
    y = super().__call__(t, x, context=context, **kwargs)
    if y.dtype != self.variable_dtype:  # a mixed policy's compute dtype
      y = tf.cast(y, self.variable_dtype)
    return y


class TimeConditionedNet(DynamicsNet):
  """Base of the dynamics nets f(t, x[, context]) made of time layers.

  Checks the layer type and activation names, and runs `apply_time_layers`;
  a subclass builds `hidden_layers` and `out_layer` from `layer_type`.

  Args:
    layer: layer type name, a key of `layer_types`.
    layer_types: the layer classes this net accepts, by name.
    activation: one of `ACTIVATIONS` or a callable (`get_activation`).
    context_dim: width of the context vector, 0 for none.
    **kwargs: passed to `keras.Model`.

  Raises:
    ValueError: an unknown layer type or activation.
  """

  def __init__(self, layer: str,
               layer_types: Mapping[str, type[keras.layers.Layer]],
               activation: Activation, context_dim: int = 0,
               **kwargs: Any) -> None:
    super().__init__(**kwargs)
    if layer not in layer_types:
      raise ValueError(f"Unknown layer type {layer!r} for "
                       f"{type(self).__name__}; expected one of "
                       f"{sorted(layer_types)}.")
    self.layer_type = layer
    # The name, or a callable's Keras config (what `get_config` stores).
    self.activation, self.activation_name = get_activation(activation)
    self.context_dim = int(context_dim)

  def call(self, t: tf.Tensor, x: tf.Tensor,
           context: tf.Tensor | None = None) -> tf.Tensor:
    return apply_time_layers(self, t, x, context)


@keras.saving.register_keras_serializable("tf_ffjord")
class ODENet(TimeConditionedNet):
  """A time-conditioned MLP f(t, x[, context]) -> dx/dt.

  Every layer sees the time (and the context, if any) through its layer type;
  activations sit between layers and the last layer is linear, with as many
  units as x has features.

  Args:
    hidden: widths of the hidden layers.
    layer: one of `"concatsquash"`, `"concat"`, `"ignore"`, `"squash"`,
      `"blend"`.
    activation: one of `"tanh"`, `"softplus"`, `"elu"`, `"swish"`,
      `"relu"`, or a callable such as `keras.activations.gelu` (register
      your own function with `keras.saving.register_keras_serializable`
      to save the net).
    dim: output width; `None` takes it from the first input.
    context_dim: width of the context vector, 0 for none.
    **kwargs: passed to `keras.Model`.

  #### Examples

  >>> f = ODENet(hidden=(16, 16))
  >>> f(0.5, tf.zeros([3, 2])).shape
  TensorShape([3, 2])
  """

  def __init__(self, hidden: Sequence[int] = (64, 64, 64),
               layer: str = "concatsquash", activation: Activation = "tanh",
               dim: int | None = None, context_dim: int = 0,
               **kwargs: Any) -> None:
    super().__init__(layer, LAYER_TYPES, activation, context_dim, **kwargs)
    self.hidden = tuple(int(h) for h in hidden)
    self.dim = None if dim is None else int(dim)
    cls = LAYER_TYPES[layer]
    self.hidden_layers = [cls(h, name=f"{layer}_{i}", dtype=self.dtype_policy)
                          for i, h in enumerate(self.hidden)]
    self.out_layer = None
    if self.dim is not None:
      self.out_layer = cls(self.dim, name=f"{layer}_out",
                           dtype=self.dtype_policy)

  def build(self, t_shape: BuildShape, x_shape: BuildShape,
            context_shape: BuildShape | None = None) -> None:
    if self.out_layer is None:
      self.dim = int(x_shape[-1])
      self.out_layer = LAYER_TYPES[self.layer_type](
          self.dim, name=f"{self.layer_type}_out", dtype=self.dtype_policy)
    # Build every sublayer now (one call on zeros), so that weights exist
    # when Keras restores a saved model before any real call.
    x = tf.zeros([1, int(x_shape[-1])], self.dtype)
    context = None
    if context_shape is not None:
      context = tf.zeros([1, int(context_shape[-1])], self.dtype)
    self.call(tf.zeros([], self.dtype), x, context)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "hidden": self.hidden,
            "layer": self.layer_type, "activation": self.activation_name,
            "dim": self.dim, "context_dim": self.context_dim}
