"""The experiment command lines: one vocabulary, values checked at parse time (exit 2), presets, help lines."""

import dataclasses
import json
import os

import keras
import pytest

from training import command_line as cli
from training import images_cli, tabular_cli, toy_cli, vae_cli


@dataclasses.dataclass
class Config(cli.RunConfig):
  """A config for these tests."""
  steps: int = cli.option(10, "training steps", positive=True)
  dims: tuple = cli.option((8, 8), "hidden widths", positive=True)
  rate: float = cli.option(0.5, "a rate", low=0.0, high=1.0)
  mode: str = cli.option("a", "a mode", choices=("a", "b"))


def fast(config):
  """few steps"""
  del config
  return {"steps": 2, "dims": (4,)}


def parse(argv, **kwargs):
  return cli.parse(Config, "test", argv, presets={"fast": fast}, **kwargs)[0]


def test_flags_convert_and_default():
  config = parse(["--steps", "7", "--dims", "16,32", "--export", "false",
                  "--time-budget", "90", "--data", "moons"])
  assert (config.steps, config.dims, config.export, config.time_budget,
          config.data) == (7, (16, 32), False, 90.0, "moons")
  assert parse([]) == Config()


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "argument --batch-size: must be > 0, got 0"),
    (["--steps", "-5"], "argument --steps: must be > 0, got -5"),
    (["--export", "ture"], "expected true or false, got 'ture'"),
    (["--dims", "8,x"], "expected comma-separated integers"),
    (["--dims", "8,0"], "must be > 0"),
    (["--rate", "1.5"], "must be <= 1.0"),
    (["--weight-decay", "-1"], "must be >= 0.0"),
    (["--mode", "c"], "invalid choice: 'c'"),
    (["--lr", "fast"], "expected float, got 'fast'"),
    (["--strategy", "tpu"], "invalid choice: 'tpu'"),
])
def test_bad_values_are_one_line_usage_errors(argv, message, capsys):
  with pytest.raises(SystemExit) as e:
    parse(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err[0].startswith("usage:")
  assert message in err[-1]
  assert not any("Traceback" in line for line in err)


def test_presets_data_defaults_and_flags_stack_in_that_order():
  config = parse(["--preset", "fast"])
  assert (config.steps, config.dims) == (2, (4,))
  assert parse(["--preset", "fast", "--steps", "5"]).steps == 5
  by_data = {"moons": {"steps": 3, "mode": "b"}}
  assert parse(["--data", "moons"], data_defaults=by_data).steps == 3
  assert parse(["--data", "moons", "--preset", "fast"],
               data_defaults=by_data).steps == 2
  assert parse(["--data", "moons", "--preset", "fast"],
               data_defaults=by_data).mode == "b"


def test_presets_see_the_chosen_data():
  presets = {"per-data": lambda c: {"steps": 5 if c.data == "moons" else 6}}
  parse = lambda argv: cli.parse(Config, "test", argv, presets=presets)[0]
  assert parse(["--data", "moons", "--preset", "per-data"]).steps == 5
  assert parse(["--preset", "per-data"]).steps == 6


def test_check_refuses_combinations(capsys):
  check = lambda c: "--ot needs flow matching" if c.ot and (
      c.objective != "flow_matching") else None
  assert parse(["--ot", "true", "--objective", "flow_matching"],
               check=check).ot
  with pytest.raises(SystemExit) as e:
    parse(["--ot", "true"], check=check)
  assert e.value.code == 2
  assert "--ot needs flow matching" in capsys.readouterr().err


CLIS = {"toy": (toy_cli, toy_cli.ToyConfig), "images": (images_cli, images_cli.ImagesConfig),
        "tabular": (tabular_cli, tabular_cli.TabularConfig),
        "vae": (vae_cli, vae_cli.VAEConfig)}


def _flags(config_cls):
  return {f"--{f.name.replace('_', '-')}" for f in
          dataclasses.fields(config_cls)}


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_flag_says_what_it_does(name, capsys):
  module, config_cls = CLIS[name]
  with pytest.raises(SystemExit):
    cli.parse(config_cls, module.__doc__, ["--help"],
              presets=getattr(module, "PRESETS", None))
  text = capsys.readouterr().out
  for field in dataclasses.fields(config_cls):
    words = cli.field_metadata(config_cls, field.name)["help"].split()
    assert len(words) >= 2, field.name  # more than "default: X"
    assert f"--{field.name.replace('_', '-')}" in text
  # The shared vocabulary, in one unit and with one meaning everywhere.
  for flag in ("--data ", "--data-root", "--out", "--time-budget",
               "--eval-batch-size", "--weight-decay", "--objective",
               "--ot", "--strategy", "--precision"):
    assert flag in text, flag
  assert "seconds" in " ".join(text.split())


def test_one_solver_vocabulary_in_every_cli():
  solver_flags = _flags(cli.SolverConfig)
  eval_flags = _flags(cli.EvalConfig)
  assert {"--solver", "--rtol", "--atol", "--step-size", "--max-num-steps",
          "--gradient", "--trace", "--noise"} == solver_flags
  assert {"--eval-solver", "--eval-rtol", "--eval-atol",
          "--eval-trace"} == eval_flags
  for name, (_, config_cls) in CLIS.items():
    flags = _flags(config_cls)
    assert solver_flags <= flags, name
    # The VAE has no separate evaluation flow options (its evaluation is
    # the exact trace of its training solver).
    assert eval_flags <= flags or name == "vae", name
    assert not any(f.startswith("--test-") and f.endswith("tol")
                   for f in flags), name
    # A CLI may start from other defaults, but not redeclare the flag.
    for f in dataclasses.fields(config_cls):
      if f"--{f.name.replace('_', '-')}" in solver_flags | eval_flags:
        assert not f.metadata or f.metadata == dict(cli.field_metadata(
            cli.SolverConfig if f.name in cli.SolverConfig.__dataclass_fields__
            else cli.EvalConfig, f.name)), (name, f.name)
  # The per-CLI defaults took (and the help stayed the shared one).
  assert (toy_cli.ToyConfig().rtol, tabular_cli.TabularConfig().atol,
          images_cli.ImagesConfig().eval_trace, vae_cli.VAEConfig().gradient) == (
              1e-3, 1e-8, "hutchinson", "adjoint")
  assert tabular_cli.TabularConfig().eval_options() == dict(
      solver="dopri5", rtol=1e-5, atol=1e-5, trace="exact")


def test_out_is_checked_before_training(tmp_path, capsys):
  existing = tmp_path / "a_file"
  existing.write_text("not a run")
  for out, message in ((existing, "is an existing file"),
                       (existing / "run", "cannot be created")):
    with pytest.raises(SystemExit) as e:
      parse(["--out", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("usage:")
    assert message in err[-1] and str(out) in err[-1]
    assert not any("Traceback" in line for line in err)
  # A new path, or a run's directory to resume, is fine; parsing makes none.
  assert parse(["--out", str(tmp_path / "new" / "run")]).out
  assert not (tmp_path / "new").exists()
  assert parse(["--out", str(tmp_path)]).out == str(tmp_path)
  if os.geteuid() != 0:  # root may write anywhere
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(SystemExit):
      parse(["--out", str(locked / "run")])


def test_precision_sets_the_policy_before_the_model_is_built(tmp_path):
  config, _ = cli.parse(toy_cli.ToyConfig, "", [
      "--precision", "mixed_bfloat16", "--out", str(tmp_path / "run"),
      "--steps", "2", "--steps-per-epoch", "2", "--batch-size", "16",
      "--dims", "8", "--solver", "rk4", "--step-size", "0.5",
      "--eval-solver", "rk4", "--test-size", "16", "--eval-batch-size", "16",
      "--plot", "false", "--export", "false"])
  try:
    metrics = toy_cli.run(config)
    assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
    model = toy_cli.build_model(config)
    assert (model.compute_dtype, model.variable_dtype) == ("bfloat16",
                                                           "float32")
  finally:
    keras.mixed_precision.set_global_policy("float32")
  with open(tmp_path / "run" / "metrics.json", encoding="utf-8") as f:
    assert json.load(f)["config"]["precision"] == "mixed_bfloat16"
  assert metrics["config"]["precision"] == "mixed_bfloat16"
  # The default puts float32 back, whatever ran before.
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    toy_cli.build_model(toy_cli.ToyConfig(dims=(4,)))
    assert keras.mixed_precision.global_policy().name == "float32"
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_curve_logger_keeps_metrics_that_first_appear_later(tmp_path):
  # A validation every N epochs adds keys after the first row, which
  # keras.callbacks.CSVLogger would drop.
  from training import run  # pylint: disable=g-import-not-at-top
  logger = run.CurveLogger(str(tmp_path / "curve.csv"))
  logger.on_epoch_end(0, {"loss": 2.0, "seconds": 10.0})
  logger.on_epoch_end(1, {"loss": 1.5, "seconds": 20.0, "val_bpd": 1.2})
  logger.on_epoch_end(2, {"loss": 1.4, "seconds": 30.0})
  rows = run.read_curve(str(tmp_path))
  assert [r["epoch"] for r in rows] == [0, 1, 2]
  assert "val_bpd" not in rows[0] and rows[1]["val_bpd"] == 1.2
  assert rows[2]["loss"] == 1.4 and "val_bpd" not in rows[2]


@pytest.mark.parametrize("name", sorted(CLIS))
def test_every_cli_refuses_a_file_as_out(name, tmp_path, capsys):
  existing = tmp_path / "metrics.json"
  existing.write_text("{}")
  with pytest.raises(SystemExit) as e:
    CLIS[name][0].main(["--out", str(existing)])
  assert e.value.code == 2
  assert "is an existing file" in capsys.readouterr().err.splitlines()[-1]


def test_a_redeclared_field_keeps_its_own_checks(capsys):
  # ToyConfig redeclares RunConfig's --data with choices; its own win.
  with pytest.raises(SystemExit) as e:
    cli.parse(toy_cli.ToyConfig, "", ["--data", "iris"])
  assert e.value.code == 2
  assert "invalid choice: 'iris'" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["tabular", "images", "vae"])
def test_every_builder_sets_the_precision_first(name):
  module, config_cls = CLIS[name]
  config = config_cls(precision="mixed_bfloat16")
  try:
    if name == "tabular":
      model = module.build_model(dataclasses.replace(config, hdim_factor=2),
                                 3)
    elif name == "images":
      model = module.build_model(dataclasses.replace(
          config, dims=(4,), multiscale=False), (4, 4, 1))
    else:
      model = module.build_model(dataclasses.replace(
          config, encoder_hidden=(8,), decoder_hidden=(8,), cnf_hidden=(8,),
          latent_dim=2, context_dim=2), (4, 4))
    assert model.compute_dtype == "bfloat16"
  finally:
    keras.mixed_precision.set_global_policy("float32")
