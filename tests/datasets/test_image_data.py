"""Image loaders (tf_ffjord/datasets/images.py) on synthetic IDX files and pickles; missing files are named."""

import gzip
import pickle
import struct

import numpy as np
import pytest

from tf_ffjord.datasets import images as image_data


def _write_idx(path, array):
  codes = {"u1": 0x08, "i4": 0x0C}
  array = np.asarray(array)
  header = bytes([0, 0, codes[array.dtype.str[1:]], array.ndim])
  header += struct.pack(f">{array.ndim}i", *array.shape)
  array = array.astype(array.dtype.newbyteorder(">"))  # IDX is big-endian
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def test_idx_loader_on_synthetic_files(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.integers(0, 256, [5, 28, 28], dtype=np.uint8),
            "y_train": rng.integers(0, 10, [5], dtype=np.uint8),
            "x_test": rng.integers(0, 256, [3, 28, 28], dtype=np.uint8),
            "y_test": rng.integers(0, 10, [3], dtype=np.uint8)}
  for key, name in image_data.IDX_FILES.items():
    # Mix plain and gzipped files, as downloads come either way.
    suffix = ".gz" if key.startswith("x_test") else ""
    _write_idx(str(tmp_path / (name + suffix)), arrays[key])
  for name in ("mnist", "fashion-mnist"):
    (x, y), (xt, yt) = image_data.load(name, tmp_path)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(y, arrays["y_train"])
    np.testing.assert_array_equal(xt[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(yt, arrays["y_test"])
  ints = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
  _write_idx(str(tmp_path / "ints"), ints)
  np.testing.assert_array_equal(image_data.load_idx(str(tmp_path / "ints")),
                                ints)
  with open(tmp_path / "bad", "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x00" * 4)
  with pytest.raises(ValueError, match="10 bytes"):
    image_data.load_idx(str(tmp_path / "bad"))


def test_cifar10_loader_on_synthetic_pickles(tmp_path):
  root = tmp_path / "cifar-10-batches-py"
  root.mkdir()
  rng = np.random.default_rng(0)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    data = rng.integers(0, 256, [2, 3072], dtype=np.uint8)
    labels = list(rng.integers(0, 10, 2))
    batches[name] = (data, labels)
    with open(root / name, "wb") as f:  # bytes keys, as the real files have
      pickle.dump({b"batch_label": name.encode(), b"data": data,
                   b"labels": labels, b"filenames": [b"a", b"b"]}, f)
  (x, y), (xt, yt) = image_data.load("cifar10", tmp_path)
  assert x.shape == (10, 32, 32, 3) and xt.shape == (2, 32, 32, 3)
  data = batches["data_batch_2"][0]
  # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
  assert x[2, 0, 1, 0] == data[0, 1]
  assert x[2, 1, 0, 1] == data[0, 1024 + 32]
  assert x[3, 31, 31, 2] == data[1, 3071]
  np.testing.assert_array_equal(yt, batches["test_batch"][1])
  assert list(y[:2]) == batches["data_batch_1"][1]


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    image_data.load("mnist", tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    image_data.load("fashion-mnist", tmp_path)
  (tmp_path / "cifar").mkdir()
  with pytest.raises(FileNotFoundError, match="data_batch_1"):
    image_data.load("cifar10", tmp_path / "cifar")
  with pytest.raises(ValueError, match="Unknown image dataset"):
    image_data.load("svhn", tmp_path)
  np.savez(tmp_path / "partial.npz", x_train=np.zeros([1, 2, 2], np.uint8))
  with pytest.raises(ValueError, match="missing arrays"):
    image_data.load("mnist", tmp_path / "partial.npz")
