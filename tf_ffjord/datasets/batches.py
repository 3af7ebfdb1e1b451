"""Resumable `tf.data` pipelines: batch k of a run is a pure function of (seed, k)."""

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tf_ffjord._types import SeedLike

__all__ = ["epoch_batches", "sampled_batches", "step_seed"]


def step_seed(seed: int | tf.Tensor, step: int | tf.Tensor,
              stream: int = 0) -> tf.Tensor:
  """The stateless seed `[2]` of a step's randomness (one per stream)."""
  seed = tf.cast(seed, tf.int64)
  return tf.cast(tf.stack([seed * 1000 + stream, tf.cast(step, tf.int64)]),
                 tf.int32)


def epoch_batches(
    x: np.ndarray | tuple[np.ndarray, ...], batch_size: int, seed: int = 0,
    start_step: int = 0,
    transform: Callable[[tf.Tensor, tf.Tensor], tf.Tensor] | None = None,
) -> tf.data.Dataset:
  """Shuffled minibatches of an in-memory array, endlessly, from any step.

  Every epoch visits the examples in a fresh order,
  `tf.random.experimental.index_shuffle` of the epoch's seed: batch k is
  rows `order_e[i B : (i + 1) B]` for epoch e and position i of step k,
  whatever step the pipeline starts from. So a run resumed at step k sees
  exactly the batches an uninterrupted run would, without replaying the
  ones before it. The last partial batch of an epoch is dropped.

  Args:
    x: an array `[n, ...]` (or a tuple of arrays with n rows each).
    batch_size: rows per batch, at most n.
    seed: an int.
    start_step: the first step.
    transform: optional `fn(batch, seed)` applied to each batch (e.g. a
      dequantization), with the step's stateless seed.

  Returns:
    A `tf.data.Dataset` of batches.

  Raises:
    ValueError: a batch larger than the data.

  #### Examples

  >>> first_two = [b.numpy() for b in epoch_batches(np.arange(10), 4).take(2)]
  >>> resumed = next(iter(epoch_batches(np.arange(10), 4, start_step=1)))
  >>> bool((resumed.numpy() == first_two[1]).all())
  True
  >>> len(set(np.concatenate(first_two)))  # no repeats within an epoch
  8
  """
  arrays = x if isinstance(x, tuple) else (x,)
  n = len(arrays[0])
  if not 0 < batch_size <= n:
    raise ValueError(f"batch_size must be in [1, {n}] for {n} examples, got "
                     f"{batch_size}.")
  steps_per_epoch = n // batch_size
  tensors = tuple(tf.constant(a) for a in arrays)
  offsets = tf.range(batch_size, dtype=tf.int64)

  def batch(step):
    epoch, pos = step // steps_per_epoch, step % steps_per_epoch
    rows = tf.random.experimental.index_shuffle(
        pos * batch_size + offsets, tf.stack([tf.cast(seed, tf.int64), epoch]),
        n - 1)
    out = tuple(tf.gather(t, rows) for t in tensors)
    out = out if isinstance(x, tuple) else out[0]
    if transform is not None:
      out = transform(out, step_seed(seed, step, 1))
    return out

  return (tf.data.Dataset.counter(start=int(start_step), dtype=tf.int64)
          .map(batch).prefetch(2))


def sampled_batches(sample: Callable[[int, SeedLike], np.ndarray],
                    batch_size: int, seed: int = 0,
                    start_step: int = 0) -> tf.data.Dataset:
  """Batches of fresh samples from a generator, endlessly, from any step.

  Batch k is `sample(batch_size, seed=(seed, k))`, so a resumed run sees the
  batches an uninterrupted run would.

  Args:
    sample: `fn(n, seed) -> float32 array [n, ...]`, e.g. a toy density's
      sampler; `seed` is a pair of ints.
    batch_size: examples per batch.
    seed: an int.
    start_step: the first step.

  Returns:
    A `tf.data.Dataset` of batches.

  #### Examples

  >>> from tf_ffjord.datasets import toy
  >>> ds = sampled_batches(lambda n, s: toy.sample("8gaussians", n, seed=s),
  ...                      16, seed=3, start_step=5)
  >>> next(iter(ds)).shape
  TensorShape([16, 2])
  """
  def draw(step):
    return np.asarray(sample(batch_size, (int(seed), int(step))), np.float32)

  probe = draw(start_step)

  def batch(step):
    out = tf.numpy_function(draw, [step], tf.float32, stateful=False)
    return tf.ensure_shape(out, probe.shape)

  return (tf.data.Dataset.counter(start=int(start_step), dtype=tf.int64)
          .map(batch).prefetch(2))
