"""The paper's MNIST VAE: `python -m training.vae --flow ffjord --out DIR`."""

import dataclasses
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord import checkpoints
from tf_ffjord.vae import POSTERIORS, VAE, binarize
from training import common

__all__ = ["VAEConfig", "load_mnist", "build_model", "evaluate", "run",
           "main", "PAPER_NEG_ELBO"]

# Table 3 of the paper: negative ELBO (nats) of the FFJORD posterior on
# statically binarized MNIST, with Berg et al.'s gated-conv VAE.
PAPER_NEG_ELBO = 82.82


@dataclasses.dataclass
class VAEConfig:
  """One VAE run. The architecture is a small MLP VAE sized for a CPU budget.

  The paper follows Berg et al. (Sylvester flows): gated convolutional
  encoder/decoder, 64 latent dimensions, static MNIST binarization and long
  training; here the encoder and decoder are MLPs, z has `latent_dim`
  dimensions and training binarizes dynamically.
  """
  flow: str = "ffjord"
  data: str = "../shared/data/mnist.npz"
  out: str = "runs/vae"
  latent_dim: int = 32
  context_dim: int = 32
  encoder_hidden: tuple = (512, 256)
  decoder_hidden: tuple = (256, 512)
  activation: str = "elu"
  maf_steps: int = 4
  maf_hidden: tuple = (256,)
  cnf_hidden: tuple = (128, 128)
  cnf_activation: str = "softplus"
  time_length: float = 0.5
  solver: str = "rk4"
  step_size: float = 0.25
  rtol: float = 1e-5
  atol: float = 1e-5
  trace: str = "hutchinson"
  gradient: str = "adjoint"
  batch_size: int = 100
  lr: float = 1e-3
  epochs: int = 100
  kl_warmup_steps: int = 0
  time_budget_minutes: float = 0.0
  train_size: int = 0
  test_size: int = 0
  eval_batch_size: int = 500
  iwae_samples: int = 100
  iwae_test_size: int = 500
  iwae_chunk: int = 100
  seed: int = 0
  verbose: int = 2


def load_mnist(path):
  """Loads MNIST intensities in [0, 1] from an `.npz` with x_train / x_test.

  Args:
    path: the file (the layout of `keras.datasets.mnist`'s `mnist.npz`).

  Returns:
    `(x_train, x_test)` float32 arrays `[N, 28, 28]`.

  Raises:
    FileNotFoundError: the file does not exist (names it).
    ValueError: a missing key, a wrong shape, or non-finite values.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(
        f"MNIST file not found: {path!r}. Point --data at an mnist.npz with "
        "arrays x_train [N, 28, 28] and x_test [M, 28, 28].")
  with np.load(path) as f:
    missing = {"x_train", "x_test"} - set(f.files)
    if missing:
      raise ValueError(f"{path}: missing arrays {sorted(missing)}; found "
                       f"{f.files}.")
    out = []
    for key in ("x_train", "x_test"):
      x = np.asarray(f[key])
      if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise ValueError(f"{path}: {key} has shape {x.shape}, expected "
                         "[N, 28, 28].")
      x = x.astype("float32")
      if not np.all(np.isfinite(x)):
        raise ValueError(f"{path}: {key} contains NaN or inf.")
      if x.max() > 1.0:  # uint8 intensities
        x = x / 255.0
      if x.min() < 0.0 or x.max() > 1.0:
        raise ValueError(f"{path}: {key} intensities outside [0, 255].")
      out.append(x)
  return tuple(out)


def build_model(config):
  """The compiled `VAE` of a `VAEConfig`."""
  if config.flow not in POSTERIORS:
    raise ValueError(f"Unknown flow {config.flow!r}; expected one of "
                     f"{POSTERIORS}.")
  keras.utils.set_random_seed(config.seed)
  kwargs = {}
  if config.flow == "ffjord":
    kwargs = dict(time_length=config.time_length, solver=config.solver,
                  step_size=config.step_size, rtol=config.rtol,
                  atol=config.atol, trace=config.trace,
                  gradient=config.gradient)
  vae = VAE((28, 28), latent_dim=config.latent_dim, posterior=config.flow,
            encoder_hidden=config.encoder_hidden,
            decoder_hidden=config.decoder_hidden,
            context_dim=config.context_dim, activation=config.activation,
            maf_steps=config.maf_steps, maf_hidden=config.maf_hidden,
            cnf_hidden=config.cnf_hidden,
            cnf_activation=config.cnf_activation,
            kl_warmup_steps=config.kl_warmup_steps, **kwargs)
  vae.compile(keras.optimizers.Adam(config.lr))
  return vae


class TimeBudget(keras.callbacks.Callback):
  """Stops `fit` after a wall-clock budget, checked after every batch.

  Under `multiworker` the workers stop at the same step (the first one over
  budget decides; see `training.common.any_worker`).
  """

  def __init__(self, seconds):
    super().__init__()
    self.seconds = seconds
    self.start = None
    self.steps = 0
    self.epoch_steps = 0

  def on_train_begin(self, logs=None):
    self.start = time.time()

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch_steps = 0

  def on_train_batch_end(self, batch, logs=None):
    self.steps += 1
    self.epoch_steps += 1
    if self.seconds and common.any_worker(
        time.time() - self.start > self.seconds)[0]:
      self.model.stop_training = True


def evaluate(vae, x_test, config):
  """Test negative ELBO (all of x_test) and IWAE -log p(x) (a subset).

  Both use the exact trace for FFJORD. Returns a dict of floats.
  """
  t0 = time.time()
  def elbo_and_nfe(x):
    log_px_z, log_pz, log_q, nfe = vae.log_weights(x, 1, exact=True)
    return (log_px_z + log_pz - log_q)[0], nfe

  elbo_fn = tf.function(elbo_and_nfe, reduce_retracing=True, autograph=False)
  elbos, nfe = [], 0
  for i in range(0, len(x_test), config.eval_batch_size):
    e, nfe = elbo_fn(tf.constant(x_test[i:i + config.eval_batch_size]))
    elbos.append(e.numpy())
  elbos = np.concatenate(elbos)
  t1 = time.time()
  n_iwae = min(config.iwae_test_size, len(x_test))
  iwae = []
  # Fewer images per call as k grows keeps each call near k * 50 samples.
  per_call = max(1, min(n_iwae, 5000 // max(1, config.iwae_chunk)))
  for i in range(0, n_iwae, per_call):
    iwae.append(vae.iwae(tf.constant(x_test[i:i + per_call]),
                         config.iwae_samples, chunk=config.iwae_chunk).numpy())
  iwae = np.concatenate(iwae)
  t2 = time.time()
  return {
      "test_neg_elbo": float(-elbos.mean()),
      "test_neg_elbo_stderr": float(elbos.std() / math.sqrt(len(elbos))),
      "test_images": int(len(elbos)),
      "iwae_neg_log_px": float(-iwae.mean()),
      "iwae_samples": int(config.iwae_samples),
      "iwae_test_images": int(n_iwae),
      "neg_elbo_on_iwae_images": float(-elbos[:n_iwae].mean()),
      "nfe_eval": int(nfe),
      "seconds_elbo": t1 - t0,
      "seconds_iwae": t2 - t1,
  }


def _grid_png(path, images, rows):
  """Writes `images` ([n, 28, 28] in [0, 1]) as a grid PNG with `rows` rows."""
  images = np.asarray(images)
  n, h, w = images.shape
  cols = -(-n // rows)
  grid = np.ones((rows * (h + 2), cols * (w + 2)), "float32")
  for i, im in enumerate(images):
    r, c = divmod(i, cols)
    grid[r * (h + 2) + 1:r * (h + 2) + 1 + h,
         c * (w + 2) + 1:c * (w + 2) + 1 + w] = im
  png = tf.io.encode_png(tf.cast(grid[..., None] * 255, tf.uint8))
  tf.io.write_file(path, png)


def write_pictures(vae, x_test, out):
  """reconstructions.png (inputs over mean reconstructions) and samples.png."""
  x = tf.constant(x_test[:16])
  # Compiled: an eager exact-trace solve re-traces its Jacobian every step.
  z = tf.function(lambda x: vae.posterior_sample(
      x, 1, exact=True, seed=[0, 0])[0][0], autograph=False)(x)
  recon = tf.sigmoid(vae.decode(z)).numpy()
  _grid_png(os.path.join(out, "reconstructions.png"),
            np.concatenate([x.numpy(), recon]), rows=2)
  _grid_png(os.path.join(out, "samples.png"), vae.sample(100).numpy(),
            rows=10)


def _train_batches(x, batch_size, epochs, seed, first_epoch=0):
  """Binarized training batches of epochs [first_epoch, epochs), one Dataset.

  Every epoch is a stateless permutation of `x` seeded by `(seed, epoch)`, so
  the sequence of global batches is the same under every strategy and on
  every worker (`Dataset.shuffle` is not, once `fit` distributes the
  dataset); `fit` then splits each global batch over the replicas.
  """
  n = len(x)

  def epoch(e):
    order = tf.argsort(tf.random.stateless_uniform(
        [n], tf.stack([seed, tf.cast(e, tf.int32)])))
    return (tf.data.Dataset.from_tensor_slices(order)
            .batch(batch_size, drop_remainder=True))

  images = tf.constant(x)
  train = (tf.data.Dataset.range(first_epoch, epochs).flat_map(epoch)
           .map(lambda i: binarize(tf.gather(images, i))).prefetch(2))
  options = tf.data.Options()  # split every global batch, whatever its source
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  return train.with_options(options)


def run(config):
  """Trains and evaluates one VAE; writes metrics.json and PNGs to `out`.

  Under a multi-replica strategy `fit` splits every global batch of
  `batch_size` over the replicas; the batches are binarized before the
  split and the posterior's base noise is drawn for the global batch
  (`VAE._training_noise`), so training matches one device up to the
  Hutchinson probes (drawn per replica). Under `multiworker` only the chief
  writes files.
  """
  strategy = tf.distribute.get_strategy()
  common.check_global_batch(config.batch_size, strategy)
  os.makedirs(config.out, exist_ok=True)
  x_train, x_test = load_mnist(config.data)
  if config.train_size:
    x_train = x_train[:config.train_size]
  if config.test_size:
    x_test = x_test[:config.test_size]
  # A fixed binarization of the test set; training binarizes every batch.
  x_test = binarize(x_test, seed=[config.seed, 2019]).numpy()
  vae = build_model(config)
  steps_per_epoch = len(x_train) // config.batch_size
  if not steps_per_epoch:
    raise ValueError(f"{len(x_train)} training images make no batch of "
                     f"{config.batch_size}.")
  # Every epoch end is checkpointed; a rerun of the same command after a
  # kill resumes at the last finished epoch, on that epoch's batches.
  ckpt = checkpoints.Checkpointer(vae, os.path.join(config.out,
                                                    "checkpoints"))
  initial_epoch = ckpt.restore()
  if initial_epoch:
    print(f"Resumed from {ckpt.latest} at epoch {initial_epoch} "
          f"(step {common.optimizer_steps(vae)}).", flush=True)
  train = _train_batches(x_train, config.batch_size, config.epochs,
                         config.seed, first_epoch=initial_epoch)
  budget = TimeBudget(config.time_budget_minutes * 60)
  t0 = time.time()
  # One dataset holds every epoch: fit keeps its iterator across epochs.
  history = vae.fit(train, epochs=config.epochs, initial_epoch=initial_epoch,
                    steps_per_epoch=steps_per_epoch, verbose=config.verbose,
                    callbacks=[budget, checkpoints.CheckpointCallback(ckpt)],
                    shuffle=False)
  train_seconds = time.time() - t0
  hist = history.history
  last = -1
  if (budget.epoch_steps < steps_per_epoch // 2
      and len(hist.get("neg_elbo", [])) > 1):
    last = -2
  # A rerun after the last epoch was saved trains nothing: no train logs.
  logged = lambda key, fn: fn(hist[key][last]) if hist.get(key) else None
  metrics = {
      "flow": config.flow,
      "paper_neg_elbo_mnist": PAPER_NEG_ELBO,
      "initial_epoch": initial_epoch,
      "train_steps": budget.steps,
      "optimizer_steps": common.optimizer_steps(vae),
      "train_epochs": len(hist.get("neg_elbo", [])),
      "train_seconds": train_seconds,
      # Epoch means; a budget cut leaves a short last epoch, so report the
      # last one with at least half an epoch of steps.
      "train_neg_elbo_last_epoch": logged("neg_elbo", float),
      "kl_last_epoch": logged("kl", float),
      "nfe_forward_train": logged("nfe", int),
      "nfe_backward_train": logged("nfe_backward", int),
      "parameters": int(sum(np.prod(v.shape)
                            for v in vae.trainable_variables)),
      "replicas": strategy.num_replicas_in_sync,
  }
  metrics.update(evaluate(vae, x_test, config))
  metrics["seconds"] = time.time() - t0
  metrics["config"] = dataclasses.asdict(config)
  # Saving runs collectives under multiworker: every worker takes part.
  common.on_every_worker(vae.save_weights,
                         os.path.join(config.out, "vae.weights.h5"), strategy)
  if common.is_chief(strategy):
    write_pictures(vae, x_test, config.out)
    common.write_json(os.path.join(config.out, "metrics.json"), metrics)
  ckpt.delete()  # finished: a rerun starts over
  return metrics


def main(argv=None):
  config = common.config_from_args(
      VAEConfig, "Train a VAE with a none / MAF / FFJORD posterior on "
      "dynamically binarized MNIST.", argv)
  metrics = run(config)
  print({k: v for k, v in metrics.items() if k != "config"})
  return metrics


if __name__ == "__main__":
  main()
