"""Image pieces of flows: the logit transform, squeeze, dequantization and bits/dim."""

import math

import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord._types import SeedLike, TensorLike

__all__ = ["LogitTransform", "Squeeze", "squeeze", "unsqueeze", "dequantize",
           "bits_per_dim"]

tfb = tfp.bijectors

_LOG2 = math.log(2.0)


class LogitTransform(tfp.bijectors.Bijector):
  """Maps unbounded values to pixels in [0, 1] and back, as in RealNVP.

  `inverse(x) = logit(alpha + (1 - 2 alpha) x)` takes dequantized pixels x in
  [0, 1] to the real line (where the flow runs); `forward(y) = (sigmoid(y) -
  alpha) / (1 - 2 alpha)` goes back. `alpha` keeps the logit finite at 0 and 1:
  the paper uses 1e-6 for MNIST and 0.05 for CIFAR-10. Elementwise
  (`forward_min_event_ndims=0`), so pass `event_ndims=3` to sum the log-det
  over an image.

  Args:
    alpha: margin in [0, 0.5).
    validate_args: passed to `tfb.Bijector`.
    name: name scope.

  Raises:
    ValueError: alpha outside [0, 0.5).

  #### Examples

  >>> b = LogitTransform(alpha=0.05)
  >>> float(b.forward(b.inverse(0.3)))  # doctest: +ELLIPSIS
  0.3...

  #### References

  [1]: Laurent Dinh, Jascha Sohl-Dickstein, Samy Bengio. Density estimation
       using Real NVP. ICLR 2017. https://arxiv.org/abs/1605.08803
  """

  def __init__(self, alpha: float = 1e-6, validate_args: bool = False,
               name: str = "logit_transform") -> None:
    parameters = dict(locals())
    alpha = float(alpha)
    if not 0.0 <= alpha < 0.5:
      raise ValueError(f"alpha must be in [0, 0.5), got {alpha}.")
    self.alpha = alpha
    super().__init__(forward_min_event_ndims=0, validate_args=validate_args,
                     parameters=parameters, name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  def _forward(self, y):
    return (tf.sigmoid(y) - self.alpha) / (1.0 - 2.0 * self.alpha)

  def _inverse(self, x):
    s = self.alpha + (1.0 - 2.0 * self.alpha) * x
    return tf.math.log(s) - tf.math.log1p(-s)

  def _inverse_log_det_jacobian(self, x):
    s = self.alpha + (1.0 - 2.0 * self.alpha) * x
    return (math.log1p(-2.0 * self.alpha) - tf.math.log(s)
            - tf.math.log1p(-s))

  def _forward_log_det_jacobian(self, y):
    # d sigmoid / dy = sigmoid(y) sigmoid(-y); log of it, stably.
    return (-tf.math.softplus(-y) - tf.math.softplus(y)
            - math.log1p(-2.0 * self.alpha))


def squeeze(x: tf.Tensor, factor: int = 2) -> tf.Tensor:
  """Space to depth: `[B, H, W, C] -> [B, H/f, W/f, C f^2]`."""
  return tf.nn.space_to_depth(x, factor)


def unsqueeze(x: tf.Tensor, factor: int = 2) -> tf.Tensor:
  """Depth to space, the inverse of `squeeze`."""
  return tf.nn.depth_to_space(x, factor)


class Squeeze(tfp.bijectors.Bijector):
  """Space-to-depth reshuffle of images; a permutation, so log-det 0.

  `forward` squeezes `[B, H, W, C]` to `[B, H/f, W/f, C f^2]`; `inverse`
  undoes it exactly.

  Args:
    factor: block size; H and W must be divisible by it.
    validate_args: passed to `tfb.Bijector`.
    name: name scope.

  #### Examples

  >>> Squeeze().forward(tf.zeros([1, 4, 4, 1])).shape
  TensorShape([1, 2, 2, 4])
  """

  def __init__(self, factor: int = 2, validate_args: bool = False,
               name: str = "squeeze") -> None:
    parameters = dict(locals())
    self.factor = int(factor)
    if self.factor < 2:
      raise ValueError(f"factor must be >= 2, got {factor}.")
    super().__init__(forward_min_event_ndims=3, is_constant_jacobian=True,
                     validate_args=validate_args, parameters=parameters,
                     name=name)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  def _check(self, x):
    if x.shape.rank is not None and x.shape.rank < 3:
      raise ValueError(f"Squeeze expects images [..., H, W, C], got shape "
                       f"{x.shape}.")

  def _apply(self, fn, x):
    self._check(x)
    batch = tf.shape(x)[:-3]
    y = fn(tf.reshape(x, tf.concat([[-1], tf.shape(x)[-3:]], 0)), self.factor)
    return tf.reshape(y, tf.concat([batch, tf.shape(y)[1:]], 0))

  def _forward(self, x):
    if x.shape[-3] is not None and (x.shape[-3] % self.factor
                                     or x.shape[-2] % self.factor):
      raise ValueError(f"Squeeze(factor={self.factor}) needs H and W "
                       f"divisible by {self.factor}, got shape {x.shape}.")
    return self._apply(squeeze, x)

  def _inverse(self, y):
    return self._apply(unsqueeze, y)

  def _forward_log_det_jacobian(self, x):
    return tf.zeros([], x.dtype)

  def _forward_event_shape(self, s):
    f = self.factor
    return tf.TensorShape(s[:-3]).concatenate(
        [None if d is None else d // f for d in s[-3:-1]] +
        [None if s[-1] is None else s[-1] * f * f])

  def _forward_event_shape_tensor(self, s):
    f = self.factor
    return tf.concat([s[:-3], s[-3:-1] // f, s[-1:] * f * f], 0)

  def _inverse_event_shape(self, s):
    f = self.factor
    return tf.TensorShape(s[:-3]).concatenate(
        [None if d is None else d * f for d in s[-3:-1]] +
        [None if s[-1] is None else s[-1] // (f * f)])

  def _inverse_event_shape_tensor(self, s):
    f = self.factor
    return tf.concat([s[:-3], s[-3:-1] * f, s[-1:] // (f * f)], 0)


def dequantize(images: TensorLike, seed: SeedLike = None) -> tf.Tensor:
  """Uniform dequantization x = (255 img + u) / 256, u ~ U(0, 1).

  Args:
    images: pixels as uint8 in {0..255}, or floats in [0, 1] (img = k/255).
    seed: optional stateless seed `[2]`.

  Returns:
    float32 x in [0, 1), of the images' shape.

  Raises:
    InvalidArgumentError: float images outside [0, 1] or not finite.
  """
  images = tf.convert_to_tensor(images)
  if images.dtype.is_integer:
    k = tf.cast(images, tf.float32)
  else:
    images = tf.debugging.assert_all_finite(
        images, "dequantize: images contain NaN or inf")
    with tf.control_dependencies([
        tf.debugging.assert_greater_equal(
            tf.reduce_min(images), tf.constant(0, images.dtype),
            message="dequantize: float images must lie in [0, 1]"),
        tf.debugging.assert_less_equal(
            tf.reduce_max(images), tf.constant(1, images.dtype),
            message="dequantize: float images must lie in [0, 1]")]):
      k = tf.round(255.0 * tf.cast(images, tf.float32))
  if seed is None:
    u = tf.random.uniform(tf.shape(k), dtype=k.dtype)
  else:
    u = tf.random.stateless_uniform(tf.shape(k), seed, dtype=k.dtype)
  return (k + u) / 256.0


def bits_per_dim(log_prob: TensorLike, num_dims: int) -> tf.Tensor:
  """bits/dim = -(log p(x) / D - log 256) / log 2 for x in [0, 1]^D.

  `log_prob` is the density of dequantized pixels scaled to [0, 1] (in
  nats); the log 256 term converts it to the density of the 256-level data.

  #### Examples

  >>> float(bits_per_dim(0.0, 784))  # the uniform density on [0, 1]^D
  8.0
  """
  log_prob = tf.convert_to_tensor(log_prob, tf.float32)
  return -(log_prob / float(num_dims) - math.log(256.0)) / _LOG2
