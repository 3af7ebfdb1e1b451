"""Training checkpoints that resume after a kill and name the file when one is bad."""

import glob
import os
import shutil

import keras
import tensorflow as tf

__all__ = ["CheckpointError", "Checkpointer", "CheckpointCallback", "is_chief"]


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


class Checkpointer:
  """Saves and restores a model, its optimizer state and a progress counter.

  Wraps `tf.train.CheckpointManager`. TensorFlow writes a checkpoint to
  temporary files and renames them, and updates the `checkpoint` state file
  last, so a kill during a save leaves the previous checkpoint intact.
  `restore()` turns every unreadable file into a `CheckpointError` that names
  it, instead of silently starting over or failing deep inside TensorFlow.

  Under `MultiWorkerMirroredStrategy` every worker must call `save` (reads of
  synchronized variables are collective); only the chief's files are kept.

  The counter is `epoch` (finished epochs for `fit`; loops that checkpoint
  by step keep the finished steps in it).

  Args:
    model: a compiled Keras model (its optimizer is saved too).
    directory: checkpoint directory (created on the first save).
    max_to_keep: how many of the latest checkpoints to keep.
    extra: dict name -> more trackables (e.g. a `tf.Variable` of elapsed
      seconds) to save and restore with the model.

  #### Examples

  >>> ckpt = Checkpointer(model, "run/checkpoints")  # doctest: +SKIP
  >>> epoch = ckpt.restore()  # 0 on a fresh run  # doctest: +SKIP
  >>> model.fit(x, epochs=10, initial_epoch=epoch,  # doctest: +SKIP
  ...           callbacks=[CheckpointCallback(ckpt)])
  """

  def __init__(self, model, directory, max_to_keep=2, extra=None):
    self.model = model
    self.directory = os.fspath(directory)
    strategy = model.distribute_strategy
    with strategy.scope():
      self.epoch = tf.Variable(0, dtype=tf.int64, trainable=False,
                               name="epoch")
    self._chief, task_id = _chief_and_id(strategy)
    extra = dict(extra or {})
    clash = {"model", "epoch", "optimizer"} & set(extra)
    if clash:
      raise ValueError(f"extra checkpoint items may not be named "
                       f"{sorted(clash)}.")
    items = {**extra, "model": model, "epoch": self.epoch}
    if getattr(model, "optimizer", None) is not None:
      items["optimizer"] = model.optimizer
    self.checkpoint = tf.train.Checkpoint(**items)
    write_dir = self.directory
    if not self._chief:  # a private scratch copy, deleted after each save
      write_dir = os.path.join(self.directory, f".worker-{task_id}")
    self._write_dir = write_dir
    self._manager = None
    self._max_to_keep = max_to_keep

  @property
  def manager(self):
    if self._manager is None:
      self._check_state_file()
      self._manager = tf.train.CheckpointManager(
          self.checkpoint, self._write_dir, max_to_keep=self._max_to_keep)
    return self._manager

  @property
  def state_file(self):
    return os.path.join(self.directory, "checkpoint")

  def _check_state_file(self):
    if not os.path.exists(self.state_file):
      return None
    state = tf.train.get_checkpoint_state(self.directory)
    if state is None or not state.model_checkpoint_path:
      raise CheckpointError(
          f"The checkpoint state file {self.state_file} is corrupted or "
          "truncated. Fix or delete it (the checkpoints it lists are "
          f"{self._prefixes() or 'none'}), or delete {self.directory} to "
          "start over.")
    prefix = state.model_checkpoint_path
    if not os.path.isabs(prefix):
      prefix = os.path.join(self.directory, prefix)
    return prefix

  def _prefixes(self):
    return sorted(p[:-len(".index")] for p in
                  glob.glob(os.path.join(self.directory, "*.index")))

  @property
  def latest(self):
    """Path prefix of the latest checkpoint, or None."""
    return self._check_state_file()

  def _build_optimizer(self):
    opt = getattr(self.model, "optimizer", None)
    if opt is not None and not opt.built:
      # Keras creates optimizer slots lazily; restore needs them now.
      with self.model.distribute_strategy.scope():
        opt.build(self.model.trainable_variables)

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
    index = prefix + ".index"
    if not os.path.exists(index):
      raise CheckpointError(
          f"{self.state_file} names the checkpoint {prefix}, but {index} is "
          "missing. Restore the file or delete the directory to start over.")
    self._build_optimizer()
    try:
      self.checkpoint.restore(prefix).assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError,
            KeyError) as e:
      bad = _unreadable_file(prefix)
      if bad:
        raise CheckpointError(
            f"The checkpoint file {bad} is corrupted or truncated "
            f"({type(e).__name__}: {e}). Delete the files of {prefix} to "
            f"resume from an earlier checkpoint ({self._prefixes()}), or "
            f"delete {self.directory} to start over.") from e
      raise CheckpointError(
          f"The checkpoint {prefix} does not fit this model (another "
          f"configuration?): {type(e).__name__}: {e}") from e
    return int(self.epoch.numpy())

  def save(self, epoch):
    """Writes a checkpoint after `epoch` epochs (or steps); returns its path."""
    self.epoch.assign(int(epoch))
    path = self.manager.save(checkpoint_number=int(epoch))
    if not self._chief:
      shutil.rmtree(self._write_dir, ignore_errors=True)
      self._manager = None
    return path

  def delete(self):
    """Removes the checkpoint directory (the chief's; other workers no-op)."""
    if self._chief:
      shutil.rmtree(self.directory, ignore_errors=True)
    else:
      shutil.rmtree(self._write_dir, ignore_errors=True)
    self._manager = None


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


class CheckpointCallback(keras.callbacks.Callback):
  """Saves a `Checkpointer` at the end of every epoch of `fit`.

  Args:
    checkpointer: a `Checkpointer` of the model being fit.
    verbose: print the path of every checkpoint written.
  """

  def __init__(self, checkpointer, verbose=False):
    super().__init__()
    self.checkpointer = checkpointer
    self.verbose = verbose

  def on_epoch_end(self, epoch, logs=None):
    path = self.checkpointer.save(epoch + 1)
    if self.verbose and path:
      print(f"Saved checkpoint {path} (epoch {epoch + 1}).", flush=True)
