"""Tests of FFJORDModel.fit under MirroredStrategy and MultiWorkerMirroredStrategy.

Distributed runs happen in subprocesses (`tests/_worker.py`): logical devices
must be configured before TensorFlow starts, and every worker is a process.
Each must reproduce single-device training on the same global batches.
"""

import contextlib
import json
import pathlib
import socket
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import FFJORDModel, ODENet, datasets

ROOT = pathlib.Path(__file__).resolve().parents[2]
WORKER = ROOT / "tests" / "_worker.py"
GLOBAL_BATCH = 16  # 48 points: 3 steps


def _load_worker():
  sys.path.insert(0, str(WORKER.parent))
  try:
    import _worker  # pylint: disable=g-import-not-at-top
  finally:
    sys.path.pop(0)
  return _worker


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
  """The shared initial weights and data, and the single-device reference."""
  path = tmp_path_factory.mktemp("distribute")
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,)), solver="euler",
                      step_size=0.5, trace="exact")
  w = model.get_weights()
  x = datasets.toy.sample("8gaussians", 3 * GLOBAL_BATCH, seed=0)
  np.savez(path / "data.npz", x=x.astype(np.float32), num_weights=len(w),
           **{f"w{i}": v for i, v in enumerate(w)})
  ref = _load_worker().train({"mode": "single", "data": str(path / "data.npz"),
                              "global_batch": GLOBAL_BATCH})
  np.savez(path / "single.npz", **ref)
  return path


def _spec(run_dir, mode, **kwargs):
  spec = {"mode": mode, "data": str(run_dir / "data.npz"),
          "out": str(run_dir / f"{mode}.npz"), "global_batch": GLOBAL_BATCH,
          **kwargs}
  path = run_dir / f"{mode}.json"
  path.write_text(json.dumps(spec))
  return path


def _assert_matches_reference(out, ref):
  assert int(out["iterations"]) == int(ref["iterations"]) == 3
  for i in range(sum(k.startswith("w") for k in ref.files)):
    np.testing.assert_allclose(out[f"w{i}"], ref[f"w{i}"], rtol=1e-5,
                               atol=1e-6, err_msg=f"weight {i}")
  # Metrics are global: the mean NLL over all replicas, the per-replica NFE.
  np.testing.assert_allclose(out["history_nll"], ref["history_nll"],
                             rtol=1e-5)
  np.testing.assert_array_equal(out["history_nfe"], [2.0])  # 2 Euler steps


def test_mirrored_two_devices_matches_single_device(run_dir, subprocess_env):
  proc = subprocess.run(
      [sys.executable, str(WORKER),
       str(_spec(run_dir, "mirrored", adaptive=True))],
      env=subprocess_env, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = np.load(run_dir / "mirrored.npz")
  ref = np.load(run_dir / "single.npz")
  assert int(out["replicas"]) == 2 and int(ref["replicas"]) == 1
  _assert_matches_reference(out, ref)
  # Same points on both replicas, different Hutchinson probes.
  h = out["hutchinson"]
  assert h.shape == (2, 4) and not np.allclose(h[0], h[1])
  # dopri5 with differently scaled data on the replicas: the train step
  # finished, with each replica's own backward step count in nfe_backward.
  nfe = out["adaptive_replica_nfe"]
  assert nfe.shape == (2,) and nfe.min() > 0
  assert np.isfinite(out["adaptive_nll"]).all()


def _free_ports(n):
  with contextlib.ExitStack() as stack:
    socks = [stack.enter_context(socket.socket()) for _ in range(n)]
    for s in socks:
      s.bind(("127.0.0.1", 0))
    return [s.getsockname()[1] for s in socks]


def test_multiworker_two_processes_matches_single_device(run_dir,
                                                        subprocess_env):
  workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
  spec = _spec(run_dir, "multiworker",
               checkpoints=str(run_dir / "mw_checkpoints"))
  procs = []
  try:
    for index in range(2):
      env = dict(subprocess_env)
      env["TF_CONFIG"] = json.dumps({"cluster": {"worker": workers},
                                     "task": {"type": "worker",
                                              "index": index}})
      procs.append(subprocess.Popen(
          [sys.executable, str(WORKER), str(spec)], env=env,
          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = [p.communicate(timeout=900)[1] for p in procs]
    for p, err in zip(procs, errors):
      assert p.returncode == 0, err[-3000:]
  finally:
    for p in procs:  # never leave a worker (and its port) behind
      if p.poll() is None:
        p.kill()
        p.wait()
  ref = np.load(run_dir / "single.npz")
  outs = [np.load(run_dir / f"multiworker-{i}.npz") for i in range(2)]
  for out in outs:
    assert int(out["replicas"]) == 2
    _assert_matches_reference(out, ref)
  # Both workers restored the chief's checkpoint; worker 1's scratch copy
  # is gone.
  for out in outs:
    assert int(out["checkpoint_epoch"]) == 1
  assert list(outs[0]["checkpoint_files"]) == [
      "checkpoint.json", "ckpt-1.json", "ckpt-1.weights.h5"]
  # One replica per worker; the same global seed on both, yet the probes
  # differ because the replica id is folded into the probe seed.
  h0, h1 = outs[0]["hutchinson"], outs[1]["hutchinson"]
  assert h0.shape == h1.shape == (1, 4)
  assert not np.allclose(h0, h1)


def test_nfe_backward_is_per_replica():
  var = FFJORDModel((2,), dynamics=ODENet(hidden=(4,)), solver="rk4",
                    step_size=1.0).bijector.nfe_backward
  assert var.synchronization == tf.VariableSynchronization.ON_READ


def test_cli_strategy_flag(monkeypatch):
  import dataclasses  # pylint: disable=g-import-not-at-top
  from training import command_line as cli, environment  # pylint: disable=g-import-not-at-top

  @dataclasses.dataclass
  class Config:
    steps: int = cli.option(3, "training steps", positive=True)

  config, strategy = cli.parse(Config, "test", ["--strategy", "default",
                                                "--steps", "5"])
  assert config == Config(steps=5)
  assert strategy is tf.distribute.get_strategy()
  with pytest.raises(SystemExit):  # argparse rejects unknown strategies
    cli.parse(Config, "test", ["--strategy", "tpu"])
  with pytest.raises(ValueError, match="Unknown strategy"):
    environment.use_strategy("tpu")
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ValueError, match="TF_CONFIG"):
    environment.use_strategy("multiworker")
  monkeypatch.setenv(environment.LOGICAL_CPUS_ENV, "two")
  with pytest.raises(ValueError, match="positive integer"):
    environment.use_strategy("mirrored")


def test_single_worker_helpers():
  from tf_ffjord.model.callbacks import any_worker  # pylint: disable=g-import-not-at-top
  from training import run as run_lib  # pylint: disable=g-import-not-at-top
  # Without multiple workers the flags are taken as they are.
  assert any_worker(True, 0) == (True, False)
  assert run_lib.is_chief()
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = FFJORDModel((2,), dynamics=ODENet(hidden=(4,)), solver="euler",
                        step_size=1.0)
    model.compile(keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
  model.optimizer.iterations.assign(3)
  assert run_lib.optimizer_steps(model) == 3  # a distributed counter
