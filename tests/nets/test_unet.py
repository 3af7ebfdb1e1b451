"""UNetODENet: the time-conditioned U-Net dynamics for image flows."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ffjord

from tf_ffjord import FFJORD
from tf_ffjord.nets.unet import UNetODENet


def _net(**kwargs):
  return UNetODENet(**{"channels": (8, 16), "groups": 4, "time_dim": 16,
                       **kwargs})


def test_output_shape_and_channels():
  x = tf.random.normal([3, 8, 12, 2])
  assert _net()(0.3, x).shape == (3, 8, 12, 2)
  assert _net(channels=(8, 8, 16))(0.3, x).shape == (3, 8, 12, 2)
  assert _net(out_channels=1)(0.3, x).shape == (3, 8, 12, 1)


def test_depends_on_time():
  f = _net()
  x = tf.random.normal([2, 8, 8, 1])
  assert np.max(np.abs(f(0.1, x) - f(0.9, x))) > 1e-4


def test_scalar_time_equals_per_example_time():
  f = _net()
  x = tf.random.normal([4, 8, 8, 1])
  t = tf.constant([0.0, 0.3, 0.6, 1.0])
  per_example = f(t, x)
  for i in range(4):
    np.testing.assert_allclose(per_example[i:i + 1], f(t[i], x[i:i + 1]),
                               atol=1e-5)
  np.testing.assert_allclose(f(tf.fill([4], 0.6), x), f(0.6, x), atol=1e-5)


def test_examples_do_not_mix():
  f = _net()
  x = tf.random.normal([3, 8, 8, 1])
  y = f(0.5, x)
  x2 = tf.concat([x[:1], 10.0 * tf.random.normal([2, 8, 8, 1])], 0)
  np.testing.assert_allclose(f(0.5, x2)[0], y[0], atol=1e-5)


@pytest.mark.parametrize("groups", [4, 0])
def test_gradients_reach_every_weight(groups):
  f = _net(groups=groups, context_dim=2)
  x = tf.random.normal([2, 8, 8, 1])
  c = tf.random.normal([2, 2])
  with tf.GradientTape() as tape:
    loss = tf.reduce_sum(tf.square(f(tf.constant([0.2, 0.7]), x, c)))
  grads = tape.gradient(loss, f.trainable_variables)
  assert len(grads) == len(f.trainable_variables) > 0
  for v, g in zip(f.trainable_variables, grads):
    assert g is not None and np.max(np.abs(g)) > 0, v.path


def test_keras_save_and_load_round_trip(tmp_path):
  f = _net(activation="softplus")
  x = tf.random.normal([2, 8, 8, 1])
  y = f(0.4, x)
  path = str(tmp_path / "unet.keras")
  f.save(path)
  g = keras.saving.load_model(path)
  np.testing.assert_allclose(g(0.4, x), y, atol=1e-6)
  assert g.get_config()["channels"] == (8, 16)


def test_runs_inside_an_ffjord_solve():
  f = _net()
  bij = FFJORD(f, trace="hutchinson", event_ndims=3,
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-3, atol=1e-3))
  sol = tf.function(lambda x: bij.solve(x, seed=tf.constant([1, 2])))(
      tf.random.normal([2, 8, 8, 1]))
  assert sol.state.shape == (2, 8, 8, 1) and sol.log_det.shape == (2,)
  assert np.all(np.isfinite(sol.log_det))


def test_bad_inputs_raise_clear_errors():
  with pytest.raises(ValueError, match=r"not divisible by 4"):
    _net(channels=(8, 8, 16))(0.0, tf.zeros([1, 6, 8, 1]))
  with pytest.raises(ValueError, match="smooth activation"):
    UNetODENet(activation="relu")
  with pytest.raises(ValueError, match="must divide"):
    UNetODENet(channels=(6, 8), groups=4)
  with pytest.raises(ValueError, match=r"images \[batch, H, W, C\]"):
    _net()(0.0, tf.zeros([2, 8]))
