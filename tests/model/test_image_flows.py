"""ImageFlow (tf_ffjord/model/builders.py): dequantization and bits/dim, training lowers bits/dim, single-scale config and bad input."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import ImageFlow
from tf_ffjord.cnf import composite as flows
from tf_ffjord.cnf.image_transforms import bits_per_dim, dequantize

from image_digits import digits


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
