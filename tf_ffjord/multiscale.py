"""`MultiscaleFFJORDModel`: FFJORD image model (ODENVP stack) trained in bits/dim."""

import math

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord.bijector import FFJORD
from tf_ffjord.conv import ConvODENet
from tf_ffjord.divergence import replica_seed
from tf_ffjord.images import LogitTransform, ODENVP, bits_per_dim, dequantize
from tf_ffjord.model import LastValue, check_batch, minimize

__all__ = ["MultiscaleFFJORDModel"]

_LOG_2PI = math.log(2 * math.pi)


@keras.saving.register_keras_serializable("tf_ffjord")
class MultiscaleFFJORDModel(keras.Model):
  """FFJORD for images: logit transform, ODENVP stack of CNFs, normal base.

  The model's inputs are images with pixels in [0, 1] (k/255) or uint8.
  `train_step` and `test_step` dequantize them uniformly with fresh noise,
  map them through the logit transform and the multiscale stack
  (`ODENVP`) to a standard-normal latent of the same shape, and report `nll`
  (nats per image, of the dequantized [0, 1]-scaled data), `bpd` (bits/dim
  of the 256-level data) and `nfe` (dynamics evaluations of the last forward
  pass, summed over blocks).

  Every block is a `FFJORD` bijector with its own `ConvODENet` and,
  with `train_time`, its own trainable end time (as the paper's
  `--train_T True`).

  Args:
    event_shape: `(H, W, C)` of the images, e.g. `(28, 28, 1)`.
    dims: hidden channels of every block's `ConvODENet`.
    strides: strides of its layers (see `ConvODENet`); default all 1.
    num_blocks: CNF blocks before and after each squeeze.
    multiscale: the ODENVP stack (True) or `num_blocks` flows at full
      resolution (False, the paper's single-scale model).
    num_scales: scales of the stack; default the paper's choice (3 for
      28x28).
    layer: conv layer type, `"concat"` (paper), `"concatsquash"`, `"ignore"`.
    activation: activation of the dynamics, default `"softplus"` (paper).
    alpha: logit-transform margin (1e-6 for MNIST, 0.05 for CIFAR-10).
    train_time: learn each block's end time T.
    time_length: initial T of every block.
    eval_trace: trace of `test_step` / `log_prob`; default the training one
      (the exact trace is only practical for tiny images).
    eval_kwargs: `FFJORD` options that override `ffjord_kwargs` for
      evaluation and sampling, e.g. `{"solver": "dopri5"}` to check a model
      trained with a fixed grid against an adaptive solve.
    **ffjord_kwargs: passed to every `FFJORD` (trace, noise, solver, rtol,
      atol, step_size, max_num_steps, gradient).

  #### Examples

  >>> model = MultiscaleFFJORDModel((8, 8, 1), dims=(8,), num_blocks=1,
  ...                               solver="rk4", step_size=0.5)
  >>> model.compile(keras.optimizers.Adam(1e-3))
  >>> x = np.random.randint(0, 256, (16, 8, 8, 1)).astype("uint8")
  >>> sorted(model.fit(x, batch_size=8, verbose=0).history)
  ['bpd', 'nfe', 'nll']
  """

  def __init__(self, event_shape=(28, 28, 1), dims=(64, 64, 64), strides=None,
               num_blocks=2, multiscale=True, num_scales=None, layer="concat",
               activation="softplus", alpha=1e-6, train_time=True,
               time_length=1.0, eval_trace=None, eval_kwargs=None,
               **ffjord_kwargs):
    name = ffjord_kwargs.pop("name", None)
    trainable = ffjord_kwargs.pop("trainable", True)
    ffjord_kwargs.pop("dtype", None)
    super().__init__(name=name, trainable=trainable)
    self.event_shape = tuple(int(d) for d in event_shape)
    if len(self.event_shape) != 3 or min(self.event_shape) < 1:
      raise ValueError(f"event_shape must be (H, W, C), got {event_shape}.")
    self.event_size = int(np.prod(self.event_shape))
    self.dims = tuple(int(d) for d in dims)
    self.strides_list = None if strides is None else tuple(
        int(s) for s in strides)
    self.num_blocks = int(num_blocks)
    self.multiscale = bool(multiscale)
    self.num_scales = num_scales if self.multiscale else 1
    self.layer_type = layer
    self.activation_name = activation
    self.alpha = float(alpha)
    self.train_time = bool(train_time)
    self.time_length = float(time_length)
    if not self.time_length > 0:
      raise ValueError(f"time_length must be positive, got {time_length}.")
    self.ffjord_kwargs = dict(ffjord_kwargs)
    trace = self.ffjord_kwargs.get("trace", "hutchinson")
    self.eval_trace = eval_trace or trace
    self.eval_kwargs = dict(eval_kwargs or {})
    self.logit = LogitTransform(self.alpha)
    self.nets = []
    self.time_weights = []

    def make_dynamics(shape, index):
      net = ConvODENet(dims=self.dims, strides=self.strides_list,
                       layer=layer, activation=activation, channels=shape[-1],
                       name=f"block_{index}")
      net(tf.zeros([]), tf.zeros([1, *shape]))  # build the weights now
      self.nets.append(net)
      if self.train_time:
        raw = self.add_weight(
            shape=(), name=f"time_length_raw_{index}",
            initializer=keras.initializers.Constant(
                np.log(np.expm1(self.time_length))))  # softplus^-1
        self.time_weights.append(raw)
        return net, lambda: tf.math.softplus(raw.value)
      return net, self.time_length

    kwargs = {**self.ffjord_kwargs, "event_ndims": 3}
    made = {}

    def make_flow(shape, index):
      net, t = make_dynamics(shape, index)
      made[index] = (net, t)
      return FFJORD(net, time_length=t, **kwargs)

    def make_eval_flow(shape, index):
      net, t = made[index]
      return FFJORD(net, time_length=t, **{**kwargs, "trace": self.eval_trace,
                                            **self.eval_kwargs})

    self.flow = ODENVP(self.event_shape, make_flow, self.num_blocks,
                       self.num_scales)
    self.eval_flow = ODENVP(self.event_shape, make_eval_flow, self.num_blocks,
                            self.num_scales)
    self.nll_tracker = keras.metrics.Mean(name="nll")
    self.bpd_tracker = keras.metrics.Mean(name="bpd")
    self.nfe_tracker = LastValue(name="nfe")
    self.built = True

  @property
  def metrics(self):
    return [self.nll_tracker, self.bpd_tracker, self.nfe_tracker]

  # -- densities ---------------------------------------------------------

  def _check(self, x):
    # Integer pixel values are allowed: they are dequantized.
    return check_batch(x, self.event_shape, "MultiscaleFFJORDModel",
                       what="images", floating=False)

  def base_log_prob(self, z):
    """Standard-normal log-density of the latent, summed over the image."""
    z = tf.reshape(z, [tf.shape(z)[0], -1])
    return (-0.5 * tf.reduce_sum(tf.square(z), -1)
            - 0.5 * self.event_size * _LOG_2PI)

  def _log_prob(self, x, flow, seed=None):
    """log p(x) of dequantized x in [0, 1], and the stack's NFE."""
    y = self.logit.inverse(x)
    log_det = self.logit.inverse_log_det_jacobian(x, event_ndims=3)
    z, flow_log_det, nfe = flow.transform(y, "inverse", seed=seed)
    return self.base_log_prob(z) + flow_log_det + log_det, nfe

  def call(self, x, training=False):
    """log p(x) (nats) of dequantized images x in [0, 1]."""
    x = tf.cast(self._check(x), self.compute_dtype)
    return self._log_prob(x, self.flow if training else self.eval_flow)[0]

  def log_prob(self, x):
    """log p(x) in nats of dequantized images x in [0, 1], compiled."""
    x = tf.cast(self._check(x), tf.float32)
    fns = self.__dict__.setdefault("_compiled", {})
    if "log_prob" not in fns:
      fns["log_prob"] = tf.function(
          lambda x: self._log_prob(x, self.eval_flow)[0],
          reduce_retracing=True, autograph=False)
    return fns["log_prob"](x)

  def bits_per_dim(self, images):
    """bits/dim of each image (uint8 or k/255 floats), one dequantization."""
    return bits_per_dim(self.log_prob(dequantize(self._check(images))),
                        self.event_size)

  def sample(self, n, seed=None):
    """Draws `n` images with pixels in [0, 1] (float32)."""
    if seed is None:
      seed = int(np.random.randint(0, 2**31 - 1))
    fns = self.__dict__.setdefault("_compiled", {})
    if "sample" not in fns:
      fns["sample"] = tf.function(self._sample, reduce_retracing=True, autograph=False)
    return fns["sample"](tf.constant(n, tf.int32), tf.constant(seed, tf.int32))

  def _sample(self, n, seed):
    z = tf.random.stateless_normal(
        tf.concat([[n], self.event_shape], 0), tf.stack([seed, 0]))
    y, _, _ = self.eval_flow.transform(z, "forward")
    return tf.clip_by_value(self.logit.forward(y), 0.0, 1.0)

  # -- training ----------------------------------------------------------

  def _unpack(self, data):
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    return dequantize(self._check(x))

  def _update(self, logp, nfe):
    nll = -tf.reduce_mean(logp)
    self.nll_tracker.update_state(nll)
    self.bpd_tracker.update_state(bits_per_dim(-nll, self.event_size))
    self.nfe_tracker.update_state(nfe)
    return {m.name: m.result() for m in self.metrics}

  def train_step(self, data):
    return self.likelihood_step(self._unpack(data))

  def likelihood_step(self, x):
    """One optimizer step on dequantized images; returns the metric logs.

    `train_step` dequantizes its batch with fresh noise and calls this. A
    loop that dequantizes its global batch itself (so that a split over
    replicas sees the noise one device would) calls it on every replica's
    share with `strategy.run`: the loss is the replica's mean divided by the
    number of replicas, and every replica draws its own Hutchinson probes.

    Args:
      x: `[batch, H, W, C]` dequantized images in [0, 1].
    """
    x = tf.cast(self._check(x), self.compute_dtype)
    def loss_fn():
      logp, nfe = self._log_prob(x, self.flow, seed=replica_seed())
      return -tf.reduce_mean(logp), (logp, nfe)

    logp, nfe = minimize(self, loss_fn)
    return self._update(logp, nfe)

  def test_step(self, data):
    x = self._unpack(data)
    return self._update(*self._log_prob(x, self.eval_flow))

  # -- saving ------------------------------------------------------------

  def export(self, path, batch_size=None, custom_gradients=False):
    """Writes a SavedModel that serves without tf_ffjord installed.

    The signatures of `tf_ffjord.export.export_saved_model`, over images
    with pixels in [0, 1].
    """
    from tf_ffjord import export  # pylint: disable=g-import-not-at-top
    return export.export_saved_model(self, path, batch_size=batch_size,
                                     custom_gradients=custom_gradients)

  def get_config(self):
    return {**super().get_config(), **self.ffjord_kwargs,
            "event_shape": self.event_shape, "dims": self.dims,
            "strides": self.strides_list, "num_blocks": self.num_blocks,
            "multiscale": self.multiscale,
            "num_scales": self.num_scales if self.multiscale else None,
            "layer": self.layer_type, "activation": self.activation_name,
            "alpha": self.alpha, "train_time": self.train_time,
            "time_length": self.time_length, "eval_trace": self.eval_trace,
            "eval_kwargs": self.eval_kwargs}
