"""Image outputs of `training.images_cli`: PNG sample grids (no dependencies) and the bits/dim curve."""

import struct
import zlib

import numpy as np

__all__ = ["image_grid", "write_png", "save_grid", "plot_curve"]


def image_grid(images, nrow=8, pad=1):
  """Tiles `[N, H, W, C]` images in [0, 1] into one `[H', W', C]` uint8 image.

  Args:
    images: floats in [0, 1] (clipped) or uint8.
    nrow: images per row.
    pad: pixels of black border between images.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"image_grid expects [N, H, W, C], got {images.shape}.")
  if images.dtype != np.uint8:
    images = np.round(np.clip(images, 0.0, 1.0) * 255).astype(np.uint8)
  n, h, w, c = images.shape
  rows = -(-n // nrow)
  grid = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c),
                  np.uint8)
  for i in range(n):
    r, q = divmod(i, nrow)
    y, x = pad + r * (h + pad), pad + q * (w + pad)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def write_png(path, image):
  """Writes a `[H, W]`, `[H, W, 1]` or `[H, W, 3]` uint8 image as PNG."""
  image = np.asarray(image, np.uint8)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  if image.ndim == 2:
    color = 0
  elif image.ndim == 3 and image.shape[-1] == 3:
    color = 2
  else:
    raise ValueError(f"write_png expects a gray or RGB image, got "
                     f"{image.shape}.")
  h, w = image.shape[:2]
  rows = image.reshape(h, -1)
  raw = b"".join(b"\x00" + rows[i].tobytes() for i in range(h))

  def chunk(kind, data):
    body = kind + data
    return (struct.pack(">I", len(data)) + body
            + struct.pack(">I", zlib.crc32(body) & 0xFFFFFFFF))

  with open(path, "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)))
    f.write(chunk(b"IDAT", zlib.compress(raw, 9)))
    f.write(chunk(b"IEND", b""))


def save_grid(path, images, nrow=8, scale=2):
  """Saves images in [0, 1] as an `nrow`-wide PNG grid, upscaled `scale`x."""
  grid = image_grid(images, nrow)
  if scale > 1:
    grid = grid.repeat(scale, 0).repeat(scale, 1)
  write_png(path, grid)
  return path


def plot_curve(path, curve, test_bpd=None, reference=None):
  """Plots bits/dim against minutes of training (needs matplotlib; else skips).

  Args:
    path: output PNG.
    curve: rows of `curve.csv` (dicts with `seconds` and `bpd` (the
      training batches' mean, maximum-likelihood runs) and/or `val_bpd`
      (the exact-likelihood evaluation of a test subset)).
    test_bpd: optional final test bits/dim, drawn at the end.
    reference: optional published bits/dim, drawn as a dashed line.

  Returns:
    The path, or None when matplotlib is missing.
  """
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  fig, ax = plt.subplots(figsize=(5, 3.5))
  for key, label, style in (("bpd", "training batches", "-"),
                            ("val_bpd", "test subset", "o-")):
    rows = [r for r in curve if key in r]
    if rows:
      ax.plot([r["seconds"] / 60 for r in rows], [r[key] for r in rows],
              style, label=label)
  if test_bpd is not None and curve:
    ax.plot([curve[-1]["seconds"] / 60], [test_bpd], "s",
            label=f"test ({test_bpd:.3f})")
  if reference is not None:
    ax.axhline(reference, ls="--", c="gray", label=f"paper ({reference})")
  ax.set_xlabel("minutes of training")
  ax.set_ylabel("bits/dim")
  ax.set_yscale("log")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path
