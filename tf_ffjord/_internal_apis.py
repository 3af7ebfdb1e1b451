"""The private TensorFlow / TFP / Keras APIs tf_ffjord relies on, each isolated here with what it is used for.

No public route exists for any of them (checked against TF 2.21, TFP 0.25
and Keras 3):

- `greedy_bijector_cache`: TFP's `cache_util.BijectorCacheWithGreedyAttrs`.
  `tfp.bijectors.Bijector` caches its results in the private `_cache`
  class attribute, and only this internal class lets one solve store the
  log-det next to the state, so that `TransformedDistribution.log_prob`
  costs one solve, not two. It forces the `<0.26` TFP pin in setup.cfg.
- `in_xla_context`: TF's `control_flow_util.GraphOrParentsInXlaContext`,
  whether the graph being built will be compiled by XLA. TensorFlow has no
  public way to ask.
- `metric_directions`: Keras' `compile_utils.MetricsList`. Keras 3 has no
  public way to mark a custom metric as one to minimize: its callbacks
  (`EarlyStopping`, `ModelCheckpoint`, `ReduceLROnPlateau`) in `mode="auto"`
  read the private `_direction` of the metrics held in this private
  container, and of no others.

`tests/test_internal_apis.py` checks that all exist and behave as used,
and fails with a message that names the dependency when they change.
"""

from collections.abc import Sequence
import functools
from typing import Any

import tensorflow as tf

__all__ = ["greedy_bijector_cache", "in_xla_context", "metric_directions"]


def greedy_bijector_cache(forward_name: str, inverse_name: str) -> object:
  """TFP's bijector cache that also stores what one call computes on the side.

  Args:
    forward_name: name of the bijector method `x -> (y, attrs)`.
    inverse_name: name of the bijector method `y -> (x, attrs)`.

  Returns:
    An instance to assign to a `tfb.Bijector` subclass's `_cache`; its
    `forward_attributes(x)` / `inverse_attributes(y)` return the dicts of
    attributes kept for x and y.
  """
  from tensorflow_probability.python.internal import cache_util  # pylint: disable=g-import-not-at-top
  return cache_util.BijectorCacheWithGreedyAttrs(
      forward_name=forward_name, inverse_name=inverse_name)


def in_xla_context() -> bool:
  """Whether the graph being built will be compiled by XLA.

  True inside a `tf.function(jit_compile=True)` or a Keras step with
  `jit_compile=True`; False eagerly. Should the internal function ever
  go, the answer is `True` ("maybe"), which callers treat as the safe
  side; the test of this module then fails.
  """
  if tf.executing_eagerly():
    return False
  try:
    from tensorflow.python.ops import control_flow_util  # pylint: disable=g-import-not-at-top
    return bool(control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()))
  except (ImportError, AttributeError):
    return True


@functools.cache
def _directions_class():
  from keras.src.trainers import compile_utils  # pylint: disable=g-import-not-at-top

  class Directions(compile_utils.MetricsList):
    """The directions of metrics, for Keras' callbacks; no state, no logs."""

    def __init__(self, metrics):
      super().__init__([], name="directions")
      # Untracked: the metrics' variables stay theirs alone.
      object.__setattr__(self, "metrics", list(metrics))

    def update_state(self, *args, **kwargs):
      del args, kwargs

    def reset_state(self):
      pass

    def result(self):
      return {}

  return Directions


def metric_directions(metrics: Sequence[Any]) -> Any:
  """An entry for `model.metrics` through which Keras' callbacks read directions.

  Args:
    metrics: Keras metrics whose private `_direction` (`"down"` or `"up"`)
      the callbacks of a model should honour.

  Returns:
    A Keras `compile_utils.MetricsList` that holds `metrics` without
    tracking their variables; it has no state and reports nothing.
  """
  return _directions_class()(metrics)
