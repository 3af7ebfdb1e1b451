"""Tests of the tabular training CLI (`training.tabular_cli`) on a small synthetic MINIBOONE: schedule, resume, flow matching, export, flags."""

import dataclasses
import json
import pathlib
import sys

import numpy as np
import pytest

from tf_ffjord.saving import checkpoints
from training import run as run_lib
from training import tabular_cli as tabular

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _fake_miniboone(root, seed=5):
  """A correlated 3-D stand-in for MINIBOONE's data.npy under `root`.

  MAF's split of its 300 rows: 243 train, 27 validation, 30 test.
  """
  data = np.random.default_rng(seed).normal(size=(300, 3)) @ [[1, .5, 0],
                                                             [0, 1, .3],
                                                             [0, 0, 1]]
  (root / "miniboone").mkdir(parents=True)
  np.save(root / "miniboone" / "data.npy", data)
  return root


def _args(root, out, *extra):
  """A tiny, fast run: 6-wide nets, one Euler step, the exact trace (so no
  noise: reruns and resumes are deterministic), a loose evaluation."""
  return ["--data", "miniboone", "--data-root", str(root), "--out", str(out),
          "--hdim-factor", "2", "--nhidden", "1", "--solver", "euler",
          "--step-size", "1.0", "--trace", "exact", "--eval-rtol", "1e-3",
          "--eval-atol", "1e-3", "--batch-size", "40", "--steps-per-epoch",
          "2", *extra]


def _tensors(directory):
  """The arrays of the latest checkpoint in `directory`, and its epoch."""
  return checkpoints.read_latest(directory)


def test_early_stopping_restores_best_and_a_finished_run_does_not_retrain(
    tmp_path, capsys):
  root = _fake_miniboone(tmp_path)
  # A large learning rate: the validation NLL soon stops improving.
  argv = _args(root, tmp_path / "run",
               "--steps-per-epoch", "1", "--steps", "40", "--patience", "3",
               "--lr", "0.1", "--export", "false")
  metrics = tabular.main(argv)
  curve = run_lib.read_curve(str(tmp_path / "run"))
  val = [row["val_nll"] for row in curve]
  assert metrics["stop_reason"] == "early stopping"
  assert len(curve) == metrics["epochs"] == metrics["steps"] < 40
  assert min(val) < val[-1]  # the last model is not the best one...
  # ...and the tested model is the best: its validation NLL is the curve's
  # best, evaluated again.
  assert metrics["best_val_nll"] == min(val)
  assert metrics["val_nll"] == pytest.approx(min(val), rel=1e-6, abs=1e-6)
  assert metrics["best_epoch"] == 1 + val.index(min(val))
  # ReduceLROnPlateau (patience 3 // 3 = 1) divided the rate on the way.
  assert curve[0]["learning_rate"] == pytest.approx(0.1)
  assert min(row["learning_rate"] for row in curve) < 0.1 / 5
  assert np.isfinite(metrics["test_nll"]) and metrics["test_nll_stderr"] > 0
  assert np.isfinite(metrics["gaussian_test_nll"])
  assert metrics["paper_nll"] == 10.43
  assert (metrics["n_train"], metrics["n_val"], metrics["n_test"],
          metrics["dim"]) == (243, 27, 30, 3)
  assert metrics["nfe"] == 1 and metrics["nfe_backward"] == 0  # 1 Euler step
  assert len(metrics["end_times"]) == 1 and metrics["end_times"] != [1.0]
  saved = json.loads((tmp_path / "run" / "metrics.json").read_text())
  assert saved["test_nll"] == metrics["test_nll"]

  capsys.readouterr()
  again = tabular.main(argv)
  printed = capsys.readouterr().out
  assert "Resumed from" in printed and "Epoch " not in printed
  assert run_lib.read_curve(str(tmp_path / "run")) == curve
  assert again["steps"] == metrics["steps"]
  assert again["test_nll"] == pytest.approx(metrics["test_nll"], rel=1e-6)
  assert again["val_nll"] == pytest.approx(min(val), rel=1e-6, abs=1e-6)


def test_kill_9_then_rerun_resumes_with_the_same_state(
    tmp_path, capsys, kill_9_after_first_save):
  root = _fake_miniboone(tmp_path)
  killed, ref = tmp_path / "killed", tmp_path / "ref"
  argv = lambda out: _args(root, out, "--steps", "12", "--export", "false")
  kill_9_after_first_save("training.tabular_cli", argv(killed),
                          killed / "checkpoints" / "checkpoint.json", 300)
  at_kill = _tensors(killed / "checkpoints")
  epoch = int(at_kill["epoch"])
  assert 1 <= epoch < 6
  assert at_kill["optimizer/vars/0"] == 2 * epoch  # Keras' step count

  capsys.readouterr()
  resumed = tabular.main(argv(killed))
  printed = capsys.readouterr().out
  assert (f"Resumed from {killed}/checkpoints/ckpt-{epoch} at epoch {epoch} "
          f"(step {2 * epoch}") in printed
  assert f"Epoch {epoch + 1}/6" in printed
  assert f"Epoch {epoch}/6" not in printed  # no saved epoch trained again
  reference = tabular.main(argv(ref))  # the same run, never interrupted
  assert resumed["steps"] == reference["steps"] == 12
  # Weights, Adam moments, step count, learning rate and epoch all match the
  # uninterrupted run: the resume restored the optimizer, not only weights.
  want, got = _tensors(ref / "checkpoints"), _tensors(killed / "checkpoints")
  assert sorted(got) == sorted(want) and len(want) > 10
  for key, value in want.items():
    np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-6,
                               err_msg=key)
  assert resumed["test_nll"] == pytest.approx(reference["test_nll"],
                                              rel=1e-5)


def _serve_without_tf_ffjord(*args):
  """test_export's serving check (a process that blocks tf_ffjord)."""
  sys.path.insert(0, str(ROOT / "tests" / "saving"))
  try:
    from test_export import serve_without_tf_ffjord  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return serve_without_tf_ffjord(*args)


def test_flow_matching_resumes_exports_and_reports_the_exact_nll(tmp_path,
                                                                 capsys):
  root = _fake_miniboone(tmp_path)
  out = tmp_path / "fm"
  argv = _args(root, out, "--objective", "flow_matching", "--ot", "true",
               "--time-length", "0.8")
  first = tabular.main([*argv, "--steps", "2", "--export", "false"])
  assert first["steps"] == 2 and (out / "checkpoints" / "checkpoint.json").exists()
  assert not (out / "saved_model").exists()
  capsys.readouterr()
  metrics = tabular.main([*argv, "--steps", "4"])  # a longer run: resumes
  printed = capsys.readouterr().out
  assert "at epoch 1 (step 2" in printed and "Epoch 2/2" in printed
  assert "Epoch 1/2" not in printed
  assert metrics["steps"] == 4 and metrics["objective"] == "flow_matching"
  assert np.isfinite(metrics["fm_loss"]) and "nfe_backward" not in metrics
  assert metrics["end_times"] == [pytest.approx(0.8)]  # T is not learned
  assert metrics["config"]["train_time"]  # (the flag, ignored)

  # The export serves without tf_ffjord, and its exact log-density of the
  # test split is the test NLL of metrics.json.
  test = tabular.load_splits(tabular.TabularConfig(
      data="miniboone", data_root=str(root))).test
  z = np.random.default_rng(1).standard_normal([4, 3]).astype(np.float32)
  served = _serve_without_tf_ffjord(out / "saved_model", test, z, tmp_path)
  assert -served["log_prob"].mean() == pytest.approx(metrics["test_nll"],
                                                     abs=1e-4)
  np.testing.assert_allclose(served["serving_default"], served["log_prob"],
                             atol=1e-6)
  assert served["sample"].shape == (5, 3)
  assert "NaN or inf" in str(served["nan_error"])


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "--batch-size: must be > 0, got 0"),
    (["--steps", "-5"], "--steps: must be > 0, got -5"),
    (["--export", "ture"], "expected true or false, got 'ture'"),
    (["--max-val", "-1"], "must be >= 0"),
    (["--data", "iris"], "invalid choice: 'iris'"),
    (["--num-blocks", "2", "--objective", "flow_matching"],
     "trains a single FFJORD block; pass --num-blocks 1 (got 2"),
    (["--data", "power", "--objective", "flow_matching"],
     "pass --num-blocks 1 (got 5, power's default"),
    (["--ot", "true"], "--ot true applies to --objective flow_matching"),
])
def test_bad_flags_exit_2_with_one_line(flags, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    tabular.main(flags)
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  last = err.strip().splitlines()[-1]
  assert "Traceback" not in err and "error: " in last and message in last


def test_data_defaults_are_the_papers_and_every_flag_is_explained():
  from training import command_line as cli  # pylint: disable=g-import-not-at-top
  config, _ = cli.parse(tabular.TabularConfig, "", ["--data", "power"],
                        data_defaults=tabular.DATA_DEFAULTS,
                        check=tabular.check)
  assert (config.num_blocks, config.hdim_factor, config.nhidden,
          config.activation, config.batch_size, config.out) == (
              5, 10, 3, "tanh", 10000, "runs/tabular/power")
  config, _ = cli.parse(tabular.TabularConfig, "",
                        ["--data", "bsds300", "--batch-size", "7"],
                        data_defaults=tabular.DATA_DEFAULTS)
  assert (config.num_blocks, config.batch_size) == (2, 7)  # flags win
  assert set(tabular.DATA_DEFAULTS) == set(tabular.PAPER_NLL)
  for field in dataclasses.fields(tabular.TabularConfig):
    text = cli.field_metadata(tabular.TabularConfig, field.name)["help"]
    assert len(text.split()) >= 3 and not text.startswith("default"), \
        field.name


def test_gaussian_baseline_matches_entropy():
  rng = np.random.default_rng(7)
  scale = np.array([[2.0, 0, 0], [0.5, 1.0, 0], [0, -0.3, 0.1]])
  x = rng.normal(size=(200000, 3)) @ scale.T
  nll, se = tabular.gaussian_nll(x[:100000], x[100000:])
  # Entropy of N(0, S S^T): D/2 log(2 pi e) + log|det S|.
  want = 1.5 * np.log(2 * np.pi * np.e) + np.log(abs(np.linalg.det(scale)))
  assert abs(nll - want) < 4 * se + 1e-3
