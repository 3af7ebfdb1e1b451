"""Tabular density estimation (POWER, GAS, HEPMASS, MINIBOONE, BSDS300): `python -m training.tabular_cli --data miniboone`.

    python -m training.tabular_cli --data miniboone --data-root ../shared/data \
        --time-budget 1200
    python -m training.tabular_cli --data miniboone --objective flow_matching

The defaults of each data set are the FFJORD paper's (appendix B.2, Table
4): `num_blocks` FFJORD blocks, each an `ODENet` of `nhidden` layers of width
`hdim_factor * D` with a learned end time, trained by maximum likelihood with
Hutchinson's trace and Dormand-Prince. Every `--steps-per-epoch` steps the
run validates, checkpoints (model, optimizer, schedule) and appends a row to
`<out>/curve.csv`; the schedule is Keras': `ReduceLROnPlateau` divides the
learning rate by 10 after `patience // 3` validations without improvement
(the paper's lr/10, then lr/100), and `EarlyStopping` stops after `patience`
of them and restores the best weights. Validation and the test NLL use the
evaluation flow: by default the exact trace and Dormand-Prince at
`--eval-rtol`, `--eval-atol` (`--eval-solver`, `--eval-trace`). A rerun of the same command resumes after a crash or `kill
-9`; a finished run only evaluates again.

`--objective flow_matching` regresses the field of a single block over a
fixed interval [0, `time_length`]: it needs `--num-blocks 1` and does not
learn the end time (`--train-time` is ignored). Its test NLL is the same
exact-likelihood evaluation. `--weight-decay` is decoupled (AdamW-style),
whereas the paper's 1e-6 was a coupled L2 penalty.

Writes `<out>/metrics.json` (test NLL and standard error, the paper's figure,
a full-covariance Gaussian baseline, NFE, seconds, stop reason, ...) and,
with `--export true`, the final (best) model as a SavedModel that serves
without tf_ffjord in `<out>/saved_model`. Under `--strategy` Keras splits
each global batch over the replicas (--batch-size must be a multiple of
them, and validation drops the last rows of the split, fewer than the
replicas, so that every batch splits evenly); under `multiworker` only the
chief writes files.
"""

import dataclasses
import math
import os
import sys

import numpy as np

from training import choices, environment, run_folders
from training import command_line as cli

# Parsing the flags and --help import neither TensorFlow nor tf_ffjord:
# keras and tf load at first use, tf_ffjord and training.run in the
# functions that use them.
keras = cli.lazy("keras")
tf = cli.lazy("tensorflow")

__all__ = ["TabularConfig", "DATA_DEFAULTS", "PAPER_NLL", "PRESETS", "check",
           "load_splits", "whitening", "build_model", "gaussian_nll", "run",
           "main"]

# The paper's per-data-set architecture and batch (appendix B.2).
DATA_DEFAULTS = {
    "power": dict(activation="tanh", hdim_factor=10, nhidden=3, num_blocks=5,
                  batch_size=10000),
    "gas": dict(activation="tanh", hdim_factor=20, nhidden=3, num_blocks=5,
                batch_size=1000),
    "hepmass": dict(activation="softplus", hdim_factor=10, nhidden=2,
                    num_blocks=10, batch_size=10000),
    "miniboone": dict(activation="softplus", hdim_factor=20, nhidden=2,
                      num_blocks=1, batch_size=1000),
    "bsds300": dict(activation="softplus", hdim_factor=20, nhidden=3,
                    num_blocks=2, batch_size=10000),
}
# The paper's test NLL in nats (FFJORD, Table 2).
PAPER_NLL = {"power": -0.46, "gas": -8.59, "hepmass": 14.92,
             "miniboone": 10.43, "bsds300": -157.40}


@dataclasses.dataclass
class TabularConfig(cli.RunConfig, cli.SolverConfig, cli.EvalConfig):
  """One tabular experiment; the per-data-set defaults are `DATA_DEFAULTS`."""
  data: str = cli.option("miniboone", "tabular data set (MAF's "
                         "preprocessing); also picks the paper's model and "
                         "batch for it", choices=choices.TABULAR_NAMES)
  out: str = cli.out_option("runs/tabular/{data}",
                            "curve.csv, metrics.json, saved_model/")
  batch_size: int = cli.option(1000, "examples per training step (the global "
                               "batch under --strategy)", positive=True)
  weight_decay: float = cli.option(1e-6, "decoupled weight decay (as AdamW: "
                                   "each step shrinks the weights by lr x "
                                   "decay)", low=0.0)
  # schedule
  steps: int = cli.option(1_000_000, "training steps at most (early "
                          "stopping or --time-budget usually end the run "
                          "first)", positive=True)
  steps_per_epoch: int = cli.option(200, "steps between validations, "
                                    "checkpoints and curve rows",
                                    positive=True)
  patience: int = cli.option(30, "stop after this many validations without "
                             "a new best (the best weights are restored); "
                             "the learning rate drops by 10 after every "
                             "patience/3 of them, down to lr/100",
                             positive=True)
  max_val: int = cli.option(0, "validate on the first this many validation "
                            "examples (0: all)", low=0)
  max_test: int = cli.option(0, "test on the first this many test examples "
                             "(0: all)", low=0)
  # model
  hdim_factor: int = cli.option(20, "hidden width of the dynamics, in "
                                "multiples of the data dimension D",
                                positive=True)
  nhidden: int = cli.option(2, "hidden layers of each block's dynamics",
                            positive=True)
  num_blocks: int = cli.option(1, "stacked FFJORD blocks, each with its own "
                               "dynamics and end time", positive=True)
  layer: str = cli.option("concatsquash", "time-conditioned layer type of "
                          "the dynamics", choices=choices.LAYER_TYPES)
  activation: str = cli.option("softplus", "activation between layers",
                               choices=choices.ACTIVATIONS)
  time_length: float = cli.option(1.0, "integration time T of each block "
                                  "(its initial value when learned)",
                                  positive=True)
  train_time: bool = cli.option(True, "learn each block's end time T "
                                "(maximum likelihood only: flow matching "
                                "keeps T fixed)")
  # training solves (the shared SolverConfig flags)
  rtol: float = cli.default(1e-6)
  atol: float = cli.default(1e-8)
  max_num_steps: int = cli.default(2000)
  noise: str = cli.default("gaussian")
  lr_schedule: str = cli.option("plateau", "learning rate over the run: the "
                                "paper's /10 on validation plateaus, or a "
                                "cosine decay over --steps",
                                choices=("plateau", "cosine"))
  whiten: bool = cli.option(False, "a fixed whitening of the data (training "
                            "mean and covariance) before the blocks; its "
                            "log-det is part of the density")
  # BSDS300 patches cut from bsds300_gray.npz (MAF's hdf5 file has its own)
  n_train: int = cli.option(1_000_000, "BSDS300 from images only: training "
                            "patches", positive=True)
  n_val: int = cli.option(50_000, "BSDS300 from images only: validation "
                          "patches", positive=True)
  n_test: int = cli.option(250_000, "BSDS300 from images only: test patches",
                           positive=True)


def fm(config):
  """the CPU recipe measured for issue 14: flow matching of one block (MINIBOONE 256-256; BSDS300 whitened, 504-504), Adam 1e-3 with cosine decay, early stopping"""
  recipe = dict(objective="flow_matching", num_blocks=1, nhidden=2,
                train_time=False, activation="softplus", lr=1e-3,
                lr_schedule="cosine", weight_decay=0.0, patience=5)
  if config.data == "bsds300":
    return {**recipe, "whiten": True, "hdim_factor": 8, "batch_size": 512,
            "steps": 82_000, "steps_per_epoch": 4000, "time_budget": 1500,
            "max_val": 2000, "max_test": 10_000, "n_val": 10_000,
            "n_test": 10_000}
  dim = choices.TABULAR_DIMS.get(config.data, 43)
  return {**recipe, "hdim_factor": max(1, round(256 / dim)),
          "batch_size": 256, "steps": 75_000,
          "steps_per_epoch": 5000, "time_budget": 400}


PRESETS = {"fm": fm}


def check(config):
  """The reason a combination of flags cannot run, or None."""
  if config.objective == "flow_matching" and config.num_blocks != 1:
    return (f"--objective flow_matching trains a single FFJORD block; pass "
            f"--num-blocks 1 (got {config.num_blocks}, {config.data}'s "
            "default or yours), or train by likelihood")
  if config.ot and config.objective != "flow_matching":
    return "--ot true applies to --objective flow_matching only"
  return None


def load_splits(config):
  """The data set's `Splits`, with validation and test cut to --max-val/test."""
  from tf_ffjord.datasets import tabular  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if config.data == "bsds300":
    kwargs = dict(n_train=config.n_train, n_val=config.n_val,
                  n_test=config.n_test, seed=config.seed)
  splits = tabular.load(config.data, config.data_root, **kwargs)
  return splits._replace(val=splits.val[:config.max_val or None],
                         test=splits.test[:config.max_test or None])


def whitening(train_x):
  """(mean, Cholesky factor of the covariance) of the training data."""
  train_x = np.asarray(train_x, np.float64)
  return (train_x.mean(0),
          np.linalg.cholesky(np.cov(train_x, rowvar=False, bias=True)))


def build_model(config, dim, whitening=None):
  """The compiled `FFJORDModel` of a config on D = `dim` (in the strategy).

  `whitening` is `(mean, scale_tril)` of the data when `config.whiten`.
  """
  from tf_ffjord import FFJORDModel, ODENet  # pylint: disable=g-import-not-at-top
  from tf_ffjord.model.objectives import FlowMatching, MaximumLikelihood  # pylint: disable=g-import-not-at-top
  environment.use_precision(config.precision)
  keras.utils.set_random_seed(config.seed)
  flow_matching = config.objective == "flow_matching"
  width = config.hdim_factor * dim
  nets = [ODENet(hidden=(width,) * config.nhidden, layer=config.layer,
                 activation=config.activation, dim=dim, name=f"odenet_{i}")
          for i in range(config.num_blocks)]
  model = FFJORDModel(
      (dim,), dynamics=nets, time_length=config.time_length,
      whitening=whitening,
      train_time=config.train_time and not flow_matching,
      eval_options=config.eval_options(), **config.ffjord_options())
  objective = (FlowMatching(ot=config.ot) if flow_matching
               else MaximumLikelihood())
  lr = config.lr
  if config.lr_schedule == "cosine":
    lr = keras.optimizers.schedules.CosineDecay(config.lr, config.steps)
  model.compile(keras.optimizers.Adam(lr, weight_decay=config.weight_decay
                                      or None), objective=objective)
  return model


def gaussian_nll(train_x, test_x):
  """Test NLL (mean, standard error) of a full-covariance Gaussian MLE fit.

  The floor any flow should beat; MAF's tables list it as "Gaussian".
  """
  train_x = np.asarray(train_x, np.float64)
  mu = train_x.mean(0)
  chol = np.linalg.cholesky(np.cov(train_x, rowvar=False, bias=True))
  z = np.linalg.solve(chol, (np.asarray(test_x, np.float64) - mu).T).T
  nll = (0.5 * np.sum(z**2, 1) + np.log(np.diag(chol)).sum()
         + 0.5 * train_x.shape[1] * math.log(2 * math.pi))
  return float(nll.mean()), float(nll.std(ddof=1) / math.sqrt(nll.size))


def _schedule(config):
  """The paper's schedule as Keras callbacks, on the validation NLL (with a
  cosine decay, early stopping only)."""
  stop = keras.callbacks.EarlyStopping(monitor="val_nll",
                                       patience=config.patience,
                                       restore_best_weights=True)
  if config.lr_schedule == "cosine":
    return [stop]
  return [keras.callbacks.ReduceLROnPlateau(
      monitor="val_nll", factor=0.1,
      patience=max(1, config.patience // 3), min_lr=config.lr / 100), stop]


def run(config, strategy=None):
  """Trains (resuming from `config.out`), tests and exports one config.

  Returns:
    The metrics dict, also written to `<out>/metrics.json`.
  """
  from tf_ffjord.datasets import batches  # pylint: disable=g-import-not-at-top
  from training import run as run_lib, summaries  # pylint: disable=g-import-not-at-top
  strategy = strategy or tf.distribute.get_strategy()
  run_folders.claim(config, write=run_lib.is_chief(strategy))
  splits = load_splits(config)
  dim = splits.train.shape[1]
  print(f"{config.data}: D={dim}, train/val/test {len(splits.train)}/"
        f"{len(splits.val)}/{len(splits.test)} ({splits.source}), "
        f"{strategy.num_replicas_in_sync} replica(s)", flush=True)
  with strategy.scope():
    model = build_model(config, dim, whitening(splits.train)
                        if config.whiten else None)
  # Keras builds a distributed model from the replicas' mean of the first
  # batch, which fails on uneven shares: validate on batches that split
  # evenly (dropping fewer rows than replicas), which also makes the
  # validation NLL an exact mean.
  k = strategy.num_replicas_in_sync
  splits = splits._replace(val=splits.val[:len(splits.val) // k * k])
  val = tf.data.Dataset.from_tensor_slices(splits.val).batch(
      max(k, config.eval_batch_size // k * k))
  trained = run_lib.fit(
      model, lambda start: batches.epoch_batches(
          splits.train, config.batch_size, config.seed, start),
      config.out, config.steps, config.steps_per_epoch,
      time_budget=config.time_budget, validation_data=val,
      callbacks=_schedule(config), observers=summaries.callbacks(
          config.tensorboard, run_lib.is_chief(strategy)))
  # EarlyStopping has restored the best weights: test them (and validate
  # them again, which shows they are the best of the curve).
  val_nll = model.evaluate(val, verbose=0, return_dict=True)["nll"]
  ev = run_lib.evaluate(model, splits.test, config.eval_batch_size,
                        config.seed)
  gauss, gauss_se = gaussian_nll(splits.train, splits.test)
  curve = run_lib.read_curve(config.out)  # (only the chief writes one)
  best = min(curve, key=lambda row: row.get("val_nll", math.inf),
             default={})
  metrics = {
      "data": config.data, "source": splits.source, "dim": dim,
      "objective": config.objective, "test_nll": ev["nll"],
      "test_nll_stderr": ev["nll_stderr"],
      "paper_nll": PAPER_NLL[config.data], "gaussian_test_nll": gauss,
      "gaussian_test_nll_stderr": gauss_se, "eval_nfe": ev["nfe"],
      "eval_seconds": ev["seconds"], "eval_options": ev["eval_options"],
      "val_nll": float(val_nll),
      "best_val_nll": best.get("val_nll"),
      "best_epoch": int(best.get("epoch", -1)) + 1,
      "epochs": trained["epochs"],
      "steps": run_lib.optimizer_steps(model), "seconds": trained["seconds"],
      "stop_reason": trained["stop_reason"], "end_times": model.end_times,
      "n_train": len(splits.train), "n_val": len(splits.val),
      "n_test": len(splits.test),
      "parameters": int(sum(np.prod(v.shape)
                            for v in model.trainable_variables)),
      "replicas": strategy.num_replicas_in_sync,
      "config": dataclasses.asdict(config)}
  # The training logs of the last epoch (Keras' running means of nll and
  # fm_loss, the last step's NFE).
  for key, name in (("nll", "train_nll"), ("fm_loss", "fm_loss"),
                    ("nfe", "nfe"), ("nfe_backward", "nfe_backward")):
    if curve and key in curve[-1]:
      metrics[name] = curve[-1][key]
  if config.export:  # every worker takes part (see on_every_worker)
    run_lib.on_every_worker(model.export,
                            os.path.join(config.out, "saved_model"), strategy)
  if run_lib.is_chief(strategy):
    run_lib.write_json(os.path.join(config.out, "metrics.json"), metrics)
  return metrics


def main(argv=None):
  config, strategy = cli.parse(TabularConfig, __doc__, argv, PRESETS,
                               data_defaults=DATA_DEFAULTS, check=check)
  replicas = strategy.num_replicas_in_sync
  if config.batch_size % replicas:  # (see run: Keras needs even shares)
    print(f"error: --batch-size {config.batch_size} must be a multiple of "
          f"the {replicas} replicas", file=sys.stderr)
    sys.exit(2)
  metrics = run(config, strategy)
  print(f"test NLL {metrics['test_nll']:.3f} ± "
        f"{metrics['test_nll_stderr']:.3f} nats (paper "
        f"{metrics['paper_nll']}, Gaussian {metrics['gaussian_test_nll']:.3f})"
        f", {metrics['steps']} steps, {metrics['seconds']:.0f} s of training, "
        f"stopped by {metrics['stop_reason']} -> {config.out}", flush=True)
  return metrics


if __name__ == "__main__":
  main()
