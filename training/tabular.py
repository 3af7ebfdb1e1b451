"""Tabular density estimation (POWER, GAS, HEPMASS, MINIBOONE, BSDS300) with FFJORD.

    python -m training.tabular --data miniboone --data-root ../shared/data \
        --out runs/miniboone --time-budget 1200

One config dataclass per dataset holds the paper's hyperparameters (FFJORD,
appendix B.2, Table 4); every field is also a `--flag`. Training follows the
paper's schedule: Adam (lr 1e-3, L2 weight decay 1e-6) with Hutchinson's
trace, a validation pass every `val_every` steps, the learning rate divided
by 10 once more than patience/3 validations in a row brought no improvement
and by 100 after more than 2*patience/3, stop after more than `patience`.
The best model (lowest validation NLL) is kept in `best.npz`; `latest.npz`
(model, optimizer, counters) is written atomically so that rerunning the
same command after a kill resumes where it stopped without losing the best
model (a finished run only re-tests its best model). The test NLL is computed
with the exact trace at the test tolerance, and `metrics.json` holds
`test_nll`, its standard error, `nfe`, `seconds` (of training, summed over
resumes) and, for scale, the test NLL of a full-covariance Gaussian fit.
With `--export true` (the default) the best model is also written as a
SavedModel in `<out>/saved_model` (see `TabularFlow.export`).

`--strategy mirrored|multiworker` splits every global batch of `batch_size`
over the replicas (see `training.common`); validation and test run whole on
every worker, and under `multiworker` only the chief writes files.
"""

import dataclasses
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord import export as export_lib
from tf_ffjord.bijector import FFJORD, solve_stack
from tf_ffjord.datasets import tabular
from tf_ffjord.divergence import replica_seed
from tf_ffjord.dynamics import ODENet
from training import common

__all__ = ["TabularConfig", "PowerConfig", "GasConfig", "HepmassConfig",
           "MinibooneConfig", "Bsds300Config", "CONFIGS", "TabularFlow",
           "gaussian_nll", "train", "load_best", "main"]

_LOG_2PI = math.log(2 * math.pi)


@dataclasses.dataclass
class TabularConfig:
  """Fields shared by all tabular experiments (defaults: the paper's code).

  Model: `num_blocks` stacked CNFs, each an `ODENet` with `nhidden` layers of
  width `hdim_factor * D`, with a learned end time (init `time_length`).
  Solver: dopri5 at (rtol, atol) in training and validation, (test_rtol,
  test_atol) with the exact trace for the test NLL. `trace` (training) and
  `val_trace` are the paper's (Hutchinson; validation with fixed probes so
  that validations compare); the exact trace costs D gradient passes.
  Budget: `max_steps` and `time_budget` (seconds of training, summed over
  resumes; 0 = none) end training early; the best model is then tested.
  """
  data: str = "miniboone"
  data_root: str = "../shared/data"
  out: str = "runs/tabular"
  paper_nll: float = float("nan")
  # model
  hdim_factor: int = 20
  nhidden: int = 2
  num_blocks: int = 1
  activation: str = "softplus"
  layer: str = "concatsquash"
  time_length: float = 1.0
  train_time: bool = True
  noise: str = "gaussian"
  # solver
  solver: str = "dopri5"
  rtol: float = 1e-6
  atol: float = 1e-8
  test_rtol: float = 1e-6
  test_atol: float = 1e-8
  step_size: float = 0.25
  max_num_steps: int = 2000
  trace: str = "hutchinson"
  val_trace: str = "hutchinson"
  # optimization and schedule
  batch_size: int = 1000
  test_batch_size: int = 1000
  lr: float = 1e-3
  weight_decay: float = 1e-6
  val_every: int = 200
  patience: int = 30
  max_steps: int = 0
  time_budget: float = 0.0
  checkpoint_secs: float = 120.0
  max_val: int = 0
  max_test: int = 0
  seed: int = 0
  # BSDS300 patches (offline variant only)
  n_train: int = 1_000_000
  n_val: int = 50_000
  n_test: int = 250_000
  # output
  export: bool = True


@dataclasses.dataclass
class PowerConfig(TabularConfig):
  """POWER (D=6): tanh, 3 layers of 10*D, 5 blocks, batch 10000."""
  data: str = "power"
  paper_nll: float = -0.46
  hdim_factor: int = 10
  nhidden: int = 3
  num_blocks: int = 5
  activation: str = "tanh"
  batch_size: int = 10000


@dataclasses.dataclass
class GasConfig(TabularConfig):
  """GAS (D=8): tanh, 3 layers of 20*D, 5 blocks, batch 1000."""
  data: str = "gas"
  paper_nll: float = -8.59
  hdim_factor: int = 20
  nhidden: int = 3
  num_blocks: int = 5
  activation: str = "tanh"
  batch_size: int = 1000


@dataclasses.dataclass
class HepmassConfig(TabularConfig):
  """HEPMASS (D=21): softplus, 2 layers of 10*D, 10 blocks, batch 10000."""
  data: str = "hepmass"
  paper_nll: float = 14.92
  hdim_factor: int = 10
  nhidden: int = 2
  num_blocks: int = 10
  activation: str = "softplus"
  batch_size: int = 10000


@dataclasses.dataclass
class MinibooneConfig(TabularConfig):
  """MINIBOONE (D=43): softplus, 2 layers of 20*D, 1 block, batch 1000."""
  data: str = "miniboone"
  paper_nll: float = 10.43
  hdim_factor: int = 20
  nhidden: int = 2
  num_blocks: int = 1
  activation: str = "softplus"
  batch_size: int = 1000


@dataclasses.dataclass
class Bsds300Config(TabularConfig):
  """BSDS300 (D=63): softplus, 3 layers of 20*D, 2 blocks, batch 10000."""
  data: str = "bsds300"
  paper_nll: float = -157.40
  hdim_factor: int = 20
  nhidden: int = 3
  num_blocks: int = 2
  activation: str = "softplus"
  batch_size: int = 10000


CONFIGS = {"power": PowerConfig, "gas": GasConfig, "hepmass": HepmassConfig,
           "miniboone": MinibooneConfig, "bsds300": Bsds300Config}


# -- the model ---------------------------------------------------------------


class TabularFlow(keras.Model):
  """`num_blocks` FFJORD blocks on a standard-normal base.

  Each block has its own `ODENet` and learned end time; data pass through
  block 0 first on their way to the base. Three bijectors share each
  block's dynamics: training (`trace`), validation (`val_trace`) and test
  (exact trace at the test tolerance).

  Args:
    dim: data dimension D.
    config: a `TabularConfig`.
  """

  def __init__(self, dim, config, **kwargs):
    super().__init__(**kwargs)
    self.dim = int(dim)
    width = config.hdim_factor * self.dim
    self.nets = [ODENet(hidden=(width,) * config.nhidden, layer=config.layer,
                        activation=config.activation, dim=self.dim,
                        name=f"odenet_{i}") for i in range(config.num_blocks)]
    self.time_raw = []
    for i in range(config.num_blocks):
      if config.train_time:
        self.time_raw.append(self.add_weight(
            shape=(), name=f"time_raw_{i}",
            initializer=keras.initializers.Constant(
                math.log(math.expm1(config.time_length)))))  # softplus^-1
    common = dict(solver=config.solver, step_size=config.step_size,
                  max_num_steps=config.max_num_steps, noise=config.noise)

    def build(trace, rtol, atol):
      bijectors = []
      for i, net in enumerate(self.nets):
        if config.train_time:
          # Default argument binds this block's weight (not the loop's last).
          length = lambda w=self.time_raw[i]: tf.math.softplus(w.value)
        else:
          length = config.time_length
        bijectors.append(FFJORD(net, time_length=length, trace=trace,
                                rtol=rtol, atol=atol, **common))
      return bijectors

    self.train_bijectors = build(config.trace, config.rtol, config.atol)
    self.val_bijectors = build(config.val_trace, config.rtol, config.atol)
    self.test_bijectors = build("exact", config.test_rtol, config.test_atol)
    zeros = tf.zeros([1, self.dim])
    for net in self.nets:
      net(0.0, zeros)  # create the weights now, for checkpoints

  def log_prob(self, x, bijectors, seed=None):
    """(log p(x) per example, forward NFE summed over blocks).

    Args:
      x: `[batch, D]` data.
      bijectors: `train_bijectors`, `val_bijectors` or `test_bijectors`.
      seed: `[2]` int32 stateless seed of the Hutchinson probes, or None.
    """
    z, log_det, nfe = solve_stack(bijectors, x, "inverse", seed=seed)
    base = -0.5 * tf.reduce_sum(tf.square(z), -1) - 0.5 * self.dim * _LOG_2PI
    return base + log_det, nfe

  def end_times(self):
    return [float(tf.math.softplus(w.value)) for w in self.time_raw]

  def export(self, path, batch_size=None):
    """Writes a SavedModel that serves without tf_ffjord installed.

    The signatures of `tf_ffjord.export.export_flow` over the test blocks
    (exact trace at the test tolerance): `log_prob(x)`,
    `log_prob_hutchinson(x, seed)`, `sample(n, seed)`, `forward(z)`,
    `inverse(x)`, with `x` of shape `[batch, D]`.

    Returns:
      `path`.
    """
    return export_lib.export_flow(self.test_bijectors, (self.dim,), path,
                                  self.weights, batch_size=batch_size)


# -- checkpoints ---------------------------------------------------------------


def _save_npz(path, **arrays):
  """Writes an npz atomically (a kill leaves the old file or the new one)."""
  tmp = path + ".tmp.npz"
  np.savez(tmp, **arrays)
  os.replace(tmp, path)


def _weights(variables):
  return {f"w{i:04d}": v.numpy() for i, v in enumerate(variables)}


def _assign(variables, npz, what):
  values = [npz[f"w{i:04d}"] for i in range(len(variables))]
  for v, a in zip(variables, values):
    if tuple(v.shape) != a.shape:
      raise ValueError(f"The {what} checkpoint does not fit this config "
                       f"(variable {v.name}: {tuple(v.shape)} vs {a.shape}); "
                       "use another --out or the config it was made with.")
  for v, a in zip(variables, values):
    v.assign(a)


def _log(out, message, write=True):
  """Prints a timestamped line and (with `write`) appends it to log.txt."""
  line = f"[{time.strftime('%H:%M:%S')}] {message}"
  print(line, flush=True)
  if write:
    with open(os.path.join(out, "log.txt"), "a", encoding="utf-8") as f:
      f.write(line + "\n")


# -- training ------------------------------------------------------------------


def _load_data(config):
  kwargs = {}
  if config.data == "bsds300":
    kwargs = dict(n_train=config.n_train, n_val=config.n_val,
                  n_test=config.n_test, seed=config.seed)
  return tabular.load(config.data, config.data_root, **kwargs)


def _evaluate(fn, data, batch_size, seed):
  """Per-example log p over `data` in batches, and the mean NFE per batch."""
  logps, nfes = [], []
  for b, start in enumerate(range(0, data.shape[0], batch_size)):
    x = tf.constant(data[start:start + batch_size])
    s = tf.constant([seed, 1000 * b], tf.int32)
    logp, nfe = fn(x, s)
    logps.append(logp.numpy())
    nfes.append(int(nfe))
  return np.concatenate(logps), float(np.mean(nfes))


def gaussian_nll(train_x, test_x):
  """Test NLL (mean, standard error) of a full-covariance Gaussian MLE fit.

  The floor any flow should beat; MAF's tables list it as "Gaussian".
  """
  train_x = np.asarray(train_x, np.float64)
  mu = train_x.mean(0)
  chol = np.linalg.cholesky(np.cov(train_x, rowvar=False, bias=True))
  z = np.linalg.solve(chol, (np.asarray(test_x, np.float64) - mu).T).T
  nll = (0.5 * np.sum(z**2, 1) + np.log(np.diag(chol)).sum()
         + 0.5 * train_x.shape[1] * _LOG_2PI)
  return float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(nll.size))


def _lr_stage(bad, patience, stage):
  """The paper's schedule: lr/10 after > patience/3 bad validations in a row,
  lr/100 after > 2 patience/3; stages never go back."""
  if stage == 0 and bad > patience // 3:
    return 1
  if stage == 1 and bad > patience // 3 * 2:
    return 2
  return stage


def train(config):
  """Trains (or resumes) and tests one config; returns the metrics dict.

  Every step splits its global batch over the replicas of the current
  strategy; each replica's loss is its share of the global-batch mean
  (`tf.nn.compute_average_loss`), so the summed gradients are those of one
  device on the whole batch, and each replica draws its own Hutchinson
  probes.

  Args:
    config: a `TabularConfig`.

  Returns:
    The dict written to `<out>/metrics.json`.
  """
  strategy = tf.distribute.get_strategy()
  replicas = strategy.num_replicas_in_sync
  chief = common.is_chief(strategy)
  out = config.out
  os.makedirs(out, exist_ok=True)
  log = lambda message: _log(out, message, write=chief)
  # Seeds Python, NumPy, TensorFlow and Keras (the weights' initializers).
  keras.utils.set_random_seed(config.seed)
  splits = _load_data(config)
  train_x = splits.train
  val_x = splits.val[:config.max_val] if config.max_val else splits.val
  test_x = splits.test[:config.max_test] if config.max_test else splits.test
  dim = train_x.shape[1]
  if config.batch_size < replicas:
    raise ValueError(f"batch_size {config.batch_size} is the global batch and "
                     f"must be at least the {replicas} replicas.")
  log(f"{config.data}: D={dim}, train {train_x.shape[0]}, val "
      f"{val_x.shape[0]}, test {test_x.shape[0]} ({splits.source}), "
      f"{replicas} replica(s)")

  model = TabularFlow(dim, config)
  variables = model.trainable_variables
  optimizer = keras.optimizers.Adam(learning_rate=config.lr)
  optimizer.build(variables)
  wd = config.weight_decay

  def replica_step(x, global_batch):
    with tf.GradientTape() as tape:
      logp, nfe = model.log_prob(x, model.train_bijectors,
                                 seed=replica_seed())
      # This replica's share of the global-batch mean NLL: the optimizer
      # sums the replicas' gradients (once, after every replica's solves).
      loss = tf.nn.compute_average_loss(-logp, global_batch_size=global_batch)
    grads = tape.gradient(loss, variables)
    # Coupled L2 weight decay, as torch's Adam(weight_decay=...) does; each
    # replica adds its share of it to the summed gradient.
    grads = [g + (wd / replicas) * v.value for g, v in zip(grads, variables)]
    optimizer.apply_gradients(zip(grads, variables))
    nfe_backward = tf.add_n([b.nfe_backward.read_value()
                             for b in model.train_bijectors])
    return {"loss": loss, "nfe": nfe, "nfe_backward": nfe_backward}

  train_step = common.distributed_step(replica_step, {"loss": "SUM"},
                                       strategy)
  val_fn = tf.function(lambda x, s: model.log_prob(x, model.val_bijectors, s),
                       reduce_retracing=True)
  test_fn = tf.function(lambda x, s: model.log_prob(x, model.test_bijectors),
                        reduce_retracing=True)

  # -- resume ---------------------------------------------------------------
  latest_path = os.path.join(out, "latest.npz")
  best_path = os.path.join(out, "best.npz")
  state = dict(step=0, best_val=float("inf"), best_step=-1, bad=0, stage=0,
               seconds=0.0, done=False, history=[])
  if os.path.exists(latest_path):
    with np.load(latest_path) as f:
      state.update(json.loads(str(f["state"])))
      _assign(model.weights, {k[2:]: f[k] for k in f.files
                              if k.startswith("m_")}, "latest")
      _assign(optimizer.variables, {k[2:]: f[k] for k in f.files
                                    if k.startswith("o_")}, "latest")
    log(f"resumed at step {state['step']} (best val "
        f"{state['best_val']:.4f} at step {state['best_step']})")
  if os.path.exists(best_path):
    with np.load(best_path) as f:
      # best.npz may be newer than latest.npz (a kill between the two).
      if float(f["val_nll"]) < state["best_val"]:
        state["best_val"], state["best_step"] = (float(f["val_nll"]),
                                                 int(f["step"]))
  optimizer.learning_rate.assign(config.lr / 10 ** state["stage"])

  def save_latest():
    if not chief:
      return
    arrays = {"state": np.array(json.dumps(state))}
    arrays.update({"m_" + k: v for k, v in _weights(model.weights).items()})
    arrays.update({"o_" + k: v
                   for k, v in _weights(optimizer.variables).items()})
    _save_npz(latest_path, **arrays)

  # This run's best weights: the test uses them, so that no worker reads a
  # best.npz the chief may still be writing.
  best_weights = None

  def validate():
    nonlocal best_weights
    logp, nfe = _evaluate(val_fn, val_x, config.test_batch_size,
                          config.seed)
    val_nll = float(-logp.mean())
    improved = val_nll < state["best_val"]
    if improved:
      state["best_val"], state["best_step"], state["bad"] = (
          val_nll, state["step"], 0)
      best_weights = _weights(model.weights)
      if chief:
        _save_npz(best_path, val_nll=np.array(val_nll),
                  step=np.array(state["step"]), dim=np.array(dim),
                  **best_weights)
    else:
      state["bad"] += 1
    state["stage"] = _lr_stage(state["bad"], config.patience, state["stage"])
    optimizer.learning_rate.assign(config.lr / 10 ** state["stage"])
    state["history"].append(dict(step=state["step"], val_nll=val_nll,
                                 nfe=nfe, seconds=state["seconds"]))
    log(f"[val] step {state['step']} nll {val_nll:.4f} nfe {nfe:.0f} "
        f"best {state['best_val']:.4f} bad {state['bad']}/"
        f"{config.patience} lr {config.lr / 10 ** state['stage']:g}"
        f" T {['%.3f' % t for t in model.end_times()]}")
    save_latest()

  # -- the loop -------------------------------------------------------------
  n = train_x.shape[0]
  steps_per_epoch = max(1, -(-n // config.batch_size))
  if 0 < n % config.batch_size < replicas:
    steps_per_epoch -= 1  # a last batch smaller than the replicas is dropped
  last_save = time.time()
  last_val_step = state["step"]
  reason = "finished before"
  while not state["done"]:
    if state["bad"] > config.patience:
      reason = "early stopping"
      break
    if config.max_steps and state["step"] >= config.max_steps:
      reason = "max_steps"
      break
    # Each worker's own clock: stop together, when the first is over budget.
    if common.any_worker(config.time_budget
                         and state["seconds"] >= config.time_budget,
                         strategy=strategy)[0]:
      reason = "time budget"
      break
    epoch, pos = divmod(state["step"], steps_per_epoch)
    order = np.random.default_rng([config.seed, epoch]).permutation(n)
    idx = order[pos * config.batch_size:(pos + 1) * config.batch_size]
    t0 = time.time()
    logs = train_step(common.split_batch(train_x[idx], strategy),
                      tf.constant(len(idx), tf.int64))
    loss = float(logs["loss"])
    nfe, nfe_back = int(logs["nfe"]), int(logs["nfe_backward"])
    state["seconds"] += time.time() - t0
    state["step"] += 1
    state["train_nfe"], state["train_nfe_backward"] = nfe, nfe_back
    if not math.isfinite(loss):
      raise FloatingPointError(f"Training loss is {loss} at step "
                               f"{state['step']}.")
    if state["step"] % 10 == 0 or state["step"] == 1:
      log(f"step {state['step']} (epoch {epoch}) nll {loss:.4f} nfe "
          f"{nfe}+{nfe_back} {state['seconds']:.0f}s")
    if state["step"] % config.val_every == 0:
      validate()
      last_val_step, last_save = state["step"], time.time()
    elif time.time() - last_save > config.checkpoint_secs:
      save_latest()
      last_save = time.time()
  if not state["done"]:
    if state["step"] > last_val_step or not os.path.exists(best_path):
      validate()  # so that the last stretch of training can be the best
    state["done"] = True
    state["stop_reason"] = reason
    save_latest()
    log(f"training stopped ({reason}) at step {state['step']} after "
        f"{state['seconds']:.0f}s")

  # -- test -------------------------------------------------------------------
  if best_weights is None:  # the best is from before a resume
    with np.load(best_path) as f:
      best_weights = {k: f[k] for k in f.files if k.startswith("w")}
  _assign(model.weights, best_weights, "best")
  t0 = time.time()
  logp, test_nfe = _evaluate(test_fn, test_x, config.test_batch_size,
                             config.seed)
  test_seconds = time.time() - t0
  nll = -logp
  gauss, gauss_se = gaussian_nll(train_x, test_x)
  metrics = dict(
      data=config.data, source=splits.source,
      test_nll=float(nll.mean()),
      test_nll_stderr=float(nll.std(ddof=1) / math.sqrt(nll.size)),
      paper_nll=config.paper_nll,
      gaussian_test_nll=gauss, gaussian_test_nll_stderr=gauss_se,
      nfe=test_nfe, train_nfe=state.get("train_nfe"),
      train_nfe_backward=state.get("train_nfe_backward"),
      seconds=state["seconds"], test_seconds=test_seconds,
      steps=state["step"], best_step=state["best_step"],
      best_val_nll=state["best_val"], stop_reason=state.get("stop_reason"),
      end_times=model.end_times(), replicas=replicas,
      n_train=int(train_x.shape[0]), n_val=int(val_x.shape[0]),
      n_test=int(test_x.shape[0]), dim=dim,
      parameters=int(sum(np.prod(v.shape) for v in variables)),
      config=dataclasses.asdict(config))
  if config.export:  # every worker takes part (see on_every_worker)
    common.on_every_worker(model.export, os.path.join(out, "saved_model"),
                           strategy)
  if chief:
    common.write_json(os.path.join(out, "metrics.json"), metrics)
  log(f"[test] nll {metrics['test_nll']:.3f} +- "
      f"{metrics['test_nll_stderr']:.3f} (paper {config.paper_nll}, "
      f"Gaussian fit {gauss:.3f}) "
      f"nfe {test_nfe:.0f} in {test_seconds:.0f}s")
  return metrics


def load_best(out):
  """Rebuilds the model of a run directory with its best weights.

  Args:
    out: a run directory written by `main` (it holds `config.json`).

  Returns:
    `(model, config, val_nll, step)` of the best checkpoint.
  """
  with open(os.path.join(out, "config.json"), encoding="utf-8") as f:
    fields = json.load(f)
  config = CONFIGS[fields["data"]](**fields)
  with np.load(os.path.join(out, "best.npz")) as f:
    model = TabularFlow(int(f["dim"]), config)
    _assign(model.weights, {k: f[k] for k in f.files if k.startswith("w")},
            "best")
    return model, config, float(f["val_nll"]), int(f["step"])


# -- CLI -----------------------------------------------------------------------


def _parse(argv):
  """The config of `--data`'s dataset, with every field a flag (and --strategy)."""
  import argparse  # pylint: disable=import-outside-toplevel
  first = argparse.ArgumentParser(add_help=False)
  first.add_argument("--data", default="miniboone", choices=sorted(CONFIGS))
  known, _ = first.parse_known_args(argv)
  config_cls = CONFIGS[known.data]
  return common.config_from_args(
      config_cls, f"FFJORD on tabular data ({config_cls.__doc__})", argv)


def main(argv=None):
  config = _parse(argv)
  os.makedirs(config.out, exist_ok=True)
  if common.is_chief():
    common.write_json(os.path.join(config.out, "config.json"),
                      dataclasses.asdict(config))
  metrics = train(config)
  print(json.dumps({k: metrics[k] for k in
                    ("test_nll", "test_nll_stderr", "paper_nll", "nfe",
                     "seconds", "steps")}))
  return metrics


if __name__ == "__main__":
  main()
