"""The XLA-everywhere path (a GPU's default) on CPU: train, sample, export an image flow.

On a GPU, `jit_compile="auto"` compiles every solve and Keras compiles every
train step; on CPU convolutions run plain unless asked. These tests ask
(`TF_FFJORD_JIT_COMPILE=1`, read by `solvers.xla.use_xla` at each call, and
`compile(jit_compile=True)`), so an XLA-incompatible op on that path fails
here instead of on a user's GPU.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import FFJORD, ImageFlow
from tf_ffjord.solvers.xla import JIT_ENV

SHAPE = (4, 4, 1)


@pytest.fixture
def xla_everywhere(monkeypatch):
  monkeypatch.setenv(JIT_ENV, "1")  # after conftest's "0": this one wins


def _images(n, seed):
  return np.random.default_rng(seed).integers(0, 256, (n, *SHAPE)).astype(
      "uint8")


def test_image_flow_trains_samples_and_serves_under_xla(xla_everywhere,
                                                        tmp_path):
  model = ImageFlow(SHAPE, net="conv", dims=(4,), num_blocks=1,
                    multiscale=False, train_time=False, rtol=1e-3, atol=1e-3)
  x = _images(16, 0)
  model.compile(keras.optimizers.Adam(1e-3), jit_compile=True)
  logs = model.fit(x, batch_size=8, epochs=1, verbose=0).history
  assert np.isfinite(logs["nll"][-1]) and logs["nfe"][-1] > 0, logs
  model.compile(keras.optimizers.Adam(1e-3), objective="flow_matching",
                jit_compile=True)
  logs = model.fit(x, batch_size=8, epochs=1, verbose=0).history
  assert np.isfinite(logs["fm_loss"][-1]), logs
  samples = model.sample(3, seed=0)
  assert samples.shape == (3, *SHAPE)
  assert np.all((samples >= 0) & (samples <= 1))
  test = tf.cast(x[:4], tf.float32) / 256.0
  expected = model.log_prob(test)
  loaded = tf.saved_model.load(model.export(str(tmp_path / "saved")))
  served = loaded.signatures["log_prob"](x=test)["log_prob"]
  np.testing.assert_allclose(served, expected, rtol=1e-4)


class HostCallNet(keras.layers.Layer):
  """f(t, z) = -z through `tf.numpy_function`, which XLA cannot compile."""

  def call(self, t, z):
    del t

    @tf.custom_gradient
    def negate(z):
      y = tf.numpy_function(lambda a: -a, [z], z.dtype, stateful=False)
      return tf.ensure_shape(y, z.shape), lambda dy: -dy

    return negate(z)


def test_an_xla_incompatible_op_fails_on_this_path(xla_everywhere):
  # The control: the path above is really compiled, not silently plain.
  z = tf.random.normal([4, 2])
  flow = FFJORD(HostCallNet(), time_length=0.5, trace="exact")
  with pytest.raises((tf.errors.InvalidArgumentError,
                      tf.errors.UnimplementedError), match="(?i)xla|compil"):
    tf.function(flow.inverse)(z)
  # The same flow runs plain (XLA off): the failure above is XLA's.
  plain = FFJORD(HostCallNet(), time_length=0.5, trace="exact",
                 jit_compile=False)
  np.testing.assert_allclose(tf.function(plain.inverse)(z),
                             z * np.exp(-0.5), rtol=1e-4)
