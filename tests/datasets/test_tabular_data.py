"""Tests of the MAF tabular loaders (`tf_ffjord.datasets.tabular`) on synthetic files in each layout."""

import os
import pathlib
import pickle
import sys
import types

import h5py
import numpy as np
import pytest

from tf_ffjord.datasets import tabular

ROOT = pathlib.Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


# -- helpers that write files in the MAF layouts --------------------------------


def _split_sizes(n):
  n_test = int(0.1 * n)
  n_val = int(0.1 * (n - n_test))
  return n - n_test - n_val, n_val, n_test


def _write_maf_era_pandas_pickle(path, columns, values):
  """Pickles a DataFrame with the object layout of pandas 0.20 (MAF's era).

  The classes are stand-ins registered under pandas' module names while
  pickling, so the file holds the same globals and states a real pandas
  DataFrame pickle of that era holds (pandas 3 reads it back identically).
  """
  names = ["pandas", "pandas.core", "pandas.core.frame",
           "pandas.core.internals", "pandas.core.indexes",
           "pandas.core.indexes.base", "pandas.core.indexes.range"]
  mods = {n: types.ModuleType(n) for n in names}

  def _new_Index(cls, d):  # pylint: disable=invalid-name
    raise AssertionError("only pickled, never called")

  class Index:
    def __init__(self, data):
      self.data = data

    def __reduce__(self):
      return (_new_Index, (Index, {"data": self.data, "name": None}))

  class RangeIndex:
    def __init__(self, n):
      self.n = n

    def __reduce__(self):
      return (_new_Index, (RangeIndex, {"name": None, "start": 0,
                                        "stop": self.n, "step": 1}))

  class BlockManager:
    def __init__(self, state):
      self.state = state

    def __getstate__(self):
      return self.state

  class DataFrame:
    def __init__(self, state):
      self.state = state

    def __getstate__(self):
      return self.state

  for obj, mod in [(_new_Index, "pandas.core.indexes.base"),
                   (Index, "pandas.core.indexes.base"),
                   (RangeIndex, "pandas.core.indexes.range"),
                   (BlockManager, "pandas.core.internals"),
                   (DataFrame, "pandas.core.frame")]:
    obj.__module__, obj.__qualname__ = mod, obj.__name__
    setattr(mods[mod], obj.__name__, obj)
  saved = {n: sys.modules.get(n) for n in names}
  sys.modules.update(mods)
  try:
    n, k = values.shape
    axes = [Index(np.array(columns, dtype=object)), RangeIndex(n)]
    # Two blocks (even and odd columns) to exercise the block placement.
    locs = [np.arange(0, k, 2), np.arange(1, k, 2)]
    blocks = [{"values": np.ascontiguousarray(values[:, l].T), "mgr_locs": l}
              for l in locs]
    state = (axes, [b["values"] for b in blocks],
             [Index(np.array(columns, dtype=object)[l]) for l in locs],
             {"0.14.1": {"axes": axes, "blocks": blocks}})
    frame = DataFrame({"_data": BlockManager(state), "_typ": "dataframe",
                       "_metadata": []})
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      pickle.dump(frame, f, protocol=2)
  finally:
    for name, mod in saved.items():
      if mod is None:
        sys.modules.pop(name, None)
      else:
        sys.modules[name] = mod


def _write_csv(path, names, rows):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    f.write(",".join(names) + "\n")
    for r in rows:
      f.write(",".join(repr(float(v)) for v in r) + "\n")


# -- POWER ----------------------------------------------------------------------


def test_power_follows_maf_recipe(tmp_path):
  n = 300
  data = np.zeros((n, 8))
  data[:, 1] = 1e6  # reactive power and intensity must be dropped
  data[:, 3] = -1e6
  data[:, 7] = np.arange(n)  # time of day: no noise, serves as a row id
  os.makedirs(tmp_path / "power")
  np.save(tmp_path / "power" / "data.npy", data)
  s = tabular.power(str(tmp_path))
  n_train, n_val, n_test = _split_sizes(n)
  assert [a.shape for a in s[:3]] == [(n_train, 6), (n_val, 6), (n_test, 6)]
  # The recipe, spelled out: shuffle by RandomState(42), then noise drawn in
  # the order voltage, active power, sub-meterings.
  rng = np.random.RandomState(42)
  order = rng.permutation(n)
  voltage = 0.01 * rng.rand(n, 1)
  active = 0.001 * rng.rand(n, 1)
  sub = rng.rand(n, 3)
  raw = np.hstack([active, voltage, sub, order[:, None].astype(float)])
  fit = raw[:n_train + n_val]
  want = (raw - fit.mean(0)) / fit.std(0)
  got = np.concatenate(s[:3])
  np.testing.assert_allclose(got, want, atol=2e-6)
  assert s.name == "power" and "power/data.npy" in s.source


def test_power_rejects_wrong_width(tmp_path):
  os.makedirs(tmp_path / "power")
  np.save(tmp_path / "power" / "data.npy", np.zeros((50, 7)))
  with pytest.raises(ValueError, match=r"\[N, 8\]"):
    tabular.power(str(tmp_path))


# -- GAS ------------------------------------------------------------------------


def _gas_frame(n=400, seed=0):
  rng = np.random.default_rng(seed)
  base = rng.normal(size=(n, 6))
  sensors = np.column_stack([
      base[:, 0], base[:, 0] + 0.01 * rng.normal(size=n),  # S0 ~ S1
      base[:, 1], base[:, 2],
      2 * base[:, 1] + 0.001 * rng.normal(size=n),  # S4 ~ S2
      base[:, 3], base[:, 4], -base[:, 5]])
  columns = ["Time", "Meth", "Eth"] + [f"S{i}" for i in range(8)]
  values = np.column_stack([np.arange(n), rng.random(n), rng.random(n),
                            sensors])
  return columns, values, sensors


def test_gas_drops_correlated_columns(tmp_path):
  columns, values, sensors = _gas_frame()
  _write_maf_era_pandas_pickle(
      str(tmp_path / "gas" / "ethylene_CO.pickle"), columns, values)
  s = tabular.gas(str(tmp_path), use_pandas=False)
  # S0 (first of the S0/S1 pair) goes, then S2 (first of S2/S4).
  kept = sensors[:, [1, 3, 4, 5, 6, 7]]
  want = (kept - kept.mean(0)) / kept.std(0, ddof=1)
  n_train, n_val, _ = _split_sizes(len(kept))
  np.testing.assert_allclose(s.train, want[:n_train], atol=1e-5)
  np.testing.assert_allclose(s.val, want[n_train:n_train + n_val], atol=1e-5)
  np.testing.assert_allclose(s.test, want[n_train + n_val:], atol=1e-5)


def test_gas_pickle_reader_matches_pandas(tmp_path):
  pd = pytest.importorskip("pandas")
  columns, values, _ = _gas_frame(50)
  path = str(tmp_path / "frame.pickle")
  frame = pd.DataFrame(values, columns=columns)
  frame["Int"] = np.arange(50)  # a second dtype block
  frame.to_pickle(path)
  names, got = tabular.read_pickled_frame(path, use_pandas=False)
  assert names == list(frame.columns)
  np.testing.assert_array_equal(got, frame.to_numpy(dtype=float))
  old = str(tmp_path / "old.pickle")
  _write_maf_era_pandas_pickle(old, columns, values)
  np.testing.assert_array_equal(pd.read_pickle(old).to_numpy(), values)


def test_gas_missing_column(tmp_path):
  _write_maf_era_pandas_pickle(str(tmp_path / "gas" / "ethylene_CO.pickle"),
                               ["Time", "A", "B"], np.zeros((20, 3)))
  with pytest.raises(ValueError, match="'Meth'"):
    tabular.gas(str(tmp_path), use_pandas=False)


# -- HEPMASS --------------------------------------------------------------------


@pytest.mark.parametrize("test_layout", ["extra_column", "extra_name"])
def test_hepmass_follows_maf_recipe(tmp_path, test_layout):
  rng = np.random.default_rng(1)

  def rows(n):
    label = rng.integers(0, 2, n)
    f = rng.normal(size=(n, 5))
    f[:, 1] = rng.integers(0, 3, n)  # discrete: smallest value repeats
    f[:, 3] = np.maximum(f[:, 3], -0.5)  # clipped: smallest value repeats
    f[:, 4] = np.where(f[:, 4] > 0, 0.25, f[:, 4])  # repeats, but not the min
    return np.column_stack([label, f])

  names = ["# label"] + [f"f{i}" for i in range(5)]
  train, test = rows(400), rows(300)
  _write_csv(str(tmp_path / "hepmass" / "1000_train.csv"), names, train)
  if test_layout == "extra_column":
    _write_csv(str(tmp_path / "hepmass" / "1000_test.csv"), names + ["mass"],
               np.column_stack([test, np.full(300, 1000.0)]))
  else:  # a header name without data: pandas reads a NaN column
    _write_csv(str(tmp_path / "hepmass" / "1000_test.csv"), names + ["mass"],
               test)
  s = tabular.hepmass(str(tmp_path))
  tr = train[train[:, 0] == 1, 1:]
  te = test[test[:, 0] == 1, 1:]
  mu, sd = tr.mean(0), tr.std(0, ddof=1)
  keep = [0, 2, 4]
  tr, te = ((tr - mu) / sd)[:, keep], ((te - mu) / sd)[:, keep]
  n_val = int(0.1 * len(tr))
  np.testing.assert_allclose(s.train, tr[:-n_val], atol=1e-5)
  np.testing.assert_allclose(s.val, tr[-n_val:], atol=1e-5)
  np.testing.assert_allclose(s.test, te, atol=1e-5)


# -- MINIBOONE ------------------------------------------------------------------


def test_miniboone_follows_maf_recipe(tmp_path):
  data = np.random.default_rng(2).gamma(2.0, size=(100, 5))
  os.makedirs(tmp_path / "miniboone")
  np.save(tmp_path / "miniboone" / "data.npy", data)
  s = tabular.load("miniboone", str(tmp_path))
  fit = data[:81 + 9]
  want = (data - fit.mean(0)) / fit.std(0)
  np.testing.assert_allclose(s.train, want[:81], atol=1e-5)
  np.testing.assert_allclose(s.val, want[81:90], atol=1e-5)
  np.testing.assert_allclose(s.test, want[90:], atol=1e-5)
  np.testing.assert_allclose(np.concatenate([s.train, s.val]).mean(0), 0,
                             atol=1e-5)


def test_miniboone_offline_layout(tmp_path):
  rng = np.random.default_rng(3)
  val, test = rng.normal(size=(50, 43)), rng.normal(size=(30, 43))
  os.makedirs(tmp_path / "miniboone")
  np.save(tmp_path / "miniboone" / "val.npy", val)
  np.save(tmp_path / "miniboone" / "test.npy", test)
  s = tabular.load("miniboone", str(tmp_path))
  np.testing.assert_allclose(s.train, val[:45], rtol=1e-6)
  np.testing.assert_allclose(s.val, val[45:], rtol=1e-6)
  np.testing.assert_allclose(s.test, test, rtol=1e-6)
  assert s.source.startswith("offline")


@pytest.mark.skipif(not (SHARED / "miniboone" / "val.npy").exists(),
                    reason="shared data not present")
def test_miniboone_offline_real_files():
  s = tabular.load("miniboone", str(SHARED))
  assert s.train.shape == (2956, 43) and s.val.shape == (328, 43)
  assert s.test.shape == (3648, 43)


# -- BSDS300 --------------------------------------------------------------------


def test_bsds300_hdf5(tmp_path):
  rng = np.random.default_rng(4)
  arrays = {k: rng.normal(size=(n, 63)).astype(np.float32)
            for k, n in [("train", 40), ("validation", 10), ("test", 20)]}
  os.makedirs(tmp_path / "BSDS300")
  with h5py.File(tmp_path / "BSDS300" / "BSDS300.hdf5", "w") as f:
    for k, a in arrays.items():
      f.create_dataset(k, data=a)
  np.savez(tmp_path / "bsds300_gray.npz", train_1=np.zeros((9, 9), np.uint8),
           test_2=np.zeros((9, 9), np.uint8))
  s = tabular.load("bsds300", str(tmp_path), n_train=5)  # hdf5 wins
  for got, key in zip(s[:3], ("train", "validation", "test")):
    np.testing.assert_array_equal(got, arrays[key])


def _match_crop(image, patch63):
  """Whether the 63-d patch is a dequantized, centred crop of the image."""
  full = np.append(patch63, -patch63.sum())  # the dropped pixel
  for r in range(image.shape[0] - 7):
    for c in range(image.shape[1] - 7):
      crop = image[r:r + 8, c:c + 8].astype(float).ravel() / 256
      if np.all(np.abs(full - (crop - crop.mean())) < 1 / 256 + 1e-6):
        return True
  return False


def test_bsds300_patches_recipe(tmp_path):
  rows, cols = np.mgrid[0:12, 0:10]
  images = {"train_1": (7 * cols).astype(np.uint8),
            "train_2": (5 * cols + 3).astype(np.uint8),
            "test_3": (9 * rows).astype(np.uint8)}
  np.savez(tmp_path / "bsds300_gray.npz", **images)
  s = tabular.load("bsds300", str(tmp_path), n_train=30, n_val=6, n_test=10,
                   seed=1)
  assert [a.shape for a in s[:3]] == [(30, 63), (6, 63), (10, 63)]
  train_images = [images["train_1"], images["train_2"]]
  for p in np.concatenate([s.train, s.val]):
    assert any(_match_crop(im, p) for im in train_images)
    assert not _match_crop(images["test_3"], p)
  for p in s.test:
    assert _match_crop(images["test_3"], p)
  again = tabular.bsds300_patches(str(tmp_path), 30, 6, 10, seed=1)
  np.testing.assert_array_equal(again.train, s.train)


# -- absent files ------------------------------------------------------------------


@pytest.mark.parametrize("name,missing", [
    ("power", "power/data.npy"), ("gas", "gas/ethylene_CO.pickle"),
    ("hepmass", "hepmass/1000_train.csv"),
    ("miniboone", "miniboone/data.npy"), ("bsds300", "BSDS300/BSDS300.hdf5")])
def test_absent_file_names_file_and_source(tmp_path, name, missing):
  with pytest.raises(FileNotFoundError) as err:
    tabular.load(name, str(tmp_path))
  message = str(err.value)
  assert os.path.join(str(tmp_path), missing) in message
  assert "zenodo.org/record/1161203" in message


def test_nonfinite_data_is_rejected(tmp_path):
  data = np.random.default_rng(6).normal(size=(40, 3))
  data[5, 1] = np.nan
  os.makedirs(tmp_path / "miniboone")
  np.save(tmp_path / "miniboone" / "data.npy", data)
  with pytest.raises(ValueError, match="NaN or inf"):
    tabular.miniboone(str(tmp_path))
