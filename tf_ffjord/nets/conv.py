"""Time-conditioned convolution layers and the conv `ConvODENet` for images."""

from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from tf_ffjord._types import BuildShape

from tf_ffjord.nets.dense import TimeConditionedNet

__all__ = ["ConcatConv2D", "ConcatSquashConv2D", "IgnoreConv2D",
           "ConcatConv2DTranspose", "ConcatSquashConv2DTranspose",
           "IgnoreConv2DTranspose", "CONV_LAYER_TYPES", "ConvODENet"]


def _spatial(tc, like):
  """Broadcasts `[batch, k]` features to `[batch, H, W, k]` like `like`."""
  shape = tf.shape(like)
  tc = tf.cast(tc, like.dtype)[:, tf.newaxis, tf.newaxis, :]
  return tf.broadcast_to(tc, tf.stack([shape[0], shape[1], shape[2],
                                       tf.shape(tc)[-1]]))


class _TimeConv(keras.layers.Layer):
  """Base of the conv layers that take (features tc, image x).

  Args:
    filters: output channels.
    kernel_size: square kernel size.
    strides: stride of the convolution (upsampling factor if `transpose`).
    transpose: use `Conv2DTranspose` instead of `Conv2D`.
    **kwargs: passed to `keras.layers.Layer` (name, dtype).
  """

  def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
               transpose: bool = False, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.filters = int(filters)
    self.kernel_size = int(kernel_size)
    self.strides = int(strides)
    self.transpose = bool(transpose)
    cls = keras.layers.Conv2DTranspose if transpose else keras.layers.Conv2D
    # "same" padding equals the paper's padding=1 for (k=3, s=1) and (k=4, s=2).
    self.conv = cls(self.filters, self.kernel_size, strides=self.strides,
                    padding="same", name="conv", dtype=self.dtype_policy)

  def _dense(self, name, use_bias=True):
    return keras.layers.Dense(self.filters, use_bias=use_bias, name=name,
                              dtype=self.dtype_policy)

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "filters": self.filters,
            "kernel_size": self.kernel_size, "strides": self.strides,
            "transpose": self.transpose}


@keras.saving.register_keras_serializable("tf_ffjord")
class ConcatConv2D(_TimeConv):
  """y = conv([x, tc]): time (and context) appended as constant channels."""

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    return self.conv(tf.concat([x, _spatial(tc, x)], axis=-1))


@keras.saving.register_keras_serializable("tf_ffjord")
class ConcatSquashConv2D(_TimeConv):
  """y = conv(x) * sigmoid(G tc + g) + B tc, gates shared over pixels."""

  def __init__(self, filters: int, kernel_size: int = 3, strides: int = 1,
               transpose: bool = False, **kwargs: Any) -> None:
    super().__init__(filters, kernel_size, strides, transpose, **kwargs)
    self.gate = self._dense("gate")
    self.bias = self._dense("bias", use_bias=False)

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    gate = tf.sigmoid(self.gate(tc))[:, tf.newaxis, tf.newaxis, :]
    bias = self.bias(tc)[:, tf.newaxis, tf.newaxis, :]
    return self.conv(x) * gate + bias


@keras.saving.register_keras_serializable("tf_ffjord")
class IgnoreConv2D(_TimeConv):
  """y = conv(x) (time-independent)."""

  def call(self, tc: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    del tc
    return self.conv(x)


def _transposed(base):
  """A `transpose=True` variant of a time-conditioned conv layer class."""

  class Transposed(base):

    def __init__(self, filters: int, kernel_size: int = 4, strides: int = 2,
                 **kwargs: Any) -> None:
      kwargs.pop("transpose", None)
      super().__init__(filters, kernel_size, strides, transpose=True,
                       **kwargs)

  Transposed.__name__ = Transposed.__qualname__ = base.__name__ + "Transpose"
  Transposed.__doc__ = (f"`{base.__name__}` with `Conv2DTranspose` "
                        "(upsampling by `strides`).")
  return keras.saving.register_keras_serializable("tf_ffjord")(Transposed)


ConcatConv2DTranspose = _transposed(ConcatConv2D)
ConcatSquashConv2DTranspose = _transposed(ConcatSquashConv2D)
IgnoreConv2DTranspose = _transposed(IgnoreConv2D)

CONV_LAYER_TYPES = {
    "concat": ConcatConv2D,
    "concatsquash": ConcatSquashConv2D,
    "ignore": IgnoreConv2D,
}


@keras.saving.register_keras_serializable("tf_ffjord")
class ConvODENet(TimeConditionedNet):
  """A time-conditioned CNN f(t, x[, context]) -> dx/dt for images.

  As in the paper's `--dims 64,64,64 --strides 1,1,1,1`: `len(strides) ==
  len(dims) + 1` conv layers, the last one mapping back to the input's
  channels. A stride of 1 is a 3x3 conv, 2 a 4x4 conv with stride 2, and -2 a
  4x4 transposed conv with stride 2; activations sit between layers and the
  last layer is linear.

  Args:
    dims: channels of the hidden layers.
    strides: one stride per layer (1, 2 or -2); default all 1.
    layer: `"concat"` (the paper's image layer), `"concatsquash"` or
      `"ignore"`.
    activation: one of `"softplus"` (the paper's), `"tanh"`, `"elu"`,
      `"swish"`, `"relu"`.
    channels: output channels; `None` takes them from the first input.
    context_dim: width of the context vector, 0 for none.
    **kwargs: passed to `keras.Model` (name, dtype).

  Raises:
    ValueError: unknown layer/activation, a stride not in (1, 2, -2), a
      strides list of the wrong length, or strides that do not return to the
      input resolution.

  #### Examples

  >>> f = ConvODENet(dims=(8, 8), strides=(1, 2, -2))
  >>> f(0.5, tf.zeros([2, 8, 8, 1])).shape
  TensorShape([2, 8, 8, 1])
  """

  def __init__(self, dims: Sequence[int] = (64, 64, 64),
               strides: Sequence[int] | None = None, layer: str = "concat",
               activation: str = "softplus", channels: int | None = None,
               context_dim: int = 0, **kwargs: Any) -> None:
    super().__init__(layer, CONV_LAYER_TYPES, activation, context_dim,
                     **kwargs)
    self.dims = tuple(int(d) for d in dims)
    if strides is None:
      strides = (1,) * (len(self.dims) + 1)
    self.strides_list = tuple(int(s) for s in strides)
    if len(self.strides_list) != len(self.dims) + 1:
      raise ValueError(f"strides needs len(dims) + 1 = {len(self.dims) + 1} "
                       f"entries, got {self.strides_list}.")
    bad = [s for s in self.strides_list if s not in (1, 2, -2)]
    if bad:
      raise ValueError(f"strides must be 1, 2 or -2, got {self.strides_list}.")
    if self.strides_list.count(2) != self.strides_list.count(-2):
      raise ValueError(f"strides {self.strides_list} do not return to the "
                       "input resolution (as many 2 as -2 are needed).")
    self.channels = None if channels is None else int(channels)
    self.hidden_layers = [self._make(d, s, i) for i, (d, s) in
                          enumerate(zip(self.dims, self.strides_list))]
    self.out_layer = None
    if self.channels is not None:
      self.out_layer = self._make(self.channels, self.strides_list[-1], "out")

  def _make(self, filters, stride, index):
    cls = CONV_LAYER_TYPES[self.layer_type]
    name = f"{self.layer_type}_{index}"
    if stride == 1:
      return cls(filters, 3, 1, name=name, dtype=self.dtype_policy)
    return cls(filters, 4, 2, transpose=stride < 0, name=name,
               dtype=self.dtype_policy)

  def build(self, t_shape: BuildShape, x_shape: BuildShape,
            context_shape: BuildShape | None = None) -> None:
    if len(x_shape) != 4:
      raise ValueError(f"ConvODENet expects images [batch, H, W, C], got "
                       f"shape {tuple(x_shape)}.")
    down = 2 ** self.strides_list.count(2)
    for size in x_shape[1:3]:
      if size is not None and size % down:
        raise ValueError(f"Image size {tuple(x_shape[1:3])} is not divisible "
                         f"by {down}, the downsampling of strides "
                         f"{self.strides_list}.")
    if self.out_layer is None:
      self.channels = int(x_shape[-1])
      self.out_layer = self._make(self.channels, self.strides_list[-1], "out")

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "dims": self.dims,
            "strides": self.strides_list, "layer": self.layer_type,
            "activation": self.activation_name, "channels": self.channels,
            "context_dim": self.context_dim}
