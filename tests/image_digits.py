"""Small digit images for the image tests: MNIST block means if the shared copy exists, else synthetic strokes."""

import os

import numpy as np

__all__ = ["MNIST", "digits"]

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                     "mnist.npz")


def digits(n, size=8, seed=0):
  """uint8 [n, size, size, 1] digits: MNIST downsampled by block means if the
  shared copy exists, else synthetic strokes (bars and boxes)."""
  rng = np.random.default_rng(seed)
  if os.path.exists(MNIST):
    with np.load(MNIST) as d:
      x = d["x_train"][:n].astype(np.float64)
    x = x[:, 2:26, 2:26].reshape(n, size, 24 // size, size, 24 // size)
    return np.round(x.mean((2, 4)))[..., None].astype(np.uint8)
  x = np.zeros((n, size, size), np.uint8)
  for img in x:
    r, c = rng.integers(1, size - 1, 2)
    img[r, 1:-1] = 255
    img[1:-1, c] = 200
  return x[..., None]
