"""Pieces of the custom Keras train steps of `FlowModel` and `VAE`: one optimizer step, step logs Keras can reduce, and the metric directions Keras' callbacks read."""

from collections.abc import Callable, Sequence
from typing import Any

import keras
import tensorflow as tf

from tf_ffjord import _internal_apis
from tf_ffjord._distribute import in_multi_worker_mode

__all__ = ["monitorable", "minimize", "step_logs"]


def minimize(model: keras.Model, loss_fn: Callable[[], tuple[tf.Tensor, Any]],
             return_loss: bool = False) -> Any:
  """One optimizer step of `model` on `loss_fn()` plus the model's own losses.

  Under `tf.distribute` the gradients are summed over replicas, so the loss
  is divided by the number of replicas: each replica's mean then counts as
  its share of the global batch.

  Args:
    model: a compiled Keras model.
    loss_fn: callable returning `(loss, aux)`; runs under the gradient tape.
    return_loss: also return the loss minimized (with the model's losses).

  Returns:
    `aux`, or `(loss, aux)`.
  """
  replicas = tf.distribute.get_strategy().num_replicas_in_sync
  with tf.GradientTape() as tape:
    loss, aux = loss_fn()
    if model.losses:
      loss += tf.add_n(model.losses)
    # A LossScaleOptimizer (Keras wraps one under mixed_float16) scales the
    # loss here and unscales the gradients in apply_gradients.
    scaled = model.optimizer.scale_loss(loss / replicas)
  variables = model.trainable_variables
  grads = tape.gradient(scaled, variables)
  model.optimizer.apply_gradients(zip(grads, variables))
  return (loss, aux) if return_loss else aux


def step_logs(logs: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
  """Step logs in the shape Keras can reduce under the current strategy.

  Keras 3 averages multi-worker step logs with `strategy.reduce("MEAN", v,
  axis=0)`, which fails on scalars; give them a length-1 axis there.
  """
  if in_multi_worker_mode():
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}
  return logs


def monitorable(metrics: Sequence[Any]) -> list[Any]:
  """`metrics`, then one entry through which Keras' callbacks see directions.

  Keras 3 has no public way to say that a custom metric is to be minimized.
  `EarlyStopping`, `ModelCheckpoint` and `ReduceLROnPlateau` in their
  default `mode="auto"` know `loss` by name, and otherwise read the private
  `_direction` of the metrics that `model.metrics` holds inside Keras'
  private metric containers (`_internal_apis.metric_directions`), and fail
  for any other name. So a model's `metrics` ends with one such container
  of its metrics marked by
  `tf_ffjord.model.metrics.make_metric(..., lower_is_better=True)`: it has
  no state and reports nothing (`reset_state`, `result` are no-ops), so
  the model's logs, `evaluate`'s list order and saving are as before.
  `tests/model/test_keras_habits.py` fails if Keras changes this.

  Args:
    metrics: the model's metrics, in order.

  Returns:
    A new list.
  """
  down = [m for m in metrics if getattr(m, "_direction", None) == "down"]
  if not down:
    return list(metrics)
  return [*metrics, _internal_apis.metric_directions(down)]
