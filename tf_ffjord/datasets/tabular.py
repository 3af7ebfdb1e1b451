"""The five MAF tabular benchmarks (POWER, GAS, HEPMASS, MINIBOONE, BSDS300).

Each loader takes a root directory holding the files in the layout of the
MAF data release and applies MAF's preprocessing and train/validation/test
splits, so that NLLs are comparable with the published tables:

| name | file under root | D | MAF sizes (train / val / test) |
| --- | --- | --- | --- |
| power | `power/data.npy` | 6 | 1,659,917 / 184,435 / 204,928 |
| gas | `gas/ethylene_CO.pickle` | 8 | 852,174 / 94,685 / 105,206 |
| hepmass | `hepmass/1000_{train,test}.csv` | 21 | 315,123 / 35,013 / 174,987 |
| miniboone | `miniboone/data.npy` | 43 | 29,556 / 3,284 / 3,648 |
| bsds300 | `BSDS300/BSDS300.hdf5` | 63 | 1,000,000 / 50,000 / 250,000 |

Two offline variants cover what this project ships in `../shared/data`:
`miniboone/{val,test}.npy` (MAF's validation and test splits, already
normalised; there is no train split, so the validation split is trained on)
and `bsds300_gray.npz` (the 300 BSDS300 images, from which patches are cut
with MAF's recipe). `load` picks the standard layout when present and the
offline one otherwise, and says which in `Splits.source`.
"""

import collections
import os
import pickle

import numpy as np

__all__ = ["NAMES", "DIMS", "Splits", "load", "power", "gas", "hepmass",
           "miniboone", "miniboone_offline", "bsds300", "bsds300_patches",
           "extract_patches", "read_pickled_frame"]

NAMES = ("power", "gas", "hepmass", "miniboone", "bsds300")
DIMS = {"power": 6, "gas": 8, "hepmass": 21, "miniboone": 43, "bsds300": 63}

Splits = collections.namedtuple("Splits",
                                ["train", "val", "test", "name", "source"])
Splits.__doc__ = """Train/validation/test arrays of one dataset (float32).

Fields:
  train, val, test: `[N, D]` float32 arrays.
  name: dataset name, one of `NAMES`.
  source: which files and layout they came from (for logs and metrics).
"""

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


def power(root):
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


class _PandasStub:
  """Stands in for any pandas object in a pickle; keeps args and state."""

  _pd_name = "?"
  args, kwargs, state = (), {}, None  # protocol 0 skips __new__

  def __new__(cls, *args, **kwargs):
    obj = object.__new__(cls)
    obj.args, obj.kwargs, obj.state = args, kwargs, None
    return obj

  def __init__(self, *args, **kwargs):
    pass

  def __setstate__(self, state):
    self.state = state


class _FrameUnpickler(pickle.Unpickler):
  """Unpickles pandas objects as `_PandasStub`s, numpy objects as usual."""

  def find_class(self, module, name):
    if module.split(".")[0] == "pandas":
      return type(name, (_PandasStub,), {"_pd_name": name})
    return super().find_class(module, name)


def _is(obj, *names):
  return isinstance(obj, _PandasStub) and obj._pd_name in names


def _stub_array(obj):
  """An Index / extension array stub (or an ndarray) as a numpy array."""
  if isinstance(obj, np.ndarray):
    return obj
  if isinstance(obj, (list, tuple)):
    return np.asarray(obj)
  if _is(obj, "_new_Index"):  # _new_Index(cls, dict)
    cls, d = obj.args[0], obj.args[1]
    if _is(cls, "RangeIndex") or ("start" in d and "data" not in d):
      return np.arange(d.get("start", 0) or 0, d["stop"], d.get("step", 1) or 1)
    return _stub_array(d["data"])
  if isinstance(obj, _PandasStub):
    state = obj.state
    if isinstance(state, tuple):  # NDArrayBacked: (dtype, ndarray)
      for item in state:
        if isinstance(item, np.ndarray):
          return item
    if isinstance(state, dict) and "data" in state:  # old Index BUILD
      return _stub_array(state["data"])
    for a in obj.args:
      if isinstance(a, np.ndarray):
        return a
  raise ValueError(f"Cannot read a pandas {getattr(obj, '_pd_name', obj)!r} "
                   "without pandas; install pandas.")


def _locs(placement, ncols):
  if isinstance(placement, slice):
    return np.arange(ncols)[placement]
  if _is(placement, "BlockPlacement"):
    return _locs(placement.args[0], ncols)
  return np.asarray(placement, dtype=np.int64).ravel()


def _frame_from_stub(frame):
  """(column names, [rows, columns] float64 values) of a DataFrame stub."""
  state = frame.state if isinstance(frame.state, dict) else {}
  mgr = state.get("_mgr", state.get("_data"))
  if mgr is None:
    raise ValueError("The pickle does not hold a pandas DataFrame.")
  blocks = []  # (values [n_in_block, rows], column positions or names)
  if mgr.args and len(mgr.args) == 2 and not mgr.state:
    # pandas >= 2: BlockManager(blocks, axes), blocks from _unpickle_block.
    raw_blocks, axes = mgr.args
    for b in raw_blocks:
      values, placement = b.args[0], b.args[1]
      blocks.append((np.asarray(values), placement))
  else:
    # pandas 0.14 - 1.x: __setstate__((axes, values, items, extra)).
    st = mgr.state
    extra = st[3] if len(st) > 3 and isinstance(st[3], dict) else {}
    if "0.14.1" in extra:
      axes = extra["0.14.1"]["axes"]
      for b in extra["0.14.1"]["blocks"]:
        blocks.append((np.asarray(b["values"]), b["mgr_locs"]))
    else:
      axes = st[0]
      for values, items in zip(st[1], st[2]):
        blocks.append((np.asarray(values), list(_stub_array(items))))
  columns = [str(c) for c in _stub_array(axes[0])]
  nrows = len(_stub_array(axes[1]))
  out = np.full((nrows, len(columns)), np.nan)
  for values, where in blocks:
    values = values.reshape(-1, nrows) if values.ndim == 2 else values[None]
    if isinstance(where, list):
      where = [columns.index(str(c)) for c in where]
    else:
      where = _locs(where, len(columns))
    out[:, where] = values.T.astype(np.float64)
  return columns, out


def read_pickled_frame(path, use_pandas=None):
  """Reads a pickled pandas DataFrame of numbers, with or without pandas.

  Args:
    path: the `.pickle` file.
    use_pandas: `True` to use `pandas.read_pickle`, `False` for the built-in
      reader (it understands the BlockManager pickles of pandas 0.14 to 3.x,
      including Python 2 pickles), `None` for pandas when it is installed.

  Returns:
    `(columns, values)`: a list of column names and a `[rows, columns]`
    float64 array.
  """
  if use_pandas is None:
    try:
      import pandas  # pylint: disable=import-outside-toplevel,unused-import
      use_pandas = True
    except ImportError:
      use_pandas = False
  if use_pandas:
    import pandas as pd  # pylint: disable=import-outside-toplevel
    frame = pd.read_pickle(path)
    return ([str(c) for c in frame.columns],
            frame.to_numpy(dtype=np.float64))
  with open(path, "rb") as f:
    obj = _FrameUnpickler(f, encoding="latin1").load()
  if not _is(obj, "DataFrame"):
    raise ValueError(f"{path} does not hold a pandas DataFrame.")
  return _frame_from_stub(obj)


def _corr_counts(values):
  """Per column, how many columns (itself included) correlate above 0.98."""
  return (np.corrcoef(values, rowvar=False) > 0.98).sum(axis=1)


def gas(root, use_pandas=None):
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


def hepmass(root):
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


def miniboone(root):
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


def miniboone_offline(root):
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


# -- BSDS300 ---------------------------------------------------------------


def bsds300(root):
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
  return _splits(*arrays, name="bsds300", source=f"MAF layout: {path}",
                 path=path)


def extract_patches(images, n, rng, size=8):
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


def bsds300_patches(path, n_train=1_000_000, n_val=50_000, n_test=250_000,
                    seed=0):
  """BSDS300 patches cut from the images in `bsds300_gray.npz`.

  Training and validation patches come from the 200 training images, test
  patches from the 100 test images, by `extract_patches` (MAF's recipe;
  MAF's sizes by default). The result follows MAF's recipe but is not MAF's
  hdf5 file: NLLs are close in distribution, not identical.

  Args:
    path: the npz file, or a directory containing `bsds300_gray.npz`; keys
      `train_<id>` and `test_<id>`, each a 2-D uint8 image.
    n_train, n_val, n_test: numbers of patches.
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


# -- dispatch --------------------------------------------------------------

_LOADERS = {"power": power, "gas": gas, "hepmass": hepmass,
            "miniboone": miniboone, "bsds300": bsds300}


def load(name, root, **kwargs):
  """Loads a dataset by name from its standard layout or offline variant.

  MINIBOONE falls back to `miniboone_offline` when `miniboone/data.npy` is
  absent but `miniboone/{val,test}.npy` exist; BSDS300 falls back to
  `bsds300_patches` when `BSDS300/BSDS300.hdf5` is absent but
  `bsds300_gray.npz` exists (kwargs go to it: n_train, n_val, n_test, seed;
  they are ignored for MAF's hdf5 file). GAS takes `use_pandas`.

  Args:
    name: one of `NAMES`.
    root: data root directory.
    **kwargs: passed to the loader.

  Returns:
    `Splits`.

  Raises:
    ValueError: an unknown name.
    FileNotFoundError: neither layout is present (naming the standard file).

  #### Examples

  The offline MINIBOONE layout, with small synthetic splits (point `root`
  at the real data in practice):

  >>> import os, tempfile
  >>> root = tempfile.mkdtemp()
  >>> os.makedirs(os.path.join(root, "miniboone"))
  >>> rng = np.random.default_rng(0)
  >>> for split, n in (("val", 100), ("test", 50)):
  ...   np.save(os.path.join(root, "miniboone", f"{split}.npy"),
  ...           rng.normal(size=(n, 43)))
  >>> splits = load("miniboone", root)
  >>> splits.train.shape, splits.test.shape
  ((90, 43), (50, 43))

  #### References

  [1]: George Papamakarios, Theo Pavlakou, Iain Murray. Masked Autoregressive
       Flow for Density Estimation. NeurIPS 2017.
       https://arxiv.org/abs/1705.07057
  """
  name = name.lower()
  if name not in _LOADERS:
    raise ValueError(f"Unknown tabular dataset {name!r}; expected one of "
                     f"{NAMES}.")
  if name == "miniboone" and not os.path.isfile(
      os.path.join(root, "miniboone", "data.npy")) and all(
          os.path.isfile(os.path.join(root, "miniboone", f))
          for f in ("val.npy", "test.npy")):
    return miniboone_offline(root)
  if name == "bsds300":
    if os.path.isfile(os.path.join(root, "BSDS300", "BSDS300.hdf5")):
      return bsds300(root)  # patch options do not apply to MAF's file
    if os.path.isfile(os.path.join(root, "bsds300_gray.npz")):
      return bsds300_patches(root, **kwargs)
    return bsds300(root)
  return _LOADERS[name](root, **kwargs)
