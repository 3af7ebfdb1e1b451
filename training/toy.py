"""The paper's 2-D toy densities: `python -m training.toy --data 8gaussians`."""

import dataclasses
import math
import os

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord import FFJORDModel, ODENet
from tf_ffjord.datasets import toy
from training import common

__all__ = ["ToyConfig", "build_model", "test_nll", "plot_density", "run",
           "main"]


@dataclasses.dataclass
class ToyConfig:
  """One toy experiment. Defaults follow the paper's toy setup."""
  data: str = "8gaussians"
  iters: int = 1000
  batch_size: int = 100
  dims: tuple = (64, 64, 64)
  layer: str = "concatsquash"
  activation: str = "tanh"
  solver: str = "dopri5"
  rtol: float = 1e-5
  atol: float = 1e-5
  trace: str = "hutchinson"
  noise: str = "rademacher"
  time_length: float = 0.5
  train_time: bool = True
  lr: float = 1e-3
  lr_schedule: str = "constant"  # as the paper; or "cosine"
  weight_decay: float = 1e-5
  test_size: int = 10000
  steps_per_epoch: int = 100
  seed: int = 0
  out: str = "runs/toy"
  plot: bool = True
  export: bool = True


def build_model(config):
  """The FFJORDModel of a `ToyConfig`, compiled with Adam."""
  keras.utils.set_random_seed(config.seed)
  dynamics = ODENet(hidden=config.dims, layer=config.layer,
                    activation=config.activation, dim=2)
  model = FFJORDModel(
      (2,), dynamics=dynamics, time_length=config.time_length,
      train_time=config.train_time, trace=config.trace, noise=config.noise,
      solver=config.solver, rtol=config.rtol, atol=config.atol,
      eval_trace="exact")
  if config.lr_schedule == "cosine":
    lr = keras.optimizers.schedules.CosineDecay(config.lr, config.iters)
  elif config.lr_schedule == "constant":
    lr = config.lr
  else:
    raise ValueError(f"Unknown lr_schedule {config.lr_schedule!r}; expected "
                     "'cosine' or 'constant'.")
  model.compile(keras.optimizers.Adam(lr, weight_decay=config.weight_decay))
  return model


def test_nll(model, x, batch_size=2000):
  """Mean NLL (nats, exact trace) and its standard error over `x`."""
  logp = np.concatenate([
      model.log_prob(x[i:i + batch_size], exact=True).numpy()
      for i in range(0, len(x), batch_size)])
  return float(-logp.mean()), float(logp.std() / math.sqrt(len(logp)))


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
      np.exp(model.log_prob(pts[i:i + 2500], exact=True).numpy())
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


def run(config):
  """Trains, evaluates, plots and exports; returns the metrics dict.

  Under `multiworker` only the chief writes the plot, the metrics and the
  SavedModel.
  """
  os.makedirs(config.out, exist_ok=True)
  timer = common.Timer()
  model = build_model(config)
  train = toy.sample(config.data, config.iters * config.batch_size,
                     seed=config.seed)
  history = common.resumable_fit(
      model, train, config.out, config.iters,
      steps_per_epoch=config.steps_per_epoch, batch_size=config.batch_size)
  train_seconds = timer.seconds
  test = toy.sample(config.data, config.test_size, seed=config.seed + 10_000)
  nll, stderr = test_nll(model, test)
  metrics = {
      "data": config.data,
      "test_nll": nll,
      "test_nll_stderr": stderr,
      "nfe": float(history.history["nfe"][-1]),
      "nfe_backward": float(history.history["nfe_backward"][-1]),
      "iters": config.iters,
      "seconds": train_seconds,
      "time_length": float(model.bijector.time_length),
      "config": dataclasses.asdict(config),
  }
  try:
    metrics["entropy"] = toy.entropy(config.data)
  except NotImplementedError:
    pass
  chief = common.is_chief()  # under multiworker only the chief writes files
  if config.plot and chief:
    metrics["grid_mass"] = plot_density(
        model, test, os.path.join(config.out, "density.png"))
  if config.export:  # every worker takes part (see on_every_worker)
    common.on_every_worker(model.export,
                           os.path.join(config.out, "saved_model"))
  if chief:
    common.write_json(os.path.join(config.out, "metrics.json"), metrics)
  return metrics


def main(argv=None):
  config = common.config_from_args(ToyConfig, __doc__, argv)
  metrics = run(config)
  print(f"test NLL {metrics['test_nll']:.3f} ± {metrics['test_nll_stderr']:.3f}"
        f" nats (entropy {metrics.get('entropy', float('nan')):.3f}), "
        f"NFE {metrics['nfe']:.0f}, {metrics['seconds']:.0f} s -> {config.out}")


if __name__ == "__main__":
  main()
