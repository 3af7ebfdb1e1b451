"""Offline variants: MINIBOONE from MAF's val/test, BSDS300 patches cut anew."""

from collections.abc import Sequence
import os

import numpy as np

from tf_ffjord.datasets.tabular_maf import (DIMS, Splits, _require, _splits,
                                            _tail_split)

__all__ = ["miniboone_offline", "extract_patches", "bsds300_patches"]


def miniboone_offline(root: str) -> Splits:
  """MINIBOONE from MAF's validation and test splits only (no train split).

  `miniboone/val.npy` (3,284 rows) and `miniboone/test.npy` (3,648 rows) are
  already standardized with MAF's train+val statistics. The validation
  split is used for training: its last 10% is held out for early stopping,
  the rest (2,956 rows, a tenth of MAF's train set) is trained on.

  Args:
    root: directory containing `miniboone/val.npy` and `miniboone/test.npy`.

  Returns:
    `Splits`.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: the arrays are not `[N, 43]` or not finite.
  """
  paths = [_require(os.path.join(root, "miniboone", f), "miniboone")
           for f in ("val.npy", "test.npy")]
  val, test = (np.load(p) for p in paths)
  for p, a in zip(paths, (val, test)):
    if a.ndim != 2 or a.shape[1] != DIMS["miniboone"]:
      raise ValueError(f"{p}: expected an [N, 43] array, got shape "
                       f"{a.shape}.")
  train, held = _tail_split(val)
  return _splits(train, held, test, "miniboone",
                 f"offline: trained on 90% of {paths[0]}, early-stopped on "
                 f"its last 10%, tested on {paths[1]}", paths[0])


def extract_patches(images: Sequence[np.ndarray], n: int,
                    rng: np.random.Generator, size: int = 8) -> np.ndarray:
  """MAF's BSDS300 patches: random `size` x `size` crops, 63 dims for 8x8.

  Each patch comes from an image drawn uniformly at random, at a uniformly
  random position; pixels are dequantized (u + U(0, 1)) / 256, the patch's
  mean is subtracted and its last (bottom-right) pixel is dropped, since it
  is then determined by the others.

  Args:
    images: list of 2-D uint8 grayscale images.
    n: number of patches.
    rng: a `numpy.random.Generator`.
    size: patch side.

  Returns:
    `[n, size * size - 1]` float32 array.
  """
  which = rng.integers(0, len(images), n)
  out = np.empty((n, size * size), np.float32)
  for i, image in enumerate(images):
    rows = np.flatnonzero(which == i)
    if not rows.size:
      continue
    h, w = image.shape
    top = rng.integers(0, h - size + 1, rows.size)
    left = rng.integers(0, w - size + 1, rows.size)
    offsets = np.arange(size)
    r = top[:, None, None] + offsets[None, :, None]
    c = left[:, None, None] + offsets[None, None, :]
    out[rows] = image[r, c].reshape(rows.size, -1)
  out = (out + rng.random(out.shape, dtype=np.float32)) / 256.0
  out -= out.mean(axis=1, keepdims=True)
  return out[:, :-1]


def bsds300_patches(path: str, n_train: int = 1_000_000, n_val: int = 50_000,
                    n_test: int = 250_000, seed: int = 0) -> Splits:
  """BSDS300 patches cut from the images in `bsds300_gray.npz`.

  Training and validation patches come from the 200 training images, test
  patches from the 100 test images, by `extract_patches` (MAF's recipe;
  MAF's sizes by default). The result follows MAF's recipe but is not MAF's
  hdf5 file: NLLs are close in distribution, not identical.

  Args:
    path: the npz file, or a directory containing `bsds300_gray.npz`; keys
      `train_<id>` and `test_<id>`, each a 2-D uint8 image.
    n_train: number of training patches.
    n_val: number of validation patches.
    n_test: number of test patches.
    seed: seed of the patch positions and the dequantization noise.

  Returns:
    `Splits`.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: no train or test images, or images that are not 2-D uint8.
  """
  if os.path.isdir(path):
    path = os.path.join(path, "bsds300_gray.npz")
  _require(path, "bsds300")
  with np.load(path) as f:
    images = {k: f[k] for k in sorted(f.files)}
  groups = {}
  for split in ("train", "test"):
    groups[split] = [v for k, v in images.items() if k.startswith(split + "_")]
    if not groups[split]:
      raise ValueError(f"{path}: no '{split}_<id>' images found.")
    for im in groups[split]:
      if im.ndim != 2 or im.dtype != np.uint8:
        raise ValueError(f"{path}: images must be 2-D uint8, got "
                         f"{im.shape} {im.dtype}.")
  rng = np.random.default_rng(seed)
  train = extract_patches(groups["train"], n_train + n_val, rng)
  test = extract_patches(groups["test"], n_test, rng)
  return _splits(train[:n_train], train[n_train:], test, "bsds300",
                 f"offline: {n_train}/{n_val}/{n_test} patches cut from "
                 f"{path} (seed {seed})", path)
