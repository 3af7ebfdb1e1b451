"""Image flows: logit transform, squeeze, the multiscale ODENVP stack, dequantization, bits/dim."""

import math

import tensorflow as tf
import tensorflow_probability as tfp
from tensorflow_probability.python.internal import cache_util

__all__ = ["LogitTransform", "Squeeze", "ODENVP", "squeeze", "unsqueeze",
           "default_num_scales", "dequantize", "bits_per_dim"]

tfb = tfp.bijectors

_LOG2 = math.log(2.0)


class LogitTransform(tfb.Bijector):
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

  def __init__(self, alpha=1e-6, validate_args=False, name="logit_transform"):
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


def squeeze(x, factor=2):
  """Space to depth: `[B, H, W, C] -> [B, H/f, W/f, C f^2]`."""
  return tf.nn.space_to_depth(x, factor)


def unsqueeze(x, factor=2):
  """Depth to space, the inverse of `squeeze`."""
  return tf.nn.depth_to_space(x, factor)


class Squeeze(tfb.Bijector):
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

  def __init__(self, factor=2, validate_args=False, name="squeeze"):
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


def default_num_scales(height, width):
  """The paper's number of scales: halvings while both sides are >= 4.

  28x28 (MNIST) gives 3 and 32x32 (CIFAR-10) 4; 8x8 gives 2.
  """
  n = 0
  h, w = int(height), int(width)
  while h >= 4 and w >= 4:
    n += 1
    h //= 2
    w //= 2
  return max(n, 1)


class ODENVP(tfb.Bijector):
  """The multiscale stack of CNF blocks of FFJORD's image models.

  Going from data to the base (`inverse`), each scale applies `num_blocks`
  flows; every scale but the last then squeezes (space to depth), applies
  `num_blocks` more flows and factors out half of the channels, which go to
  the base distribution while the other half continue to the next scale. The
  last scale keeps everything. The factored-out parts are not dropped: they
  are packed back (by the inverse of the squeeze) into a latent `z` of the
  data's shape, so `z` has one standard-normal entry per pixel and
  `inverse(forward(z)) == z` up to the solver's error. Squeezes and splits are
  permutations, so the log-det is the sum of the flows' log-dets.

  With `num_scales=1` this is a plain stack of `num_blocks` flows at the full
  resolution (the paper's single-scale model).

  Args:
    event_shape: `(H, W, C)` of the data.
    make_flow: callable `(shape, index) -> Bijector` building one flow on
      events of shape `(h, w, c)` (e.g. a `FFJORD` with `event_ndims=3` and a
      `ConvODENet`); `index` counts the flows from the data side.
    num_blocks: flows before and (for all but the last scale) after each
      squeeze.
    num_scales: number of scales; default `default_num_scales(H, W)` (3 for
      28x28).
    validate_args: passed to `tfb.Bijector`.
    name: name scope.

  Raises:
    ValueError: a bad event shape, or H and W not divisible by
      2**(num_scales - 1).

  #### References

  [1]: Will Grathwohl et al. FFJORD. ICLR 2019, section 4.2.
       https://arxiv.org/abs/1810.01367
  [2]: Laurent Dinh et al. Density estimation using Real NVP. ICLR 2017.
  """

  _cache = cache_util.BijectorCacheWithGreedyAttrs(
      forward_name="_augmented_forward", inverse_name="_augmented_inverse")

  def __init__(self, event_shape, make_flow, num_blocks=2, num_scales=None,
               validate_args=False, name="odenvp"):
    parameters = dict(locals())
    event_shape = tuple(int(d) for d in event_shape)
    if len(event_shape) != 3 or min(event_shape) < 1:
      raise ValueError(f"ODENVP needs an image event shape (H, W, C), got "
                       f"{event_shape}.")
    h, w, c = event_shape
    if num_scales is None:
      num_scales = default_num_scales(h, w)
    num_scales = int(num_scales)
    if num_scales < 1 or int(num_blocks) < 1:
      raise ValueError(f"num_scales and num_blocks must be >= 1, got "
                       f"{num_scales} and {num_blocks}.")
    div = 2 ** (num_scales - 1)
    if h % div or w % div:
      raise ValueError(f"{num_scales} scales need H and W divisible by {div}, "
                       f"got {h}x{w}.")
    self.event_shape_ = event_shape
    self.num_scales = num_scales
    self.num_blocks = int(num_blocks)
    # flows[i] = (before-squeeze flows, after-squeeze flows) of scale i.
    self.flows = []
    self.shapes = []
    index = 0
    with tf.name_scope(name) as scope:
      for i in range(num_scales):
        pre = []
        for _ in range(self.num_blocks):
          pre.append(make_flow((h, w, c), index))
          index += 1
        post = []
        if i < num_scales - 1:
          h, w, c = h // 2, w // 2, c * 4
          for _ in range(self.num_blocks):
            post.append(make_flow((h, w, c), index))
            index += 1
          c = c - c // 2
        self.flows.append((pre, post))
      super().__init__(forward_min_event_ndims=3, is_constant_jacobian=False,
                       validate_args=validate_args, parameters=parameters,
                       name=scope)

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  @property
  def all_flows(self):
    """Every flow in data-to-base order."""
    return [f for pre, post in self.flows for f in pre + post]

  def _is_increasing(self):
    return False

  @staticmethod
  def _apply(flow, x, direction, seed=None):
    """(state, log|det d state / d x|, nfe) of one flow."""
    if hasattr(flow, "solve"):
      sol = flow.solve(x, direction, seed=seed)
      return sol.state, sol.log_det, sol.nfe
    if direction == "inverse":
      y = flow.inverse(x)
      return y, flow.inverse_log_det_jacobian(x, event_ndims=3), 0
    y = flow.forward(x)
    return y, flow.forward_log_det_jacobian(x, event_ndims=3), 0

  def transform(self, x, direction="inverse", seed=None):
    """Runs the stack once: `(y, log_det, nfe)`.

    Args:
      x: `[batch, H, W, C]`: data for `"inverse"`, a base sample for
        `"forward"`.
      direction: `"inverse"` (data -> base) or `"forward"`.
      seed: optional stateless seed `[2]` of the flows' Hutchinson probes
        (flow k uses `seed + [0, k]`).

    Returns:
      `y` of x's shape, `log_det = log|det dy/dx|` per example, and the total
      number of dynamics evaluations (int32).
    """
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 4 or tuple(x.shape[1:]) != self.event_shape_:
      raise ValueError(f"ODENVP expects images [batch, "
                       f"{', '.join(map(str, self.event_shape_))}], got shape "
                       f"{x.shape}.")
    if direction not in ("inverse", "forward"):
      raise ValueError(f"direction must be 'inverse' or 'forward', got "
                       f"{direction!r}.")
    log_det = tf.zeros(tf.shape(x)[:1], x.dtype)
    nfe = tf.constant(0, tf.int32)
    seeds = iter(range(len(self.all_flows)))
    if direction == "forward":
      seeds = iter(reversed(range(len(self.all_flows))))

    def run(flow, h):
      nonlocal log_det, nfe
      k = next(seeds)
      s = None if seed is None else tf.convert_to_tensor(seed) + [0, k]
      h, ld, n = self._apply(flow, h, direction, s)
      log_det += ld
      nfe += tf.cast(n, tf.int32)
      return h

    last = self.num_scales - 1
    if direction == "inverse":
      h, zs = x, []
      for i, (pre, post) in enumerate(self.flows):
        for flow in pre:
          h = run(flow, h)
        if i < last:
          h = squeeze(h)
          for flow in post:
            h = run(flow, h)
          c = h.shape[-1] // 2
          zs.append(h[..., :c])
          h = h[..., c:]
      for z_out in reversed(zs):  # pack the factored-out parts
        h = unsqueeze(tf.concat([z_out, h], -1))
      return h, log_det, nfe
    h, zs = x, []
    for _ in range(last):  # unpack
      h = squeeze(h)
      c = h.shape[-1] // 2
      zs.append(h[..., :c])
      h = h[..., c:]
    for i in reversed(range(self.num_scales)):
      pre, post = self.flows[i]
      if i < last:
        h = tf.concat([zs[i], h], -1)
        for flow in reversed(post):
          h = run(flow, h)
        h = unsqueeze(h)
      for flow in reversed(pre):
        h = run(flow, h)
    return h, log_det, nfe

  def _augmented(self, x, direction):
    y, log_det, _ = self.transform(x, direction)
    if direction == "inverse":
      return y, {"ildj": log_det, "fldj": -log_det}
    return y, {"fldj": log_det, "ildj": -log_det}

  def _augmented_forward(self, x):
    return self._augmented(x, "forward")

  def _augmented_inverse(self, y):
    return self._augmented(y, "inverse")

  def _forward(self, x):
    return self._augmented_forward(x)[0]

  def _inverse(self, y):
    return self._augmented_inverse(y)[0]

  def _forward_log_det_jacobian(self, x):
    cached = self._cache.forward_attributes(x)
    if "fldj" not in cached:
      cached.update(self._augmented_forward(x)[1])
    return cached["fldj"]

  def _inverse_log_det_jacobian(self, y):
    cached = self._cache.inverse_attributes(y)
    if "ildj" not in cached:
      cached.update(self._augmented_inverse(y)[1])
    return cached["ildj"]


def dequantize(images, seed=None):
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


def bits_per_dim(log_prob, num_dims):
  """bits/dim = -(log p(x) / D - log 256) / log 2 for x in [0, 1]^D.

  `log_prob` is the density of dequantized pixels scaled to [0, 1] (in
  nats); the log 256 term converts it to the density of the 256-level data.

  #### Examples

  >>> float(bits_per_dim(0.0, 784))  # the uniform density on [0, 1]^D
  8.0
  """
  log_prob = tf.convert_to_tensor(log_prob, tf.float32)
  return -(log_prob / float(num_dims) - math.log(256.0)) / _LOG2
