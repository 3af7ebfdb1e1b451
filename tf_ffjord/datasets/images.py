"""Image dataset loaders from local files: MNIST npz, IDX (MNIST, Fashion-MNIST), CIFAR-10 pickles."""

import gzip
import os
import pickle

import numpy as np

# ((x_train, y_train), (x_test, y_test)).
_ImageSplits = tuple[tuple[np.ndarray, np.ndarray],
                     tuple[np.ndarray, np.ndarray]]

__all__ = ["load", "load_mnist_npz", "load_idx", "load_idx_dir",
           "load_cifar10", "IDX_FILES", "DATASETS"]

DATASETS = ("mnist", "fashion-mnist", "cifar10")

# The standard names of the MNIST / Fashion-MNIST IDX files (optionally .gz).
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}

_IDX_DTYPES: dict[int, type | str] = {
    0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4",
    0x0E: ">f8"}


def _require(path, what):
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"{what}: file not found: {path!r}. Nothing is downloaded at run time; "
        "point the loader at a local copy (e.g. ../shared/data/mnist.npz).")
  return path


def _images(x, path, key):
  """Checks uint8 images [N, H, W] or [N, H, W, C] and returns NHWC."""
  x = np.asarray(x)
  if x.dtype != np.uint8:
    raise ValueError(f"{path}: {key} has dtype {x.dtype}, expected uint8 "
                     "pixels in 0..255.")
  if x.ndim == 3:
    x = x[..., None]
  if x.ndim != 4:
    raise ValueError(f"{path}: {key} has shape {x.shape}, expected images "
                     "[N, H, W] or [N, H, W, C].")
  return x


def load_mnist_npz(path: str) -> _ImageSplits:
  """Loads an MNIST-layout npz: `x_train, y_train, x_test, y_test`.

  Args:
    path: the `.npz` file (as `keras.datasets.mnist` stores it).

  Returns:
    `((x_train, y_train), (x_test, y_test))`, images uint8 `[N, 28, 28, 1]`.

  Raises:
    FileNotFoundError: the file does not exist (the message names it).
    ValueError: a key is missing or the arrays have the wrong dtype/shape.
  """
  _require(path, "MNIST npz")
  with np.load(path) as data:
    missing = [k for k in IDX_FILES if k not in data.files]
    if missing:
      raise ValueError(f"{path}: missing arrays {missing}; expected keys "
                       f"{sorted(IDX_FILES)}, found {sorted(data.files)}.")
    arrays = {k: data[k] for k in IDX_FILES}
  return ((_images(arrays["x_train"], path, "x_train"), arrays["y_train"]),
          (_images(arrays["x_test"], path, "x_test"), arrays["y_test"]))


def load_idx(path: str) -> np.ndarray:
  """Reads one IDX file (optionally gzipped) into a numpy array.

  The IDX format (MNIST's): two zero bytes, a type code (0x08 uint8, 0x09
  int8, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), the number of
  dimensions, then each dimension as a big-endian int32, then the data.

  Raises:
    FileNotFoundError: the file does not exist.
    ValueError: a bad magic number, an unknown type or a truncated file.
  """
  _require(path, "IDX file")
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f"{path}: not an IDX file (bad magic number).")
  code, ndim = raw[2], raw[3]
  if code not in _IDX_DTYPES:
    raise ValueError(f"{path}: unknown IDX data type 0x{code:02x}.")
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise ValueError(f"{path}: truncated IDX header.")
  shape = tuple(int(d) for d in np.frombuffer(raw, ">i4", ndim, 4))
  dtype = np.dtype(_IDX_DTYPES[code])
  count = int(np.prod(shape)) if shape else 1
  if len(raw) - header != count * dtype.itemsize:
    raise ValueError(f"{path}: IDX header says shape {shape} "
                     f"({count * dtype.itemsize} bytes of data) but the file "
                     f"holds {len(raw) - header} bytes.")
  data = np.frombuffer(raw, dtype, count, header).reshape(shape)
  return data.astype(dtype.newbyteorder("="))


def load_idx_dir(directory: str) -> _ImageSplits:
  """Loads MNIST-layout IDX files from a directory.

  Works for MNIST, Fashion-MNIST, KMNIST and other 28x28 grayscale sets
  shipped as `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
  `t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (each optionally
  `.gz`).

  Returns:
    `((x_train, y_train), (x_test, y_test))`, images uint8 `[N, H, W, 1]`.

  Raises:
    FileNotFoundError: a file is missing (the message names it).
    ValueError: a malformed file or mismatched image/label counts.
  """
  arrays = {}
  for key, name in IDX_FILES.items():
    path = os.path.join(directory, name)
    if not os.path.exists(path) and os.path.exists(path + ".gz"):
      path += ".gz"
    arrays[key] = load_idx(_require(path, f"IDX {key}"))
  for split in ("train", "test"):
    x, y = arrays["x_" + split], arrays["y_" + split]
    if len(x) != len(y):
      raise ValueError(f"{directory}: {len(x)} {split} images but {len(y)} "
                       "labels.")
  return ((_images(arrays["x_train"], directory, "train images"),
           arrays["y_train"]),
          (_images(arrays["x_test"], directory, "test images"),
           arrays["y_test"]))


def _unpickle(path):
  with open(_require(path, "CIFAR-10 batch"), "rb") as f:
    batch = pickle.load(f, encoding="bytes")
  if not isinstance(batch, dict):
    raise ValueError(f"{path}: expected a pickled dict, got "
                     f"{type(batch).__name__}.")
  batch = {k.decode() if isinstance(k, bytes) else k: v
           for k, v in batch.items()}
  if "data" not in batch or "labels" not in batch:
    raise ValueError(f"{path}: a CIFAR-10 batch needs keys 'data' and "
                     f"'labels', found {sorted(batch)}.")
  data = np.asarray(batch["data"])
  if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
    raise ValueError(f"{path}: 'data' must be uint8 [N, 3072], got "
                     f"{data.dtype} {data.shape}.")
  labels = np.asarray(batch["labels"], np.int64)
  if len(labels) != len(data):
    raise ValueError(f"{path}: {len(data)} images but {len(labels)} labels.")
  # Rows hold the red, green and blue 32x32 planes in turn.
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return images, labels


def load_cifar10(directory: str) -> _ImageSplits:
  """Loads the CIFAR-10 python version (`cifar-10-batches-py`).

  Args:
    directory: the folder holding `data_batch_1` ... `data_batch_5` and
      `test_batch` (or its parent, holding `cifar-10-batches-py/`).

  Returns:
    `((x_train, y_train), (x_test, y_test))`, images uint8 `[N, 32, 32, 3]`.

  Raises:
    FileNotFoundError: a batch file is missing (the message names it).
    ValueError: a batch without the CIFAR-10 layout.
  """
  nested = os.path.join(directory, "cifar-10-batches-py")
  if (not os.path.exists(os.path.join(directory, "test_batch"))
      and os.path.isdir(nested)):
    directory = nested
  train = [_unpickle(os.path.join(directory, f"data_batch_{i}"))
           for i in range(1, 6)]
  x_test, y_test = _unpickle(os.path.join(directory, "test_batch"))
  x_train = np.concatenate([x for x, _ in train])
  y_train = np.concatenate([y for _, y in train])
  return (x_train, y_train), (x_test, y_test)


def load(name: str, path: str) -> _ImageSplits:
  """Loads an image dataset from a local path.

  Args:
    name: `"mnist"` (an `.npz` file or an IDX directory), `"fashion-mnist"`
      (an IDX directory or an npz of the same keys) or `"cifar10"` (the
      python-pickle directory).
    path: file or directory.

  Returns:
    `((x_train, y_train), (x_test, y_test))`, images uint8 NHWC.

  Raises:
    ValueError: an unknown name.
    FileNotFoundError: a missing file, named in the message.

  #### Examples

  A tiny synthetic file in MNIST's npz layout (pass the path of the real
  `mnist.npz` in practice):

  >>> import os, tempfile
  >>> path = os.path.join(tempfile.mkdtemp(), "mnist.npz")
  >>> digits = lambda n: np.zeros((n, 28, 28), np.uint8)
  >>> np.savez(path, x_train=digits(5), y_train=np.zeros(5, np.uint8),
  ...          x_test=digits(2), y_test=np.zeros(2, np.uint8))
  >>> (x, y), (xt, yt) = load("mnist", path)
  >>> x.shape, xt.shape
  ((5, 28, 28, 1), (2, 28, 28, 1))
  """
  if name not in DATASETS:
    raise ValueError(f"Unknown image dataset {name!r}; expected one of "
                     f"{DATASETS}.")
  path = os.fspath(path)
  if name == "cifar10":
    return load_cifar10(_require(path, "CIFAR-10 directory"))
  if path.endswith(".npz"):
    return load_mnist_npz(path)
  return load_idx_dir(_require(path, f"{name} IDX directory"))
