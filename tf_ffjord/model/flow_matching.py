"""Simulation-free (conditional) flow matching for FFJORD dynamics."""

import numpy as np
import tensorflow as tf

from tf_ffjord._types import Dynamics, SeedLike, TensorLike

__all__ = ["flow_matching_loss", "ot_pairing", "sample_path"]


def _assignment(cost):
  # scipy is imported lazily: only the OT option needs it.
  try:
    from scipy.optimize import linear_sum_assignment  # pylint: disable=g-import-not-at-top
  except ImportError as e:  # pragma: no cover
    raise ImportError("Flow matching with ot=True needs scipy "
                      "(pip install scipy).") from e
  rows, cols = linear_sum_assignment(cost)
  perm = np.empty(cost.shape[0], dtype=np.int32)
  perm[rows] = cols
  return perm


def ot_pairing(x: tf.Tensor, z: tf.Tensor) -> tf.Tensor:
  """Exact minibatch optimal-transport pairing of `x` with `z`.

  Solves the assignment problem with squared Euclidean cost by scipy's
  `linear_sum_assignment` (through `tf.numpy_function`, so it runs inside a
  `tf.function` but is not XLA-compilable), and returns `z` reordered so
  that `x[i]` is paired with the returned row `i`. A permutation of i.i.d.
  base samples keeps their marginal distribution, so flow matching still
  transports the data to the base, along straighter, non-crossing paths.

  Args:
    x: `[batch, *event]` data.
    z: `[batch, *event]` base samples, same shape as `x`.

  Returns:
    `z` permuted along the batch axis.

  Raises:
    ValueError: `x` and `z` have different static shapes.

  #### References

  [1]: Alexander Tong et al. Improving and generalizing flow-based generative
       models with minibatch optimal transport. TMLR 2024.
       https://arxiv.org/abs/2302.00482
  """
  x = tf.convert_to_tensor(x)
  z = tf.convert_to_tensor(z, dtype=x.dtype)
  if not x.shape.is_compatible_with(z.shape):
    raise ValueError(f"ot_pairing needs x and z of the same shape, got "
                     f"{x.shape} and {z.shape}.")
  batch = tf.shape(x)[0]
  xf = tf.reshape(x, [batch, -1])
  zf = tf.reshape(z, [batch, -1])
  # ||x_i - z_j||^2 without a [B, B, D] intermediate.
  cost = (tf.reduce_sum(tf.square(xf), -1)[:, None]
          + tf.reduce_sum(tf.square(zf), -1)[None, :]
          - 2.0 * tf.matmul(xf, zf, transpose_b=True))
  # float64 keeps the assignment exact for near-ties in float32 costs.
  perm = tf.numpy_function(_assignment, [tf.cast(cost, tf.float64)],
                           tf.int32, stateful=False, name="linear_sum_assignment")
  perm = tf.ensure_shape(perm, [x.shape[0]])
  return tf.gather(z, perm)


def sample_path(x: tf.Tensor, z: tf.Tensor, tau: tf.Tensor,
                sigma: float = 0.0,
                noise: tf.Tensor | None = None) -> tf.Tensor:
  """A point on the straight path from data `x` (tau=0) to base `z` (tau=1).

  Args:
    x: `[batch, *event]` data.
    z: `[batch, *event]` base samples.
    tau: `[batch]` fractions of the path in [0, 1].
    sigma: standard deviation of Gaussian noise around the path (0 for
      straight deterministic paths).
    noise: `[batch, *event]` standard-normal noise, required if `sigma > 0`.

  Returns:
    `(1 - tau) x + tau z (+ sigma noise)`.
  """
  tau = tf.reshape(tf.cast(tau, x.dtype),
                   tf.concat([[-1], tf.ones([x.shape.rank - 1], tf.int32)], 0))
  xt = (1.0 - tau) * x + tau * z
  if sigma:
    xt += sigma * noise  # type: ignore[operator]  # required when sigma > 0
  return xt


def flow_matching_loss(dynamics: Dynamics, x: TensorLike,
                       context: TensorLike | None = None,
                       time_length: float | tf.Tensor = 1.0,
                       initial_time: float = 0.0, ot: bool = False,
                       sigma: float = 0.0, z: TensorLike | None = None,
                       seed: SeedLike = None) -> tf.Tensor:
  """Conditional flow-matching regression loss, one value per example.

  FFJORD integrates dz/dt = f(t, z) from the data at t0 to the base sample
  at t0 + T. Flow matching trains the same f without an ODE solve: draw a
  base sample z ~ N(0, I) (optionally paired to the batch by minibatch
  optimal transport), a fraction tau ~ U(0, 1) per example, the point
  x_t = (1 - tau) x + tau z on the straight path at time t = t0 + tau T, and
  regress f(t, x_t) onto the path's velocity (z - x) / T. The minimizer is
  a vector field whose flow maps the data distribution to N(0, I), so the
  FFJORD bijector built on it gives densities (by the usual solve and trace)
  and samples.

  Args:
    dynamics: callable `f(t, x)` or `f(t, x, context)` accepting a `[batch]`
      time vector.
    x: `[batch, *event]` float data.
    context: optional `[batch, k]` conditioning, passed to `dynamics`.
    time_length: T, a float or scalar tensor (treated as a constant).
    initial_time: t0.
    ot: pair base samples to the data by exact minibatch OT (`ot_pairing`).
    sigma: noise standard deviation around the straight paths (Tong et al.'s
      I-CFM uses a small sigma; 0 gives rectified-flow style paths).
    z: optional `[batch, *event]` base samples; drawn from N(0, I) if None.
    seed: optional stateless seed (shape `[2]` int tensor) for z, tau and the
      path noise; stateful random ops if None.

  Returns:
    A `[batch]` tensor: sum over the event of (f(t, x_t) - (z - x) / T)^2.
    Minimize its mean.

  Raises:
    ValueError: non-float data or a negative sigma.

  #### Examples

  >>> f = ODENet(hidden=(16,), dim=2)
  >>> x = datasets.toy.sample("8gaussians", 64, seed=0)
  >>> flow_matching_loss(f, x, ot=True).shape
  TensorShape([64])

  #### References

  [1]: Yaron Lipman, Ricky T. Q. Chen, Heli Ben-Hamu, Maximilian Nickel, Matt
       Le. Flow Matching for Generative Modeling. ICLR 2023.
       https://arxiv.org/abs/2210.02747
  [2]: Alexander Tong et al. Improving and generalizing flow-based generative
       models with minibatch optimal transport. TMLR 2024.
       https://arxiv.org/abs/2302.00482
  """
  x = tf.convert_to_tensor(x)
  if not x.dtype.is_floating:
    raise ValueError(f"flow_matching_loss expects float data, got dtype "
                     f"{x.dtype.name}.")
  if sigma < 0:
    raise ValueError(f"sigma must be >= 0, got {sigma}.")
  dtype = x.dtype
  shape = tf.shape(x)
  batch = shape[0]
  if seed is not None:
    seeds = tf.random.experimental.stateless_split(seed, 3)
  if z is None:
    z = (tf.random.normal(shape, dtype=dtype) if seed is None else
         tf.random.stateless_normal(shape, seeds[0], dtype=dtype))
  z = tf.convert_to_tensor(z, dtype=dtype)
  if ot:
    z = ot_pairing(x, z)
  tau = (tf.random.uniform([batch], dtype=dtype) if seed is None else
         tf.random.stateless_uniform([batch], seeds[1], dtype=dtype))
  noise = None
  if sigma:
    noise = (tf.random.normal(shape, dtype=dtype) if seed is None else
             tf.random.stateless_normal(shape, seeds[2], dtype=dtype))
  time_length = tf.stop_gradient(tf.cast(time_length, dtype))
  xt = sample_path(x, z, tau, sigma, noise)
  t = tf.cast(initial_time, dtype) + tau * time_length
  if context is None:
    v = dynamics(t, xt)
  else:
    v = dynamics(t, xt, tf.cast(context, dtype))
  target = (z - x) / time_length
  err = tf.reshape(tf.square(v - target), [batch, -1])
  return tf.reduce_sum(err, -1)
