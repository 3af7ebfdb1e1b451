"""Convolutional dynamics (tf_ffjord/nets/conv.py): shapes, time dependence, config, errors."""


import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord.nets.conv import (CONV_LAYER_TYPES, ConcatSquashConv2DTranspose,
                                 ConvODENet)


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
