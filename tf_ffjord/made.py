"""`MADE`: a conditional masked autoencoder, the autoregressive network of IAF/MAF posteriors."""

import keras
import numpy as np
import tensorflow as tf

__all__ = ["MADE"]


@keras.saving.register_keras_serializable("tf_ffjord")
class MADE(keras.layers.Layer):
  """A conditional masked autoencoder (MADE) returning `(shift, log_scale)`.

  A Keras 3 layer, because `tfb.AutoregressiveNetwork` is a tf-keras layer
  whose weights a Keras 3 model cannot track. Output i depends on inputs
  j < i only (natural order) and on the unmasked context. The output layer
  starts at zero, so a flow built on it starts as the identity.

  Args:
    dim: number of autoregressive variables.
    hidden: widths of the hidden layers.
    context_dim: width of the conditioning vector (0 for none).
    activation: Keras activation name of the hidden layers.
    **kwargs: passed to `keras.layers.Layer`.

  #### References

  [1]: Mathieu Germain, Karol Gregor, Iain Murray, Hugo Larochelle. MADE:
       Masked Autoencoder for Distribution Estimation. ICML 2015.
  """

  def __init__(self, dim, hidden=(256,), context_dim=0, activation="elu",
               **kwargs):
    super().__init__(**kwargs)
    self.dim = int(dim)
    self.hidden = tuple(int(h) for h in hidden)
    self.context_dim = int(context_dim)
    self.activation_name = activation
    self.activation = keras.activations.get(activation)
    # Degrees: inputs 1..D; hidden units cycle over 1..D-1; an output of
    # degree d may see units of degree < d, a hidden unit those of <= its own.
    degrees = [np.arange(1, self.dim + 1)]
    for h in self.hidden:
      degrees.append(np.arange(h) % max(1, self.dim - 1) + 1)
    self._masks = []
    for d_in, d_out in zip(degrees[:-1], degrees[1:]):
      self._masks.append((d_out[None, :] >= d_in[:, None]).astype("float32"))
    out_mask = (degrees[0][None, :] > degrees[-1][:, None]).astype("float32")
    self._masks.append(np.concatenate([out_mask, out_mask], axis=1))
    self.kernels, self.biases = [], []
    for i, m in enumerate(self._masks):
      last = i == len(self._masks) - 1
      init = "zeros" if last else "glorot_uniform"
      self.kernels.append(self.add_weight(shape=m.shape, initializer=init,
                                          name=f"kernel_{i}"))
      self.biases.append(self.add_weight(shape=(m.shape[1],),
                                         initializer="zeros", name=f"bias_{i}"))
    self.context_kernel = None
    if self.context_dim and self.hidden:
      self.context_kernel = self.add_weight(
          shape=(self.context_dim, self.hidden[0]),
          initializer="glorot_uniform", name="context_kernel")

  def call(self, x, context=None):
    if self.context_dim and context is None:
      raise ValueError(f"This MADE has context_dim={self.context_dim}; pass "
                       "a context.")
    h = x
    for i, (w, b, m) in enumerate(zip(self.kernels, self.biases, self._masks)):
      h = tf.matmul(h, w * tf.constant(m, w.dtype)) + b
      if i == 0 and self.context_kernel is not None:
        h = h + tf.matmul(context, self.context_kernel)
      if i < len(self._masks) - 1:
        h = self.activation(h)
    shift, log_scale = tf.split(h, 2, axis=-1)
    return shift, log_scale

  def get_config(self):
    return {**super().get_config(), "dim": self.dim, "hidden": self.hidden,
            "context_dim": self.context_dim,
            "activation": self.activation_name}
