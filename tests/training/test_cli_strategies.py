"""The images, VAE and tabular CLIs under `--strategy mirrored` reproduce `--strategy default`.

Each CLI trains a tiny config twice on the same global batches: here with
the default strategy, and in a subprocess with `--strategy mirrored` over 2
logical CPU devices (`TF_FFJORD_LOGICAL_CPUS=2`: logical devices must be
configured before TensorFlow starts). With the exact trace and a fixed-grid
solver no noise depends on the split of a batch over replicas, so the final
weights, optimizer states and losses must agree to float32 round-off; a loss
scaled for the local instead of the global batch, a gradient all-reduced
twice, or noise drawn per replica where one device draws it per batch would
each break the match.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord.saving import checkpoints
from training import run as run_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
RTOL, ATOL = 1e-5, 1e-6


def _images_case(tmp_path):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (48, 4, 4), np.uint8)
  np.savez(tmp_path / "mnist.npz", x_train=x[:32], y_train=np.zeros(32),
           x_test=x[32:], y_test=np.zeros(16))
  # 2 steps of 16 images: 8 per replica, dequantized before the split.
  return ["--data", "mnist", "--data-root", str(tmp_path), "--batch-size",
          "16", "--dims", "4", "--multiscale", "false", "--num-blocks", "1",
          "--solver", "euler", "--step-size", "1.0", "--trace", "exact",
          "--steps", "2", "--steps-per-epoch", "1", "--eval-size", "8",
          "--eval-batch-size", "8"]


def _vae_case(tmp_path):
  rng = np.random.default_rng(1)
  np.savez(tmp_path / "mnist.npz",
           x_train=rng.integers(0, 256, (100, 28, 28), np.uint8),
           y_train=np.zeros(100, np.uint8),
           x_test=rng.integers(0, 256, (4, 28, 28), np.uint8),
           y_test=np.zeros(4, np.uint8))
  # 2 steps of 50 images: dynamic binarization and the posterior's base
  # noise are random, but drawn by the pipeline for the global batch.
  return ["--flow", "ffjord", "--data", "mnist", "--data-root",
          str(tmp_path), "--latent-dim", "2", "--context-dim", "2",
          "--encoder-hidden", "8", "--decoder-hidden", "8", "--cnf-hidden",
          "8", "--solver", "euler", "--step-size", "1.0", "--trace", "exact",
          "--gradient", "backprop", "--epochs", "1", "--batch-size", "50",
          "--eval-batch-size", "4", "--iwae-samples", "2",
          "--iwae-test-size", "2", "--iwae-chunk", "2", "--progress", "0"]


def _tabular_case(tmp_path):
  rng = np.random.default_rng(2)
  data = rng.normal(size=(300, 3)) @ [[1, .5, 0], [0, 1, .3], [0, 0, 1]]
  os.makedirs(tmp_path / "miniboone")
  np.save(tmp_path / "miniboone" / "data.npy", data)
  # 243 training rows: 3 steps of 80, split 40 + 40 over the replicas.
  return ["--data", "miniboone", "--data-root", str(tmp_path),
          "--hdim-factor", "2", "--nhidden", "1", "--num-blocks", "2",
          "--solver", "euler", "--step-size", "1.0", "--trace", "exact",
          "--batch-size", "80", "--steps", "3", "--steps-per-epoch", "3",
          # Evaluation on the training grid keeps the test short.
          "--eval-solver", "euler", "--max-val", "26", "--max-test", "26",
          "--weight-decay", "0.1"]  # large enough to see if it were doubled


CASES = {"images": _images_case, "vae": _vae_case, "tabular": _tabular_case}


def _state(out, keys):
  """The final checkpoint (weights, optimizer, epoch) and the curve's logs."""
  state = checkpoints.read_latest(out / "checkpoints")
  curve = run_lib.read_curve(str(out))
  for key in keys:
    state[f"curve_{key}"] = np.array([row[key] for row in curve])
  return state


def _images_state(out):
  return _state(out, ("nll", "bpd", "nfe"))


def _vae_state(out):
  state = checkpoints.read_latest(out / "checkpoints")
  metrics = json.loads((out / "metrics.json").read_text())
  for key in ("train_neg_elbo", "train_kl", "train_nfe", "test_neg_elbo"):
    state[key] = np.array(metrics[key])
  return state


def _tabular_state(out):
  state = _state(out, ("nll",))
  metrics = json.loads((out / "metrics.json").read_text())
  for key in ("test_nll", "val_nll"):
    state[key] = np.array(metrics[key])
  return state


STATES = {"images": _images_state, "vae": _vae_state,
          "tabular": _tabular_state}
# The metric that counts the training steps, and its value.
STEPS = {"images": ("steps", 2), "vae": ("optimizer_steps", 2),
         "tabular": ("steps", 3)}


def _mirrored(cli, args, out, env):
  env = {**env, "TF_FFJORD_LOGICAL_CPUS": "2"}
  proc = subprocess.run(
      [sys.executable, "-m", f"training.{cli}_cli", *args, "--out", str(out),
       "--strategy", "mirrored"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.parametrize("cli", sorted(CASES))
def test_mirrored_two_devices_matches_default(cli, tmp_path, subprocess_env):
  import importlib  # pylint: disable=g-import-not-at-top
  args = CASES[cli](tmp_path)
  module = importlib.import_module(f"training.{cli}_cli")
  module.main([*args, "--out", str(tmp_path / "default"), "--strategy",
               "default"])
  _mirrored(cli, args, tmp_path / "mirrored", subprocess_env)

  metrics = [json.loads((tmp_path / run / "metrics.json").read_text())
             for run in ("default", "mirrored")]
  assert [m["replicas"] for m in metrics] == [1, 2]
  key, steps = STEPS[cli]
  assert [m[key] for m in metrics] == [steps, steps]
  ref, got = (STATES[cli](tmp_path / run) for run in ("default", "mirrored"))
  assert sorted(got) == sorted(ref)
  assert len(ref) > 5
  for key, value in ref.items():
    np.testing.assert_allclose(got[key], value, rtol=RTOL, atol=ATOL,
                               err_msg=key)

  if cli in ("images", "tabular"):
    # Both runs exported their model; the mirrored one serves the same
    # densities (loaded here, outside any strategy).
    x = {"images": lambda: np.random.default_rng(3).uniform(
        0.05, 0.95, (3, 4, 4, 1)).astype(np.float32),
         "tabular": lambda: np.random.default_rng(3).normal(
             size=(5, 3)).astype(np.float32)}[cli]()
    # (Keep each loaded object alive while its functions run.)
    loaded = [tf.saved_model.load(str(tmp_path / run / "saved_model"))
              for run in ("default", "mirrored")]
    logp = [m.log_prob(x)["log_prob"].numpy() for m in loaded]
    assert np.all(np.isfinite(logp[0]))
    np.testing.assert_allclose(logp[1], logp[0], rtol=RTOL, atol=1e-5)
