"""Shared pieces of the experiment CLIs: configs from flags, resumable fit, JSON."""

import argparse
import dataclasses
import json
import os
import time

import keras

__all__ = ["parser_for", "config_from_args", "resumable_fit", "write_json"]


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
  """Parses argv into an instance of `config_cls`."""
  args = parser_for(config_cls, description).parse_args(argv)
  return config_cls(**vars(args))


def resumable_fit(model, x, out_dir, iters, steps_per_epoch=100, batch_size=100,
                  verbose=1, callbacks=()):
  """`model.fit` for `iters` steps that resumes after a kill.

  Training runs as `iters / steps_per_epoch` epochs; Keras' `BackupAndRestore`
  saves the model and optimizer at every epoch end into `out_dir/backup`, and
  a rerun of the same command continues from the last finished epoch.

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
  backup = keras.callbacks.BackupAndRestore(os.path.join(out_dir, "backup"))
  return model.fit(x, batch_size=batch_size, epochs=epochs,
                   steps_per_epoch=steps_per_epoch, shuffle=False,
                   verbose=verbose, callbacks=[backup, *callbacks])


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
