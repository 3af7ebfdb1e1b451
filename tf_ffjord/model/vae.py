"""`VAE`: a Bernoulli VAE with a Gaussian, IAF (MAF) or amortized FFJORD posterior: the encoder, decoder, bounds and train step."""

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf.trace_estimators import replica_seed
from tf_ffjord.model.base_distribution import standard_normal
from tf_ffjord.model.vae_posterior import POSTERIORS, VAEPosterior
from tf_ffjord.nets.made import MADE
from tf_ffjord import validation
from tf_ffjord.model.metrics import LastValue
from tf_ffjord.model.steps import minimize, step_logs

__all__ = ["VAE", "MADE", "POSTERIORS", "binarize"]


def binarize(x: TensorLike, seed: SeedLike = None) -> tf.Tensor:
  """Samples binary pixels with P(1) = intensity (dynamic binarization).

  Args:
    x: float intensities in [0, 1].
    seed: optional stateless seed (`[2]` ints) for a fixed binarization.

  Returns:
    A tensor like `x` with values in {0, 1}.
  """
  x = tf.convert_to_tensor(x)
  if seed is None:
    u = tf.random.uniform(tf.shape(x), dtype=x.dtype)
  else:
    u = tf.random.stateless_uniform(tf.shape(x), seed, dtype=x.dtype)
  return tf.cast(u < x, x.dtype)


def _mlp(widths, activation, name):
  return keras.Sequential(
      [keras.layers.Dense(w, activation=activation, name=f"{name}_{i}")
       for i, w in enumerate(widths)], name=name)


@keras.saving.register_keras_serializable("tf_ffjord")
class VAE(VAEPosterior, keras.Model):
  """A VAE for binary images: flow posterior q(z|x), Bernoulli decoder.

  q(z|x): z0 ~ N(mu(x), sigma(x)^2), then zK = flow(z0; x), with
  log q(zK|x) = log N(z0; mu, sigma) - log|det dzK/dz0|. The prior is N(0, I)
  and the decoder outputs Bernoulli logits. `posterior` is one of:

  - `"none"`: the diagonal Gaussian alone.
  - `"maf"`: `maf_steps` IAF steps, `tfb.Invert(tfb.MaskedAutoregressiveFlow)`
    (sampling in MAF's one-pass direction) over a conditional `MADE` that
    sees the encoder's context, the order reversed between steps.
  - `"ffjord"`: `FFJORD(ODENet(context_dim=k))`; the sample is integrated
    forward with `FFJORD.solve(z0, "forward", context=h)`.

  Amortization: the encoder emits k features h(x) that every
  `ConcatSquashDense` layer of the dynamics sees next to t, so each layer
  computes `(W z + b) * sigmoid(G [t, h] + g) + B [t, h]`: per-example
  diagonal and bias updates of its weights through a shared k-dimensional
  bottleneck (the paper also lists rank-1 updates and hypernetworks). h
  enters the solve as an ODE constant, so the adjoint returns dL/dh and the
  encoder trains through it, with no per-example weights in the ODE state and
  O(k * width) cost per layer.

  Training takes images, or `(images, noise)` pairs whose `noise [batch, d]`
  is the posterior's base noise (see `training_batch`: a resumable or
  distributed pipeline draws it per global batch).

  Args:
    input_shape: shape of one image, e.g. `(28, 28)` or `(784,)`.
    latent_dim: size of z.
    posterior: `"none"`, `"maf"` or `"ffjord"`.
    encoder_hidden: widths of the encoder MLP.
    decoder_hidden: widths of the decoder MLP.
    context_dim: k, width of the amortization features h(x).
    activation: activation of the encoder and decoder MLPs.
    maf_steps: number of autoregressive steps (`"maf"`).
    maf_hidden: hidden widths of each MADE.
    cnf_hidden: hidden widths of the CNF dynamics (`"ffjord"`).
    cnf_activation: activation of the CNF dynamics.
    kl_warmup_steps: the KL terms of the training loss are scaled by
      min(1, step / kl_warmup_steps) (0: no warm-up). Metrics and
      evaluation always use the full ELBO.
    eval_trace: trace of `eval_flow` (evaluation, `log_q(exact=True)`).
    **ffjord_kwargs: passed to `FFJORD` (time_length, trace, solver,
      step_size, rtol, atol, gradient, ...).

  Raises:
    ValueError: unknown posterior or bad sizes.

  #### Examples

  >>> vae = VAE((4, 4), latent_dim=2, posterior="ffjord", context_dim=3,
  ...           encoder_hidden=(8,), decoder_hidden=(8,), cnf_hidden=(8,),
  ...           solver="rk4", step_size=0.5)
  >>> x = binarize(tf.fill([5, 4, 4], 0.5))
  >>> vae.elbo(x).shape
  TensorShape([5])

  #### References

  [1]: Grathwohl et al. FFJORD. ICLR 2019, Section 5.3 and Table 3.
  [2]: Kingma, Welling. Auto-Encoding Variational Bayes. ICLR 2014.
  [3]: Burda, Grosse, Salakhutdinov. Importance Weighted Autoencoders. 2016.
  [4]: Kingma et al. Improved Variational Inference with Inverse
       Autoregressive Flow. NeurIPS 2016.
  """

  def __init__(self, input_shape: Sequence[int] = (28, 28),
               latent_dim: int = 32, posterior: str = "ffjord",
               encoder_hidden: Sequence[int] = (512, 256),
               decoder_hidden: Sequence[int] = (256, 512),
               context_dim: int = 32, activation: str = "elu",
               maf_steps: int = 4, maf_hidden: Sequence[int] = (256,),
               cnf_hidden: Sequence[int] = (128, 128),
               cnf_activation: str = "softplus", kl_warmup_steps: int = 0,
               eval_trace: str = "exact", **ffjord_kwargs: Any) -> None:
    name = ffjord_kwargs.pop("name", None)
    trainable = ffjord_kwargs.pop("trainable", True)
    ffjord_kwargs.pop("dtype", None)
    super().__init__(name=name, trainable=trainable)
    if posterior not in POSTERIORS:
      raise ValueError(f"Unknown posterior {posterior!r}; expected one of "
                       f"{POSTERIORS}.")
    self.image_shape = tuple(int(d) for d in input_shape)
    if not self.image_shape or min(self.image_shape) < 1:
      raise ValueError(f"input_shape must be non-empty and positive, got "
                       f"{input_shape}.")
    if int(latent_dim) < 1:
      raise ValueError(f"latent_dim must be >= 1, got {latent_dim}.")
    self.num_pixels = int(np.prod(self.image_shape))
    self.latent_dim = int(latent_dim)
    self.posterior = posterior
    self.encoder_hidden = tuple(encoder_hidden)
    self.decoder_hidden = tuple(decoder_hidden)
    self.context_dim = int(context_dim) if posterior != "none" else 0
    if posterior != "none" and self.context_dim < 1:
      raise ValueError(f"A {posterior!r} posterior needs context_dim >= 1.")
    self.activation_name = activation
    self.maf_steps, self.maf_hidden = int(maf_steps), tuple(maf_hidden)
    self.cnf_hidden = tuple(cnf_hidden)
    self.cnf_activation = cnf_activation
    self.kl_warmup_steps = int(kl_warmup_steps)
    self.eval_trace = eval_trace
    self.ffjord_kwargs = dict(ffjord_kwargs)
    self.prior = standard_normal([self.latent_dim], self.variable_dtype)
    # Compiled IWAE log-weights, out of Keras' tracking.
    object.__setattr__(self, "_compiled_fns", {})

    d, k = self.latent_dim, self.context_dim
    self.encoder = _mlp(self.encoder_hidden, activation, "encoder")
    self.encoder_out = keras.layers.Dense(2 * d + k, name="encoder_out")
    self.decoder = keras.Sequential(
        [_mlp(self.decoder_hidden, activation, "decoder"),
         keras.layers.Dense(self.num_pixels, name="logits")], name="decoder")
    self._build_posterior(activation)
    self.elbo_tracker = keras.metrics.Mean(name="neg_elbo")
    self.kl_tracker = keras.metrics.Mean(name="kl")
    self.nfe_tracker = LastValue(name="nfe")
    self.nfe_backward_tracker = LastValue(name="nfe_backward")
    self.build_all()

  def build_all(self) -> None:
    """Creates every weight (so counts and `save_weights` work at once)."""
    # Calls every network once, without an (eager, slow) ODE solve.
    mu, _, h = self.encode(tf.zeros([1, *self.image_shape]))
    self.decode(mu)
    for made in self.mades:
      made(mu, h)
    if self.dynamics is not None:
      self.dynamics(0.0, mu, h)
    self.built = True

  @property
  def metrics(self) -> list[keras.metrics.Metric]:
    return [self.elbo_tracker, self.kl_tracker, self.nfe_tracker,
            self.nfe_backward_tracker]

  # -- the pieces ----------------------------------------------------------

  def _check(self, x):  # binary images, cast to the model's dtype
    return validation.check_events(x, self.image_shape, self.variable_dtype,
                                   "VAE", "images", batch_ndims=1)

  def encode(self, x: TensorLike) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Returns `(mu, sigma, h)`: the base Gaussian and the context [batch, k]."""
    x = self._check(x)
    flat = tf.reshape(x, [-1, self.num_pixels])
    out = self.encoder_out(self.encoder(2.0 * flat - 1.0))
    d = self.latent_dim
    mu, pre_sigma, h = out[:, :d], out[:, d:2 * d], out[:, 2 * d:]
    # softplus keeps sigma > 0 without exp's blow-ups early in training.
    sigma = tf.math.softplus(pre_sigma) + 1e-4
    return mu, sigma, h

  def decode(self, z: tf.Tensor) -> tf.Tensor:
    """Bernoulli logits `[batch, *input_shape]` of p(x|z)."""
    logits = self.decoder(z)
    return tf.reshape(logits, [-1, *self.image_shape])

  def log_likelihood(self, x: TensorLike, z: tf.Tensor) -> tf.Tensor:
    """log p(x|z) for `z` `[n, batch, d]`: returns `[n, batch]`."""
    x = self._check(x)
    n = tf.shape(z)[0]
    logits = self.decode(tf.reshape(z, [-1, self.latent_dim]))
    logits = tf.reshape(logits, [n, -1, self.num_pixels])
    target = tf.reshape(x, [1, -1, self.num_pixels])
    target = tf.broadcast_to(target, tf.shape(logits))
    return -tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
        labels=target, logits=logits), -1)

  def log_weights(self, x: TensorLike, n: int = 1, exact: bool = False,
                  seed: SeedLike = None, **noise: Any,
                  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Terms of the bounds for n posterior samples per example.

    `**noise` (`noise`, `probe_seed`) is passed to `posterior_sample`.

    Returns:
      `(log_px_z, log_pz, log_q, nfe)`, the first three `[n, batch]`;
      log p(x, z) - log q(z|x) is the importance log-weight.
    """
    z, log_q, _, nfe = self.posterior_sample(x, n, exact=exact, seed=seed,
                                             **noise)
    return self.log_likelihood(x, z), self.prior.log_prob(z), log_q, nfe

  def elbo(self, x: TensorLike, n: int = 1, exact: bool = True,
           seed: SeedLike = None) -> tf.Tensor:
    """Monte Carlo ELBO per example (mean over n samples), in nats."""
    log_px_z, log_pz, log_q, _ = self.log_weights(x, n, exact, seed)
    return tf.reduce_mean(log_px_z + log_pz - log_q, 0)

  def iwae(self, x: TensorLike, k: int, chunk: int | None = None,
           exact: bool = True) -> tf.Tensor:
    """Importance-weighted estimate of log p(x) with k samples, per example.

    log (1/k) sum_i p(x, z_i) / q(z_i|x) with z_i ~ q(z|x): a lower bound of
    log p(x) in expectation that tightens to it as k grows.

    Args:
      x: `[batch, *input_shape]` binary images.
      k: number of importance samples.
      chunk: samples drawn per compiled call (memory bound); default k.
      exact: exact trace for the FFJORD log-det (a noisy log-det would bias
        the estimate after the log-sum-exp).
    """
    x = self._check(x)
    chunk = int(min(k, chunk or k))
    key = ("log_weights", chunk, bool(exact))
    if key not in self._compiled_fns:
      def fn(x):
        a, b, c, _ = self.log_weights(x, chunk, exact)
        return a + b - c
      self._compiled_fns[key] = tf.function(fn, reduce_retracing=True)
    lw = tf.concat([self._compiled_fns[key](x)
                    for _ in range(-(-k // chunk))], 0)[:k]
    return tf.reduce_logsumexp(lw, 0) - tf.math.log(tf.cast(k, lw.dtype))

  def sample(self, n: int, seed: int = 0) -> tf.Tensor:
    """Bernoulli means of p(x|z) for n prior samples `[n, *input_shape]`."""
    z = tf.random.stateless_normal([n, self.latent_dim], [seed, 0])
    return tf.sigmoid(self.decode(z))

  # -- Keras ---------------------------------------------------------------

  def call(self, x: TensorLike, training: bool = False) -> tf.Tensor:
    """The ELBO per example (training trace when training)."""
    log_px_z, log_pz, log_q, _ = self.log_weights(x, 1, exact=not training)
    return (log_px_z + log_pz - log_q)[0]

  def training_batch(self, images: TensorLike,
                     seed: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """`(binary images, base noise)` of one training step, from its seed.

    The `transform` of a resumable pipeline (`epoch_batches`), applied to
    the global batch before `fit` splits it over replicas: a resumed run,
    and a run over any number of replicas, sees the binarization and base
    noise of one uninterrupted single-device run.

    Args:
      images: `[batch, *input_shape]` intensities, uint8 or in [0, 1].
      seed: the step's `[2]` int32 stateless seed.

    Returns:
      `(x, noise)`: binary float images and `[batch, latent_dim]` noise.
    """
    x = tf.convert_to_tensor(images)
    x = tf.cast(x, self.variable_dtype) / (255.0 if x.dtype == tf.uint8
                                          else 1.0)
    noise = tf.random.stateless_normal(
        tf.stack([tf.shape(x)[0], self.latent_dim]),
        tf.random.experimental.stateless_fold_in(seed, 1),
        dtype=self.variable_dtype)
    return binarize(x, seed), noise

  def train_step(self, data: Any) -> dict[str, tf.Tensor]:
    x, noise, _ = keras.utils.unpack_x_y_sample_weight(data)
    x = self._check(x)
    if noise is None:  # plain images: a fresh draw (per replica)
      noise = tf.random.normal(tf.stack([tf.shape(x)[0], self.latent_dim]),
                               dtype=x.dtype)
    noise = tf.cast(noise, x.dtype)[tf.newaxis]

    def loss_fn():
      log_px_z, log_pz, log_q, nfe = self.log_weights(
          x, 1, noise=noise, probe_seed=replica_seed())
      kl = tf.reduce_mean(log_q - log_pz)
      rec = tf.reduce_mean(log_px_z)
      beta = tf.constant(1.0)
      if self.kl_warmup_steps:
        step = tf.cast(self.optimizer.iterations, tf.float32)
        beta = tf.minimum(1.0, (step + 1.0) / self.kl_warmup_steps)
      return -(rec - beta * kl), (kl, rec, nfe)

    # Scaled for the replicas, the model's own losses added.
    kl, rec, nfe = minimize(self, loss_fn)
    if self.posterior == "ffjord":
      self.nfe_backward_tracker.update_state(
          self.flow.nfe_backward.read_value())
    return self._report(kl, rec, nfe, self.metrics)

  def test_step(self, data: Any) -> dict[str, tf.Tensor]:
    x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    log_px_z, log_pz, log_q, nfe = self.log_weights(x, 1, exact=True)
    kl, rec = tf.reduce_mean(log_q - log_pz), tf.reduce_mean(log_px_z)
    return self._report(kl, rec, nfe, self.metrics[:3])

  def _report(self, kl, rec, nfe, metrics):
    self.elbo_tracker.update_state(kl - rec)
    self.kl_tracker.update_state(kl)
    self.nfe_tracker.update_state(nfe)
    return step_logs({m.name: m.result() for m in metrics})

  def get_config(self) -> dict[str, Any]:
    names = ("latent_dim", "posterior", "encoder_hidden", "decoder_hidden",
             "context_dim", "maf_steps", "maf_hidden", "cnf_hidden",
             "cnf_activation", "kl_warmup_steps", "eval_trace")
    return {**super().get_config(), **self.ffjord_kwargs,
            **{n: getattr(self, n) for n in names},
            "input_shape": self.image_shape,
            "activation": self.activation_name}
