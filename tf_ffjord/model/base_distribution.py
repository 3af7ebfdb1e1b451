"""The standard-normal distribution: every flow's base and the VAE's prior."""

import tensorflow as tf
import tensorflow_probability as tfp
from tf_ffjord._types import DTypeLike, ShapeLike

__all__ = ["standard_normal"]

tfd = tfp.distributions


def standard_normal(
    event_shape: ShapeLike,
    dtype: DTypeLike = "float32") -> tfp.distributions.Distribution:
  """The standard-normal distribution over events of `event_shape`.

  Its `log_prob` sums over the event dimensions.

  Args:
    event_shape: shape of one event, e.g. `(2,)` or `(28, 28, 1)`.
    dtype: float dtype.

  Returns:
    A `tfd.Sample` of `tfd.Normal(0, 1)`.

  #### Examples

  >>> standard_normal((2,)).log_prob(tf.zeros([3, 2])).shape
  TensorShape([3])
  """
  dtype = tf.as_dtype(dtype)
  return tfd.Sample(tfd.Normal(tf.zeros([], dtype), tf.ones([], dtype)),
                    tuple(event_shape))
