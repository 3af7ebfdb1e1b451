"""Experiment configs as command lines: one dataclass per experiment, shared solver/evaluation flags, checks at parse time, presets.

Parsing (and `--help`) imports neither TensorFlow nor tf_ffjord: the flags'
choices come from `training.choices`, and TensorFlow starts, quietly unless
`--verbose`, once the flags are good (`training.environment`).
"""

import argparse
import dataclasses
import importlib
import importlib.util
import os
import re
import sys

from training import choices, run_folders
from training.environment import PRECISIONS, STRATEGIES
from training.environment import start_tensorflow, use_strategy

__all__ = ["option", "default", "out_option", "field_metadata", "RunConfig",
           "SolverConfig", "EvalConfig", "parse", "check_out", "lazy",
           "SOLVERS"]

SOLVERS = choices.SOLVERS

_TRUE = ("true", "1", "yes", "y", "on")
_FALSE = ("false", "0", "no", "n", "off")


class lazy:  # pylint: disable=invalid-name
  """A module imported at its first attribute access: `tf = cli.lazy("tensorflow")`.

  The CLI modules name TensorFlow and Keras at the top, as usual, but import
  them only when a function uses them, after the flags are parsed.
  """

  def __init__(self, name):
    self._name = name

  def __getattr__(self, attr):
    return getattr(importlib.import_module(self._name), attr)


def option(default, help, choices=None, low=None, high=None,  # pylint: disable=redefined-builtin
           positive=False):
  """A config field with its `--help` line and its parse-time checks.

  Args:
    default: the default value (its type is the flag's type; a tuple of ints
      is given as `64,64,64`).
    help: what the flag does (the default is appended).
    choices: allowed values.
    low: smallest allowed value (inclusive).
    high: largest allowed value (inclusive).
    positive: the value (every entry, for a tuple) must be > 0.
  """
  return dataclasses.field(default=default, metadata=dict(
      help=help, choices=choices, low=low, high=high, positive=positive))


def default(value):
  """Another default of a shared field: its help and checks stay the base's.

  For an experiment config that inherits `SolverConfig` (say) but starts
  from other tolerances: `rtol: float = cli.default(1e-3)`.
  """
  return dataclasses.field(default=value, metadata={})


def out_option(default, files, names="{data}: the data set's name"):
  """The `--out` field of an experiment: its default folder and the files it gets."""
  return option(default, f"output directory ({names}): checkpoints, {files}, "
                "config.json; rerunning with the same --out resumes a run of "
                "the same configuration")


def field_metadata(config_cls, name):
  """The help and checks of a field: its last full declaration in the MRO."""
  for cls in config_cls.__mro__:
    field = getattr(cls, "__dataclass_fields__", {}).get(name)
    if field is not None and "help" in field.metadata:
      return field.metadata
  raise TypeError(f"{config_cls.__name__}.{name} has no help: declare it "
                  "with cli.option.")


@dataclasses.dataclass
class RunConfig:
  """The fields every experiment CLI shares."""
  data: str = option("8gaussians", "name of the data set")
  data_root: str = option("../shared/data", "directory that holds the data "
                          "files (ignored by the 2-D toys)")
  out: str = out_option("runs/run/{data}", "metrics, plots, SavedModel")
  overwrite: bool = option(False, "start afresh in --out even if it holds "
                           "a run (of any configuration): the old run's "
                           "files move into <out>/replaced-N, nothing is "
                           "deleted")
  verbose: bool = option(False, "show TensorFlow's own log lines (C++ and "
                         "absl logs, XLA's ignored asserts), hidden by "
                         "default")
  tensorboard: str = option("", "also write TensorBoard logs to this "
                            "directory: the training logs every epoch and "
                            "the experiment's images (needs the tensorboard "
                            "package; empty: none)")
  objective: str = option("likelihood", "training objective: maximum "
                          "likelihood through ODE solves, or simulation-free "
                          "flow matching", choices=("likelihood",
                                                    "flow_matching"))
  ot: bool = option(False, "flow matching only: pair each batch with its "
                    "base samples by minibatch optimal transport")
  batch_size: int = option(100, "examples per training step (the global "
                           "batch under --strategy)", positive=True)
  eval_batch_size: int = option(1000, "examples per evaluation batch",
                                positive=True)
  lr: float = option(1e-3, "Adam learning rate", positive=True)
  weight_decay: float = option(0.0, "decoupled weight decay (as AdamW: each "
                               "step shrinks the weights by lr x decay)",
                               low=0.0)
  time_budget: float = option(0.0, "stop training after this many seconds "
                              "of it, summed over resumes (0: no limit)",
                              low=0.0)
  seed: int = option(0, "seed of the weights, data order and noise", low=0)
  export: bool = option(True, "write the trained model as a SavedModel "
                        "into <out>/saved_model")
  precision: str = option("float32", "Keras dtype policy of the model, set "
                          "before it is built (mixed_*: weights in float32, "
                          "computation in bfloat16 or float16)",
                          choices=PRECISIONS)

  def __post_init__(self):
    # "{name}" in --out stands for that field's value (runs/toy/{data}).
    fields = {f.name for f in dataclasses.fields(self)}
    self.out = re.sub(
        r"\{(\w+)\}", lambda m: str(getattr(self, m.group(1)))
        if m.group(1) in fields and m.group(1) != "out" else m.group(0),
        self.out)


@dataclasses.dataclass
class SolverConfig:
  """The flags of the training solves (and sampling), the same in every CLI."""
  solver: str = option("dopri5", "ODE solver of training and sampling",
                       choices=SOLVERS)
  rtol: float = option(1e-5, "relative tolerance of adaptive solvers in "
                       "training (evaluation: --eval-rtol)", positive=True)
  atol: float = option(1e-5, "absolute tolerance of adaptive solvers in "
                       "training (evaluation: --eval-atol)", positive=True)
  step_size: float = option(0.25, "step of fixed-grid solvers on the unit "
                            "time interval", positive=True)
  max_num_steps: int = option(1000, "solver steps per solve before it "
                              "fails", positive=True)
  gradient: str = option("auto", "gradient of training solves: the adjoint "
                         "ODE (constant memory; interpolated: on dopri5's "
                         "dense output) or backprop through the solver "
                         "(auto: an adjoint for adaptive solvers, backprop "
                         "for fixed-grid ones)", choices=choices.GRADIENTS)
  trace: str = option("hutchinson", "trace estimator of training (exact "
                      "costs one gradient pass per dimension)",
                      choices=choices.TRACES)
  noise: str = option("rademacher", "Hutchinson probe distribution",
                      choices=choices.NOISES)

  def ffjord_options(self):
    """The `FFJORD` options of the training flow."""
    return dict(solver=self.solver, rtol=self.rtol, atol=self.atol,
                step_size=self.step_size, max_num_steps=self.max_num_steps,
                gradient=self.gradient, trace=self.trace, noise=self.noise)


@dataclasses.dataclass
class EvalConfig:
  """The flags of the evaluation flow (validation, test, export), the same in every CLI."""
  eval_solver: str = option("dopri5", "ODE solver of evaluation, validation "
                            "and the export", choices=SOLVERS)
  eval_rtol: float = option(1e-5, "relative tolerance of the evaluation "
                            "solves", positive=True)
  eval_atol: float = option(1e-5, "absolute tolerance of the evaluation "
                            "solves", positive=True)
  eval_trace: str = option("exact", "trace estimator of evaluation (the "
                           "exact likelihood; hutchinson: one probe per "
                           "example, for large events)",
                           choices=choices.TRACES)

  def eval_options(self):
    """The `FFJORD` options of the evaluation flow (`eval_options=`)."""
    return dict(solver=self.eval_solver, rtol=self.eval_rtol,
                atol=self.eval_atol, trace=self.eval_trace)


def _bool(text):
  value = text.strip().lower()
  if value in _TRUE:
    return True
  if value in _FALSE:
    return False
  raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _ints(text):
  try:
    return tuple(int(v) for v in text.split(",") if v.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(
        f"expected comma-separated integers such as 64,64, got {text!r}"
    ) from None


def _checked(kind, meta):
  """An argparse type that converts and applies the field's checks."""

  def convert(text):
    try:
      value = kind(text)
    except ValueError:
      raise argparse.ArgumentTypeError(
          f"expected {kind.__name__}, got {text!r}") from None
    values = value if isinstance(value, tuple) else (value,)
    for v in values:
      if meta["positive"] and not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
      if meta["low"] is not None and not v >= meta["low"]:
        raise argparse.ArgumentTypeError(
            f"must be >= {meta['low']}, got {text}")
      if meta["high"] is not None and not v <= meta["high"]:
        raise argparse.ArgumentTypeError(
            f"must be <= {meta['high']}, got {text}")
    return value

  convert.__name__ = kind.__name__
  return convert


def _parser(config_cls, defaults, description, presets):
  parser = argparse.ArgumentParser(
      description=description,
      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  if presets:
    parser.add_argument("--preset", choices=sorted(presets),
                        help="a named set of defaults, overridden by the "
                        "other flags: " + "; ".join(
                            f"{k}: {v.__doc__ or ''}".strip()
                            for k, v in presets.items()))
  for field in dataclasses.fields(config_cls):
    meta = field_metadata(config_cls, field.name)
    value = defaults[field.name]
    extra = {}
    if isinstance(field.default, bool):
      kind = _bool
      extra = dict(nargs="?", const=True)  # a bare --overwrite is true
    elif isinstance(field.default, tuple):
      kind = _checked(_ints, meta)
    else:
      kind = _checked(type(field.default), meta)
    parser.add_argument("--" + field.name.replace("_", "-"), type=kind,
                        default=value, choices=meta.get("choices"),
                        help=meta.get("help", ""),
                        metavar=None if meta.get("choices") else
                        field.name.upper(), **extra)
  parser.add_argument(
      "--strategy", choices=STRATEGIES, default="default",
      help="default: one device; mirrored: all local GPUs; multiworker: the "
      "cluster in TF_CONFIG (run the same command on every worker)")
  return parser


def parse(config_cls, description, argv=None, presets=None,
          data_defaults=None, check=None):
  """Parses argv into a config and applies `--strategy`.

  Every dataclass field is a `--flag` whose value is checked here: a bad
  value ends the program with a one-line usage error and exit status 2
  (argparse's convention), never a traceback later. The defaults come from
  the dataclass, then from `data_defaults[--data]` (per-dataset settings),
  then from `--preset NAME` (a function `config -> dict` of overrides, whose
  docstring is its help); the other flags apply last. A `--out` that holds
  a run of another configuration is refused too (see `training.run_folders`), all
  before TensorFlow is imported (`start_tensorflow`).

  Args:
    config_cls: the experiment's config dataclass.
    description: the CLI's `--help` text.
    argv: the arguments (default `sys.argv[1:]`).
    presets: dict name -> preset.
    data_defaults: dict data name -> dict of default overrides.
    check: optional `fn(config) -> str or None`: a message refuses a
      combination of flags (one-line usage error, exit 2).

  Returns:
    `(config, strategy)`.
  """
  presets = dict(presets or {})
  defaults = {f.name: f.default for f in dataclasses.fields(config_cls)}
  first = _parser(config_cls, defaults, description, presets)
  known, _ = first.parse_known_args(argv)
  data = getattr(known, "data", None)
  if data is not None:  # presets see the chosen data set
    defaults["data"] = data
  defaults.update((data_defaults or {}).get(data, {}))
  preset = getattr(known, "preset", None)
  if preset:
    defaults.update(presets[preset](config_cls(**defaults)))
  parser = _parser(config_cls, defaults, description, presets)
  args = vars(parser.parse_args(argv))
  args.pop("preset", None)
  strategy_name = args.pop("strategy")
  config = config_cls(**args)
  problem = None
  if hasattr(config, "out"):
    problem = check_out(config.out) or run_folders.check(config)
  problem = problem or (check(config) if check else None)
  if not problem and getattr(config, "tensorboard", ""):
    if importlib.util.find_spec("tensorboard") is None:
      problem = ("--tensorboard needs the tensorboard package: pip install "
                 "tensorboard")
  if problem:
    parser.error(problem)
  start_tensorflow(getattr(config, "verbose", False))
  return config, use_strategy(strategy_name)


def check_out(out):
  """Why `--out` cannot hold a run, or None; creates nothing.

  An existing directory is a run to resume; an existing file, or a path
  under a file or an unwritable directory, is refused.
  """
  if os.path.exists(out):
    if not os.path.isdir(out):
      return (f"--out {out} is an existing file; pass a directory (a new "
              "one, or a run's to resume)")
    return None if os.access(out, os.W_OK | os.X_OK) else (
        f"--out {out} is not writable")
  parent = os.path.dirname(os.path.abspath(out))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    return f"--out {out} cannot be created: {parent} is a file"
  if not os.access(parent, os.W_OK | os.X_OK):
    return f"--out {out} cannot be created: {parent} is not writable"
  return None
