"""A small time-conditioned U-Net, `UNetODENet`, as dynamics f(t, x) for images."""

from collections.abc import Sequence
import math
from typing import Any

import keras
import tensorflow as tf

from tf_ffjord._types import BuildShape
from tf_ffjord.nets.dense import DynamicsNet, time_features

__all__ = ["SMOOTH_ACTIVATIONS", "UNetResBlock", "UNetODENet"]

# The trace needs df/dx and its training gradient d(df/dx)/dtheta: no ReLU.
SMOOTH_ACTIVATIONS = ("swish", "softplus", "tanh")


@keras.saving.register_keras_serializable("tf_ffjord")
class UNetResBlock(keras.layers.Layer):
  """x + conv(act(norm(FiLM(conv(act(norm(x))), temb)))), per example.

  The time embedding sets a per-channel scale and shift (FiLM). GroupNorm
  normalizes each example on its own, so examples in a batch never mix (a
  BatchNorm would make log p(x) depend on the batch mates).

  Args:
    filters: output channels.
    groups: GroupNorm groups; 0 disables normalization.
    activation: one of `SMOOTH_ACTIVATIONS`.
    **kwargs: passed to `keras.layers.Layer`.
  """

  def __init__(self, filters: int, groups: int = 8, activation: str = "swish",
               **kwargs: Any) -> None:
    super().__init__(**kwargs)
    self.filters, self.groups = int(filters), int(groups)
    self.activation_name = activation
    self.activation = keras.activations.get(activation)
    # Sublayers share this layer's dtype policy (mixed precision included).
    dtype = self.dtype_policy
    norm = (lambda n: keras.layers.GroupNormalization(self.groups, name=n,
                                                      dtype=dtype)
            if self.groups else None)
    self.norm1, self.norm2 = norm("norm1"), norm("norm2")
    self.conv1 = keras.layers.Conv2D(self.filters, 3, padding="same",
                                     name="conv1", dtype=dtype)
    self.conv2 = keras.layers.Conv2D(self.filters, 3, padding="same",
                                     name="conv2", dtype=dtype)
    self.film = keras.layers.Dense(2 * self.filters, name="film",
                                   dtype=dtype)
    self.skip = None

  def build(self, temb_shape: BuildShape, x_shape: BuildShape) -> None:
    if int(x_shape[-1]) != self.filters:
      self.skip = keras.layers.Conv2D(self.filters, 1, name="skip",
                                      dtype=self.dtype_policy)

  def _pre(self, norm, h):
    return self.activation(h if norm is None else norm(h))

  def call(self, temb: tf.Tensor, x: tf.Tensor) -> tf.Tensor:
    h = self.conv1(self._pre(self.norm1, x))
    scale, shift = tf.split(self.film(temb)[:, None, None, :], 2, axis=-1)
    h = self.conv2(self._pre(self.norm2, h * (1.0 + scale) + shift))
    return (x if self.skip is None else self.skip(x)) + h

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "filters": self.filters,
            "groups": self.groups, "activation": self.activation_name}


@keras.saving.register_keras_serializable("tf_ffjord")
class UNetODENet(DynamicsNet):
  """A time-conditioned U-Net f(t, x[, context]) -> dx/dt for images.

  Level i works at resolution H / 2^i with `channels[i]` channels: a residual
  block going down (its output is kept as a skip), a strided 3x3 conv to the
  next level, a residual block at the bottom, then residual blocks going up
  on [upsampled, skip] and a 3x3 conv back to the input's channels. The time
  t (one scalar for a whole ODE solve, or one per example as in flow
  matching) enters through `dynamics.time_features`, sinusoids of t at
  `time_frequencies` octaves and a small MLP, then a per-channel scale and
  shift in every block.

  Args:
    channels: channels per resolution level; `len(channels) - 1`
      downsamplings by 2.
    groups: GroupNorm groups (must divide every entry of `channels`); 0 for
      no normalization.
    activation: one of `"swish"`, `"softplus"`, `"tanh"`.
    time_frequencies: number of octaves pi * 2^k, k < n, of the sinusoidal
      time features.
    time_dim: width of the time embedding.
    out_channels: output channels; `None` takes them from the first input.
    context_dim: width of an optional context vector, 0 for none.
    **kwargs: passed to `keras.Model` (name, dtype).

  Raises:
    ValueError: an activation that is not smooth, `groups` not dividing the
      channels, an input that is not `[batch, H, W, C]`, or H, W not
      divisible by `2 ** (len(channels) - 1)`.

  #### Examples

  >>> from tf_ffjord.nets.unet import UNetODENet
  >>> f = UNetODENet(channels=(8, 16), groups=4)
  >>> f(0.5, tf.zeros([2, 8, 8, 1])).shape
  TensorShape([2, 8, 8, 1])
  >>> f(tf.fill([2], 0.5), tf.zeros([2, 8, 8, 1])).shape  # one t per example
  TensorShape([2, 8, 8, 1])
  """

  def __init__(self, channels: Sequence[int] = (32, 64), groups: int = 8,
               activation: str = "swish", time_frequencies: int = 6,
               time_dim: int = 64, out_channels: int | None = None,
               context_dim: int = 0, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    if activation not in SMOOTH_ACTIVATIONS:
      raise ValueError(f"UNetODENet needs a smooth activation (the trace "
                       f"differentiates it); got {activation!r}, expected one "
                       f"of {SMOOTH_ACTIVATIONS}.")
    self.channels = tuple(int(c) for c in channels)
    self.groups = int(groups)
    if not self.channels or (self.groups and any(c % self.groups
                                                 for c in self.channels)):
      raise ValueError(f"groups={self.groups} must divide every entry of "
                       f"channels={self.channels}.")
    self.activation_name = activation
    self.activation = keras.activations.get(activation)
    self.time_frequencies = int(time_frequencies)
    self.time_dim = int(time_dim)
    self.out_channels = None if out_channels is None else int(out_channels)
    self.context_dim = int(context_dim)
    # Sublayers share the net's dtype policy (mixed precision included).
    dtype = self.dtype_policy
    self.time_mlp = [keras.layers.Dense(self.time_dim, name=f"time_{i}",
                                        dtype=dtype) for i in range(2)]
    block = lambda c, n: UNetResBlock(c, self.groups, activation, name=n,
                                      dtype=dtype)
    conv = lambda c, n, s=1: keras.layers.Conv2D(
        c, 3, strides=s, padding="same", name=n, dtype=dtype)
    self.in_conv = conv(self.channels[0], "in_conv")
    self.down_blocks = [block(c, f"down_{i}")
                        for i, c in enumerate(self.channels)]
    self.downsamples = [conv(c, f"downsample_{i}", 2)
                        for i, c in enumerate(self.channels[1:])]
    self.mid_block = block(self.channels[-1], "mid")
    self.up_blocks = [block(c, f"up_{i}") for i, c in enumerate(self.channels)]
    self.upsamples = [conv(c, f"upsample_{i}")
                      for i, c in enumerate(self.channels[:-1])]
    self.out_norm = (keras.layers.GroupNormalization(self.groups,
                                                     name="out_norm",
                                                     dtype=dtype)
                     if self.groups else None)
    self.out_conv = None

  def build(self, t_shape: BuildShape, x_shape: BuildShape,
            context_shape: BuildShape | None = None) -> None:
    if len(x_shape) != 4:
      raise ValueError(f"UNetODENet expects images [batch, H, W, C], got "
                       f"shape {tuple(x_shape)}.")
    down = 2 ** (len(self.channels) - 1)
    if any(s is not None and s % down for s in x_shape[1:3]):
      raise ValueError(f"Image size {tuple(x_shape[1:3])} is not divisible by "
                       f"{down}, the downsampling of {len(self.channels)} "
                       f"levels; use fewer channels entries or pad the "
                       f"images.")
    if self.out_channels is None:
      self.out_channels = int(x_shape[-1])
    self.out_conv = keras.layers.Conv2D(self.out_channels, 3, padding="same",
                                        name="out_conv",
                                        dtype=self.dtype_policy)
    # Create every weight now, so a saved model can be restored into it.
    x = tf.zeros([1, *[int(s) for s in x_shape[1:]]], self.dtype)
    context = (None if context_shape is None else
               tf.zeros([1, int(context_shape[-1])], self.dtype))
    self.call(tf.zeros([], self.dtype), x, context)

  def embed_time(self, t: tf.Tensor, x: tf.Tensor,
                 context: tf.Tensor | None = None) -> tf.Tensor:
    """The `[1 or batch, time_dim]` embedding of t (and the context)."""
    if (context is None) != (self.context_dim == 0):
      raise ValueError(f"This UNetODENet has context_dim={self.context_dim}; "
                       f"got context={'None' if context is None else 'a tensor'}.")
    tc = time_features(t, x, context)
    freqs = math.pi * 2.0 ** tf.range(self.time_frequencies, dtype=x.dtype)
    angles = tc[:, :1] * freqs
    h = tf.concat([tc, tf.sin(angles), tf.cos(angles)], axis=-1)
    return self.time_mlp[1](self.activation(self.time_mlp[0](h)))

  def call(self, t: tf.Tensor, x: tf.Tensor,
           context: tf.Tensor | None = None) -> tf.Tensor:
    temb = self.activation(self.embed_time(t, x, context))
    h = self.in_conv(x)
    skips = []
    for i, block in enumerate(self.down_blocks):
      h = block(temb, h)
      skips.append(h)
      if i < len(self.downsamples):
        h = self.downsamples[i](h)
    h = self.mid_block(temb, h)
    for i in reversed(range(len(self.channels))):
      h = self.up_blocks[i](temb, tf.concat([h, skips[i]], axis=-1))
      if i:  # nearest-neighbour upsampling is linear, so smooth
        h = tf.repeat(tf.repeat(h, 2, axis=1), 2, axis=2)
        h = self.upsamples[i - 1](h)
    h = self.activation(h if self.out_norm is None else self.out_norm(h))
    return self.out_conv(h)  # type: ignore[misc]  # set by build()

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "channels": self.channels,
            "groups": self.groups, "activation": self.activation_name,
            "time_frequencies": self.time_frequencies,
            "time_dim": self.time_dim, "out_channels": self.out_channels,
            "context_dim": self.context_dim}
