"""`MADE`: a conditional masked autoencoder, the autoregressive network of IAF/MAF posteriors, and IAF steps over it."""

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

__all__ = ["MADE", "iaf_steps", "iaf_forward"]

tfb = tfp.bijectors


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

  def __init__(self, dim: int, hidden: Sequence[int] = (256,),
               context_dim: int = 0, activation: str = "elu",
               **kwargs: Any) -> None:
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

  def call(self, x: tf.Tensor,
           context: tf.Tensor | None = None) -> tuple[tf.Tensor, tf.Tensor]:
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

  def get_config(self) -> dict[str, Any]:
    return {**super().get_config(), "dim": self.dim, "hidden": self.hidden,
            "context_dim": self.context_dim,
            "activation": self.activation_name}


def iaf_steps(mades: Sequence[MADE]) -> list[tfp.bijectors.Bijector]:
  """One IAF step per MADE: `tfb.Invert(tfb.MaskedAutoregressiveFlow)`.

  Sampling then runs in MAF's one-pass direction; the conditional input
  arrives as a bijector kwarg and is handed to the MADE.
  """
  return [tfb.Invert(tfb.MaskedAutoregressiveFlow(
      shift_and_log_scale_fn=(
          lambda z, conditional_input=None, made=m: made(z, conditional_input)),
      name=f"maf_{i}")) for i, m in enumerate(mades)]


def iaf_forward(steps: Sequence[tfp.bijectors.Bijector], z: tf.Tensor,
                context: tf.Tensor | None) -> tuple[tf.Tensor, tf.Tensor]:
  """`(z_K, log|det dz_K/dz_0|)` through the steps, order reversed between them.

  #### Examples

  >>> steps = iaf_steps([MADE(2, (4,), 1), MADE(2, (4,), 1)])
  >>> z, ldj = iaf_forward(steps, tf.ones([3, 2]), tf.ones([3, 1]))
  >>> float(tf.reduce_max(tf.abs(ldj)))  # zero output layers: the identity
  0.0
  """
  ldj = tf.zeros(tf.shape(z)[:1], z.dtype)
  for i, step in enumerate(steps):
    if i:  # reverse the order so every variable gets to condition
      z = tf.reverse(z, axis=[-1])
    ldj += step.forward_log_det_jacobian(z, event_ndims=1,
                                         conditional_input=context)
    z = step.forward(z, conditional_input=context)
  return z, ldj
