"""The two kinds of step metric of the custom train steps: the epoch mean of a loss and the last value of a count."""

from typing import Any

import keras
import tensorflow as tf

from tf_ffjord._types import TensorLike

__all__ = ["MEAN", "LAST", "METRIC_KINDS", "LastValue", "make_metric"]

MEAN = "mean"  # the mean over the epoch (a loss)
LAST = "last"  # the last step's value (a count such as the NFE)
METRIC_KINDS = (MEAN, LAST)


@keras.saving.register_keras_serializable("tf_ffjord")
class LastValue(keras.metrics.Metric):
  """A metric that reports the last value it was given (e.g. the last NFE)."""

  def __init__(self, name: str = "last_value", **kwargs: Any) -> None:
    super().__init__(name=name, **kwargs)
    # Under tf.distribute each replica keeps its own value; report their
    # mean, not their sum.
    self.value = self.add_variable(shape=(), initializer="zeros", name="value",
                                   aggregation="mean")

  def update_state(self, value: TensorLike) -> None:
    self.value.assign(tf.cast(value, self.value.dtype))

  def result(self) -> tf.Tensor:
    return tf.convert_to_tensor(self.value)  # a tensor, also under tf.distribute

  def reset_state(self) -> None:
    self.value.assign(0.0)


def make_metric(name: str, kind: str,
                lower_is_better: bool = False) -> keras.metrics.Metric:
  """The Keras metric of a step log: `MEAN` over the epoch or `LAST` value.

  Args:
    name: the log's name.
    kind: `MEAN` or `LAST`.
    lower_is_better: mark the metric as one to minimize, for the callbacks
      that monitor it (see `tf_ffjord.model.steps.monitorable`).

  Raises:
    ValueError: an unknown kind.

  #### Examples

  >>> type(make_metric("nfe", LAST)).__name__
  'LastValue'
  """
  if kind == MEAN:
    metric = keras.metrics.Mean(name=name)
  elif kind == LAST:
    metric = LastValue(name=name)
  else:
    raise ValueError(f"Unknown kind {kind!r} of metric {name!r}; expected "
                     f"one of {METRIC_KINDS}.")
  if lower_is_better:
    # Keras' own losses and error metrics set this private attribute, the
    # one Keras reads (see `tf_ffjord.model.steps.monitorable`).
    metric._direction = "down"  # pylint: disable=protected-access
  return metric
