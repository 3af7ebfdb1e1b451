"""Tests of tf_ffjord.checkpoints: resume after SIGKILL, clear errors on bad files."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from tf_ffjord import FFJORDModel, ODENet, datasets
from tf_ffjord.checkpoints import CheckpointError, Checkpointer

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "_worker.py"


def _tiny(hidden=(8,)):
  model = FFJORDModel((2,), dynamics=ODENet(hidden=hidden), solver="rk4",
                      step_size=0.5, trace="exact")
  model.compile(keras.optimizers.Adam(1e-2))
  return model


def test_kill_9_then_rerun_resumes_without_losing_an_epoch(tmp_path,
                                                         subprocess_env):
  model = _tiny()
  w = model.get_weights()
  batch, steps, epochs = 8, 2, 4
  x = datasets.toy.sample("8gaussians", batch * steps * epochs, seed=0)
  np.savez(tmp_path / "data.npz", x=x.astype(np.float32), num_weights=len(w),
           **{f"w{i}": v for i, v in enumerate(w)})
  spec = {"mode": "resume", "data": str(tmp_path / "data.npz"),
          "batch": batch, "steps_per_epoch": steps, "epochs": epochs,
          "checkpoints": str(tmp_path / "ckpt"), "sleep": 0.4}
  (tmp_path / "run.json").write_text(json.dumps({**spec, "out": str(
      tmp_path / "run.npz")}))
  cmd = [sys.executable, str(WORKER), str(tmp_path / "run.json")]

  # First run: kill -9 once epoch 2 is saved, while epoch 3 trains.
  proc = subprocess.Popen(cmd, env=subprocess_env, stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True)
  try:
    lines = []
    deadline = time.time() + 600
    while time.time() < deadline:
      line = proc.stdout.readline()
      if not line:
        break
      lines.append(line.strip())
      if line.strip() == "SAVED 2":
        time.sleep(0.1)  # inside epoch 3 (each batch sleeps 0.4 s)
        proc.send_signal(signal.SIGKILL)
        break
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert lines[0] == "RESUMED 0 0", lines
  assert "SAVED 2" in lines and "SAVED 3" not in lines, lines
  assert proc.returncode == -signal.SIGKILL

  # The same command again: resumes at epoch 2, step 4, same optimizer state.
  rerun = subprocess.run(cmd, env=subprocess_env, capture_output=True,
                         text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  out_lines = rerun.stdout.split("\n")
  assert out_lines[0] == f"RESUMED 2 {2 * steps}", out_lines
  assert "SAVED 4" in out_lines
  saved = np.load(tmp_path / "run-epoch2.npz")
  restored = np.load(tmp_path / "run-restored.npz")
  assert sorted(saved.files) == sorted(restored.files)
  assert len(saved.files) > 2  # iterations, learning rate, Adam moments
  for k in saved.files:
    np.testing.assert_array_equal(restored[k], saved[k], err_msg=k)

  # Same final state as a run that was never interrupted.
  from _worker import train_resumable  # pylint: disable=g-import-not-at-top
  ref = train_resumable({**spec, "sleep": 0.0,
                         "checkpoints": str(tmp_path / "ref_ckpt"),
                         "out": str(tmp_path / "ref.npz")})
  final = np.load(tmp_path / "run.npz")
  assert int(final["opt0"]) == steps * epochs  # the iteration counter
  for k, v in ref.items():
    np.testing.assert_allclose(final[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


@pytest.fixture
def saved(tmp_path):
  """A directory with checkpoints after epochs 1 and 2 of a tiny model."""
  model = _tiny()
  ckpt = Checkpointer(model, tmp_path / "ckpt")
  ckpt._build_optimizer()  # pylint: disable=protected-access
  ckpt.save(1)
  for v in model.trainable_variables:
    v.assign(v + 1.0)
  model.optimizer.iterations.assign(7)
  path = ckpt.save(2)
  return tmp_path / "ckpt", path, model


def test_restore_round_trip(saved):
  directory, _, model = saved
  fresh = _tiny()
  assert Checkpointer(fresh, directory).restore() == 2
  assert int(fresh.optimizer.iterations.numpy()) == 7
  for a, b in zip(model.weights, fresh.weights):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_fresh_directory_restores_nothing(tmp_path):
  assert Checkpointer(_tiny(), tmp_path / "none").restore() == 0


def _truncate(path):
  raw = pathlib.Path(path).read_bytes()
  pathlib.Path(path).write_bytes(raw[:len(raw) // 2])


def test_truncated_data_file_is_named(saved):
  directory, prefix, _ = saved
  data = sorted(directory.glob(pathlib.Path(prefix).name + ".data-*"))[0]
  _truncate(data)
  with pytest.raises(CheckpointError, match="corrupted or truncated") as e:
    Checkpointer(_tiny(), directory).restore()
  assert str(data) in str(e.value)
  assert "ckpt-1" in str(e.value)  # the earlier checkpoint to fall back to


def test_truncated_index_file_is_named(saved):
  directory, prefix, _ = saved
  _truncate(prefix + ".index")
  with pytest.raises(CheckpointError, match=prefix + ".index"):
    Checkpointer(_tiny(), directory).restore()


def test_corrupted_state_file_is_named(saved):
  directory, _, _ = saved
  (directory / "checkpoint").write_text("model_checkpoint_path: {{{")
  with pytest.raises(CheckpointError, match=str(directory / "checkpoint")):
    Checkpointer(_tiny(), directory).restore()


def test_missing_index_is_named(saved):
  directory, prefix, _ = saved
  os.remove(prefix + ".index")
  with pytest.raises(CheckpointError, match="missing"):
    Checkpointer(_tiny(), directory).restore()


def test_checkpoint_of_another_model_is_a_clear_error(saved):
  directory, prefix, _ = saved
  with pytest.raises(CheckpointError, match="does not fit this model"):
    Checkpointer(_tiny(hidden=(16,)), directory).restore()


def test_toy_cli_resumes_after_kill_9(tmp_path, subprocess_env):
  out = tmp_path / "run"
  cmd = [sys.executable, "-m", "training.toy", "--out", str(out),
         "--iters", "12", "--steps-per-epoch", "2", "--batch-size", "16",
         "--dims", "8", "--solver", "euler", "--trace", "exact",
         "--train-time", "false", "--test-size", "64", "--plot", "false",
         "--export", "false"]
  ckpt_dir = out / "checkpoints"
  proc = subprocess.Popen(cmd, cwd=ROOT, env=subprocess_env,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  try:
    deadline = time.time() + 600
    while time.time() < deadline and proc.poll() is None:
      # The state file is written (atomically) last, once a save is whole.
      if (ckpt_dir / "checkpoint").exists():
        proc.send_signal(signal.SIGKILL)  # one epoch of six is saved
        break
      time.sleep(0.02)
    proc.wait(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
  proc.stderr.close()
  latest = Checkpointer(_tiny(), ckpt_dir).latest
  assert latest is not None
  saved = int(pathlib.Path(latest).name.split("-")[1])
  assert 1 <= saved < 6

  rerun = subprocess.run(cmd, cwd=ROOT, env=subprocess_env, capture_output=True,
                         text=True, timeout=600)
  assert rerun.returncode == 0, rerun.stderr[-3000:]
  assert (f"Resumed from {ckpt_dir}/ckpt-{saved} at epoch {saved} "
          f"(step {2 * saved})") in rerun.stdout, rerun.stdout[-3000:]
  assert f"Epoch {saved + 1}/6" in rerun.stdout
  assert f"Epoch {saved}/6" not in rerun.stdout  # no finished epoch redone
  metrics = json.loads((out / "metrics.json").read_text())
  assert np.isfinite(metrics["test_nll"])
  assert not ckpt_dir.exists()  # a finished run clears its checkpoints
