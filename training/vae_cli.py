"""The paper's MNIST VAE with a none / MAF / FFJORD posterior: `python -m training.vae_cli --data mnist --flow ffjord`."""

import dataclasses
import math
import os
import sys
import time

import numpy as np

from training import choices, environment, run_folders
from training import command_line as cli

# Parsing the flags and --help import neither TensorFlow nor tf_ffjord:
# keras and tf load at first use, tf_ffjord and training.run in the
# functions that use them.
keras = cli.lazy("keras")
tf = cli.lazy("tensorflow")

__all__ = ["VAEConfig", "load_images", "build_model", "train_data",
           "evaluate", "write_pictures", "run", "main", "PAPER_NEG_ELBO"]

# Table 3 of the paper: negative ELBO (nats) of the FFJORD posterior on
# statically binarized MNIST, with Berg et al.'s gated-conv VAE.
PAPER_NEG_ELBO = 82.82


@dataclasses.dataclass
class VAEConfig(cli.RunConfig, cli.SolverConfig):
  """One VAE run: a small MLP VAE sized for a CPU budget.

  The paper follows Berg et al. (Sylvester flows): gated convolutional
  encoder/decoder, 64 latent dimensions, static binarization and long
  training. Here the encoder and decoder are MLPs, z has `latent_dim`
  dimensions and training binarizes every batch afresh (dynamically); the
  test set is binarized once, with a fixed seed.
  """
  data: str = cli.option("mnist", "28x28 grayscale image set: "
                         "<data-root>/<name>.npz (keras' mnist.npz layout) "
                         "or IDX files in <data-root>/<name>/",
                         choices=("mnist", "fashion-mnist"))
  out: str = cli.out_option(
      "runs/vae/{data}-{flow}", "curve.csv, metrics.json, reconstructions.png, "
      "samples.png, vae.weights.h5",
      names="{data}, {flow}: the data set's and the posterior's names")
  objective: str = cli.option("elbo", "training objective: the VAE "
                              "maximizes its evidence lower bound (its only "
                              "objective)", choices=("elbo",))
  ot: bool = cli.option(False, "flow matching's OT pairing; the VAE has no "
                        "flow matching, so only false", choices=(False,))
  batch_size: int = cli.option(100, "images per training step (the global "
                               "batch under --strategy)", positive=True)
  eval_batch_size: int = cli.option(500, "test images per ELBO evaluation "
                                    "batch", positive=True)
  export: bool = cli.option(True, "write the trained weights to "
                            "<out>/vae.weights.h5")
  flow: str = cli.option("ffjord", "posterior flow on the encoder's "
                         "Gaussian: none (the Gaussian alone), maf (IAF "
                         "steps over conditional MADEs) or ffjord (an "
                         "amortized CNF)", choices=choices.POSTERIORS)
  latent_dim: int = cli.option(32, "dimensions of the latent z",
                               positive=True)
  context_dim: int = cli.option(32, "width of the encoder features h(x) "
                                "that condition the maf/ffjord posterior",
                                positive=True)
  encoder_hidden: tuple = cli.option((512, 256), "hidden widths of the "
                                     "encoder MLP", positive=True)
  decoder_hidden: tuple = cli.option((256, 512), "hidden widths of the "
                                     "decoder MLP", positive=True)
  activation: str = cli.option("elu", "activation of the encoder, decoder "
                               "and MADEs", choices=choices.ACTIVATIONS)
  maf_steps: int = cli.option(4, "IAF steps of the maf posterior",
                              positive=True)
  maf_hidden: tuple = cli.option((256,), "hidden widths of each MADE",
                                 positive=True)
  cnf_hidden: tuple = cli.option((128, 128), "hidden widths of the ffjord "
                                 "posterior's dynamics", positive=True)
  cnf_activation: str = cli.option("softplus", "activation of the ffjord "
                                   "posterior's dynamics",
                                   choices=choices.ACTIVATIONS)
  time_length: float = cli.option(0.5, "integration time T of the ffjord "
                                  "posterior", positive=True)
  solver: str = cli.default("rk4")
  gradient: str = cli.default("adjoint")
  epochs: int = cli.option(100, "passes over the training images; a "
                           "checkpoint after each", positive=True)
  kl_warmup_steps: int = cli.option(0, "scale the KL term of the training "
                                    "loss by min(1, step / N) (0: none; "
                                    "metrics use the full ELBO)", low=0)
  train_size: int = cli.option(0, "train on the first N training images "
                               "(0: all)", low=0)
  test_size: int = cli.option(0, "evaluate on the first N test images "
                              "(0: all)", low=0)
  iwae_samples: int = cli.option(100, "importance samples of the IWAE "
                                 "estimate of -log p(x)", positive=True)
  iwae_test_size: int = cli.option(500, "test images of the IWAE estimate",
                                   positive=True)
  iwae_chunk: int = cli.option(100, "importance samples drawn per compiled "
                               "call (bounds memory)", positive=True)
  progress: int = cli.option(2, "Keras output: 0 none, 1 a progress bar, 2 "
                             "a line per epoch", choices=(0, 1, 2))


def load_images(name, root):
  """Train and test images of an MNIST-layout set under `root`.

  Args:
    name: `"mnist"` or `"fashion-mnist"`.
    root: the directory holding `<name>.npz` or the IDX directory `<name>/`.

  Returns:
    `(x_train, x_test)`: uint8 arrays `[N, H, W]`.

  Raises:
    FileNotFoundError: neither exists; the message names both.
    ValueError: a malformed file (named by the loader), or color images.
  """
  from tf_ffjord.datasets import images  # pylint: disable=g-import-not-at-top
  npz, idx = os.path.join(root, f"{name}.npz"), os.path.join(root, name)
  if not os.path.exists(npz) and not os.path.isdir(idx):
    raise FileNotFoundError(
        f"No {name} data: {npz} not found (nor an IDX directory {idx}). "
        "Put the file there or pass --data-root DIR.")
  (x_train, _), (x_test, _) = images.load(
      name, npz if os.path.exists(npz) else idx)
  if x_train.shape[-1] != 1:
    raise ValueError(f"The VAE models grayscale images; {name} has "
                     f"{x_train.shape[-1]} channels.")
  return x_train[..., 0], x_test[..., 0]


def build_model(config, input_shape=(28, 28)):
  """The compiled `VAE` of a `VAEConfig` (in the current strategy)."""
  from tf_ffjord.model.vae import VAE  # pylint: disable=g-import-not-at-top
  environment.use_precision(config.precision)
  keras.utils.set_random_seed(config.seed)
  kwargs = {}
  if config.flow == "ffjord":
    kwargs = dict(time_length=config.time_length, **config.ffjord_options())
  vae = VAE(input_shape, latent_dim=config.latent_dim, posterior=config.flow,
            encoder_hidden=config.encoder_hidden,
            decoder_hidden=config.decoder_hidden,
            context_dim=config.context_dim, activation=config.activation,
            maf_steps=config.maf_steps, maf_hidden=config.maf_hidden,
            cnf_hidden=config.cnf_hidden,
            cnf_activation=config.cnf_activation,
            kl_warmup_steps=config.kl_warmup_steps, **kwargs)
  vae.compile(keras.optimizers.Adam(
      config.lr, weight_decay=config.weight_decay or None))
  return vae


def train_data(vae, x_train, config):
  """`fn(start_step)` of the training pipeline for `run_lib.fit`.

  Batch k is a seeded shuffle of `x_train`, binarized and given its
  posterior noise from step k's seed (`VAE.training_batch`), so it is the
  same after a resume and under every strategy.
  """
  from tf_ffjord.datasets import batches  # pylint: disable=g-import-not-at-top
  return lambda start: batches.epoch_batches(
      x_train, config.batch_size, config.seed, start,
      transform=vae.training_batch)


def evaluate(vae, x_test, config):
  """Test negative ELBO (all of x_test) and IWAE -log p(x) (a subset).

  Both use the exact trace for FFJORD and fixed seeds. Returns a dict.
  """
  t0 = time.time()

  def elbo_and_nfe(x, seed):
    log_px_z, log_pz, log_q, nfe = vae.log_weights(x, 1, exact=True,
                                                   seed=seed)
    return (log_px_z + log_pz - log_q)[0], nfe

  elbo_fn = tf.function(elbo_and_nfe, reduce_retracing=True, autograph=False)
  elbos, nfe = [], 0
  for b, i in enumerate(range(0, len(x_test), config.eval_batch_size)):
    e, nfe = elbo_fn(tf.constant(x_test[i:i + config.eval_batch_size]),
                     tf.constant([config.seed, b]))
    elbos.append(e.numpy())
  elbos = np.concatenate(elbos).astype(np.float64)
  t1 = time.time()
  n_iwae = min(config.iwae_test_size, len(x_test))
  iwae = []
  # Fewer images per call as the chunk grows keeps each call near 5000
  # samples.
  per_call = max(1, min(n_iwae, 5000 // config.iwae_chunk))
  for i in range(0, n_iwae, per_call):
    iwae.append(vae.iwae(tf.constant(x_test[i:i + per_call]),
                         config.iwae_samples, chunk=config.iwae_chunk).numpy())
  iwae = np.concatenate(iwae).astype(np.float64)
  return {
      "test_neg_elbo": float(-elbos.mean()),
      "test_neg_elbo_stderr": float(elbos.std() / math.sqrt(len(elbos))),
      "test_images": int(len(elbos)),
      "iwae_neg_log_px": float(-iwae.mean()),
      "iwae_samples": int(config.iwae_samples),
      "iwae_test_images": int(n_iwae),
      "neg_elbo_on_iwae_images": float(-elbos[:n_iwae].mean()),
      "eval_nfe": int(nfe),
      "seconds_elbo": t1 - t0,
      "seconds_iwae": time.time() - t1,
  }


def _grid_png(path, pictures, rows):
  """Writes `pictures` ([n, H, W] in [0, 1]) as a grid PNG of `rows` rows."""
  pictures = np.asarray(pictures)
  n, h, w = pictures.shape
  cols = -(-n // rows)
  grid = np.ones((rows * (h + 2), cols * (w + 2)), "float32")
  for i, im in enumerate(pictures):
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


def run(config, strategy=None):
  """Trains (resuming from `config.out`), evaluates and writes the outputs.

  Under a multi-replica strategy `fit` splits every global batch over the
  replicas after the pipeline has binarized it and drawn its posterior
  noise, so training matches one device up to the Hutchinson probes (drawn
  per replica). Under `multiworker` only the chief writes files.

  Returns:
    The metrics dict, also written to `<out>/metrics.json`.

  Raises:
    FileNotFoundError: the data set is missing (the message names it).
    ValueError: a batch that does not split evenly over the replicas, or
      more than the training images.
  """
  from tf_ffjord.model.vae import binarize  # pylint: disable=g-import-not-at-top
  from training import run as run_lib, summaries  # pylint: disable=g-import-not-at-top
  strategy = strategy or tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:
    # minimize() weighs every replica's mean equally: equal shares only.
    raise ValueError(f"--batch-size {config.batch_size} must be a multiple "
                     f"of the {replicas} replicas.")
  x_train, x_test = load_images(config.data, config.data_root)
  x_train = x_train[:config.train_size or None]
  x_test = x_test[:config.test_size or None].astype(np.float32) / 255.0
  if config.batch_size > len(x_train):
    raise ValueError(f"--batch-size {config.batch_size} exceeds the "
                     f"{len(x_train)} training images.")
  # One fixed binarization of the test set.
  x_test = binarize(x_test, seed=[config.seed, 2019]).numpy()
  run_folders.claim(config, write=run_lib.is_chief(strategy))
  with strategy.scope():
    vae = build_model(config, x_train.shape[1:])
  steps_per_epoch = len(x_train) // config.batch_size
  trained = run_lib.fit(vae, train_data(vae, x_train, config), config.out,
                        config.epochs * steps_per_epoch, steps_per_epoch,
                        time_budget=config.time_budget,
                        verbose=config.progress,
                        observers=summaries.callbacks(
                            config.tensorboard, run_lib.is_chief(strategy)))
  curve = run_lib.read_curve(config.out)
  last = curve[-1] if curve else {}
  metrics = {
      "data": config.data, "flow": config.flow,
      "paper_neg_elbo_mnist": PAPER_NEG_ELBO,
      "epochs": trained["epochs"], "steps": trained["steps"],
      "optimizer_steps": run_lib.optimizer_steps(vae),
      "resumed_at": trained["resumed_at"],
      "stop_reason": trained["stop_reason"], "seconds": trained["seconds"],
      # The last epoch's means.
      "train_neg_elbo": last.get("neg_elbo"), "train_kl": last.get("kl"),
      "train_nfe": last.get("nfe"),
      "train_nfe_backward": last.get("nfe_backward"),
      "parameters": int(sum(np.prod(v.shape)
                            for v in vae.trainable_variables)),
      "replicas": replicas,
  }
  metrics.update(evaluate(vae, x_test, config))
  metrics["config"] = dataclasses.asdict(config)
  if config.export:  # saving runs collectives: every worker takes part
    run_lib.on_every_worker(vae.save_weights,
                            os.path.join(config.out, "vae.weights.h5"),
                            strategy)
  if run_lib.is_chief(strategy):
    write_pictures(vae, x_test, config.out)
    run_lib.write_json(os.path.join(config.out, "metrics.json"), metrics)
  return metrics


def main(argv=None):
  config, strategy = cli.parse(VAEConfig, __doc__, argv)
  try:
    metrics = run(config, strategy)
  except FileNotFoundError as e:
    print(f"training.vae_cli: error: {e}", file=sys.stderr)
    sys.exit(2)
  print(f"test -ELBO {metrics['test_neg_elbo']:.2f} ± "
        f"{metrics['test_neg_elbo_stderr']:.2f} nats, IWAE -log p(x) "
        f"{metrics['iwae_neg_log_px']:.2f} ({metrics['iwae_samples']} "
        f"samples, {metrics['iwae_test_images']} images), "
        f"{metrics['steps']} steps, {metrics['seconds']:.0f} s of training "
        f"-> {config.out}")
  return metrics


if __name__ == "__main__":
  main()
