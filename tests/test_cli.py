"""The experiment command lines: one vocabulary, values checked at parse time (exit 2), presets, help lines."""

import dataclasses

import pytest

from training import cli, images, toy


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


@pytest.mark.parametrize("module,config_cls", [
    (toy, toy.ToyConfig), (images, images.ImagesConfig)])
def test_every_flag_says_what_it_does(module, config_cls, capsys):
  with pytest.raises(SystemExit):
    cli.parse(config_cls, module.__doc__, ["--help"],
              presets=getattr(module, "PRESETS", None))
  text = capsys.readouterr().out
  for field in dataclasses.fields(config_cls):
    words = field.metadata["help"].split()
    assert len(words) >= 2, field.name  # more than "default: X"
    assert f"--{field.name.replace('_', '-')}" in text
  # The shared vocabulary, in one unit and with one meaning everywhere.
  for flag in ("--data ", "--data-root", "--out", "--time-budget",
               "--eval-batch-size", "--weight-decay", "--objective",
               "--ot", "--strategy"):
    assert flag in text, flag
  assert "seconds" in " ".join(text.split())


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
