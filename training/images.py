"""Multiscale FFJORD on images: `python -m training.images --data mnist --data-path ../shared/data/mnist.npz --out DIR`."""

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord import checkpoints
from tf_ffjord.datasets import images as image_data
from tf_ffjord.images import bits_per_dim, dequantize
from tf_ffjord.multiscale import MultiscaleFFJORDModel
from training import common
from training import plots_images

__all__ = ["ImagesConfig", "build_model", "evaluate_bpd", "run", "main"]

PAPER_BPD = {"mnist": 0.99, "cifar10": 3.40}


@dataclasses.dataclass
class ImagesConfig:
  """One image experiment.

  The paper's MNIST model is `dims=(64, 64, 64)`, `num_blocks=2`,
  `layer="concat"`, `multiscale=True`, dopri5 at 1e-5 and batch 200, which
  needs GPU-days; the defaults here are a CPU-sized version of it (see the
  README for what they reach).
  """
  data: str = "mnist"
  data_path: str = "../shared/data/mnist.npz"
  out: str = "runs/images"
  batch_size: int = 64
  epochs: float = 1.0          # stops at whichever of epochs/budget/steps ends first
  time_budget: float = 0.0     # training minutes, 0 for no limit
  max_steps: int = 0           # 0 for no limit
  dims: tuple = (32, 32)
  strides: tuple = ()          # () for all 1
  num_blocks: int = 1
  multiscale: bool = True
  num_scales: int = 0          # 0 for the paper's choice (3 for 28x28)
  layer: str = "concat"
  activation: str = "softplus"
  alpha: float = 0.0           # 0 for the paper's (1e-6 MNIST, 0.05 CIFAR-10)
  solver: str = "rk4"
  step_size: float = 0.5
  rtol: float = 1e-5
  atol: float = 1e-5
  max_num_steps: int = 1000
  noise: str = "rademacher"
  trace: str = "hutchinson"    # training (and evaluation) trace; exact costs D VJPs
  train_time: bool = True
  lr: float = 1e-3
  train_size: int = 0          # 0 for the whole training split
  eval_size: int = 0           # 0 for the full test split
  eval_batch: int = 500
  eval_solver: str = ""        # "" for the training solver; e.g. dopri5 (rtol/atol)
  checkpoint_every: float = 120.0  # seconds
  log_every: int = 10
  seed: int = 0
  export: bool = True          # SavedModel of the final model in out/saved_model


def build_model(config, event_shape):
  """The `MultiscaleFFJORDModel` of an `ImagesConfig`, compiled with Adam."""
  keras.utils.set_random_seed(config.seed)
  alpha = config.alpha or (0.05 if event_shape[-1] == 3 else 1e-6)
  model = MultiscaleFFJORDModel(
      event_shape, dims=config.dims, strides=config.strides or None,
      num_blocks=config.num_blocks, multiscale=config.multiscale,
      num_scales=config.num_scales or None, layer=config.layer,
      activation=config.activation, alpha=alpha,
      train_time=config.train_time, solver=config.solver,
      step_size=config.step_size, rtol=config.rtol, atol=config.atol,
      max_num_steps=config.max_num_steps, noise=config.noise,
      trace=config.trace,
      eval_kwargs={"solver": config.eval_solver} if config.eval_solver else None)
  model.compile(keras.optimizers.Adam(config.lr))
  model.optimizer.build(model.trainable_variables)
  return model


def evaluate_bpd(model, images, batch_size=500, seed=0):
  """Mean test bits/dim of uint8 images under one seeded dequantization.

  The log-det uses the model's eval trace (Hutchinson for images: unbiased,
  and its noise averages out over a test set).

  Returns:
    `(bpd, nll, nfe)`: mean bits/dim, mean nats per image, and the NFE of the
    last batch.
  """
  fn = tf.function(lambda x: model._log_prob(  # pylint: disable=protected-access
      x, model.eval_flow), autograph=False, reduce_retracing=True)
  total, count, nfe = 0.0, 0, 0
  for i in range(0, len(images), batch_size):
    batch = images[i:i + batch_size]
    x = dequantize(batch, seed=tf.constant([seed, i], tf.int32))
    logp, nfe = fn(x)
    total += float(tf.reduce_sum(logp))
    count += len(batch)
  nll = -total / count
  return float(bits_per_dim(-nll, model.event_size)), nll, int(nfe)


def _batches(x, batch_size, seed):
  """(epoch, index) -> batch: a fresh seeded permutation per epoch."""
  steps_per_epoch = max(1, len(x) // batch_size)
  cache = {}

  def get(step):
    epoch, i = divmod(step, steps_per_epoch)
    if epoch not in cache:
      cache.clear()
      cache[epoch] = np.random.default_rng([seed, epoch]).permutation(len(x))
    return x[cache[epoch][i * batch_size:(i + 1) * batch_size]]

  return get, steps_per_epoch


def run(config):
  """Trains (resuming from `config.out` if a checkpoint exists), evaluates,
  and writes `metrics.json`, `curve.json`, `samples.png`, `curve.png` and
  (with `export`) `saved_model/`.

  Under a multi-replica strategy every step splits the global batch over the
  replicas (see `training.common.split_batch`); the batch is dequantized
  before the split with a seed of the step, so training matches one device
  on the same global batch up to the Hutchinson probes (drawn per replica).
  Under `multiworker` only the chief writes files.

  Returns:
    The metrics dict.
  """
  strategy = tf.distribute.get_strategy()
  common.check_global_batch(config.batch_size, strategy)
  chief = common.is_chief(strategy)
  os.makedirs(config.out, exist_ok=True)
  (x_train, _), (x_test, _) = image_data.load(config.data, config.data_path)
  if config.train_size:
    x_train = x_train[:config.train_size]
  eval_images = x_test[:config.eval_size] if config.eval_size else x_test
  model = build_model(config, x_train.shape[1:])
  with strategy.scope():
    elapsed = tf.Variable(0.0, dtype=tf.float64, name="elapsed")
  # The checkpointer's counter holds the finished steps.
  ckpt = checkpoints.Checkpointer(model, os.path.join(config.out,
                                                      "checkpoints"),
                                  extra={"elapsed": elapsed})
  step = ckpt.restore()
  curve_path = os.path.join(config.out, "curve.json")
  curve = []
  if step:
    if os.path.exists(curve_path):
      with open(curve_path) as f:
        curve = [c for c in json.load(f) if c["step"] <= step]
    print(f"Resumed from {ckpt.latest} at step {step} "
          f"({float(elapsed.numpy()) / 60:.1f} min trained).", flush=True)

  get_batch, steps_per_epoch = _batches(x_train, config.batch_size,
                                        config.seed)
  limit = math.ceil(config.epochs * steps_per_epoch)
  if config.max_steps:
    limit = min(limit, config.max_steps)
  budget = config.time_budget * 60 or float("inf")
  train_fn = common.distributed_step(model.likelihood_step, strategy=strategy)

  def save():
    ckpt.save(step)  # every worker: reads of synchronized variables
    if chief:
      common.write_json(curve_path, curve)

  start, last_save = time.time() - float(elapsed.numpy()), time.time()
  while step < limit:
    over_budget, = common.any_worker(time.time() - start >= budget,
                                     strategy=strategy)
    if over_budget:
      break
    x = dequantize(get_batch(step), seed=tf.constant([config.seed, step],
                                                      tf.int32))
    logs = train_fn(common.split_batch(x.numpy(), strategy))
    step += 1
    elapsed.assign(time.time() - start)
    if step % config.log_every == 0 or step == limit:
      logs = {k: float(v) for k, v in logs.items()}
      for m in model.metrics:  # report means over the logging interval
        m.reset_state()
      curve.append({"step": step, "minutes": float(elapsed.numpy()) / 60,
                    "epoch": step / steps_per_epoch, **logs})
      print(f"step {step} epoch {step / steps_per_epoch:.2f} "
            f"{float(elapsed.numpy()) / 60:.1f} min bpd {logs['bpd']:.3f} "
            f"nfe {logs['nfe']:.0f}", flush=True)
    save_now, = common.any_worker(
        time.time() - last_save > config.checkpoint_every, strategy=strategy)
    if save_now:
      save()
      last_save = time.time()
  save()
  train_seconds = float(elapsed.numpy())

  t0 = time.time()
  test_bpd, test_nll, eval_nfe = evaluate_bpd(model, eval_images,
                                              config.eval_batch, config.seed)
  eval_seconds = time.time() - t0
  subset = ("full test set" if len(eval_images) == len(x_test) else
            f"first {len(eval_images)} of {len(x_test)} test images")
  metrics = {
      "test_bpd": test_bpd,
      "test_nll": test_nll,
      "test_examples": len(eval_images),
      "test_subset": subset,
      "nfe": curve[-1]["nfe"] if curve else eval_nfe,
      "eval_nfe": eval_nfe,
      "eval_solver": config.eval_solver or config.solver,
      "seconds": train_seconds,
      "eval_seconds": eval_seconds,
      "steps": step,
      "epochs": step / steps_per_epoch,
      "train_bpd": curve[-1]["bpd"] if curve else None,
      "paper_bpd": PAPER_BPD.get(config.data),
      "trace": (config.trace if config.trace == "exact" else
                "hutchinson (one probe per image; unbiased log-det)"),
      "replicas": strategy.num_replicas_in_sync,
      "config": dataclasses.asdict(config),
  }
  if config.export:  # every worker takes part (see on_every_worker)
    common.on_every_worker(model.export,
                           os.path.join(config.out, "saved_model"), strategy)
  if chief:
    samples = model.sample(64, seed=config.seed).numpy()
    plots_images.save_grid(os.path.join(config.out, "samples.png"), samples)
    common.write_json(os.path.join(config.out, "metrics.json"), metrics)
    plots_images.plot_curve(os.path.join(config.out, "curve.png"), curve,
                            test_bpd, PAPER_BPD.get(config.data))
  print(json.dumps({k: v for k, v in metrics.items() if k != "config"}),
        flush=True)
  return metrics


def main(argv=None):
  config = common.config_from_args(
      ImagesConfig, "Train multiscale FFJORD on images.", argv)
  if config.data == "cifar10" and config.data_path == ImagesConfig.data_path:
    raise SystemExit("Pass --data-path to the cifar-10-batches-py directory.")
  return run(config)


if __name__ == "__main__":
  main()
