"""Reads pickled pandas DataFrames of numbers, with or without pandas."""

import pickle

import numpy as np

__all__ = ["read_pickled_frame"]


class _PandasStub:
  """Stands in for any pandas object in a pickle; keeps args and state."""

  _pd_name = "?"
  # Class-level defaults: protocol 0 skips __new__.
  args: tuple = ()
  kwargs: dict = {}
  state = None

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


def read_pickled_frame(
    path: str, use_pandas: bool | None = None) -> tuple[list[str], np.ndarray]:
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
