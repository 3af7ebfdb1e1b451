"""`Checkpoint`: the one resumable training state (model, optimizer, epoch, callback states), as a Keras callback."""

from collections.abc import Sequence
import glob
import os
import shutil
import tempfile

import h5py
import keras
import numpy as np
import tensorflow as tf

from tf_ffjord.saving.checkpoint_files import CheckpointError
from tf_ffjord.saving.checkpoint_files import layout as _layout
from tf_ffjord.saving.checkpoint_files import read_json as _read_json
from tf_ffjord.saving.checkpoint_files import sha256 as _sha256
from tf_ffjord.saving.checkpoint_files import write_json as _write_json
from tf_ffjord._distribute import in_multi_worker_mode

__all__ = ["CheckpointError", "Checkpoint", "is_chief", "optimizer_steps",
           "read_latest"]

# Keras callbacks whose progress must survive a restart, and the attributes
# that hold it (their on_train_begin resets them).
_KERAS_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch",
                                    "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}
_STATE_FILE = "checkpoint.json"
# The best weights, one file per epoch that found a new best: the progress
# file of each checkpoint names (and checksums) the one it restores, so a
# kill between two saves never pairs a checkpoint with another best.
_BEST = "best-{}.weights.h5"


def _chief_and_id(strategy):
  """(is this process the chief, its task id) under a multi-worker strategy."""
  if not in_multi_worker_mode(strategy):
    return True, 0
  resolver = strategy.cluster_resolver
  task_type, task_id = resolver.task_type, resolver.task_id or 0
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and not has_chief)
  return chief, task_id


def is_chief(strategy: tf.distribute.Strategy | None = None) -> bool:
  """Whether this process writes the run's files (always, unless multi-worker).

  Args:
    strategy: a `tf.distribute.Strategy`; default the current one.
  """
  return _chief_and_id(strategy or tf.distribute.get_strategy())[0]


def _jsonable(value):
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return str(value)  # "inf", "-inf", "nan"
  return value


def _unjson(value):
  return float(value) if value in ("inf", "-inf", "nan") else value


def optimizer_steps(model: keras.Model) -> int:
  """The optimizer's step count (0 without one), under any strategy."""
  opt = getattr(model, "optimizer", None)
  if opt is None:
    return 0
  # Under a strategy the counter is a distributed variable: read a tensor.
  return int(tf.convert_to_tensor(opt.iterations.value))


class Checkpoint(keras.callbacks.Callback):
  """Saves and restores a training run, as a Keras callback of `fit`.

  A checkpoint is Keras' own weights file, `ckpt-<epoch>.weights.h5`, which
  keys every weight by its layer's path in the model (and holds the
  optimizer state, EMA weights included), beside `ckpt-<epoch>.json`: the
  number of finished epochs and the progress of the given callbacks (the
  counters and best values of `keras.callbacks.EarlyStopping` and
  `ReduceLROnPlateau`, and the state of any callback with
  `get_state()`/`set_state(dict)`, such as `TimeBudget`). With an
  `EarlyStopping(restore_best_weights=True)`, the best weights are kept in
  `best-<epoch>.weights.h5`. `checkpoint.json` names the latest checkpoint.

  Every file is written to a temporary name and renamed, and
  `checkpoint.json` last, so a `kill -9` during a save leaves the previous
  checkpoint intact. `restore()` turns every unreadable file into a
  `CheckpointError` that names it: every JSON file holds the checksum of its
  own content and the progress file the SHA-256 of the weights files, so an
  edited epoch or flipped bytes are caught too, and a checkpoint whose
  arrays differ from what this model writes (another configuration) is
  refused. Under `MultiWorkerMirroredStrategy`
  every worker saves, but only the chief's files are kept.

  Put it after the callbacks it restores in `fit`'s list: their
  `on_train_begin` resets their state, and this one's puts it back.

  Args:
    model: a compiled Keras model.
    directory: checkpoint directory (created on the first save).
    callbacks: callbacks whose progress is saved and restored.
    max_to_keep: how many of the latest checkpoints to keep.

  Attributes:
    epoch: finished epochs, as of the last save or restore.
    steps: the optimizer's steps then (fewer than epochs x steps per epoch
      when a time budget ended an epoch early).

  Raises:
    ValueError: a callback whose state it cannot save.

  #### Examples

  >>> ckpt = Checkpoint(model, "run/checkpoints", [early_stop])  # doctest: +SKIP
  >>> epoch = ckpt.restore()  # 0 on a fresh run  # doctest: +SKIP
  >>> model.fit(x, epochs=10, initial_epoch=epoch,  # doctest: +SKIP
  ...           callbacks=[early_stop, ckpt])
  """

  def __init__(self, model: keras.Model, directory: str | os.PathLike,
               callbacks: Sequence[keras.callbacks.Callback] = (),
               max_to_keep: int = 2) -> None:
    super().__init__()
    self._model_ref = model
    self.directory = os.fspath(directory)
    self.tracked = list(callbacks)
    for cb in self.tracked:
      if not (hasattr(cb, "get_state") or type(cb) in _KERAS_STATE):
        raise ValueError(f"Checkpoint cannot save the state of "
                         f"{type(cb).__name__}: it has no get_state().")
    self.max_to_keep = int(max_to_keep)
    self._chief, task_id = _chief_and_id(model.distribute_strategy)
    self._write_dir = self.directory
    if not self._chief:  # a private scratch copy, deleted after each save
      self._write_dir = os.path.join(self.directory, f".worker-{task_id}")
    self.epoch = 0
    self.steps = 0
    self._pending: dict = {}
    self._saved_best = None
    self._best_file: str | None = None

  # -- files ---------------------------------------------------------------

  @property
  def state_file(self) -> str:
    return os.path.join(self.directory, _STATE_FILE)

  @property
  def latest(self) -> str | None:
    """Path prefix of the latest checkpoint (`<dir>/ckpt-N`), or None."""
    if not os.path.exists(self.state_file):
      return None
    state = _read_json(self.state_file, "checkpoint state file")
    try:
      return os.path.join(self.directory, state["latest"])
    except (KeyError, TypeError) as e:
      raise CheckpointError(
          f"The checkpoint state file {self.state_file} is corrupted (no "
          f"'latest' entry). Fix or delete it, or delete {self.directory} "
          "to start over.") from e

  def _expected_layout(self):
    # What this model writes: a checkpoint must hold exactly that (Keras
    # alone would skip a mismatched optimizer state with a mere warning).
    with tempfile.TemporaryDirectory() as tmp:
      path = os.path.join(tmp, "model.weights.h5")
      self._model_ref.save_weights(path)
      return _layout(path)

  def _load_weights(self, path, what, sha256=None):
    if not os.path.exists(path):
      raise CheckpointError(
          f"The {what} weights file {path} is missing. Restore it, or delete "
          f"{self.directory} to start over.")
    bad = (f"The {what} weights file {path} is corrupted or truncated. "
           f"Delete the files of that checkpoint to resume from an earlier "
           f"one ({self._listed()}), or delete {self.directory} to start "
           "over.")
    if sha256 is not None and _sha256(path) != sha256:
      raise CheckpointError(bad + " (Its checksum does not match.)")
    try:
      layout = _layout(path)
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointError(f"{bad} ({type(e).__name__}: {e})") from e
    expected = self._expected_layout()
    if layout != expected:
      diff = sorted(set(layout.items()) ^ set(expected.items()))[:4]
      raise CheckpointError(
          f"The {what} checkpoint {path} does not fit this model (another "
          f"configuration?): its arrays differ from the model's, e.g. "
          f"{diff}.")
    self._model_ref.load_weights(path)

  def _listed(self):
    try:
      return _read_json(self.state_file, "checkpoint state file").get(
          "all", [])
    except CheckpointError:
      return []

  # -- restore and save ----------------------------------------------------

  def restore(self) -> int:
    """Restores the latest checkpoint, if any.

    Returns:
      The number of finished epochs (0 without a checkpoint): pass it as
      `initial_epoch` to `fit`.

    Raises:
      CheckpointError: naming the state, weights or progress file that is
        corrupted, truncated or missing, or the checkpoint that does not fit
        this model.
    """
    prefix = self.latest
    if prefix is None:
      return 0
    try:
      progress = _read_json(prefix + ".json", "checkpoint progress file")
    except CheckpointError as e:
      raise CheckpointError(
          f"{e} Delete the files of {prefix} to resume from an earlier "
          f"checkpoint ({self._listed()}), or delete {self.directory} to "
          "start over.") from e
    model = self._model_ref
    opt = getattr(model, "optimizer", None)
    if opt is not None and not opt.built:
      # Keras creates optimizer slots lazily; the load needs them now.
      with model.distribute_strategy.scope():
        opt.build(model.trainable_variables)
    states = dict(progress.get("callbacks", {}))
    self._best_file = progress.get("best")
    if self._best_file and any(
        getattr(cb, "restore_best_weights", False) for cb in self.tracked):
      self._load_weights(os.path.join(self.directory, self._best_file),
                         "best", progress.get("best_sha256"))
      states["best_weights"] = model.get_weights()
    self._load_weights(prefix + ".weights.h5", "latest",
                       progress.get("sha256"))
    self._pending = states
    self._apply_states()  # now, so that a caller can read them before fit
    self.epoch = int(progress["epoch"])
    self.steps = optimizer_steps(model)
    return self.epoch

  def _apply_states(self):
    states = self._pending
    for i, cb in enumerate(self.tracked):
      state = states.get(str(i))
      if state is None:
        continue
      if hasattr(cb, "set_state"):
        cb.set_state(state)
        continue
      for name, value in state.items():
        setattr(cb, name, _unjson(value))
      if getattr(cb, "restore_best_weights", False) and (
          "best_weights" in states):
        cb.best_weights = states["best_weights"]
        self._saved_best = cb.best_weights

  def _collect_states(self):
    states = {}
    for i, cb in enumerate(self.tracked):
      if hasattr(cb, "get_state"):
        states[str(i)] = cb.get_state()
      else:
        states[str(i)] = {name: _jsonable(getattr(cb, name, None))
                          for name in _KERAS_STATE[type(cb)]}
    return states

  def _save_weights(self, path):
    tmp = path[:-len(".weights.h5")] + ".tmp.weights.h5"
    self._model_ref.save_weights(tmp)
    os.replace(tmp, path)

  def save(self, epoch: int) -> str:
    """Writes a checkpoint after `epoch` epochs; returns its prefix."""
    os.makedirs(self._write_dir, exist_ok=True)
    for cb in self.tracked:
      # A new best (EarlyStopping replaces its list on improvement): the
      # current weights are it.
      best = getattr(cb, "best_weights", None)
      if best is not None and best is not self._saved_best:
        self._saved_best = best
        self._best_file = _BEST.format(int(epoch))
        self._save_weights(os.path.join(self._write_dir, self._best_file))
    name = f"ckpt-{int(epoch)}"
    prefix = os.path.join(self._write_dir, name)
    self._save_weights(prefix + ".weights.h5")
    progress = {"epoch": int(epoch), "callbacks": self._collect_states(),
                "sha256": _sha256(prefix + ".weights.h5"),
                "best": self._best_file}
    if self._best_file:
      progress["best_sha256"] = _sha256(
          os.path.join(self._write_dir, self._best_file))
    _write_json(prefix + ".json", progress)
    state_file = os.path.join(self._write_dir, _STATE_FILE)
    kept = []
    if os.path.exists(state_file):
      kept = [k for k in _read_json(state_file, "checkpoint state file").get(
          "all", []) if k != name]
    kept.append(name)
    _write_json(state_file, {"latest": name, "all": kept[-self.max_to_keep:]})
    for old in kept[:-self.max_to_keep]:
      for suffix in (".weights.h5", ".json"):
        path = os.path.join(self._write_dir, old + suffix)
        if os.path.exists(path):
          os.remove(path)
    self._remove_unused_bests(kept[-self.max_to_keep:])
    self.epoch = int(epoch)
    self.steps = optimizer_steps(self._model_ref)
    if not self._chief:
      shutil.rmtree(self._write_dir, ignore_errors=True)
    return prefix

  def _remove_unused_bests(self, kept):
    used = {self._best_file}
    for name in kept:
      try:
        used.add(_read_json(os.path.join(self._write_dir, name + ".json"),
                            "checkpoint progress file").get("best"))
      except CheckpointError:
        pass  # restore names it; a save does not need it
    for path in glob.glob(os.path.join(self._write_dir, _BEST.format("*"))):
      if os.path.basename(path) not in used:
        os.remove(path)

  def delete(self) -> None:
    """Removes the checkpoint directory (the chief's; other workers no-op)."""
    shutil.rmtree(self.directory if self._chief else self._write_dir,
                  ignore_errors=True)

  # -- the Keras callback ----------------------------------------------------

  def on_train_begin(self, logs: dict | None = None) -> None:
    self._apply_states()

  def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
    self.save(epoch + 1)


def read_latest(directory: str | os.PathLike) -> dict[str, np.ndarray]:
  """The arrays of the latest checkpoint in `directory`, by their keys.

  Keras' weights-file keys (e.g. `layers/ode_net/.../vars/0`,
  `optimizer/vars/0` for the optimizer's step count), plus `epoch`: for
  inspecting a run without building its model.

  Raises:
    CheckpointError: no checkpoint, or an unreadable file.
  """
  state_file = os.path.join(os.fspath(directory), _STATE_FILE)
  if not os.path.exists(state_file):
    raise CheckpointError(f"No checkpoint in {directory} ({state_file} is "
                          "missing).")
  prefix = os.path.join(os.fspath(directory),
                        _read_json(state_file, "checkpoint state file")[
                            "latest"])
  progress = _read_json(prefix + ".json", "checkpoint progress file")
  out = {"epoch": np.array(progress["epoch"])}
  path = prefix + ".weights.h5"
  if os.path.exists(path) and _sha256(path) != progress.get("sha256"):
    raise CheckpointError(f"The weights file {path} is corrupted: its "
                          "checksum does not match.")
  try:
    f = h5py.File(path, "r")
  except OSError as e:
    raise CheckpointError(f"The weights file {path} is missing, corrupted or "
                          "truncated.") from e
  with f:
    f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if
                 isinstance(obj, h5py.Dataset) else None)
  return out

