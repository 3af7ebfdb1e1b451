"""The private TensorFlow / TFP APIs tf_ffjord relies on, each isolated here with what it is used for.

No public route exists for either (checked against TF 2.21 and TFP 0.25):

- `greedy_bijector_cache`: TFP's `cache_util.BijectorCacheWithGreedyAttrs`.
  `tfp.bijectors.Bijector` caches its results in the private `_cache`
  class attribute, and only this internal class lets one solve store the
  log-det next to the state, so that `TransformedDistribution.log_prob`
  costs one solve, not two. It forces the `<0.26` TFP pin in setup.cfg.
- `in_xla_context`: TF's `control_flow_util.GraphOrParentsInXlaContext`,
  whether the graph being built will be compiled by XLA. TensorFlow has no
  public way to ask.

`tests/test_internal_apis.py` checks that both exist and behave as used,
and fails with a message that names the dependency when they change.
"""

import tensorflow as tf

__all__ = ["greedy_bijector_cache", "in_xla_context"]


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
