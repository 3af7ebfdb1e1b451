"""`Checkpoint`: the one resumable training state (model, optimizer, epoch, callback states), as a Keras callback."""

import glob
import json
import os
import shutil

import keras
import numpy as np
import tensorflow as tf

__all__ = ["CheckpointError", "Checkpoint", "is_chief"]

# Keras callbacks whose progress must survive a restart, and the attributes
# that hold it (their on_train_begin resets them).
_KERAS_STATE = {
    keras.callbacks.EarlyStopping: ("wait", "best", "best_epoch",
                                    "stopped_epoch"),
    keras.callbacks.ReduceLROnPlateau: ("wait", "best", "cooldown_counter"),
}


class CheckpointError(ValueError):
  """A checkpoint file is corrupted, truncated, missing, or of another model."""


def _chief_and_id(strategy):
  """(is this process the chief, its task id) under a multi-worker strategy."""
  resolver = getattr(strategy, "cluster_resolver", None)
  multi = getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)
  if resolver is None or not multi():
    return True, 0
  task_type, task_id = resolver.task_type, resolver.task_id or 0
  has_chief = "chief" in resolver.cluster_spec().as_dict()
  chief = task_type == "chief" or (task_type == "worker" and task_id == 0
                                    and not has_chief)
  return chief, task_id


def is_chief(strategy=None):
  """Whether this process writes the run's files (always, unless multi-worker).

  Args:
    strategy: a `tf.distribute.Strategy`; default the current one.
  """
  return _chief_and_id(strategy or tf.distribute.get_strategy())[0]


def _jsonable(value):
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, float) and not np.isfinite(value):
    return str(value)  # "inf", "-inf", "nan"
  return value


def _unjson(value):
  return float(value) if value in ("inf", "-inf", "nan") else value


class Checkpoint(keras.callbacks.Callback):
  """Saves and restores a training run, as a Keras callback of `fit`.

  One TensorFlow object checkpoint holds the model (its weights keyed by
  their path in the model's object graph, not by position), the optimizer
  state, the number of finished epochs and the progress of the given
  callbacks: the counters and best values of `keras.callbacks.EarlyStopping`
  and `ReduceLROnPlateau`, and the state of any callback with
  `get_state()`/`set_state(dict)` (such as `TimeBudget`). With an
  `EarlyStopping(restore_best_weights=True)`, the best weights are kept in
  a second checkpoint, `<directory>/best`.

  TensorFlow writes each checkpoint to temporary files and renames them, and
  updates the `checkpoint` state file last, so a `kill -9` during a save
  leaves the previous checkpoint intact. `restore()` turns every unreadable
  file into a `CheckpointError` that names it. Under
  `MultiWorkerMirroredStrategy` every worker saves (reads of synchronized
  variables are collective), but only the chief's files are kept.

  Put it after the callbacks it restores in `fit`'s list: their
  `on_train_begin` resets their state, and this one's puts it back.

  Args:
    model: a compiled Keras model.
    directory: checkpoint directory (created on the first save).
    callbacks: callbacks whose progress is saved and restored.
    max_to_keep: how many of the latest checkpoints to keep.

  #### Examples

  >>> ckpt = Checkpoint(model, "run/checkpoints", [early_stop])  # doctest: +SKIP
  >>> epoch = ckpt.restore()  # 0 on a fresh run  # doctest: +SKIP
  >>> model.fit(x, epochs=10, initial_epoch=epoch,  # doctest: +SKIP
  ...           callbacks=[early_stop, ckpt])
  """

  def __init__(self, model, directory, callbacks=(), max_to_keep=2):
    super().__init__()
    self._model_ref = model
    self.directory = os.fspath(directory)
    self.tracked = list(callbacks)
    for cb in self.tracked:
      if not (hasattr(cb, "get_state") or type(cb) in _KERAS_STATE):
        raise ValueError(f"Checkpoint cannot save the state of "
                         f"{type(cb).__name__}: it has no get_state().")
    strategy = model.distribute_strategy
    with strategy.scope():
      self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                               name="epoch")
    with tf.init_scope():
      self._states = tf.Variable("{}", dtype=tf.string, trainable=False,
                                 name="callback_states")
    self._chief, task_id = _chief_and_id(strategy)
    items = {"model": model, "epoch": self.epoch,
             "callback_states": self._states}
    if getattr(model, "optimizer", None) is not None:
      items["optimizer"] = model.optimizer
    self.checkpoint = tf.train.Checkpoint(**items)
    self.best = tf.train.Checkpoint(model=model)
    self._write_dir = self.directory
    if not self._chief:  # a private scratch copy, deleted after each save
      self._write_dir = os.path.join(self.directory, f".worker-{task_id}")
    self._max_to_keep = max_to_keep
    self._managers = {}
    self._pending = None  # restored callback states, applied at train begin
    self._saved_best = None

  # -- files ---------------------------------------------------------------

  def _manager(self, which="latest"):
    if which not in self._managers:
      directory = self._write_dir
      if which == "best":
        directory = os.path.join(directory, "best")
      else:
        self._check_state_file(self.directory)
      self._managers[which] = tf.train.CheckpointManager(
          self.checkpoint if which == "latest" else self.best, directory,
          max_to_keep=self._max_to_keep if which == "latest" else 1)
    return self._managers[which]

  @staticmethod
  def _prefixes(directory):
    return sorted(p[:-len(".index")] for p in
                  glob.glob(os.path.join(directory, "*.index")))

  def _check_state_file(self, directory):
    """The latest checkpoint prefix in `directory`, or None; raises if bad."""
    state_file = os.path.join(directory, "checkpoint")
    if not os.path.exists(state_file):
      return None
    try:
      state = tf.train.get_checkpoint_state(directory)
    except ValueError:  # e.g. an empty file: no model_checkpoint_path
      state = None
    if state is None or not state.model_checkpoint_path:
      raise CheckpointError(
          f"The checkpoint state file {state_file} is corrupted or "
          "truncated. Fix or delete it (the checkpoints it lists are "
          f"{self._prefixes(directory) or 'none'}), or delete {directory} "
          "to start over.")
    prefix = state.model_checkpoint_path
    if not os.path.isabs(prefix):
      prefix = os.path.join(directory, prefix)
    return prefix

  @property
  def latest(self):
    """Path prefix of the latest checkpoint, or None."""
    return self._check_state_file(self.directory)

  def _read(self, checkpoint, prefix, what):
    """Restores `prefix` into `checkpoint`, naming a bad file on failure."""
    index = prefix + ".index"
    if not os.path.exists(index):
      raise CheckpointError(
          f"The state file names the {what} checkpoint {prefix}, but {index} "
          "is missing. Restore the file or delete the directory to start "
          "over.")
    try:
      checkpoint.restore(prefix).assert_consumed()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError,
            KeyError) as e:
      bad = _unreadable_file(prefix)
      if bad:
        raise CheckpointError(
            f"The checkpoint file {bad} is corrupted or truncated "
            f"({type(e).__name__}: {e}). Delete the files of {prefix} to "
            "resume from an earlier checkpoint "
            f"({self._prefixes(os.path.dirname(prefix))}), or delete "
            f"{self.directory} to start over.") from e
      raise CheckpointError(
          f"The {what} checkpoint {prefix} does not fit this model (another "
          f"configuration?): {type(e).__name__}: {e}") from e

  # -- restore and save ----------------------------------------------------

  def restore(self):
    """Restores the latest checkpoint, if any.

    Returns:
      The number of finished epochs (0 without a checkpoint): pass it as
      `initial_epoch` to `fit`.

    Raises:
      CheckpointError: naming the state, index or data file that is
        corrupted, truncated or missing, or the checkpoint that does not fit
        this model.
    """
    prefix = self.latest
    if prefix is None:
      return 0
    model = self._model_ref
    opt = getattr(model, "optimizer", None)
    if opt is not None and not opt.built:
      # Keras creates optimizer slots lazily; restore needs them now.
      with model.distribute_strategy.scope():
        opt.build(model.trainable_variables)
    states = {}
    best_prefix = self._check_state_file(os.path.join(self.directory,
                                                      "best"))
    if best_prefix is not None and any(
        type(cb) is keras.callbacks.EarlyStopping for cb in self.tracked):
      self._read(self.best, best_prefix, "best")
      states["best_weights"] = model.get_weights()
    self._read(self.checkpoint, prefix, "latest")
    states.update(json.loads(self._states.numpy().decode()))
    self._pending = states
    self._apply_states()  # now, so that a caller can read them before fit
    return int(self.epoch.numpy())

  def _apply_states(self):
    states = self._pending or {}
    for i, cb in enumerate(self.tracked):
      state = states.get(str(i))
      if state is None:
        continue
      if hasattr(cb, "set_state"):
        cb.set_state(state)
        continue
      for name, value in state.items():
        setattr(cb, name, _unjson(value))
      if (type(cb) is keras.callbacks.EarlyStopping
          and cb.restore_best_weights and "best_weights" in states):
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

  def save(self, epoch):
    """Writes a checkpoint after `epoch` epochs; returns its path."""
    self.epoch.assign(int(epoch))
    self._states.assign(json.dumps(self._collect_states()))
    for cb in self.tracked:
      # A new best (EarlyStopping replaces its list on improvement): the
      # current weights are it.
      best = getattr(cb, "best_weights", None)
      if best is not None and best is not self._saved_best:
        self._saved_best = best
        self._manager("best").save(checkpoint_number=int(epoch))
    path = self._manager().save(checkpoint_number=int(epoch))
    if not self._chief:
      shutil.rmtree(self._write_dir, ignore_errors=True)
      self._managers = {}
    return path

  def delete(self):
    """Removes the checkpoint directory (the chief's; other workers no-op)."""
    shutil.rmtree(self.directory if self._chief else self._write_dir,
                  ignore_errors=True)
    self._managers = {}

  # -- the Keras callback ----------------------------------------------------

  def on_train_begin(self, logs=None):
    self._apply_states()

  def on_epoch_end(self, epoch, logs=None):
    self.save(epoch + 1)


def _unreadable_file(prefix):
  """The index or data file of `prefix` that cannot be read, or None."""
  index = prefix + ".index"
  try:
    reader = tf.train.load_checkpoint(prefix)
  except Exception:  # pylint: disable=broad-except
    return index
  data = sorted(glob.glob(prefix + ".data-*"))
  try:
    for name in reader.get_variable_to_shape_map():
      reader.get_tensor(name)
  except Exception:  # pylint: disable=broad-except
    return ", ".join(data) or prefix + ".data-*"
  return None
