"""The one training run of every CLI: `fit` on a resumable pipeline with checkpoints, a time budget and a curve; exact-likelihood evaluation; outputs."""

import csv
import json
import math
import os
import shutil
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord.model.callbacks import TimeBudget
from tf_ffjord.saving.checkpoints import Checkpoint, is_chief, optimizer_steps
from tf_ffjord.datasets.batches import step_seed
from tf_ffjord.cnf.image_transforms import bits_per_dim, dequantize

__all__ = ["CurveLogger", "fit", "evaluate", "read_curve", "write_json",
           "on_every_worker", "is_chief", "optimizer_steps"]


class CurveLogger(keras.callbacks.Callback):
  """Appends every epoch's logs to a CSV file, keeping every key.

  Unlike `keras.callbacks.CSVLogger`, which fixes its columns at the first
  epoch and so drops metrics that first appear later (a validation every N
  epochs), a new key widens the header: the file is rewritten once, with
  the earlier rows' new cells empty.
  """

  def __init__(self, path):
    super().__init__()
    self.path = path

  def on_epoch_end(self, epoch, logs=None):
    row = {"epoch": epoch, **{k: float(v) for k, v in (logs or {}).items()}}
    rows, keys = [], ["epoch"]
    if os.path.exists(self.path):
      with open(self.path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        rows, keys = list(reader), list(reader.fieldnames or keys)
    new = [k for k in row if k not in keys]
    if not new:
      with open(self.path, "a", newline="", encoding="utf-8") as f:
        csv.DictWriter(f, keys, restval="").writerow(row)
      return
    tmp = f"{self.path}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as f:
      writer = csv.DictWriter(f, keys + new, restval="")
      writer.writeheader()
      writer.writerows(rows + [row])
    os.replace(tmp, self.path)


def fit(model, train_data, out, steps, steps_per_epoch, time_budget=0.0,
        validation_data=None, validation_freq=1, callbacks=(), verbose=2,
        observers=()):
  """Trains a compiled model with `fit`, resuming from `<out>/checkpoints`.

  Training runs as epochs of `steps_per_epoch` steps (the last partial one is
  rounded up); a time budget may end an epoch early. After every epoch a `Checkpoint` saves the model, the
  optimizer, the epoch and the state of `callbacks` and of the time budget;
  a rerun of the same command restores them and continues on the batches an
  uninterrupted run would have seen. A run that ended by early stopping or
  by its time budget does not train again on a rerun (a larger
  `time_budget` or `steps` trains on). Every epoch appends a row to
  `<out>/curve.csv` (the logs, plus `seconds` of training so far).

  Args:
    model: a compiled Keras model.
    train_data: `fn(start_step) -> tf.data.Dataset` of global batches from
      that step on (see `tf_ffjord.datasets.batches`).
    out: the run directory.
    steps: training steps in all.
    steps_per_epoch: steps between checkpoints (and validations).
    time_budget: seconds of training, summed over resumes (0: none).
    validation_data: passed to `fit` (e.g. `(x_val,)`), or None.
    validation_freq: validate every this many epochs.
    callbacks: Keras callbacks whose progress is checkpointed too
      (`EarlyStopping`, `ReduceLROnPlateau`, ...).
    verbose: Keras verbosity.
    observers: callbacks without progress to checkpoint (`TensorBoard`).

  Returns:
    A dict: `epochs` and `steps` done in all, `seconds` of training,
    `stop_reason` ("steps", "time budget" or "early stopping"), `resumed_at`
    (the step this call started from) and `history` (this call's Keras
    history).
  """
  os.makedirs(out, exist_ok=True)
  budget = TimeBudget(time_budget)
  stateful = [*callbacks, budget]
  ckpt = Checkpoint(model, os.path.join(out, "checkpoints"), stateful)
  initial_epoch = ckpt.restore()
  # The steps really done: a time budget may have ended the last epoch
  # early, and the data go on from the next step.
  start = ckpt.steps
  if initial_epoch:
    print(f"Resumed from {ckpt.latest} at epoch {initial_epoch} (step "
          f"{start}, {budget.elapsed:.0f} s trained).", flush=True)
  epochs = initial_epoch + max(0, math.ceil((steps - start) / steps_per_epoch))
  early_stopped = any(getattr(cb, "stopped_epoch", 0) for cb in callbacks)
  if budget.exhausted or early_stopped:
    epochs = initial_epoch  # a finished run: restore, don't train
  logs = [*stateful, ckpt, *observers]
  if is_chief():
    logs.append(CurveLogger(os.path.join(out, "curve.csv")))
  options = tf.data.Options()
  # The pipelines are in memory, with no files to shard: every worker makes
  # the same global batches and keeps its own rows of each. The pipeline
  # orders the batches itself (shuffle=True would only make Keras warn).
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  history = model.fit(
      train_data(start).with_options(options),
      epochs=epochs,
      initial_epoch=initial_epoch, steps_per_epoch=steps_per_epoch,
      validation_data=validation_data, validation_freq=validation_freq,
      callbacks=logs, verbose=verbose, shuffle=False)
  if any(getattr(cb, "stopped_epoch", 0) for cb in callbacks):
    reason = "early stopping"
  elif budget.exhausted:
    reason = "time budget"
  else:
    reason = "steps"
  return {"epochs": ckpt.epoch, "steps": ckpt.steps,
          "seconds": budget.elapsed, "stop_reason": reason,
          "resumed_at": start, "history": history.history}


def evaluate(model, x, batch_size, seed=0, context=None):
  """The exact-likelihood evaluation of a `FlowModel` on a test set.

  Solves the evaluation flow (`model.eval_bijector`: its solver, tolerances
  and trace) on every example. Batch b draws its Hutchinson probes (and, for
  image models, its dequantization noise) from a fixed seed, so the figure
  is reproducible.

  Args:
    model: a `FlowModel`.
    x: the test array (uint8 images for image models).
    batch_size: examples per solve.
    seed: an int.
    context: optional conditioning array.

  Returns:
    A dict: `nll` (nats per example) and `nll_stderr`, `bpd` and
    `bpd_stderr` for image models, `nfe` (mean forward NFE per batch),
    `examples`, `seconds`, and `eval_options`, the evaluation flow's
    options (its `rtol` and `atol`: the tolerance of the score).
  """
  start = time.time()
  logps, nfes = [], []
  for b, i in enumerate(range(0, len(x), batch_size)):
    batch = x[i:i + batch_size]
    s = step_seed(seed, b, 2)
    if model.dequantize:
      batch = dequantize(batch, seed=s)
    c = None if context is None else context[i:i + batch_size]
    logp, nfe = model.log_prob(batch, c, seed=s, return_nfe=True)
    logps.append(logp.numpy())
    nfes.append(int(nfe))
  logp = np.concatenate(logps).astype(np.float64)
  n = len(logp)
  out = {"nll": float(-logp.mean()),
         "nll_stderr": float(logp.std(ddof=1) / math.sqrt(n)) if n > 1
         else float("nan"),
         "nfe": float(np.mean(nfes)), "examples": n,
         "seconds": time.time() - start,
         "eval_options": dict(model.eval_options)}
  if model.dequantize:
    bpd = bits_per_dim(logp, model.event_size).numpy().astype(np.float64)
    out["bpd"] = float(bpd.mean())
    out["bpd_stderr"] = float(bpd.std(ddof=1) / math.sqrt(n)) if n > 1 \
        else float("nan")
  return out


def read_curve(out):
  """The rows of `<out>/curve.csv` as dicts of floats, one per epoch.

  A row written just before a kill, whose epoch's checkpoint was not, is
  written again after the resume: the later row wins.
  """
  path = os.path.join(out, "curve.csv")
  if not os.path.exists(path):
    return []
  rows = {}
  with open(path, newline="", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      values = {k: float(v) for k, v in row.items()
                if v not in ("", "NA", None)}
      rows[int(values["epoch"])] = values
  return [rows[k] for k in sorted(rows)]


def write_json(path, payload):
  """Writes `payload` as indented JSON, atomically (write, then rename)."""
  tmp = f"{path}.tmp"
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(payload, f, indent=2, sort_keys=True, default=float)
  os.replace(tmp, path)


def on_every_worker(write, path, strategy=None):
  """Calls `write(path)` on the chief and `write(scratch)` on other workers.

  For writers that run collective ops under `MultiWorkerMirroredStrategy`
  (an export creates variables, whose initial values are broadcast): every
  worker must take part, but only the chief's files may land in `path`.
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

