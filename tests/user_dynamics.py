"""Dynamics as a user writes them, for the tests and benchmarks: a Keras layer, a `tf.Module`, a function.

None of them uses a tf_ffjord class: each is what a researcher writes on
day one from the contract `f(t, z)`, with the time fed as `[sin t, cos t]`
features concatenated to the state (the concat is what once made the
library recompile per step).

>>> f = make("keras", dim=2, hidden=(8,))
>>> f(tf.constant(0.5), tf.zeros([3, 2])).shape
TensorShape([3, 2])
"""

import keras
import numpy as np
import tensorflow as tf

__all__ = ["KINDS", "TimeMLP", "ModuleMLP", "make", "tfp_style_net"]

# The kinds of dynamics a flow must take; "odenet" is the library's own.
KINDS = ("odenet", "keras", "module", "function")


def _time_features(t, z):
  # t is a scalar in a solve, a [batch] vector in flow matching.
  t = tf.reshape(tf.cast(t, z.dtype), [-1, 1]) * tf.ones_like(z[:, :1])
  return tf.concat([z, tf.sin(t), tf.cos(t)], axis=-1)


@keras.saving.register_keras_serializable("user_dynamics")
class TimeMLP(keras.layers.Layer):
  """A plain Keras layer f(t, z): an MLP on `[z, sin t, cos t]`."""

  def __init__(self, dim, hidden=(64, 64), **kwargs):
    super().__init__(**kwargs)
    self.dim, self.hidden = int(dim), tuple(int(h) for h in hidden)
    self.layers = [keras.layers.Dense(h, activation="tanh") for h in self.hidden]
    self.out = keras.layers.Dense(self.dim)

  def call(self, t, z):
    h = _time_features(t, z)
    for layer in self.layers:
      h = layer(h)
    return self.out(h)

  def get_config(self):
    return {**super().get_config(), "dim": self.dim, "hidden": self.hidden}


class ModuleMLP(tf.Module):
  """A `tf.Module` f(t, z) with its own `tf.Variable`s."""

  def __init__(self, dim, hidden=(64, 64), seed=0, dtype=tf.float32):
    super().__init__()
    rng = tf.random.Generator.from_seed(seed)
    widths = [dim + 2, *hidden, dim]
    self.kernels, self.biases = [], []
    for a, b in zip(widths[:-1], widths[1:]):
      scale = (1.0 / a) ** 0.5
      self.kernels.append(tf.Variable(
          tf.cast(rng.normal([a, b]) * scale, dtype)))
      self.biases.append(tf.Variable(tf.zeros([b], dtype)))

  def __call__(self, t, z):
    h = _time_features(t, z)
    for i, (w, b) in enumerate(zip(self.kernels, self.biases)):
      h = tf.matmul(h, w) + b
      if i < len(self.kernels) - 1:
        h = tf.tanh(h)
    return h


def make(kind, dim, hidden=(64, 64)):
  """Dynamics of one kind (`KINDS`) for `dim`-wide states.

  `"function"` is a lambda closing over a `TimeMLP`, as in code ported from
  `tfp.bijectors.FFJORD`.
  """
  if kind == "odenet":
    from tf_ffjord import ODENet  # pylint: disable=g-import-not-at-top
    return ODENet(hidden=hidden, dim=dim)
  if kind == "keras":
    return TimeMLP(dim, hidden)
  if kind == "module":
    return ModuleMLP(dim, hidden)
  if kind == "function":
    net = TimeMLP(dim, hidden)
    return lambda t, z: net(t, z)
  raise ValueError(f"Unknown kind {kind!r}; expected one of {KINDS}.")


def tfp_style_net(dtype, seed=0):
  """A small time-dependent tanh function g(t, z) over constants, as TFP's FFJORD tests write one."""
  rng = np.random.default_rng(seed)
  w1 = tf.constant(rng.normal(size=(3, 8)) * 0.7, dtype)
  w2 = tf.constant(rng.normal(size=(8, 2)) * 0.7, dtype)

  def g(t, z):
    tz = tf.concat([z, tf.fill([tf.shape(z)[0], 1], t)], -1)
    return tf.tanh(tz @ w1) @ w2
  return g
