"""FFJORD on 8-bit images (MNIST, Fashion-MNIST, CIFAR-10): `python -m training.images_cli --data mnist`."""

import dataclasses
import os

import numpy as np

from training import choices, environment, run_folders
from training import command_line as cli

# Parsing the flags and --help import neither TensorFlow nor tf_ffjord:
# keras and tf load at first use, tf_ffjord and training.run in the
# functions that use them.
keras = cli.lazy("keras")
tf = cli.lazy("tensorflow")

__all__ = ["ImagesConfig", "PRESETS", "PAPER_BPD", "check", "build_model",
           "run", "main"]

PAPER_BPD = {"mnist": 0.99, "cifar10": 3.40}
FILES = {"mnist": "mnist.npz", "fashion-mnist": "fashion-mnist",
         "cifar10": "cifar-10-batches-py"}


@dataclasses.dataclass
class ImagesConfig(cli.RunConfig, cli.SolverConfig, cli.EvalConfig):
  """One image experiment; the defaults train the paper's multiscale model at CPU size."""
  data: str = cli.option("mnist", "image data set, read from --data-root",
                         choices=choices.IMAGE_DATASETS)
  out: str = cli.out_option("runs/images/{data}", "curve.csv, metrics.json, "
                            "samples.png, curve.png, saved_model/")
  batch_size: int = cli.option(64, "images per training step (the global "
                               "batch under --strategy)", positive=True)
  eval_batch_size: int = cli.option(500, "images per evaluation solve",
                                    positive=True)
  steps: int = cli.option(1000, "training steps", positive=True)
  steps_per_epoch: int = cli.option(50, "steps between checkpoints (and "
                                    "validations)", positive=True)
  net: str = cli.option("conv", "dynamics network of every CNF block",
                        choices=choices.NETS)
  dims: tuple = cli.option((32, 32), "hidden channels of the conv net, or "
                           "channels per level of the U-Net", positive=True)
  strides: tuple = cli.option((), "conv net: one stride per layer (1, 2, -2);"
                              " empty for all 1")
  layer: str = cli.option("concat", "conv net: time-conditioned layer type",
                          choices=("concat", "concatsquash", "ignore"))
  groups: int = cli.option(8, "U-Net: GroupNorm groups (0: none)", low=0)
  activation: str = cli.option("softplus", "activation of the dynamics",
                               choices=("softplus", "swish", "tanh", "elu"))
  multiscale: bool = cli.option(True, "the paper's multiscale stack (false: "
                                "blocks at full resolution)")
  num_blocks: int = cli.option(1, "CNF blocks before and after each squeeze "
                               "(or in the single-scale stack)",
                               positive=True)
  num_scales: int = cli.option(0, "scales of the stack (0: the paper's, 3 "
                               "for 28x28)", low=0)
  alpha: float = cli.option(0.0, "logit-transform margin (0: the paper's, "
                            "1e-6 for MNIST, 0.05 for CIFAR-10)", low=0.0,
                            high=0.49)
  solver: str = cli.default("rk4")
  step_size: float = cli.default(0.5)
  time_length: float = cli.option(1.0, "integration time T of every block "
                                  "(its initial value when learned)",
                                  positive=True)
  train_time: bool = cli.option(True, "learn each block's T (maximum "
                                "likelihood only)")
  lr: float = cli.option(3e-3, "Adam learning rate (the peak, with a "
                         "schedule)", positive=True)
  lr_schedule: str = cli.option("constant", "learning rate over the run",
                                choices=("constant", "cosine"))
  warmup_steps: int = cli.option(0, "steps of linear learning-rate warmup",
                                 low=0)
  clipnorm: float = cli.option(0.0, "clip the global gradient norm (0: "
                               "off)", low=0.0)
  ema: float = cli.option(0.0, "momentum of an exponential moving average "
                          "of the weights, used after training (0: off)",
                          low=0.0, high=0.99999)
  train_size: int = cli.option(0, "training images (0: the whole split)",
                               low=0)
  eval_size: int = cli.option(0, "test images of the final evaluation (0: "
                              "the whole test split)", low=0)
  eval_trace: str = cli.default("hutchinson")
  val_size: int = cli.option(0, "test images evaluated during training for "
                             "the curve (0: none)", low=0)
  val_every: int = cli.option(10, "epochs between those evaluations",
                              positive=True)


def paper(config):
  """the paper's MNIST model: multiscale, 64-64-64 concat conv nets, 2 blocks, dopri5, batch 200 (GPU-sized)"""
  del config
  return dict(net="conv", dims=(64, 64, 64), num_blocks=2, multiscale=True,
              layer="concat", activation="softplus", solver="dopri5",
              batch_size=200, lr=1e-3, alpha=1e-6, train_time=True)


def mnist_fm(config):
  """a single CNF over the image, trained by flow matching on a CPU budget: U-Net 32-64-64, logit(1e-6) pixels, 3000 steps of 128 (about 70 min on one core), EMA; test bits/dim on 2000 images at dopri5 1e-5"""
  del config
  return dict(objective="flow_matching", net="unet", dims=(32, 64, 64),
              groups=8, activation="swish", multiscale=False, num_blocks=1,
              alpha=1e-6, train_time=False, time_length=1.0, batch_size=128,
              lr=2e-3, lr_schedule="cosine", warmup_steps=200, clipnorm=1.0,
              ema=0.999, steps=3000, steps_per_epoch=250, time_budget=4500,
              eval_size=2000, eval_batch_size=500, val_size=100, val_every=4)


PRESETS = {"paper": paper, "mnist-fm": mnist_fm}


def check(config):
  """The flag combinations the parser refuses (with exit 2), or None."""
  if config.objective == "flow_matching" and (config.multiscale
                                               or config.num_blocks != 1):
    return ("--objective flow_matching regresses one vector field over the "
            "whole image: use --multiscale false --num-blocks 1")
  if config.ot and config.objective != "flow_matching":
    return "--ot applies to --objective flow_matching"
  if config.warmup_steps and config.lr_schedule != "cosine":
    return "--warmup-steps needs --lr-schedule cosine"
  return None


def build_model(config, event_shape):
  """The compiled `ImageFlow` of an `ImagesConfig` (in the current strategy)."""
  from tf_ffjord import ImageFlow  # pylint: disable=g-import-not-at-top
  from tf_ffjord.model.objectives import FlowMatching, MaximumLikelihood  # pylint: disable=g-import-not-at-top
  environment.use_precision(config.precision)
  keras.utils.set_random_seed(config.seed)
  flow_matching = config.objective == "flow_matching"
  alpha = config.alpha or (0.05 if event_shape[-1] == 3 else 1e-6)
  model = ImageFlow(
      event_shape, net=config.net, dims=config.dims,
      strides=config.strides or None, layer=config.layer,
      groups=config.groups, activation=config.activation,
      num_blocks=config.num_blocks, multiscale=config.multiscale,
      num_scales=config.num_scales or None, alpha=alpha,
      train_time=config.train_time and not flow_matching,
      time_length=config.time_length, eval_options=config.eval_options(),
      **config.ffjord_options())
  lr = config.lr
  if config.lr_schedule == "cosine":
    lr = keras.optimizers.schedules.CosineDecay(
        0.0 if config.warmup_steps else config.lr,
        max(1, config.steps - config.warmup_steps),
        warmup_target=config.lr if config.warmup_steps else None,
        warmup_steps=config.warmup_steps)
  optimizer = keras.optimizers.Adam(
      lr, weight_decay=config.weight_decay or None,
      global_clipnorm=config.clipnorm or None, use_ema=bool(config.ema),
      ema_momentum=config.ema or 0.99)
  model.compile(optimizer, objective=FlowMatching(ot=config.ot)
                if flow_matching else MaximumLikelihood())
  return model


def run(config, strategy=None):
  """Trains (resuming from `config.out`), evaluates and writes the outputs.

  Returns:
    The metrics dict, also written to `<out>/metrics.json` (under
    `multiworker` only the chief writes files).
  """
  from tf_ffjord.datasets import batches  # pylint: disable=g-import-not-at-top
  from tf_ffjord.datasets import images as image_data  # pylint: disable=g-import-not-at-top
  from tf_ffjord.cnf.image_transforms import dequantize  # pylint: disable=g-import-not-at-top
  from training import image_plots, run as run_lib, summaries  # pylint: disable=g-import-not-at-top
  problem = check(config)
  if problem:
    raise ValueError(problem)
  strategy = strategy or tf.distribute.get_strategy()
  chief = run_lib.is_chief(strategy)
  run_folders.claim(config, write=chief)
  (x_train, _), (x_test, _) = image_data.load(
      config.data, os.path.join(config.data_root, FILES[config.data]))
  if config.train_size:
    x_train = x_train[:config.train_size]
  with strategy.scope():
    model = build_model(config, x_train.shape[1:])
  observers = summaries.callbacks(config.tensorboard, chief)
  if observers:  # a grid of samples at every validation, and at the end
    grid = lambda seed: image_plots.image_grid(
        model.sample(16, seed=seed).numpy(), nrow=4)
    observers.append(summaries.SampleImages(
        config.tensorboard, grid, config.seed, config.steps_per_epoch))
  validation = None
  if config.val_size:
    x_val = dequantize(x_test[:config.val_size], seed=[config.seed, 7])
    validation = (x_val.numpy(),)
  trained = run_lib.fit(
      model, lambda start: batches.epoch_batches(
          x_train, config.batch_size, config.seed, start,
          transform=lambda x, seed: dequantize(x, seed=seed)),
      config.out, config.steps, config.steps_per_epoch,
      time_budget=config.time_budget, validation_data=validation,
      validation_freq=config.val_every, observers=observers)
  eval_images = x_test[:config.eval_size] if config.eval_size else x_test
  ev = run_lib.evaluate(model, eval_images, config.eval_batch_size,
                        config.seed)
  curve = run_lib.read_curve(config.out)
  metrics = {
      "data": config.data, "test_bpd": ev["bpd"],
      "test_bpd_stderr": ev["bpd_stderr"], "test_nll": ev["nll"],
      "test_examples": ev["examples"],
      "test_subset": ("full test set" if ev["examples"] == len(x_test) else
                      f"first {ev['examples']} of {len(x_test)} test images"),
      "eval": (f"{config.eval_solver} rtol={config.eval_rtol:g} atol="
               f"{config.eval_atol:g}, {config.eval_trace} trace"),
      "eval_nfe": ev["nfe"], "eval_seconds": ev["seconds"],
      "eval_options": ev["eval_options"],
      "seconds": trained["seconds"], "steps": trained["steps"],
      "epochs": trained["steps"] * config.batch_size / len(x_train),
      "stop_reason": trained["stop_reason"],
      "paper_bpd": PAPER_BPD.get(config.data),
      "replicas": strategy.num_replicas_in_sync,
      "config": dataclasses.asdict(config)}
  for key in ("bpd", "fm_loss", "nfe", "val_bpd"):
    values = [row[key] for row in curve if key in row]
    if values:
      metrics[f"last_{key}"] = values[-1]
  if config.export:  # every worker takes part (see on_every_worker)
    run_lib.on_every_worker(model.export,
                            os.path.join(config.out, "saved_model"), strategy)
  if observers:
    observers[-1].write(trained["steps"])
  if chief:
    samples = model.sample(64, seed=config.seed).numpy()
    image_plots.save_grid(os.path.join(config.out, "samples.png"), samples)
    image_plots.plot_curve(os.path.join(config.out, "curve.png"), curve,
                            ev["bpd"], PAPER_BPD.get(config.data))
    run_lib.write_json(os.path.join(config.out, "metrics.json"), metrics)
  print(f"test bits/dim {ev['bpd']:.3f} ± {ev['bpd_stderr']:.3f} on "
        f"{ev['examples']} images (eval NFE {ev['nfe']:.0f}), "
        f"{trained['steps']} steps, {trained['seconds']:.0f} s of training",
        flush=True)
  return metrics


def main(argv=None):
  config, strategy = cli.parse(ImagesConfig, __doc__, argv, PRESETS,
                               check=check)
  return run(config, strategy)


if __name__ == "__main__":
  main()
