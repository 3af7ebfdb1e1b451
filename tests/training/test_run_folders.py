"""Run folders and process hygiene of the CLIs: one configuration per `--out` (resume, refusal, `--overwrite`), default outputs per data set, quiet logs, `--help` without TensorFlow, TensorBoard logs."""

import dataclasses
import glob
import importlib
import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from training import choices, run_folders
from training import command_line as cli
from training import images_cli, tabular_cli, toy_cli, vae_cli

ROOT = pathlib.Path(__file__).resolve().parents[2]
CLIS = ("toy", "tabular", "images", "vae")


def test_flag_choices_are_tf_ffjords():
  for name, (module, expression) in choices.ORIGINALS.items():
    original = eval(expression, vars(importlib.import_module(module)))  # pylint: disable=eval-used
    assert getattr(choices, name) == original, name


def test_help_and_bad_flags_import_no_tensorflow(subprocess_env):
  # Each CLI as `python -m` would run it; after --help (exit 0) and a bad
  # flag (exit 2, one error line) neither TensorFlow nor tf_ffjord is loaded.
  script = """
import contextlib, io, runpy, sys
for name in sys.argv[1:]:
  for argv, code in ((["--help"], 0), (["--steps", "zero"], 2)):
    sys.argv[1:] = argv
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()) as out, \\
        contextlib.redirect_stderr(err):
      try:
        runpy.run_module("training." + name + "_cli", run_name="__main__")
      except SystemExit as e:
        assert e.code == code, (name, argv, e.code)
    heavy = sorted(m for m in sys.modules
                   if m.split(".")[0] in ("tensorflow", "tf_ffjord", "keras"))
    assert not heavy, (name, argv, heavy[:5])
    if code:  # (the VAE counts epochs: --steps is not one of its flags)
      last = err.getvalue().strip().splitlines()[-1]
      assert ("error: argument --steps: expected int, got 'zero'" in last
              or "error: unrecognized arguments: --steps" in last), last
    else:
      assert "--out" in out.getvalue(), name
print("ok")
"""
  proc = subprocess.run([sys.executable, "-c", script, *CLIS], cwd=ROOT,
                        env=subprocess_env, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


@pytest.mark.parametrize("module,argv,out", [
    (toy_cli, ["--data", "moons"], "runs/toy/moons"),
    (toy_cli, [], "runs/toy/8gaussians"),
    (tabular_cli, ["--data", "power"], "runs/tabular/power"),
    (images_cli, ["--data", "cifar10"], "runs/images/cifar10"),
    (vae_cli, ["--flow", "maf"], "runs/vae/mnist-maf"),
])
def test_default_out_names_the_data(module, argv, out, tmp_path,
                                    monkeypatch):
  monkeypatch.chdir(tmp_path)  # (a run of the developer's is no concern)
  config_cls = {toy_cli: toy_cli.ToyConfig, tabular_cli: tabular_cli.TabularConfig,
                images_cli: images_cli.ImagesConfig, vae_cli: vae_cli.VAEConfig}[module]
  config, _ = cli.parse(config_cls, "", argv,
                        data_defaults=getattr(module, "DATA_DEFAULTS", None))
  assert config.out == out
  # An explicit --out is taken as given.
  assert cli.parse(config_cls, "", [*argv, "--out", "elsewhere"])[0].out == \
      "elsewhere"


@dataclasses.dataclass
class _Config(cli.RunConfig):
  """A config for the rule's unit tests."""
  steps: int = cli.option(10, "training steps", positive=True)
  dims: tuple = cli.option((8, 8), "hidden widths", positive=True)


def test_the_rule_compares_all_but_duration_and_outputs(tmp_path):
  out = str(tmp_path / "run")
  first = _Config(out=out, dims=(4,))
  assert run_folders.check(first) is None  # nothing there yet
  assert run_folders.claim(first) is None
  saved = json.loads((tmp_path / "run" / "config.json").read_text())
  assert saved["dims"] == [4] and saved["out"] == out
  same = dataclasses.replace(first, steps=99, time_budget=5.0, export=False,
                             verbose=True, tensorboard="tb")
  assert run_folders.check(same) is None
  other = dataclasses.replace(first, dims=(4, 4), lr=0.5)
  message = run_folders.check(other)
  assert "\n" not in message
  assert "--dims 4 -> 4,4" in message and "--lr 0.001 -> 0.5" in message
  assert "--steps" not in message
  assert "another --out" in message and "--overwrite" in message
  with pytest.raises(ValueError, match="another configuration"):
    run_folders.claim(other)
  # A field newer than the run differs only if it is not its default.
  del saved["precision"]
  assert run_folders.differences(saved, first) == []
  assert run_folders.differences(saved, dataclasses.replace(
      first, precision="mixed_bfloat16")) == [
          ("precision", "(unset)", "mixed_bfloat16")]


def test_checkpoints_of_an_unknown_configuration_are_refused(tmp_path):
  (tmp_path / "checkpoints").mkdir()
  (tmp_path / "checkpoints" / "checkpoint.json").write_text("{}")
  message = run_folders.check(_Config(out=str(tmp_path)))
  assert "without config.json" in message and "--overwrite" in message
  # A run written before config.json is judged by its metrics' config.
  (tmp_path / "metrics.json").write_text(json.dumps(
      {"config": dataclasses.asdict(_Config(out=str(tmp_path), dims=(3,)))}))
  assert "--dims 3 -> 8,8" in run_folders.check(_Config(out=str(tmp_path)))
  assert run_folders.check(_Config(out=str(tmp_path), dims=(3,))) is None


def _toy(out, *extra):
  """A tiny toy run: 2 steps of an 8-wide net on a fixed grid."""
  return ["--out", str(out), "--steps", "2", "--steps-per-epoch", "2",
          "--batch-size", "16", "--dims", "8", "--solver", "rk4",
          "--step-size", "0.5", "--eval-solver", "rk4", "--test-size", "16",
          "--eval-batch-size", "16", "--plot", "false", "--export", "false",
          *extra]


def test_runs_never_mix(tmp_path, capsys):
  out = tmp_path / "run"
  first = toy_cli.main(_toy(out))
  assert first["data"] == "8gaussians" and first["steps"] == 2
  config = json.loads((out / "config.json").read_text())
  assert config["data"] == "8gaussians" and config["dims"] == [8]
  state = {p: os.stat(p).st_mtime_ns for p in glob.glob(f"{out}/**",
                                                        recursive=True)}

  for flags, change in ((["--data", "moons"], "--data 8gaussians -> moons"),
                        (["--dims", "4"], "--dims 8 -> 4"),
                        (["--objective", "flow_matching"],
                         "--objective likelihood -> flow_matching"),
                        (["--precision", "mixed_bfloat16"],
                         "--precision float32 -> mixed_bfloat16")):
    capsys.readouterr()
    with pytest.raises(SystemExit) as e:
      toy_cli.main(_toy(out, *flags))
    assert e.value.code == 2, flags
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if "error:" in line]
    assert len(errors) == 1, captured.err
    assert errors[0].endswith(
        f"--out {out} holds a run of another configuration ({change}); pass "
        f"another --out, or --overwrite to start afresh there (the old "
        f"run's files move to {out}/replaced-1)"), errors[0]
    assert "Traceback" not in captured.err and not captured.out
  # Nothing was touched by the refused commands.
  assert {p: os.stat(p).st_mtime_ns for p in glob.glob(
      f"{out}/**", recursive=True)} == state

  # A longer budget resumes.
  capsys.readouterr()
  longer = toy_cli.main(_toy(out, "--steps", "4"))
  assert f"Resumed from {out}/checkpoints/ckpt-1" in capsys.readouterr().out
  assert longer["steps"] == 4 and longer["data"] == "8gaussians"

  # --overwrite starts afresh; the old run moves aside, whole.
  fresh = toy_cli.main(_toy(out, "--data", "moons", "--overwrite"))
  printed = capsys.readouterr().out
  assert "Resumed" not in printed and f"moved the previous run" in printed
  assert fresh["data"] == "moons" and fresh["steps"] == 2
  assert json.loads((out / "config.json").read_text())["data"] == "moons"
  old = out / "replaced-1"
  assert json.loads((old / "metrics.json").read_text())["steps"] == 4
  assert json.loads((old / "config.json").read_text())["data"] == "8gaussians"
  assert (old / "checkpoints" / "checkpoint.json").exists()
  # ...and stays resumable where it went (a finished run evaluates again).
  again = toy_cli.main(_toy(old, "--steps", "4"))
  assert again["data"] == "8gaussians" and again["steps"] == 4
  # A second --overwrite keeps the first replaced run where it is.
  toy_cli.main(_toy(out, "--data", "moons", "--overwrite"))
  assert sorted(p.name for p in out.glob("replaced-*")) == ["replaced-1",
                                                            "replaced-2"]
  assert not (out / "replaced-2" / "replaced-1").exists()
  # The library path refuses too.
  with pytest.raises(ValueError, match="another configuration"):
    toy_cli.run(toy_cli.ToyConfig(out=str(out), dims=(8,)))


_TF_LOG = re.compile(r"^[IWEF]\d{4} |absl::InitializeLog|cuInit|"
                     r"Ignoring Assert operator", re.MULTILINE)


def test_quiet_by_default_and_verbose_on_demand(tmp_path, subprocess_env):
  env = dict(subprocess_env)
  env.pop("TF_CPP_MIN_LOG_LEVEL")  # as a user's shell
  env.pop("TF_FFJORD_JIT_COMPILE", None)  # XLA's asserts included

  def run(*flags):
    proc = subprocess.run(
        [sys.executable, "-m", "training.toy_cli",
         *_toy(tmp_path / "run", "--steps", "1", "--steps-per-epoch", "1",
               *flags)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr

  quiet = run()
  assert not _TF_LOG.search(quiet), quiet
  assert "test NLL" in quiet
  loud = run("--verbose")
  assert len(_TF_LOG.findall(loud)) >= 3, loud


def test_tensorboard_needs_its_package(monkeypatch, capsys, tmp_path):
  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None
                      if name == "tensorboard" else real(name, *a))
  with pytest.raises(SystemExit) as e:
    toy_cli.main(_toy(tmp_path / "run", "--tensorboard", str(tmp_path / "tb")))
  assert e.value.code == 2
  assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
      "--tensorboard needs the tensorboard package: pip install tensorboard")


def _events(logdir):
  """{tag: [(step, kind)]} of every event file under `logdir`."""
  found = {}
  for path in glob.glob(os.path.join(logdir, "**", "events.out.tfevents.*"),
                        recursive=True):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        kind = value.metadata.plugin_data.plugin_name
        found.setdefault(value.tag, []).append((event.step, kind, value))
  return {tag: sorted(v, key=lambda e: e[0]) for tag, v in found.items()}


def test_tensorboard_logs_and_images(tmp_path):
  pytest.importorskip("tensorboard", reason="--tensorboard needs the "
                      "tensorboard package (pip install tensorboard)")
  tb = tmp_path / "tb"
  metrics = toy_cli.main(_toy(tmp_path / "toy", "--tensorboard", str(tb),
                          "--plot", "true"))
  events = _events(str(tb))
  assert [(s, k) for s, k, _ in events["epoch_nll"]] == [(0, "scalars")]
  assert "epoch_nfe" in events
  (step, kind, value), = events["density"]
  assert (step, kind) == (metrics["steps"], "images")
  # The summary holds the picture of density.png.
  width, height, png = value.tensor.string_val
  assert (int(width), int(height)) == (1200, 400)
  np.testing.assert_array_equal(
      tf.io.decode_png(png),
      tf.io.decode_png((tmp_path / "toy" / "density.png").read_bytes()))

  # The image flow writes a grid of samples at each validation and at the
  # end.
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (24, 4, 4), np.uint8)
  np.savez(tmp_path / "mnist.npz", x_train=x[:16], y_train=np.zeros(16),
           x_test=x[16:], y_test=np.zeros(8))
  tb = tmp_path / "tb_images"
  images_cli.main(["--data-root", str(tmp_path), "--out", str(tmp_path / "im"),
               "--batch-size", "8", "--dims", "4", "--multiscale", "false",
               "--solver", "euler", "--step-size", "1.0", "--trace", "exact",
               "--steps", "2", "--steps-per-epoch", "1", "--val-size", "4",
               "--val-every", "1", "--eval-size", "4", "--eval-batch-size",
               "4", "--eval-solver", "euler", "--export", "false",
               "--tensorboard", str(tb)])
  assert len(glob.glob(f"{tb}/events.out.tfevents.*")) == 1
  samples = _events(str(tb))["samples"]
  assert [(s, k) for s, k, _ in samples] == [(1, "images"), (2, "images"),
                                             (2, "images")]
  grid = tf.io.decode_png(samples[0][2].tensor.string_val[2])
  assert grid.shape == (4 * 5 + 1, 4 * 5 + 1, 1)  # 4x4 of 4x4 images
  # Keras' callback logs training and validation, each in its folder.
  assert [s for s, _, _ in _events(str(tb / "validation"))["epoch_bpd"]] == [
      0, 1]
  assert [s for s, _, _ in _events(str(tb / "train"))["epoch_bpd"]] == [0, 1]
