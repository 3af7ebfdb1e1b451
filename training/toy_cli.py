"""The paper's 2-D toy densities: `python -m training.toy_cli --data 8gaussians`."""

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

__all__ = ["ToyConfig", "PRESETS", "build_model", "plot_density", "run",
           "main"]


@dataclasses.dataclass
class ToyConfig(cli.RunConfig, cli.SolverConfig, cli.EvalConfig):
  """One toy experiment: the paper's CNF, with quick-start training settings.

  The defaults train the paper's model (64-64-64 concatsquash tanh MLP,
  learned T from 0.5, maximum likelihood) to within 0.05 nats of 8gaussians'
  entropy in under 30 s of one CPU core: batch 256, the exact trace,
  dopri5 at 1e-3 in training (1e-5 in evaluation), Adam 1e-2 with cosine
  decay over 500 steps. `--preset paper` restores the paper code's settings.
  """
  data: str = cli.option("8gaussians", "toy density",
                         choices=choices.TOY_NAMES)
  out: str = cli.out_option("runs/toy/{data}",
                            "metrics.json, density.png, saved_model/",
                            names="{data}: the toy's name")
  lr: float = cli.option(1e-2, "Adam learning rate (the start of the cosine "
                         "decay)", positive=True)
  steps: int = cli.option(500, "training steps", positive=True)
  steps_per_epoch: int = cli.option(100, "steps between checkpoints",
                                    positive=True)
  batch_size: int = cli.option(256, "examples per training step (the global "
                               "batch under --strategy)", positive=True)
  eval_batch_size: int = cli.option(2000, "examples per evaluation batch",
                                    positive=True)
  dims: tuple = cli.option((64, 64, 64), "hidden widths of the dynamics MLP",
                           positive=True)
  layer: str = cli.option("concatsquash", "time-conditioned layer type",
                          choices=choices.LAYER_TYPES)
  activation: str = cli.option("tanh", "activation between layers",
                               choices=choices.ACTIVATIONS)
  rtol: float = cli.default(1e-3)
  atol: float = cli.default(1e-3)
  trace: str = cli.default("exact")
  time_length: float = cli.option(0.5, "integration time T (its initial "
                                  "value when learned)", positive=True)
  train_time: bool = cli.option(True, "learn T")
  lr_schedule: str = cli.option("cosine", "learning-rate schedule over the "
                                "run", choices=("constant", "cosine"))
  weight_decay: float = cli.option(1e-5, "decoupled weight decay (as AdamW: "
                                   "each step shrinks the weights by lr x "
                                   "decay)", low=0.0)
  test_size: int = cli.option(10000, "fresh samples of the test NLL",
                              positive=True)
  plot: bool = cli.option(True, "write density.png (needs matplotlib)")


def paper(config):
  """the paper code's toy settings: batch 100, 10,000 steps, exact trace"""
  del config
  return dict(steps=10000, batch_size=100, trace="exact", lr=1e-3,
              lr_schedule="constant", weight_decay=1e-5, solver="dopri5",
              rtol=1e-5, atol=1e-5, time_length=0.5, train_time=True)


PRESETS = {"paper": paper}


def build_model(config):
  """The compiled `FFJORDModel` of a `ToyConfig` (in the current strategy)."""
  from tf_ffjord import FFJORDModel, ODENet  # pylint: disable=g-import-not-at-top
  from tf_ffjord.model.objectives import FlowMatching, MaximumLikelihood  # pylint: disable=g-import-not-at-top
  environment.use_precision(config.precision)
  keras.utils.set_random_seed(config.seed)
  flow_matching = config.objective == "flow_matching"
  model = FFJORDModel(
      (2,), dynamics=ODENet(hidden=config.dims, layer=config.layer,
                            activation=config.activation, dim=2),
      time_length=config.time_length,
      train_time=config.train_time and not flow_matching,
      eval_options=config.eval_options(), **config.ffjord_options())
  lr = config.lr
  if config.lr_schedule == "cosine":
    lr = keras.optimizers.schedules.CosineDecay(config.lr, config.steps)
  objective = (FlowMatching(ot=config.ot) if flow_matching
               else MaximumLikelihood())
  model.compile(keras.optimizers.Adam(lr, weight_decay=config.weight_decay
                                      or None), objective=objective)
  return model


def plot_density(model, data, path, lim=4.0, grid=100, n_samples=10000,
                 seed=0):
  """Data samples, the model density on a grid and model samples, side by side.

  Returns:
    The grid integral of the model density over the plotted square (about 1
    when the mass lies inside it).
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  side = np.linspace(-lim, lim, grid, dtype=np.float32)
  xx, yy = np.meshgrid(side, side)
  pts = np.stack([xx.ravel(), yy.ravel()], 1)
  dens = np.concatenate([
      np.exp(model.log_prob(pts[i:i + 2500]).numpy())
      for i in range(0, len(pts), 2500)]).reshape(grid, grid)
  mass = float(dens.sum() * (side[1] - side[0]) ** 2)
  samples = model.sample(n_samples, seed=seed).numpy()
  fig, axes = plt.subplots(1, 3, figsize=(12, 4))
  kw = dict(bins=grid, range=[[-lim, lim], [-lim, lim]], cmap="inferno")
  axes[0].hist2d(data[:, 0], data[:, 1], **kw)
  axes[0].set_title("data")
  axes[1].imshow(dens, origin="lower", extent=[-lim, lim, -lim, lim],
                 cmap="inferno")
  axes[1].set_title(f"model density (mass {mass:.3f})")
  axes[2].hist2d(samples[:, 0], samples[:, 1], **kw)
  axes[2].set_title("model samples")
  for ax in axes:
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_aspect("equal")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return mass


def run(config, strategy=None):
  """Trains (resuming from `config.out`), evaluates, plots and exports.

  Returns:
    The metrics dict, also written to `<out>/metrics.json` (under
    `multiworker` only the chief writes files).
  """
  from tf_ffjord.datasets import batches, toy  # pylint: disable=g-import-not-at-top
  from training import run as run_lib, summaries  # pylint: disable=g-import-not-at-top
  strategy = strategy or tf.distribute.get_strategy()
  chief = run_lib.is_chief(strategy)
  run_folders.claim(config, write=chief)
  with strategy.scope():
    model = build_model(config)
  sample = lambda n, seed: toy.sample(config.data, n, seed=seed)
  trained = run_lib.fit(
      model, lambda start: batches.sampled_batches(
          sample, config.batch_size, config.seed, start),
      config.out, config.steps, config.steps_per_epoch,
      time_budget=config.time_budget,
      observers=summaries.callbacks(config.tensorboard, chief))
  test = toy.sample(config.data, config.test_size, seed=config.seed + 10_000)
  ev = run_lib.evaluate(model, test, config.eval_batch_size, config.seed)
  curve = run_lib.read_curve(config.out)
  metrics = {
      "data": config.data, "test_nll": ev["nll"],
      "test_nll_stderr": ev["nll_stderr"], "eval_nfe": ev["nfe"],
      "eval_seconds": ev["seconds"], "eval_options": ev["eval_options"],
      "seconds": trained["seconds"],
      "steps": trained["steps"], "stop_reason": trained["stop_reason"],
      "end_times": model.end_times, "config": dataclasses.asdict(config)}
  for key in ("nfe", "nfe_backward", "fm_loss"):
    if curve and key in curve[-1]:
      metrics[key] = curve[-1][key]
  try:
    metrics["entropy"] = toy.entropy(config.data)
    metrics["above_entropy"] = ev["nll"] - metrics["entropy"]
  except NotImplementedError:
    pass
  if config.plot and chief:
    metrics["grid_mass"] = plot_density(
        model, test, os.path.join(config.out, "density.png"))
    if config.tensorboard:
      summaries.write_png(config.tensorboard, "density",
                            os.path.join(config.out, "density.png"),
                            trained["steps"])
  if config.export:  # every worker takes part (see on_every_worker)
    run_lib.on_every_worker(model.export,
                            os.path.join(config.out, "saved_model"), strategy)
  if chief:
    run_lib.write_json(os.path.join(config.out, "metrics.json"), metrics)
  return metrics


def main(argv=None):
  config, strategy = cli.parse(ToyConfig, __doc__, argv, PRESETS)
  metrics = run(config, strategy)
  print(f"test NLL {metrics['test_nll']:.3f} ± {metrics['test_nll_stderr']:.3f}"
        f" nats (entropy {metrics.get('entropy', float('nan')):.3f}), "
        f"{metrics['steps']} steps, {metrics['seconds']:.0f} s of training "
        f"-> {config.out}")
  return metrics


if __name__ == "__main__":
  main()
