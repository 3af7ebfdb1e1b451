"""Multi-worker detection by the public route, shared by checkpoints, callbacks and train steps."""

import tensorflow as tf

__all__ = ["in_multi_worker_mode"]


def in_multi_worker_mode(
    strategy: tf.distribute.Strategy | None = None) -> bool:
  """Whether `strategy` (default: the current one) spans several workers.

  By the public route: a multi-worker strategy holds a cluster resolver, and
  its cluster spec lists the chief and worker tasks. A
  `MultiWorkerMirroredStrategy` without `TF_CONFIG` has one task: False.

  #### Examples

  >>> in_multi_worker_mode()
  False
  """
  strategy = strategy or tf.distribute.get_strategy()
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None:
    return False
  spec = resolver.cluster_spec().as_dict()
  return len(spec.get("chief", ())) + len(spec.get("worker", ())) > 1
