"""Shared pieces of the experiment CLIs: configs from flags, strategies, resumable fit, JSON."""

import argparse
import dataclasses
import json
import os
import time

import tensorflow as tf

from tf_ffjord import checkpoints

__all__ = ["STRATEGIES", "parser_for", "config_from_args", "use_strategy",
           "resumable_fit", "write_json"]

STRATEGIES = ("default", "mirrored", "multiworker")


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


def config_from_args(config_cls, description, argv=None,
                     strategies=STRATEGIES):
  """Parses argv into an instance of `config_cls`.

  Every CLI also takes `--strategy`, applied here (see `use_strategy`),
  before the CLI builds its model. CLIs whose training loop is not
  distribution-aware pass `strategies=("default",)`, so a multi-replica
  request is refused up front instead of training with wrong gradients.
  """
  parser = parser_for(config_cls, description)
  parser.add_argument(
      "--strategy", choices=strategies, default="default",
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
      local GPUs, else the CPU) or `"multiworker"`
      (`MultiWorkerMirroredStrategy` over the cluster in `TF_CONFIG`).
  """
  if name not in STRATEGIES:
    raise ValueError(f"Unknown strategy {name!r}; expected one of "
                     f"{STRATEGIES}.")
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    strategy = tf.distribute.MirroredStrategy()
  else:
    if "TF_CONFIG" not in os.environ:
      raise ValueError("--strategy multiworker needs TF_CONFIG (the cluster "
                       "spec and this worker's task) in the environment.")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  tf.distribute.experimental_set_strategy(strategy)
  return strategy


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
          f"(step {int(model.optimizer.iterations)}).", flush=True)
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
  """Writes `payload` as indented JSON (atomically: write then rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class Timer:
  """Wall-clock seconds since construction."""

  def __init__(self):
    self.start = time.time()

  @property
  def seconds(self):
    return time.time() - self.start
