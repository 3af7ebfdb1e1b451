"""TensorBoard outputs of the CLIs (`--tensorboard DIR`): Keras' callback for the training logs, and image summaries."""

import keras
import numpy as np
import tensorflow as tf

__all__ = ["callbacks", "write_images", "write_png", "SampleImages"]

_WRITERS = {}


def callbacks(logdir, chief=True):
  """`[keras.callbacks.TensorBoard(logdir)]`, or `[]` without a directory.

  Every epoch's logs (nll, nfe, ...) go to `<logdir>/train` and
  `<logdir>/validation`. The graph is not written: an ODE solve's graph is
  large and says little. Only the chief of a multi-worker run writes.
  """
  if not logdir or not chief:
    return []
  return [keras.callbacks.TensorBoard(logdir, write_graph=False)]


def write_images(logdir, name, images, step):
  """Writes `images` (`[N, H, W, C]`, floats in [0, 1] or uint8) as one
  image summary `name` at `step` into `logdir`."""
  images = np.asarray(images)
  if images.dtype != np.uint8:
    images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
  if logdir not in _WRITERS:  # one event file per directory and process
    _WRITERS[logdir] = tf.summary.create_file_writer(logdir)
  with _WRITERS[logdir].as_default():
    tf.summary.image(name, images, step=int(step), max_outputs=len(images))
  _WRITERS[logdir].flush()


def write_png(logdir, name, path, step):
  """Writes the PNG file `path` as the image summary `name` at `step`."""
  image = tf.io.decode_png(tf.io.read_file(path)).numpy()
  write_images(logdir, name, image[None], step)


class SampleImages(keras.callbacks.Callback):
  """Writes a grid of model samples at every validation (and on demand).

  Args:
    logdir: the TensorBoard directory.
    grid: `fn(seed) -> [H, W, C]` image of samples in [0, 1] or uint8.
    seed: the samples' seed (the same every time: the grid shows how the
      same noise maps to images as training goes on).
    steps_per_epoch: steps of an epoch (the summary's step).
  """

  def __init__(self, logdir, grid, seed, steps_per_epoch):
    super().__init__()
    self.logdir, self.grid = logdir, grid
    self.seed, self.steps_per_epoch = seed, steps_per_epoch

  def write(self, step):
    write_images(self.logdir, "samples", self.grid(self.seed)[None], step)

  def on_epoch_end(self, epoch, logs=None):
    if any(k.startswith("val_") for k in (logs or {})):
      self.write((epoch + 1) * self.steps_per_epoch)
