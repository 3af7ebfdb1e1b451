"""The image CLI (training/images_cli.py): outputs, resume, flow matching with a U-Net, bad flags, the committed MNIST model."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from image_digits import digits


def _digits_file(tmp_path, n_train=64, n_test=32):
  x = digits(n_train + n_test, size=4)
  np.savez(tmp_path / "mnist.npz", x_train=x[:n_train, ..., 0],
           y_train=np.zeros(n_train, np.uint8), x_test=x[n_train:, ..., 0],
           y_test=np.zeros(n_test, np.uint8))
  return tmp_path


def test_training_cli_writes_outputs_and_resumes(tmp_path):
  from training import images_cli as cli  # pylint: disable=import-outside-toplevel
  root = _digits_file(tmp_path)
  out = tmp_path / "run"
  args = ["--data-root", str(root), "--out", str(out), "--batch-size", "16",
          "--dims", "4", "--step-size", "1.0", "--steps-per-epoch", "1",
          "--multiscale", "false", "--num-blocks", "1", "--eval-size", "20",
          "--eval-batch-size", "10", "--val-size", "8", "--val-every", "1"]
  first = cli.main(args + ["--steps", "2"])
  written = json.loads((out / "metrics.json").read_text())
  assert written["test_bpd"] == first["test_bpd"]
  assert first["steps"] == 2
  assert first["test_examples"] == 20
  assert first["test_subset"] == "first 20 of 32 test images"
  for key in ("test_bpd", "test_bpd_stderr", "eval_nfe", "seconds"):
    assert np.isfinite(first[key])
  assert first["eval_nfe"] > 4  # dopri5 at 1e-5, not the training grid
  with open(out / "samples.png", "rb") as f:
    assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  # A rerun with more steps resumes from the checkpoint.
  second = cli.main(args + ["--steps", "3"])
  assert second["steps"] == 3
  rows = (out / "curve.csv").read_text().splitlines()
  assert rows[0].startswith("epoch,") and "val_bpd" in rows[0]
  assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
  assert (out / "saved_model" / "saved_model.pb").exists()


def test_training_cli_flow_matching_with_unet(tmp_path):
  from training import images_cli as cli  # pylint: disable=import-outside-toplevel
  root = _digits_file(tmp_path)
  out = tmp_path / "fm"
  metrics = cli.main([
      "--data-root", str(root), "--out", str(out), "--objective",
      "flow_matching", "--net", "unet", "--dims", "4,8", "--groups", "2",
      "--activation", "swish", "--multiscale", "false", "--num-blocks", "1",
      "--alpha", "0.05", "--batch-size", "16", "--steps", "4",
      "--steps-per-epoch", "2", "--lr-schedule", "cosine",
      "--warmup-steps", "1", "--clipnorm", "1", "--ema", "0.9",
      "--eval-size", "8", "--eval-rtol", "1e-3", "--eval-atol", "1e-3",
      "--export", "false"])
  assert metrics["steps"] == 4 and np.isfinite(metrics["test_bpd"])
  assert "last_fm_loss" in metrics and metrics["eval_nfe"] > 0


@pytest.mark.parametrize("flags,message", [
    (["--batch-size", "0"], "must be > 0"),
    (["--steps", "-5"], "must be > 0"),
    (["--multiscale", "ture"], "expected true or false"),
    (["--objective", "flow_matching"], "--multiscale false --num-blocks 1"),
    (["--ot", "true"], "--ot applies"),
    (["--net", "resnet"], "invalid choice"),
])
def test_training_cli_refuses_bad_flags(flags, message, capsys):
  from training import images_cli as cli  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as e:
    cli.main(flags)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert message in err[-1] and "Traceback" not in "".join(err)


def test_committed_mnist_saved_model_scores_test_images():
  # docs/experiments/images.md: the committed flow-matching model serves
  # log_prob with TensorFlow alone; on real test digits its bits/dim is
  # near the reported 1.09, on noise far worse.
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  flow = tf.saved_model.load(
      os.path.join(root, "docs", "results", "mnist-fm", "saved_model"))
  rng = np.random.default_rng(0)
  noise = rng.integers(0, 256, (2, 28, 28, 1))
  path = os.path.join(root, "..", "shared", "data", "mnist.npz")
  batches = [noise]
  if os.path.exists(path):
    with np.load(path) as d:
      batches.append(d["x_test"][:2, ..., None])
  bpd = []
  for images in batches:
    x = ((images + rng.uniform(size=images.shape)) / 256.0).astype("float32")
    log_p = flow.log_prob(x)["log_prob"].numpy()
    assert log_p.shape == (2,) and np.all(np.isfinite(log_p))
    bpd.append(-np.mean(log_p) / (784 * np.log(2.0)) + 8.0)
  assert bpd[0] > 3.0  # noise is improbable under a digit model
  if len(bpd) > 1:
    assert 0.8 < bpd[1] < 1.4, bpd
