"""The five MAF tabular datasets, read from the MAF data release's layout."""

import os
from typing import NamedTuple

import numpy as np

from tf_ffjord.datasets.pandas_pickle import read_pickled_frame

__all__ = ["NAMES", "DIMS", "Splits", "power", "gas", "hepmass", "miniboone",
           "bsds300"]

NAMES = ("power", "gas", "hepmass", "miniboone", "bsds300")
DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}

class Splits(NamedTuple):
  """Train/validation/test arrays of one dataset (float32).

  Fields:
    train, val, test: `[N, D]` float32 arrays.
    name: dataset name, one of `NAMES`.
    source: which files and layout they came from (for logs and metrics).
  """
  train: np.ndarray
  val: np.ndarray
  test: np.ndarray
  name: str
  source: str

_MAF_DATA = "https://zenodo.org/record/1161203 (data.tar.gz of the MAF paper)"
_PUBLISHED = {
    "power": "UCI 'Individual household electric power consumption'",
    "gas": "UCI 'Gas sensor array under dynamic gas mixtures' "
           "(ethylene_CO.txt)",
    "hepmass": "UCI 'HEPMASS' (the '1000' files)",
    "miniboone": "UCI 'MiniBooNE particle identification'",
    "bsds300": "the Berkeley Segmentation Dataset BSDS300 "
               "(https://www2.eecs.berkeley.edu/Research/Projects/CS/vision/"
               "bsds/)",
}


def _require(path, name):
  """Raises FileNotFoundError naming the file and where it is published."""
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{name.upper()} file not found: {path}. The MAF-preprocessed "
        f"tabular data are published at {_MAF_DATA}; unpack it under the "
        f"data root so that this path exists. Original source: "
        f"{_PUBLISHED[name]}.")
  return path


def _finite(x, path):
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{path} gives NaN or inf values after preprocessing; "
                     "the file is corrupt or not in the expected layout.")
  return x


def _tail_split(data, frac=0.1):
  """MAF's split: the last int(frac * N) rows are held out."""
  n = int(frac * data.shape[0])
  if n < 1:
    raise ValueError(f"Too few rows ({data.shape[0]}) to hold out "
                     f"{frac:.0%}.")
  return data[:-n], data[-n:]


def _splits(train, val, test, name, source, path):
  out = [_finite(np.asarray(a, np.float32), path) for a in (train, val, test)]
  return Splits(*out, name=name, source=source)


# -- POWER -----------------------------------------------------------------


def power(root: str) -> Splits:
  """POWER: household electric power consumption, D = 6.

  `power/data.npy` holds 8 columns: global active power, global reactive
  power, voltage, global intensity, sub-meterings 1-3 and the time of day.
  As in MAF: rows are shuffled with `RandomState(42)`, global intensity and
  reactive power are dropped (correlated with active power), uniform noise
  U(0, 0.001), U(0, 0.01), U(0, 1) dequantizes active power, voltage and the
  three sub-meterings (drawn in MAF's order: voltage, active, sub-meterings),
  the last 10% is the test set and the last 10% of the rest the validation
  set, and all splits are standardized with the mean and std of train+val.

  Args:
    root: data root containing `power/data.npy`.

  Returns:
    `Splits`.

  Raises:
    FileNotFoundError: the file is missing (the message says where POWER is
      published).
    ValueError: the array is not `[N, 8]` or is not finite.
  """
  path = _require(os.path.join(root, "power", "data.npy"), "power")
  data = np.array(np.load(path), dtype=np.float64)
  if data.ndim != 2 or data.shape[1] != 8:
    raise ValueError(f"{path}: expected an [N, 8] array, got shape "
                     f"{data.shape}.")
  rng = np.random.RandomState(42)
  rng.shuffle(data)
  n = data.shape[0]
  data = np.delete(data, [1, 3], axis=1)
  voltage = 0.01 * rng.rand(n, 1)
  active = 0.001 * rng.rand(n, 1)
  submeter = rng.rand(n, 3)
  data += np.hstack([active, voltage, submeter, np.zeros((n, 1))])
  rest, test = _tail_split(data)
  train, val = _tail_split(rest)
  mu, sd = rest.mean(0), rest.std(0)
  return _splits((train - mu) / sd, (val - mu) / sd, (test - mu) / sd,
                 "power", f"MAF layout: {path}", path)


# -- GAS -------------------------------------------------------------------


def _corr_counts(values):
  """Per column, how many columns (itself included) correlate above 0.98."""
  return (np.corrcoef(values, rowvar=False) > 0.98).sum(axis=1)


def gas(root: str, use_pandas: bool | None = None) -> Splits:
  """GAS: ethylene and CO gas-sensor readings, D = 8.

  As in MAF: from the DataFrame in `gas/ethylene_CO.pickle` the columns
  `Meth`, `Eth` and `Time` are dropped, then, while some column has a
  Pearson correlation above 0.98 with another, the first such column is
  dropped; the rest is standardized (mean, std with ddof=1, over all rows),
  the last 10% is the test set and the last 10% of the rest validation.

  Reading the pickle needs no pandas (see `read_pickled_frame`).

  Args:
    root: data root containing `gas/ethylene_CO.pickle`.
    use_pandas: see `read_pickled_frame`.

  Returns:
    `Splits`.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: the pickle is not a DataFrame with those columns.
  """
  path = _require(os.path.join(root, "gas", "ethylene_CO.pickle"), "gas")
  columns, values = read_pickled_frame(path, use_pandas)
  for col in ("Meth", "Eth", "Time"):
    if col not in columns:
      raise ValueError(f"{path}: column {col!r} not found; columns are "
                       f"{columns}.")
  keep = [i for i, c in enumerate(columns) if c not in ("Meth", "Eth", "Time")]
  values = values[:, keep]
  counts = _corr_counts(values)
  while np.any(counts > 1):
    values = np.delete(values, int(np.flatnonzero(counts > 1)[0]), axis=1)
    counts = _corr_counts(values)
  values = (values - values.mean(0)) / values.std(0, ddof=1)
  rest, test = _tail_split(values)
  train, val = _tail_split(rest)
  return _splits(train, val, test, "gas", f"MAF layout: {path}", path)


# -- HEPMASS ---------------------------------------------------------------


def _read_csv(path):
  """(number of header names, [rows, fields] float64) of a numeric csv."""
  with open(path, "r", encoding="utf-8") as f:
    header = f.readline()
    values = np.loadtxt(f, delimiter=",", ndmin=2, dtype=np.float64)
  if not header.strip() or values.size == 0:
    raise ValueError(f"{path}: expected a header line and numeric rows.")
  return len(header.split(",")), values


def hepmass(root: str) -> Splits:
  """HEPMASS: signal events of the '1000' particle-physics set, D = 21.

  As in MAF: rows of `hepmass/1000_train.csv` and `1000_test.csv` whose
  first column (the label) is 1 are kept and the label dropped; the test
  file also loses its last column (the file has one more column than the
  train file); both are standardized with the train mean and std (ddof=1);
  features are removed where, in the standardized train data, the smallest
  value occurs more than 5 times (MAF's rule, which removes the discrete
  features); the last 10% of train is the validation set.

  Args:
    root: data root containing `hepmass/1000_train.csv`, `1000_test.csv`.

  Returns:
    `Splits`.

  Raises:
    FileNotFoundError: a file is missing.
    ValueError: a file is not numeric csv with a header line.
  """
  paths = [_require(os.path.join(root, "hepmass", f"1000_{s}.csv"), "hepmass")
           for s in ("train", "test")]
  arrays = []
  for path, drop_last in zip(paths, (False, True)):
    names, values = _read_csv(path)
    # Columns as pandas sees them with index_col=False: one per header name;
    # missing fields are NaN columns at the end, surplus fields are ignored.
    ncols = names - 1 if drop_last else names
    values = values[values[:, 0] == 1, 1:min(ncols, values.shape[1])]
    arrays.append(values)
  train, test = arrays
  if train.shape[1] != test.shape[1]:
    raise ValueError(f"{paths[0]} gives {train.shape[1]} features but "
                     f"{paths[1]} gives {test.shape[1]}; expected the test "
                     "file to have one more column than the train file.")
  mu, sd = train.mean(0), train.std(0, ddof=1)
  train, test = (train - mu) / sd, (test - mu) / sd
  keep = [j for j in range(train.shape[1])
          if np.unique(train[:, j], return_counts=True)[1][0] <= 5]
  train, test = train[:, keep], test[:, keep]
  train, val = _tail_split(train)
  return _splits(train, val, test, "hepmass",
                 f"MAF layout: {os.path.dirname(paths[0])}", paths[0])


# -- MINIBOONE -------------------------------------------------------------


def miniboone(root: str) -> Splits:
  """MINIBOONE: particle-identification events, D = 43.

  `miniboone/data.npy` is MAF's cleaned array (outliers and the features
  with many repeated values already removed). As in MAF: the last 10% is the
  test set, the last 10% of the rest validation, and all splits are
  standardized with the mean and std of train+val.

  Args:
    root: data root containing `miniboone/data.npy`.

  Returns:
    `Splits`.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: the array is not 2-D or not finite.
  """
  path = _require(os.path.join(root, "miniboone", "data.npy"), "miniboone")
  data = np.asarray(np.load(path), dtype=np.float64)
  if data.ndim != 2:
    raise ValueError(f"{path}: expected a 2-D array, got shape {data.shape}.")
  rest, test = _tail_split(data)
  train, val = _tail_split(rest)
  mu, sd = rest.mean(0), rest.std(0)
  return _splits((train - mu) / sd, (val - mu) / sd, (test - mu) / sd,
                 "miniboone", f"MAF layout: {path}", path)


# -- BSDS300 ---------------------------------------------------------------


def bsds300(root: str) -> Splits:
  """BSDS300: MAF's 8x8 natural-image patches (63 dims), from the hdf5.

  `BSDS300/BSDS300.hdf5` holds the datasets `train`, `validation`, `test`,
  already preprocessed by MAF; they are read as they are.

  Args:
    root: data root containing `BSDS300/BSDS300.hdf5`.

  Returns:
    `Splits`.

  Raises:
    FileNotFoundError: the file is missing.
    ValueError: a split is missing or not 2-D.
  """
  path = _require(os.path.join(root, "BSDS300", "BSDS300.hdf5"), "bsds300")
  import h5py  # pylint: disable=import-outside-toplevel
  with h5py.File(path, "r") as f:
    arrays = []
    for key in ("train", "validation", "test"):
      if key not in f:
        raise ValueError(f"{path}: dataset {key!r} not found; it has "
                         f"{sorted(f.keys())}.")
      a = np.asarray(f[key][...], dtype=np.float32)
      if a.ndim != 2:
        raise ValueError(f"{path}: {key} has shape {a.shape}, expected 2-D.")
      arrays.append(a)
  train, val, test = arrays
  return _splits(train, val, test, name="bsds300",
                 source=f"MAF layout: {path}", path=path)
