"""`EndTime`: the learned end time T of a CNF block, one softplus-parameterized Keras weight."""

import math
from typing import Any

import keras
import tensorflow as tf

from tf_ffjord._types import TimeLength

__all__ = ["EndTime", "resolve", "as_tensor"]


@keras.saving.register_keras_serializable("tf_ffjord")
class EndTime(keras.layers.Layer):
  """A trainable, positive integration length T = softplus(raw).

  `FFJORD(f, time_length=EndTime(0.5))` learns T (builders take
  `train_time=True` and make one); pass the same instance to several
  bijectors (or let `FFJORD.copy()` do it) to share it.
  It is a Keras layer, so a Keras model that holds it (the flow models do,
  through `FFJORD.keras_layers`) trains, checkpoints and saves it like any
  other weight, and `FFJORD` exposes its variable to TFP's variable tracking.

  Args:
    initial: the starting value of T, > 0.
    **kwargs: passed to `keras.layers.Layer` (name, dtype).

  Raises:
    ValueError: a non-positive or non-finite `initial`.

  #### Examples

  >>> t = EndTime(0.5)
  >>> round(float(t.length), 6)
  0.5
  >>> len(t.trainable_weights)
  1
  """

  def __init__(self, initial: float = 1.0, **kwargs: Any) -> None:
    super().__init__(**kwargs)
    initial = float(initial)
    if not (initial > 0 and math.isfinite(initial)):
      raise ValueError(f"The end time must be positive and finite, got "
                       f"{initial}.")
    self.initial = initial
    # softplus^-1(T) = log(expm1(T)), written stably for large T.
    raw = initial + math.log(-math.expm1(-initial))
    self.raw = self.add_weight(
        shape=(), name="raw",
        initializer=keras.initializers.Constant(raw))

  @property
  def length(self) -> tf.Tensor:
    """T as a scalar tensor."""
    return tf.math.softplus(tf.convert_to_tensor(self.raw))

  def get_config(self) -> dict:
    return {**super().get_config(), "initial": self.initial}


def resolve(time_length: TimeLength, train_time: bool = False,
            name: str = "end_time") -> TimeLength:
  """The end time `FFJORD` keeps: `time_length`, or a new `EndTime` to learn it.

  Args:
    time_length: positive T: a float, a tensor, a variable, an `EndTime`,
      or a zero-argument callable returning a scalar tensor.
    train_time: learn T: a float becomes an `EndTime` (an `EndTime` is
      kept as is).
    name: name of a new `EndTime`.

  Raises:
    ValueError: a non-positive float, or `train_time` with a time length
      that is neither a number nor an `EndTime`.
  """
  if isinstance(time_length, (int, float)) and not time_length > 0:
    raise ValueError(f"time_length must be positive, got {time_length}.")
  if train_time and not isinstance(time_length, (int, float, EndTime)):
    raise ValueError(
        "train_time=True learns a float time_length (or takes an EndTime); "
        f"got {type(time_length).__name__}. Pass a float, or pass your own "
        "trainable variable with train_time=False.")
  if train_time and isinstance(time_length, (int, float)):
    return EndTime(float(time_length), name=name)
  return time_length


def as_tensor(time_length: TimeLength) -> tf.Tensor:
  """T as a tensor, read now (what `resolve` returned)."""
  if isinstance(time_length, EndTime):
    return time_length.length
  if callable(time_length):
    return tf.convert_to_tensor(time_length())
  return tf.convert_to_tensor(time_length)
