"""Tests of the VAE CLI (`training.vae_cli`) on small synthetic MNIST files: outputs, flags, resumable pipeline, resume, time budget."""

import json

import h5py
import numpy as np
import pytest
import tensorflow as tf

from training import command_line as run_cli
from training import run as run_lib
from training import vae_cli as cli


def _fake_mnist(root, n_train=200, n_test=20, name="mnist"):
  """A synthetic file in keras' mnist.npz layout under `root`."""
  rng = np.random.default_rng(0)
  root.mkdir(parents=True, exist_ok=True)
  np.savez(root / f"{name}.npz",
           x_train=rng.integers(0, 256, (n_train, 28, 28), np.uint8),
           y_train=np.zeros(n_train, np.uint8),
           x_test=rng.integers(0, 256, (n_test, 28, 28), np.uint8),
           y_test=np.zeros(n_test, np.uint8))
  return str(root)


def _args(root, out, *extra):
  """A tiny run: 4 steps of 50 images per epoch."""
  return ["--data", "mnist", "--data-root", root, "--out", str(out),
          "--latent-dim", "2", "--context-dim", "2", "--encoder-hidden", "8",
          "--decoder-hidden", "8", "--maf-hidden", "8", "--cnf-hidden", "8",
          "--batch-size", "50", "--eval-batch-size", "8",
          "--iwae-samples", "4", "--iwae-test-size", "4", "--iwae-chunk", "2",
          "--progress", "0", *extra]


def _run(args, stub_evaluation=False, monkeypatch=None):
  """`training.vae_cli.run` of a command line (optionally without evaluation)."""
  if stub_evaluation:
    monkeypatch.setattr(cli, "evaluate", lambda *_: {})
    monkeypatch.setattr(cli, "write_pictures", lambda *_: None)
  config, strategy = cli.cli.parse(cli.VAEConfig, "", args)
  return cli.run(config, strategy)


def _weights(out):
  with h5py.File(out / "vae.weights.h5") as f:
    found = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj[()])
                 if isinstance(obj, h5py.Dataset) else None)
  return found


def test_cli_writes_metrics_pictures_curve_and_weights(tmp_path):
  root = _fake_mnist(tmp_path / "data")
  out = tmp_path / "run"
  # (One Euler step per solve: an exact-trace solve is slow to trace.)
  metrics = cli.main(_args(root, out, "--flow", "ffjord", "--epochs", "1",
                           "--solver", "euler", "--step-size", "1",
                           "--gradient", "adjoint",
                           "--weight-decay", "0.01", "--eval-batch-size",
                           "20", "--iwae-chunk", "4"))
  assert metrics == {**json.loads((out / "metrics.json").read_text()),
                     "config": metrics["config"]}
  for key in ("test_neg_elbo", "iwae_neg_log_px", "train_neg_elbo",
              "train_nfe", "train_nfe_backward", "eval_nfe", "seconds",
              "seconds_elbo", "seconds_iwae"):
    assert np.isfinite(metrics[key]), key
  assert metrics["steps"] == metrics["optimizer_steps"] == 4
  assert metrics["stop_reason"] == "steps" and metrics["replicas"] == 1
  assert metrics["test_images"] == 20 and metrics["iwae_test_images"] == 4
  # One Euler step in training and in the exact-trace evaluation, and one
  # in the adjoint's backward solve.
  assert metrics["train_nfe"] == metrics["eval_nfe"] == 1
  assert metrics["train_nfe_backward"] == 1
  # IWAE is at least the ELBO on average (the same 4 images).
  assert metrics["iwae_neg_log_px"] <= metrics["neg_elbo_on_iwae_images"] + 0.5
  for name in ("reconstructions.png", "samples.png"):
    png = tf.io.decode_png(tf.io.read_file(str(out / name)))
    assert png.shape[0] > 28 and png.shape[-1] == 1
  assert (out / "curve.csv").read_text().startswith("epoch,")
  assert _weights(out)


def test_cli_missing_data_file_is_named(tmp_path, capsys):
  missing = tmp_path / "nowhere"
  with pytest.raises(SystemExit) as e:
    cli.main(_args(str(missing), tmp_path / "run", "--epochs", "1"))
  assert e.value.code == 2
  assert str(missing / "mnist.npz") in capsys.readouterr().err
  # A file without the expected arrays is named too.
  (tmp_path / "bad").mkdir()
  np.savez(tmp_path / "bad" / "mnist.npz", x_train=np.zeros((3, 28, 28)))
  with pytest.raises(ValueError, match=str(tmp_path / "bad" / "mnist.npz")):
    cli.load_images("mnist", str(tmp_path / "bad"))


@pytest.mark.parametrize("flag,value", [
    ("--time-budget", "-1"), ("--batch-size", "0"), ("--flow", "realnvp"),
    ("--ot", "true"), ("--objective", "flow_matching"), ("--export", "ture"),
    ("--encoder-hidden", "8,x"), ("--iwae-samples", "0")])
def test_cli_refuses_bad_values_at_parse_time(flag, value, capsys):
  with pytest.raises(SystemExit) as e:
    cli.main([flag, value])
  assert e.value.code == 2
  err = capsys.readouterr().err
  assert flag in err and "Traceback" not in err


def test_cli_help_says_what_every_flag_does(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  text = " ".join(capsys.readouterr().out.split())
  import dataclasses  # pylint: disable=g-import-not-at-top
  for field in dataclasses.fields(cli.VAEConfig):
    help_line = run_cli.field_metadata(cli.VAEConfig, field.name)["help"]
    assert len(help_line) > 15 and not help_line.startswith("default"), field
    # (argparse wraps lines, also at hyphens.)
    assert "".join(help_line.split()) in text.replace(" ", ""), field.name
  for phrase in ("--data-root", "--time-budget", "seconds",
                 "--eval-batch-size", "decoupled weight decay",
                 "--flow", "amortized CNF", "--iwae-samples"):
    assert phrase in text, phrase


def test_training_batches_are_a_function_of_the_step(tmp_path):
  root = _fake_mnist(tmp_path / "data")
  config, _ = cli.cli.parse(cli.VAEConfig, "", _args(root, tmp_path / "r",
                                                     "--flow", "none"))
  x_train, _ = cli.load_images("mnist", root)
  vae = cli.build_model(config)
  data = cli.train_data(vae, x_train, config)
  run = [(x.numpy(), n.numpy()) for x, n in data(0).take(6)]
  for start in (1, 5):  # a resumed pipeline sees the same batches
    x, noise = next(iter(data(start)))
    np.testing.assert_array_equal(x, run[start][0])
    np.testing.assert_array_equal(noise, run[start][1])
  x = np.stack([b[0] for b in run])
  assert set(np.unique(x)) == {0.0, 1.0}
  # Dynamic binarization: pixel means follow the intensities (~0.5 here),
  # and every step draws its own pixels and noise.
  assert abs(x.mean() - x_train.mean() / 255) < 0.01
  assert not np.array_equal(run[0][1], run[4][1])
  assert not np.array_equal(run[0][0], run[4][0])


def test_cli_resumes_to_the_uninterrupted_run(tmp_path, monkeypatch):
  root = _fake_mnist(tmp_path / "data")
  flags = ("--flow", "none", "--epochs")
  fit = run_lib.fit

  def crash(*args, **kwargs):
    fit(*args, **kwargs)
    raise RuntimeError("killed after training")

  # A crash after two epochs (4 steps each) leaves their checkpoints; the
  # rerun with --epochs 3 trains only the third, from the saved optimizer.
  out = tmp_path / "resumed"
  monkeypatch.setattr(run_lib, "fit", crash)
  with pytest.raises(RuntimeError, match="killed"):
    _run(_args(root, out, *flags, "2"))
  monkeypatch.setattr(run_lib, "fit", fit)
  metrics = _run(_args(root, out, *flags, "3"), True, monkeypatch)
  assert metrics["resumed_at"] == 8
  assert metrics["steps"] == metrics["optimizer_steps"] == 12
  # The same weights as a run that was never interrupted: the batches, their
  # binarization and the posterior noise are functions of the step.
  ref = tmp_path / "uninterrupted"
  _run(_args(root, ref, *flags, "3"), True, monkeypatch)
  got, want = _weights(out), _weights(ref)
  assert sorted(got) == sorted(want) and len(want) > 5
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-6,
                               err_msg=k)
  # A finished run does not train again on a rerun.
  again = _run(_args(root, out, *flags, "3"), True, monkeypatch)
  assert again["resumed_at"] == 12 and again["optimizer_steps"] == 12


def test_cli_stops_at_the_time_budget(tmp_path, monkeypatch):
  root = _fake_mnist(tmp_path / "data")
  metrics = _run(_args(root, tmp_path / "run", "--flow", "none",
                       "--epochs", "50", "--time-budget", "1e-6",
                       "--export", "false"), True, monkeypatch)
  assert metrics["stop_reason"] == "time budget"
  assert metrics["optimizer_steps"] == 1  # the budget is checked per step
  assert not (tmp_path / "run" / "vae.weights.h5").exists()
