"""Shared pieces of the experiment CLIs: configs from flags, strategies, distributed steps, resumable fit, JSON."""

import argparse
import dataclasses
import json
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from tf_ffjord import checkpoints

__all__ = ["STRATEGIES", "LOGICAL_CPUS_ENV", "parser_for", "config_from_args",
           "use_strategy", "check_global_batch", "split_batch",
           "distributed_step", "any_worker", "is_chief", "on_every_worker",
           "optimizer_steps", "resumable_fit", "write_json", "Timer"]

STRATEGIES = ("default", "mirrored", "multiworker")

# Testing aid: `--strategy mirrored` over N logical CPU devices of one
# physical CPU (how the tests get 2 replicas on a machine without GPUs).
LOGICAL_CPUS_ENV = "TF_FFJORD_LOGICAL_CPUS"

is_chief = checkpoints.is_chief


def parser_for(config_cls, description):
  """An argparse parser with one `--flag` per field of a config dataclass.

  Tuples of ints are given as comma-separated lists (`--dims 64,64,64`),
  booleans as `--flag true|false`.
  """
  parser = argparse.ArgumentParser(description=description)
  for field in dataclasses.fields(config_cls):
    flag = "--" + field.name.replace("_", "-")
    default = field.default
    if isinstance(default, bool):
      kind = lambda s: s.lower() in ("1", "true", "yes", "y")
    elif isinstance(default, tuple):
      kind = lambda s: tuple(int(v) for v in s.split(",") if v)
    elif default is None:
      kind = str
    else:
      kind = type(default)
    parser.add_argument(flag, type=kind, default=default,
                        help=f"default: {default}")
  return parser


def config_from_args(config_cls, description, argv=None):
  """Parses argv into an instance of `config_cls`.

  Every CLI also takes `--strategy {default,mirrored,multiworker}`, applied
  here (see `use_strategy`), before the CLI builds its model.
  """
  parser = parser_for(config_cls, description)
  parser.add_argument(
      "--strategy", choices=STRATEGIES, default="default",
      help="default: one device; mirrored: all local GPUs; multiworker: the "
           "cluster in TF_CONFIG (run the same command on every worker)")
  args = vars(parser.parse_args(argv))
  use_strategy(args.pop("strategy"))
  return config_cls(**args)


def use_strategy(name):
  """Makes a `tf.distribute` strategy the process default and returns it.

  Models built afterwards live in it, and `fit` splits each global batch
  over its replicas. Call it first: `MultiWorkerMirroredStrategy` must exist
  before TensorFlow runs any op.

  Args:
    name: `"default"` (no-op), `"mirrored"` (`MirroredStrategy` over all
      local GPUs, else the CPU; with the environment variable
      `TF_FFJORD_LOGICAL_CPUS=N`, over N logical CPU devices instead) or
      `"multiworker"` (`MultiWorkerMirroredStrategy` over the cluster in
      `TF_CONFIG`).

  Raises:
    ValueError: an unknown name, `multiworker` without `TF_CONFIG`, or a bad
      `TF_FFJORD_LOGICAL_CPUS`.
    RuntimeError: `TF_FFJORD_LOGICAL_CPUS` set after TensorFlow started.
  """
  if name not in STRATEGIES:
    raise ValueError(f"Unknown strategy {name!r}; expected one of "
                     f"{STRATEGIES}.")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    strategy = tf.distribute.MirroredStrategy(_logical_cpus())
  else:
    if "TF_CONFIG" not in os.environ:
      raise ValueError("--strategy multiworker needs TF_CONFIG (the cluster "
                       "spec and this worker's task) in the environment.")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  tf.distribute.experimental_set_strategy(strategy)
  return strategy


def _logical_cpus():
  """The devices `TF_FFJORD_LOGICAL_CPUS` asks for, or None (the default)."""
  value = os.environ.get(LOGICAL_CPUS_ENV, "")
  if not value:
    return None
  try:
    n = int(value)
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"{LOGICAL_CPUS_ENV} must be a positive integer, got "
                     f"{value!r}.")
  cpu = tf.config.list_physical_devices("CPU")[0]
  # (Listing logical devices would start TensorFlow: ask the config.)
  configured = tf.config.get_logical_device_configuration(cpu) or [None]
  if len(configured) != n:
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
      raise RuntimeError(
          f"{LOGICAL_CPUS_ENV}={n} must take effect before TensorFlow runs "
          "its first op; choose the strategy first.") from e
  return [d.name for d in tf.config.list_logical_devices("CPU")]


def check_global_batch(batch_size, strategy=None):
  """Raises ValueError unless `batch_size` splits evenly over the replicas.

  Steps that average their loss per replica (`tf_ffjord.model.minimize`)
  weigh every replica equally, which is the global-batch mean only when the
  replicas' shares are equal.
  """
  replicas = (strategy or tf.distribute.get_strategy()).num_replicas_in_sync
  if batch_size < 1 or batch_size % replicas:
    raise ValueError(f"The batch size {batch_size} is the global batch and "
                     f"must be a positive multiple of the {replicas} "
                     "replicas.")


def split_batch(batch, strategy=None):
  """A global batch as per-replica values: replica r gets the r-th share.

  Shares are consecutive rows, as even as possible (the first `len % n`
  replicas get one row more). Under `MultiWorkerMirroredStrategy` every
  worker passes the same global batch and keeps its own replicas' rows, so
  the CLIs choose batches by step from seeded permutations and need no
  distributed input pipeline.

  Args:
    batch: an array, or a tuple of arrays with the same number of rows.
    strategy: default the current one.

  Returns:
    Per-replica tensors (plain tensors under the default strategy), for the
    `args` of `strategy.run`.

  Raises:
    ValueError: fewer rows than replicas, or arrays of unequal lengths.
  """
  strategy = strategy or tf.distribute.get_strategy()
  arrays = batch if isinstance(batch, tuple) else (batch,)
  rows = len(arrays[0])
  if any(len(a) != rows for a in arrays):
    raise ValueError(f"The arrays of a batch have unequal lengths "
                     f"{[len(a) for a in arrays]}.")
  n = strategy.num_replicas_in_sync
  if rows < n:
    raise ValueError(f"A batch of {rows} rows cannot be split over {n} "
                     "replicas.")
  bounds = np.cumsum([0] + [rows // n + (r < rows % n) for r in range(n)])

  def share(ctx):
    r = ctx.replica_id_in_sync_group
    out = tuple(tf.constant(a[bounds[r]:bounds[r + 1]]) for a in arrays)
    return out if isinstance(batch, tuple) else out[0]

  return strategy.experimental_distribute_values_from_function(share)


def distributed_step(replica_fn, reductions=None, strategy=None):
  """A compiled training step that runs `replica_fn` on every replica.

  `replica_fn(*shares)` returns a dict of scalars (it computes its loss,
  scaled for the global batch, and applies the gradients: the optimizer
  all-reduces them once, after the replica's ODE solves, so replicas may
  take different numbers of adaptive steps). The step returns each value
  reduced over the replicas as float32: `"MEAN"` unless `reductions` maps
  its key to `"SUM"` (e.g. a loss already divided by the global batch).

  Args:
    replica_fn: the per-replica step.
    reductions: dict key -> `"MEAN"` or `"SUM"`.
    strategy: default the current one.

  Returns:
    A function of the per-replica values of `split_batch`.
  """
  strategy = strategy or tf.distribute.get_strategy()
  reductions = dict(reductions or {})
  bad = {k: v for k, v in reductions.items() if v not in ("MEAN", "SUM")}
  if bad:
    raise ValueError(f"Reductions must be 'MEAN' or 'SUM', got {bad}.")

  def replica(*args):
    return {k: tf.cast(v, tf.float32) for k, v in replica_fn(*args).items()}

  def step(*args):
    out = strategy.run(replica, args=args)
    return {k: strategy.reduce(reductions.get(k, "MEAN"), v, axis=None)
            for k, v in out.items()}

  # The step is plain ops and Python control flow on Python values; batch
  # sizes may vary (an epoch's last batch).
  return tf.function(step, autograph=False, reduce_retracing=True)


def any_worker(*flags, strategy=None):
  """Each flag, or-ed over the workers of a multi-worker run.

  Decisions taken from a worker's own clock (stop at the time budget, save a
  checkpoint now) must agree on every worker, or one would wait forever in
  the next step's all-reduce. Without multiple workers the flags are
  returned as they are, at no cost.

  Returns:
    A tuple of bools, one per flag.
  """
  strategy = strategy or tf.distribute.get_strategy()
  multi = getattr(strategy.extended, "_in_multi_worker_mode", lambda: False)
  if not multi():
    return tuple(bool(f) for f in flags)
  if id(strategy) not in _FLAG_SUMS:
    # Compiled once: eager collectives are slow. tf.distribute reduces by
    # SUM or MEAN only, so a sum > 0 is the "or".
    _FLAG_SUMS[id(strategy)] = tf.function(
        lambda local: strategy.reduce(
            "SUM", strategy.run(tf.identity, args=(local,)), axis=None),
        autograph=False)
  local = tf.constant([float(bool(f)) for f in flags])
  total = _FLAG_SUMS[id(strategy)](local)
  return tuple(bool(v) for v in total.numpy() > 0)


_FLAG_SUMS = {}  # id(strategy) -> compiled sum of the flags over workers


def on_every_worker(write, path, strategy=None):
  """Calls `write(path)` on the chief and `write(scratch)` on other workers.

  For writers that run collective ops under `MultiWorkerMirroredStrategy`
  (an export creates variables, whose initial values are broadcast): every
  worker must take part, but only the chief's files may land in `path`. A
  non-chief worker writes to a temporary directory, deleted afterwards.
  Without multiple workers this is `write(path)`.

  Returns:
    What `write` returned.
  """
  if is_chief(strategy):
    return write(path)
  scratch = tempfile.mkdtemp(prefix="tf_ffjord_worker_")
  try:
    return write(os.path.join(scratch, os.path.basename(os.fspath(path))))
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


def optimizer_steps(model):
  """The optimizer's step count as an int, under any strategy."""
  # Under a strategy the counter is a distributed variable, which int()
  # refuses; read it as a tensor.
  return int(tf.convert_to_tensor(model.optimizer.iterations.value))


def resumable_fit(model, x, out_dir, iters, steps_per_epoch=100, batch_size=100,
                  verbose=1, callbacks=()):
  """`model.fit` for `iters` steps that resumes after a kill.

  Training runs as `iters / steps_per_epoch` epochs; a
  `tf_ffjord.checkpoints.Checkpointer` saves the model and optimizer at
  every epoch end into `out_dir/checkpoints`, and a rerun of the same
  command continues from the last finished epoch, on the batches that epoch
  would have seen. A corrupted checkpoint raises `CheckpointError` naming
  the file.

  Args:
    model: a compiled Keras model.
    x: training array (or `(x, context)` tuple) holding `iters * batch_size`
      examples; one pass over it is the whole run.
    out_dir: run directory.
    iters: total training steps.
    steps_per_epoch: steps between checkpoints.
    batch_size: examples per step.
    verbose: Keras verbosity (1 = progress bar).
    callbacks: extra Keras callbacks.

  Returns:
    The Keras `History`.
  """
  steps_per_epoch = max(1, min(steps_per_epoch, iters))
  epochs = -(-iters // steps_per_epoch)
  ckpt = checkpoints.Checkpointer(model, os.path.join(out_dir, "checkpoints"))
  initial_epoch = ckpt.restore()
  if initial_epoch:
    print(f"Resumed from {ckpt.latest} at epoch {initial_epoch} "
          f"(step {optimizer_steps(model)}).", flush=True)
  # Skip the examples of the finished epochs: one pass over x is the run.
  done = initial_epoch * steps_per_epoch * batch_size
  x = tuple(a[done:] for a in x) if isinstance(x, tuple) else x[done:]
  history = model.fit(x, batch_size=batch_size, epochs=epochs,
                      initial_epoch=initial_epoch,
                      steps_per_epoch=steps_per_epoch, shuffle=False,
                      verbose=verbose,
                      callbacks=[checkpoints.CheckpointCallback(ckpt),
                                 *callbacks])
  ckpt.delete()  # finished: a rerun starts over (as with BackupAndRestore)
  return history


def write_json(path, payload):
  """Writes `payload` as indented JSON (atomically: write then rename).

  NumPy scalars are written as floats.
  """
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=float)
  os.replace(tmp, path)


class Timer:
  """Wall-clock seconds since construction."""

  def __init__(self):
    self.start = time.time()

  @property
  def seconds(self):
    return time.time() - self.start
