"""ODENet and its time-conditioned layers."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import ODENet
from tf_ffjord.nets.dense import ACTIVATIONS, LAYER_TYPES, time_features


@pytest.mark.parametrize("layer", sorted(LAYER_TYPES))
def test_every_layer_type_maps_shapes_and_uses_time(layer):
  f = ODENet(hidden=(8, 8), layer=layer)
  x = tf.random.normal([5, 3])
  y0, y1 = f(0.0, x), f(0.9, x)
  assert y0.shape == (5, 3)
  if layer == "ignore":
    np.testing.assert_allclose(y0, y1)
  else:
    assert np.max(np.abs(y0 - y1)) > 1e-6
  # Scalar and per-example times agree.
  np.testing.assert_allclose(f(tf.fill([5], 0.9), x), y1, atol=1e-6)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_activations_and_config_round_trip(activation):
  f = ODENet(hidden=(4,), activation=activation, context_dim=2)
  x, c = tf.random.normal([3, 2]), tf.random.normal([3, 2])
  y = f(0.3, x, c)
  g = ODENet.from_config(f.get_config())
  g(0.3, x, c)
  g.set_weights(f.get_weights())
  np.testing.assert_allclose(g(0.3, x, c), y, atol=1e-6)


# A mixed-precision net keeps its policy through its config and `.keras`.
@pytest.mark.parametrize("dtype", [None, "mixed_bfloat16"])
def test_keras_save_and_load(tmp_path, dtype):
  f = ODENet(hidden=(8,), layer="concatsquash", dtype=dtype)
  x = tf.random.normal([4, 2])
  y = f(0.5, x)
  path = str(tmp_path / "f.keras")
  f.save(path)
  g = keras.saving.load_model(path)
  assert g.dtype_policy.name == (dtype or "float32")
  np.testing.assert_allclose(g(0.5, x), y, atol=1e-6)


def test_bad_options_and_missing_context():
  with pytest.raises(ValueError, match="layer type"):
    ODENet(layer="conv")
  with pytest.raises(ValueError, match="activation"):
    ODENet(activation="gelu2")
  f = ODENet(hidden=(4,), context_dim=2)
  with pytest.raises(ValueError, match="context"):
    f(0.0, tf.zeros([2, 2]))


def test_time_features_broadcast():
  x = tf.zeros([4, 2])
  assert time_features(0.5, x).shape == (1, 1)  # one row, broadcast
  assert time_features(tf.fill([4], 0.5), x).shape == (4, 1)
  assert time_features(tf.ones([4]), x, tf.ones([4, 3])).shape == (4, 4)
  assert time_features(0.5, x, tf.ones([3])).shape == (4, 4)


@pytest.mark.parametrize("layer", sorted(LAYER_TYPES))
def test_scalar_time_equals_per_example_time(layer):
  # A scalar t runs the time layers on one row; the result must equal the
  # same time given per example.
  f = ODENet(hidden=(8, 8), layer=layer, activation="tanh")
  x = tf.random.stateless_normal([5, 3], [1, 2])
  np.testing.assert_allclose(f(0.3, x), f(tf.fill([5], 0.3), x),
                             rtol=1e-6, atol=1e-6)


def test_odenet_takes_a_callable_activation_and_saves_it():
  x = tf.constant([[0.3, -1.2], [2.0, 0.1]])
  by_fn = ODENet(hidden=(4,), dim=2, activation=keras.activations.softplus)
  by_name = ODENet(hidden=(4,), dim=2, activation="softplus")
  by_fn(0.5, x), by_name(0.5, x)  # pylint: disable=expression-not-assigned
  by_name.set_weights(by_fn.get_weights())
  np.testing.assert_allclose(by_fn(0.5, x), by_name(0.5, x), rtol=1e-6)
  net = ODENet(hidden=(4,), dim=2, activation=keras.activations.gelu)
  clone = ODENet.from_config(net.get_config())
  assert clone.activation is keras.activations.gelu
  with pytest.raises(ValueError, match="callable"):
    ODENet(activation="gelu_typo")
  with pytest.raises(ValueError, match="callable"):
    ODENet(activation=3)
