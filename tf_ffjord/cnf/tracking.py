"""Keras 3 weights made visible to `tf.Module` variable tracking (which TFP's `trainable_variables` uses)."""

from collections.abc import Iterable

import keras
import tensorflow as tf

__all__ = ["backing_variables"]


def backing_variables(
    layers: Iterable[keras.layers.Layer]) -> list[tf.Variable]:
  """The `tf.Variable`s behind the weights of Keras layers, for `tf.Module` tracking.

  `tf.Module` collects variables by walking instance attributes, and a
  Keras 3 layer is neither a `tf.Module` nor a `tf.Variable`: a module that
  holds Keras layers must list these itself, or
  `TransformedDistribution(base, FFJORD(keras_net)).trainable_variables` is
  empty and TFP's canonical training loop silently trains nothing. The
  weights of a frozen (`trainable=False`) layer are left out, since their
  backing variables still say trainable.

  Args:
    layers: Keras layers.

  Returns:
    A list of `tf.Variable`.
  """
  found = []
  for layer in layers:
    frozen = {id(w) for w in layer.non_trainable_weights}
    for w in layer.weights:
      var = w.value
      if not isinstance(var, tf.Variable):
        continue
      if id(w) in frozen and var.trainable:
        continue
      found.append(var)
  return found
