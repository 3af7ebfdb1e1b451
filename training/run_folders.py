"""Run folders: one configuration per `--out` (its config.json), the resume rule and `--overwrite`."""

import dataclasses
import json
import os

__all__ = ["CONFIG_FILE", "MAY_DIFFER", "previous_config", "differences",
           "check", "claim"]

CONFIG_FILE = "config.json"

# The fields a rerun may change and still resume: how long it trains (a
# longer budget trains on), what it writes, and evaluation-only settings
# that no trained weight depends on.
MAY_DIFFER = frozenset({
    "out", "overwrite", "verbose", "progress", "tensorboard", "export",
    "plot", "steps", "epochs", "time_budget",
    "test_size", "eval_size", "max_test",  # (the final test's subset)
    "iwae_samples", "iwae_test_size", "iwae_chunk"})


def _jsonable(value):
  return json.loads(json.dumps(value, default=str))


def previous_config(out):
  """The config (a dict) of the run in `out`; None if `out` holds no run.

  The run's config.json, else the config that metrics.json records (runs
  written before config.json), else `{}` for checkpoints of an unknown
  configuration.
  """
  for name, key in ((CONFIG_FILE, None), ("metrics.json", "config")):
    path = os.path.join(out, name)
    if os.path.isfile(path):
      try:
        with open(path, encoding="utf-8") as f:
          found = json.load(f)
      except (OSError, ValueError):
        continue
      found = found.get(key) if key else found
      if isinstance(found, dict) and found:
        return found
  checkpoints = os.path.join(out, "checkpoints")
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    return {}
  return None


def differences(old, config):
  """`[(field, old value, new value)]` of the fields that forbid a resume.

  Fields in `MAY_DIFFER` are not compared; a field that `old` lacks (a
  field newer than the run) differs only if the new value is not its
  default.
  """
  new = _jsonable(dataclasses.asdict(config))
  defaults = {f.name: f.default for f in dataclasses.fields(config)}
  found = []
  for name, value in new.items():
    if name in MAY_DIFFER:
      continue
    if name not in old:
      if value != _jsonable(defaults[name]):
        found.append((name, "(unset)", value))
    elif old[name] != value:
      found.append((name, old[name], value))
  return found


def _show(value):
  if isinstance(value, bool):
    return str(value).lower()
  if isinstance(value, list):
    return ",".join(str(v) for v in value) or "''"
  return str(value) if value != "" else "''"


def _next_replaced(out):
  n = 1
  while os.path.exists(os.path.join(out, f"replaced-{n}")):
    n += 1
  return os.path.join(out, f"replaced-{n}")


def check(config):
  """Why `config` may not resume the run in `config.out` (one line), or None.

  None when `--out` holds no run, a run of the same configuration (up to
  `MAY_DIFFER`), or when `config.overwrite` is set.
  """
  if getattr(config, "overwrite", False):
    return None
  old = previous_config(config.out)
  if old is None:
    return None
  ways_out = (f"pass another --out, or --overwrite to start afresh there "
              f"(the old run's files move to {_next_replaced(config.out)})")
  if not old:
    return (f"--out {config.out} holds checkpoints of a run without "
            f"{CONFIG_FILE}, which may not be this configuration; "
            f"{ways_out}")
  found = differences(old, config)
  if not found:
    return None
  listed = "; ".join(f"--{name.replace('_', '-')} {_show(a)} -> {_show(b)}"
                     for name, a, b in found)
  return (f"--out {config.out} holds a run of another configuration "
          f"({listed}); {ways_out}")


def claim(config, write=True):
  """Makes `config.out` the folder of this run; call before training.

  Refuses (as `check`) a folder of another run. With `config.overwrite`,
  moves the old run's files (everything in `out` but earlier `replaced-N`
  folders) into a new `<out>/replaced-N`: the run starts afresh and the
  old one stays whole (and resumable from there). Then writes config.json.

  Args:
    config: the run's config dataclass (with `out`, optionally
      `overwrite`).
    write: whether this process writes files (False on the workers of a
      multi-worker run other than the chief: they only check).

  Returns:
    The folder the old run moved to, or None.

  Raises:
    ValueError: `out` holds a run of another configuration.
  """
  problem = check(config)
  if problem:
    raise ValueError(problem)
  if not write:
    return None
  out = config.out
  os.makedirs(out, exist_ok=True)
  moved = None
  if getattr(config, "overwrite", False) and previous_config(out) is not None:
    moved = _next_replaced(out)
    entries = [e for e in os.listdir(out) if not (
        e.startswith("replaced-") and os.path.isdir(os.path.join(out, e)))]
    os.makedirs(moved)
    for entry in entries:
      os.replace(os.path.join(out, entry), os.path.join(moved, entry))
    print(f"--overwrite: moved the previous run in {out} to {moved}; "
          "starting afresh.", flush=True)
  tmp = os.path.join(out, CONFIG_FILE + ".tmp")
  with open(tmp, "w", encoding="utf-8") as f:
    json.dump(_jsonable(dataclasses.asdict(config)), f, indent=2,
              sort_keys=True)
  os.replace(tmp, os.path.join(out, CONFIG_FILE))
  return moved
