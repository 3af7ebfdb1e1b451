"""Time to a target test NLL: FFJORD, FFJORD + RNODE, flow matching (+ OT).

For each dataset and method, trains the same dynamics network from the same
initialization with Adam and evaluates the test NLL every `eval_every`
seconds of training. Every evaluation integrates the learned field with
Dormand-Prince at rtol = atol = 1e-5 and the exact trace, whatever the method
trained with, and reports its NFE. Methods:

- `ffjord`: maximum likelihood, Dormand-Prince at 1e-5, Hutchinson trace,
  adjoint gradients (the FFJORD paper's setup);
- `rnode`: maximum likelihood + kinetic and Jacobian-Frobenius penalties,
  both weighted 0.01, fixed-step RK4 at step 0.25 with backprop (Finlay et
  al. 2020's recipe);
- `fm`: conditional flow matching along straight paths, no ODE solve;
- `fm_ot`: the same with exact minibatch optimal-transport pairing.

Datasets: `8gaussians` and `checkerboard` (targets: the data entropy + a
margin), and `miniboone` (43 dims, MAF's preprocessing; the offline copy has
no train split, so it trains on the validation split and tests on the test
split, as `tf_ffjord.datasets.tabular` does).

Time to target counts training steps only: the first step (graph tracing)
is reported apart, evaluations are excluded. It is measured as wall time and
as process CPU time; the latter is steadier on a shared machine. The time
resolution is `eval_every`. Writes JSON and prints a markdown table.

#### Examples

```
python -m benchmarks.training_time                      # ~20 min
python -m benchmarks.training_time --budget 20 --datasets 8gaussians
python -m benchmarks.training_time --methods fm,fm_ot --out /tmp/t.json
```
"""

import argparse
import dataclasses
import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf

from benchmarks import DATA_DIR
from tf_ffjord import FFJORDModel, ODENet
from tf_ffjord.datasets import batches, toy
from tf_ffjord.model.objectives import FlowMatching, MaximumLikelihood

__all__ = ["Config", "METHODS", "TestNLLEvery", "run", "main"]

METHODS = ("ffjord", "rnode", "fm", "fm_ot")
DATASETS = ("8gaussians", "checkerboard", "miniboone")


@dataclasses.dataclass
class Config:
  """Benchmark settings (the CLI flags map onto these fields).

  Attributes:
    datasets: datasets to run.
    methods: methods to run (see `METHODS`).
    budget: training seconds (wall) per run.
    eval_every: training seconds between evaluations.
    batch_size: training batch.
    n_test: test points per evaluation.
    lr: Adam learning rate.
    margin: toy target = data entropy + margin (nats).
    miniboone_target: target test NLL on MINIBOONE (nats).
    seed: seed of the data, the initialization and the training.
    out: JSON output path.
  """
  datasets: tuple = DATASETS
  methods: tuple = METHODS
  budget: float = 60.0
  eval_every: float = 10.0
  batch_size: int = 256
  n_test: int = 1000
  lr: float = 1e-3
  margin: float = 0.5
  miniboone_target: float = 35.0
  seed: int = 0
  out: str = "benchmarks/results/training_time.json"


def _method(method):
  """(FFJORDModel solver kwargs, training objective) of a method."""
  if method == "ffjord":
    return dict(solver="dopri5", rtol=1e-5, atol=1e-5), MaximumLikelihood()
  if method == "rnode":
    return (dict(solver="rk4", step_size=0.25, gradient="backprop"),
            MaximumLikelihood({"kinetic": 0.01, "jacobian": 0.01}))
  if method == "fm":
    return {}, FlowMatching()
  if method == "fm_ot":
    return {}, FlowMatching(ot=True)
  raise ValueError(f"Unknown method {method!r}; expected one of {METHODS}.")


def load(name, n_test, seed):
  """(train, test, dynamics kwargs, target-free entropy or None)."""
  if name in toy.NAMES:
    train = toy.sample(name, 200_000, seed=seed).astype("f4")
    test = toy.sample(name, n_test, seed=seed + 1).astype("f4")
    return train, test, dict(hidden=(64, 64, 64)), toy.entropy(name)
  if name == "miniboone":
    paths = [os.path.join(DATA_DIR, "miniboone", f"{s}.npy")
             for s in ("val", "test")]
    for p in paths:
      if not os.path.exists(p):
        raise FileNotFoundError(f"MINIBOONE file not found: {p} (set "
                                "TF_FFJORD_DATA to the data folder).")
    train, test = (np.load(p).astype("f4") for p in paths)
    rng = np.random.default_rng(seed)
    test = test[rng.permutation(len(test))[:n_test]]
    return train, test, dict(hidden=(256, 256), activation="softplus"), None
  raise ValueError(f"Unknown dataset {name!r}.")


class TestNLLEvery(keras.callbacks.Callback):
  """Times the training steps of `fit` and tests the model every N seconds.

  Training time counts the steps only, as wall and process CPU time: the
  first step, which traces the graph, is timed apart and not counted, and
  the evaluations are excluded. Before the first step and every `every`
  seconds of training, the test NLL is the exact likelihood by the model's
  evaluation flow. Stops `fit` at the target, at the budget, or on a
  non-finite NLL.

  Args:
    test: the test array.
    target: the test NLL (nats) to reach.
    every: training seconds between evaluations.
    budget: training seconds in all.
    label: prefix of the printed lines.
  """

  def __init__(self, test, target, every, budget, label=""):
    super().__init__()
    self.test, self.target = test, target
    self.every, self.budget, self.label = every, budget, label
    self.wall = self.cpu = 0.0
    self.steps, self.next_eval, self.first_step = 0, 0.0, None
    self.curve, self.reached = [], None
    self._start = None

  def _evaluate(self):
    """Appends a test point to the curve; returns whether to stop."""
    logp, nfe = self.model.log_prob(self.test, return_nfe=True)
    nll = float(-tf.reduce_mean(logp))
    row = dict(step=self.steps, wall=self.wall, cpu=self.cpu, nll=nll,
               nfe=float(nfe))
    self.curve.append(row)
    print(f"  {self.label} step {self.steps:5d}  train {self.wall:6.1f}s "
          f"(cpu {self.cpu:6.1f}s)  test nll {nll:7.3f}  eval nfe "
          f"{float(nfe):4.0f}", flush=True)
    if self.reached is None and nll <= self.target:
      self.reached = row
    return self.reached is not None or not np.isfinite(nll)

  def on_train_begin(self, logs=None):
    if self._evaluate():
      self.model.stop_training = True
    self.next_eval = self.every

  def on_train_batch_begin(self, batch, logs=None):
    self._start = time.perf_counter(), time.process_time()

  def on_train_batch_end(self, batch, logs=None):
    float(next(iter(logs.values())))  # wait for the step to finish
    wall = time.perf_counter() - self._start[0]
    cpu = time.process_time() - self._start[1]
    self.steps += 1
    if self.first_step is None:  # tracing: reported apart, not counted
      self.first_step = wall
      return
    self.wall += wall
    self.cpu += cpu
    if self.wall >= self.next_eval or self.wall >= self.budget:
      done = self._evaluate()
      self.next_eval = self.wall + self.every
      if done or self.wall >= self.budget:
        self.model.stop_training = True


def run_one(cfg, name, method, train, test, net_kwargs, target):
  """Trains one method on one dataset with Keras `fit`; returns a result dict."""
  keras.utils.set_random_seed(cfg.seed)
  dim = train.shape[1]
  solve_kwargs, objective = _method(method)
  # Every method is tested alike: Dormand-Prince at 1e-5, the exact trace.
  model = FFJORDModel(
      (dim,), dynamics=ODENet(dim=dim, **net_kwargs), max_num_steps=2000,
      eval_options=dict(solver="dopri5", rtol=1e-5, atol=1e-5,
                        trace="exact"), **solve_kwargs)
  model.compile(keras.optimizers.Adam(cfg.lr), objective=objective,
                jit_compile=False)
  timer = TestNLLEvery(test, target, cfg.eval_every, cfg.budget,
                       label=f"{name:12s} {method:7s}")
  try:
    # One endless epoch of shuffled batches; the callback ends it.
    model.fit(batches.epoch_batches(train, cfg.batch_size, cfg.seed),
              epochs=1, steps_per_epoch=2**31 - 1, callbacks=[timer],
              verbose=0)
  except tf.errors.InvalidArgumentError as e:  # max_num_steps exceeded
    print(f"  {name} {method}: solve failed ({e.message.splitlines()[0]})")
  curve, reached = timer.curve, timer.reached
  last = curve[-1]
  return dict(dataset=name, method=method, target=target,
              reached=reached is not None,
              wall_to_target=reached["wall"] if reached else None,
              cpu_to_target=reached["cpu"] if reached else None,
              steps_to_target=reached["step"] if reached else None,
              final_nll=last["nll"], best_nll=min(c["nll"] for c in curve),
              eval_nfe=last["nfe"], steps=timer.steps,
              train_wall=timer.wall, train_cpu=timer.cpu,
              first_step_wall=timer.first_step,
              step_wall=timer.wall / max(timer.steps - 1, 1), curve=curve)


def run(cfg):
  """Runs every (dataset, method) pair; returns the list of results."""
  results = []
  for name in cfg.datasets:
    train, test, net_kwargs, entropy = load(name, cfg.n_test, cfg.seed)
    target = (entropy + cfg.margin if entropy is not None
              else cfg.miniboone_target)
    print(f"{name}: train {train.shape}, test {test.shape}, target NLL "
          f"{target:.3f}" + (f" (entropy {entropy:.3f})" if entropy else ""),
          flush=True)
    for method in cfg.methods:
      results.append(run_one(cfg, name, method, train, test, net_kwargs,
                             target))
  return results


def table(results):
  """A markdown table of the results."""
  rows = ["| dataset | method | target NLL | time to target (s) | CPU s to "
          "target | steps | ms/step | first step (s) | final test NLL | "
          "eval NFE |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    if r["reached"]:
      wall = f"{r['wall_to_target']:.1f}"
      cpu = f"{r['cpu_to_target']:.0f}"
      steps = str(r["steps_to_target"])
    else:
      wall = f"not in {r['train_wall']:.0f}"
      cpu = "-"
      steps = f"({r['steps']})"
    rows.append(f"| {r['dataset']} | {r['method']} | {r['target']:.2f} | "
                f"{wall} | {cpu} | {steps} | {1e3 * r['step_wall']:.0f} | "
                f"{r['first_step_wall'] or 0:.0f} | {r['final_nll']:.3f} | "
                f"{r['eval_nfe']:.0f} |")
  return "\n".join(rows)


def main(argv=None):
  cfg = Config()
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--datasets", default=",".join(cfg.datasets))
  parser.add_argument("--methods", default=",".join(cfg.methods))
  for field in ("budget", "eval_every", "lr", "margin", "miniboone_target"):
    parser.add_argument("--" + field.replace("_", "-"), type=float,
                        default=getattr(cfg, field))
  for field in ("batch_size", "n_test", "seed"):
    parser.add_argument("--" + field.replace("_", "-"), type=int,
                        default=getattr(cfg, field))
  parser.add_argument("--out", default=cfg.out)
  args = vars(parser.parse_args(argv))
  args["datasets"] = tuple(s for s in args["datasets"].split(",") if s)
  args["methods"] = tuple(s for s in args["methods"].split(",") if s)
  for m in args["methods"]:
    _method(m)  # fail early on a typo
  cfg = Config(**args)
  start = time.time()
  results = run(cfg)
  print()
  print(table(results))
  if cfg.out:
    os.makedirs(os.path.dirname(os.path.abspath(cfg.out)), exist_ok=True)
    with open(cfg.out, "w") as f:
      json.dump(dict(config=dataclasses.asdict(cfg), results=results,
                     total_seconds=time.time() - start,
                     machine=dict(platform=platform.platform(),
                                  cpus=os.cpu_count(),
                                  tensorflow=tf.__version__)), f, indent=1)
    print(f"\nwrote {cfg.out}")


if __name__ == "__main__":
  main()
