"""Tests of the image flows: conv dynamics, logit/squeeze/ODENVP bijectors, ImageFlow, loaders and CLI."""

import gzip
import json
import os
import pickle
import struct

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import ImageFlow, make_solver
from tf_ffjord.cnf import composite as flows
from tf_ffjord.cnf.ffjord import FFJORD
from tf_ffjord.nets.conv import (CONV_LAYER_TYPES, ConcatSquashConv2DTranspose,
                            ConvODENet)
from tf_ffjord.datasets import images as image_data
from tf_ffjord.cnf.image_transforms import LogitTransform, Squeeze, bits_per_dim, dequantize
from tf_ffjord.cnf.multiscale import ODENVP, default_num_scales

tfb = tfp.bijectors

MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "..", "shared", "data",
                     "mnist.npz")


def numeric_jacobian(fn, x, eps=1e-5):
  """Central-difference Jacobian of a batched map on one example `x` [1, ...].

  All 2D perturbed inputs go through `fn` as a single batch.
  """
  d = x.size
  basis = np.eye(d).reshape((d,) + x.shape[1:])
  y = np.asarray(fn(np.concatenate([x + eps * basis, x - eps * basis])))
  return ((y[:d] - y[d:]).reshape(d, d) / (2 * eps)).T  # J[i, j] = dy_i/dx_j


def digits(n, size=8, seed=0):
  """uint8 [n, size, size, 1] digits: MNIST downsampled by block means if the
  shared copy exists, else synthetic strokes (bars and boxes)."""
  rng = np.random.default_rng(seed)
  if os.path.exists(MNIST):
    with np.load(MNIST) as d:
      x = d["x_train"][:n].astype(np.float64)
    x = x[:, 2:26, 2:26].reshape(n, size, 24 // size, size, 24 // size)
    return np.round(x.mean((2, 4)))[..., None].astype(np.uint8)
  x = np.zeros((n, size, size), np.uint8)
  for img in x:
    r, c = rng.integers(1, size - 1, 2)
    img[r, 1:-1] = 255
    img[1:-1, c] = 200
  return x[..., None]


# -- conv dynamics ----------------------------------------------------------


@pytest.mark.parametrize("layer", sorted(CONV_LAYER_TYPES))
def test_conv_odenet_shapes_and_time_dependence(layer):
  f = ConvODENet(dims=(4, 4), strides=(2, 1, -2), layer=layer)
  x = tf.random.normal([3, 8, 8, 2], seed=1)
  y0, y1 = f(0.0, x), f(1.0, x)
  assert y0.shape == x.shape
  # concat and concatsquash depend on t; ignore does not.
  assert (float(tf.reduce_max(tf.abs(y0 - y1))) > 1e-6) == (layer != "ignore")
  # t as a [batch] vector (one time per example) matches scalar calls.
  y = f(tf.constant([0.0, 1.0, 0.0]), x)
  np.testing.assert_allclose(y[1], y1[1], atol=1e-5)
  np.testing.assert_allclose(y[2], y0[2], atol=1e-5)


def test_conv_transpose_layer_upsamples():
  layer = ConcatSquashConv2DTranspose(5)
  assert layer(tf.zeros([2, 1]), tf.zeros([2, 4, 4, 3])).shape == (2, 8, 8, 5)


def test_conv_odenet_bad_arguments():
  with pytest.raises(ValueError, match="len\\(dims\\) \\+ 1"):
    ConvODENet(dims=(4, 4), strides=(1, 1))
  with pytest.raises(ValueError, match="return to the input resolution"):
    ConvODENet(dims=(4,), strides=(2, 1))
  with pytest.raises(ValueError, match="Unknown layer type .blend. for ConvODENet"):
    ConvODENet(layer="blend")
  with pytest.raises(ValueError, match="images"):
    ConvODENet(dims=(4,))(0.0, tf.zeros([2, 3]))


def test_conv_odenet_config_round_trip():
  f = ConvODENet(dims=(4,), strides=(2, -2), layer="concatsquash")
  x = tf.random.normal([1, 4, 4, 1], seed=2)
  y = f(0.3, x)
  g = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(f))
  g(0.3, x)
  g.set_weights(f.get_weights())
  np.testing.assert_allclose(g(0.3, x), y, atol=1e-6)


# -- bijectors ----------------------------------------------------------------


def test_logit_round_trip_and_log_det():
  b = LogitTransform(alpha=0.05)
  x = np.random.default_rng(0).uniform(0.001, 0.999, [1, 2, 2, 1])
  y = b.inverse(x)
  np.testing.assert_allclose(b.forward(y), x, rtol=0, atol=1e-12)
  np.testing.assert_allclose(b.inverse(b.forward(y)), y, rtol=1e-10)
  jac = numeric_jacobian(lambda v: b.inverse(v).numpy().reshape(len(v), -1),
                         x, eps=1e-6)
  expected = np.linalg.slogdet(jac)[1]
  ildj = b.inverse_log_det_jacobian(x, event_ndims=3)
  np.testing.assert_allclose(ildj, [expected], rtol=1e-7)
  np.testing.assert_allclose(b.forward_log_det_jacobian(y, event_ndims=3),
                             -ildj, rtol=1e-10)
  # The paper's MNIST alpha keeps pixel 0 finite.
  assert np.isfinite(LogitTransform(1e-6).inverse(0.0).numpy())
  with pytest.raises(ValueError, match="alpha"):
    LogitTransform(0.5)


def test_squeeze_round_trip_permutation_and_log_det():
  b = Squeeze()
  x = np.random.default_rng(1).normal(size=[3, 4, 6, 2])
  y = b.forward(x)
  assert y.shape == (3, 2, 3, 8)
  np.testing.assert_array_equal(b.inverse(y), x)  # exact
  np.testing.assert_array_equal(np.sort(np.ravel(y)), np.sort(np.ravel(x)))
  # Pixel (0, 1) of channel 0 lands in the first block's channels.
  assert float(y[0, 0, 0, 2]) == x[0, 0, 1, 0]
  jac = numeric_jacobian(lambda v: b.forward(v).numpy().reshape(len(v), -1),
                         x[:1, :2, :2], eps=1e-3)
  np.testing.assert_allclose(np.abs(jac).sum(0), 1.0)  # a permutation
  assert abs(np.linalg.slogdet(jac)[1]) < 1e-9
  assert float(b.forward_log_det_jacobian(x, event_ndims=3)) == 0.0
  assert b.forward_event_shape([4, 6, 2]) == [2, 3, 8]
  assert b.inverse_event_shape([2, 3, 8]) == [4, 6, 2]
  with pytest.raises(ValueError, match="divisible"):
    b.forward(np.zeros([1, 3, 4, 1]))


def test_default_num_scales_follows_the_paper():
  assert default_num_scales(28, 28) == 3
  assert default_num_scales(32, 32) == 4
  assert default_num_scales(8, 8) == 2


def test_odenvp_packs_every_dimension_with_analytic_flows():
  # Elementwise scalings with known log-dets: the stack must keep every value
  # (a permutation times the scalings) and sum the log-dets.
  shapes = ODENVP.flow_shapes((8, 8, 2), num_blocks=1)
  assert shapes == [(8, 8, 2), (4, 4, 8), (4, 4, 4)]
  stack = ODENVP([tfb.Scale(np.float64(k + 2)) for k in range(3)], (8, 8, 2),
                 num_blocks=1)
  assert stack.num_scales == 2 and len(stack.all_flows) == 3
  x = np.random.default_rng(2).normal(size=[2, 8, 8, 2])
  sol = stack.solve(x, "inverse")
  assert sol.state.shape == x.shape
  expected = -sum(np.prod(shape) * np.log(k + 2)
                  for k, shape in enumerate(shapes))
  np.testing.assert_allclose(sol.log_det, [expected] * 2, rtol=1e-12)
  back = stack.solve(sol.state, "forward")
  np.testing.assert_allclose(back.state, x, rtol=1e-12)
  np.testing.assert_allclose(back.log_det, -sol.log_det, rtol=1e-12)
  # With identity flows the stack is a pure permutation of the pixels.
  ident = ODENVP([tfb.Identity()] * 6, (8, 8, 2), num_blocks=2)
  z = ident.inverse(x)
  np.testing.assert_array_equal(np.sort(np.ravel(z)), np.sort(np.ravel(x)))
  np.testing.assert_array_equal(ident.forward(z), x)
  with pytest.raises(ValueError, match="needs 3 flows"):
    ODENVP([tfb.Identity()], (8, 8, 2), num_blocks=1)


def _ffjord_stack(shape, trace="exact", **kwargs):
  blocks = []
  for index, s in enumerate(ODENVP.flow_shapes(shape, num_blocks=1)):
    net = ConvODENet(dims=(4,), layer="concatsquash", activation="tanh",
                     channels=s[-1], dtype="float64", name=f"net{index}")
    net(tf.constant(0.0, tf.float64), tf.zeros([1, *s], tf.float64))
    # Non-trivial dynamics: scale up the random initial weights.
    net.set_weights([2.0 * w for w in net.get_weights()])
    blocks.append(FFJORD(net, trace=trace, event_ndims=3, **kwargs))
  return ODENVP(blocks, shape, num_blocks=1)


def test_odenvp_log_det_matches_numeric_jacobian():
  stack = _ffjord_stack((4, 4, 1),
                        solver=make_solver("dopri5", rtol=1e-10, atol=1e-10))
  x = np.random.default_rng(3).normal(size=[1, 4, 4, 1])
  fn = tf.function(lambda v: stack.solve(v, "inverse"), autograph=False)
  sol = fn(tf.constant(x))
  assert int(sol.nfe) > 0
  log_det = sol.log_det
  jac = numeric_jacobian(
      lambda v: fn(tf.constant(v)).state.numpy().reshape(len(v), -1), x)
  sign, expected = np.linalg.slogdet(jac)
  assert sign != 0 and abs(expected) > 0.05  # a non-trivial map
  np.testing.assert_allclose(float(log_det[0]), expected, atol=1e-5)


def test_odenvp_forward_inverts_inverse():
  stack = _ffjord_stack((4, 4, 1),
                        solver=make_solver("dopri5", rtol=1e-8, atol=1e-8))
  z = np.random.default_rng(4).normal(size=[2, 4, 4, 1])
  fwd = tf.function(lambda v: stack.solve(v, "forward")[:2], autograph=False)
  inv = tf.function(lambda v: stack.solve(v, "inverse")[:2], autograph=False)
  x, fldj = fwd(tf.constant(z))
  z_back, ildj = inv(x)
  assert float(tf.reduce_max(tf.abs(x - z))) > 1e-2  # it did move
  np.testing.assert_allclose(z_back, z, atol=1e-6)
  np.testing.assert_allclose(ildj, -fldj, atol=1e-6)


def test_dequantize_and_bits_per_dim():
  img = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
  x = dequantize(img, seed=[1, 2]).numpy()
  k = img.astype(np.float64)
  assert np.all(x >= k / 256) and np.all(x < (k + 1) / 256)
  np.testing.assert_allclose(dequantize(img / 255.0, seed=[1, 2]), x,
                             atol=1e-7)
  # Uniform density on [0, 1]^D is 8 bits/dim; a density 2^D times higher, 7.
  assert float(bits_per_dim(0.0, 784)) == pytest.approx(8.0)
  assert float(bits_per_dim(784 * np.log(2), 784)) == pytest.approx(7.0)
  with pytest.raises(tf.errors.InvalidArgumentError, match="\\[0, 1\\]"):
    dequantize(np.full([1, 2, 2, 1], 2.0))


# -- the image model ----------------------------------------------------------


def test_image_flow_bits_per_dim_falls():
  keras.utils.set_random_seed(0)
  model = ImageFlow((8, 8, 1), dims=(8,), num_blocks=1, solver="rk4",
                    step_size=1.0)
  blocks = flows.ffjord_blocks(model.bijector)
  assert len(blocks) == 3  # pre/post squeeze at scale 0, then scale 1
  assert all(len(b.keras_layers) == 2 for b in blocks)  # net and learned T
  model.compile(keras.optimizers.Adam(2e-2))
  x = digits(256)
  held_out = digits(512)[256:]
  before = float(tf.reduce_mean(model.bits_per_dim(held_out, seed=[0, 1])))
  history = model.fit(x, batch_size=64, epochs=4, verbose=0)
  after = float(tf.reduce_mean(model.bits_per_dim(held_out, seed=[0, 1])))
  bpd = history.history["bpd"]
  assert set(history.history) == {"loss", "nll", "bpd", "nfe", "nfe_backward"}
  assert history.history["nfe"][-1] == 3 * 4  # 3 blocks x one rk4 step
  assert bpd[-1] < bpd[0] - 1.0, bpd
  assert after < before - 1.0, (before, after)
  # nll and bpd agree: bpd = (nll / D + log 256) / log 2.
  nll = history.history["nll"][-1]
  assert bpd[-1] == pytest.approx((nll / 64 + np.log(256)) / np.log(2),
                                  rel=1e-5)


def test_image_flow_single_scale_config_and_bad_input():
  model = ImageFlow((4, 4, 1), dims=(4,), num_blocks=2, multiscale=False,
                    train_time=False, solver="rk4", step_size=1.0)
  assert len(flows.ffjord_blocks(model.bijector)) == 2
  assert model.get_config()["multiscale"] is False
  clone = ImageFlow.from_config(model.get_config())
  assert len(flows.ffjord_blocks(clone.bijector)) == 2
  assert clone.ffjord_kwargs == {"solver": "rk4", "step_size": 1.0}
  with pytest.raises(ValueError, match="\\[4, 4, 1\\]"):
    model.log_prob(np.zeros([2, 8, 8, 1], np.float32))
  with pytest.raises(ValueError, match="net"):
    ImageFlow((4, 4, 1), net="resnet")


# -- loaders ------------------------------------------------------------------


def _write_idx(path, array):
  codes = {"u1": 0x08, "i4": 0x0C}
  array = np.asarray(array)
  header = bytes([0, 0, codes[array.dtype.str[1:]], array.ndim])
  header += struct.pack(f">{array.ndim}i", *array.shape)
  array = array.astype(array.dtype.newbyteorder(">"))  # IDX is big-endian
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wb") as f:
    f.write(header + array.tobytes())


def test_idx_loader_on_synthetic_files(tmp_path):
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.integers(0, 256, [5, 28, 28], dtype=np.uint8),
            "y_train": rng.integers(0, 10, [5], dtype=np.uint8),
            "x_test": rng.integers(0, 256, [3, 28, 28], dtype=np.uint8),
            "y_test": rng.integers(0, 10, [3], dtype=np.uint8)}
  for key, name in image_data.IDX_FILES.items():
    # Mix plain and gzipped files, as downloads come either way.
    suffix = ".gz" if key.startswith("x_test") else ""
    _write_idx(str(tmp_path / (name + suffix)), arrays[key])
  for name in ("mnist", "fashion-mnist"):
    (x, y), (xt, yt) = image_data.load(name, tmp_path)
    assert x.shape == (5, 28, 28, 1) and x.dtype == np.uint8
    np.testing.assert_array_equal(x[..., 0], arrays["x_train"])
    np.testing.assert_array_equal(y, arrays["y_train"])
    np.testing.assert_array_equal(xt[..., 0], arrays["x_test"])
    np.testing.assert_array_equal(yt, arrays["y_test"])
  ints = np.arange(6, dtype=np.int32).reshape(2, 3) - 3
  _write_idx(str(tmp_path / "ints"), ints)
  np.testing.assert_array_equal(image_data.load_idx(str(tmp_path / "ints")),
                                ints)
  with open(tmp_path / "bad", "wb") as f:
    f.write(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"\x00" * 4)
  with pytest.raises(ValueError, match="10 bytes"):
    image_data.load_idx(str(tmp_path / "bad"))


def test_cifar10_loader_on_synthetic_pickles(tmp_path):
  root = tmp_path / "cifar-10-batches-py"
  root.mkdir()
  rng = np.random.default_rng(0)
  batches = {}
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    data = rng.integers(0, 256, [2, 3072], dtype=np.uint8)
    labels = list(rng.integers(0, 10, 2))
    batches[name] = (data, labels)
    with open(root / name, "wb") as f:  # bytes keys, as the real files have
      pickle.dump({b"batch_label": name.encode(), b"data": data,
                   b"labels": labels, b"filenames": [b"a", b"b"]}, f)
  (x, y), (xt, yt) = image_data.load("cifar10", tmp_path)
  assert x.shape == (10, 32, 32, 3) and xt.shape == (2, 32, 32, 3)
  data = batches["data_batch_2"][0]
  # Row layout: 1024 red, then green, then blue values, each row-major 32x32.
  assert x[2, 0, 1, 0] == data[0, 1]
  assert x[2, 1, 0, 1] == data[0, 1024 + 32]
  assert x[3, 31, 31, 2] == data[1, 3071]
  np.testing.assert_array_equal(yt, batches["test_batch"][1])
  assert list(y[:2]) == batches["data_batch_1"][1]


def test_missing_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="nope.npz"):
    image_data.load("mnist", tmp_path / "nope.npz")
  with pytest.raises(FileNotFoundError, match="train-images-idx3-ubyte"):
    image_data.load("fashion-mnist", tmp_path)
  (tmp_path / "cifar").mkdir()
  with pytest.raises(FileNotFoundError, match="data_batch_1"):
    image_data.load("cifar10", tmp_path / "cifar")
  with pytest.raises(ValueError, match="Unknown image dataset"):
    image_data.load("svhn", tmp_path)
  np.savez(tmp_path / "partial.npz", x_train=np.zeros([1, 2, 2], np.uint8))
  with pytest.raises(ValueError, match="missing arrays"):
    image_data.load("mnist", tmp_path / "partial.npz")


# -- the CLI ------------------------------------------------------------------


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
