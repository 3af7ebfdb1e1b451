"""`EndTime`: the learned end time T of a CNF block, one softplus-parameterized Keras weight."""

import math

import keras
import tensorflow as tf

__all__ = ["EndTime"]


@keras.saving.register_keras_serializable("tf_ffjord")
class EndTime(keras.layers.Layer):
  """A trainable, positive integration length T = softplus(raw).

  `FFJORD(f, time_length=0.5, train_time=True)` builds one; pass the same
  instance to several bijectors (or let `FFJORD.copy()` do it) to share it.
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

  def __init__(self, initial=1.0, **kwargs):
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
  def length(self):
    """T as a scalar tensor."""
    return tf.math.softplus(tf.convert_to_tensor(self.raw))

  def get_config(self):
    return {**super().get_config(), "initial": self.initial}
