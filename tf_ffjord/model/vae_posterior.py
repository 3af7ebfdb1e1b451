"""The posterior families of the `VAE`: a diagonal Gaussian, then nothing, IAF (MAF) steps or an amortized FFJORD."""

from typing import Any

import tensorflow as tf

from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf.ffjord import FFJORD
from tf_ffjord.cnf.options import ffjord_arguments
from tf_ffjord.nets.dense import ODENet
from tf_ffjord.nets.made import MADE, iaf_forward, iaf_steps

__all__ = ["POSTERIORS", "VAEPosterior"]

POSTERIORS = ("none", "maf", "ffjord")


class VAEPosterior:
  """q(z|x) of a `VAE`: its flow's layers, `flow_forward`, `posterior_sample`.

  A mixin: the VAE provides `posterior`, `latent_dim`, `context_dim`, the
  posterior's settings (`maf_steps`, `maf_hidden`, `cnf_hidden`,
  `cnf_activation`, `eval_trace`, `ffjord_kwargs`), `prior` and
  `encode`. `_build_posterior` sets the layers as the VAE's own
  attributes (`mades`, `iafs`; `dynamics`, `flow`, `eval_flow`), so Keras
  tracks, saves and checkpoints them as the VAE's.
  """
  posterior: str
  latent_dim: int
  context_dim: int
  maf_steps: int
  maf_hidden: tuple[int, ...]
  cnf_hidden: tuple[int, ...]
  cnf_activation: str
  eval_trace: str
  ffjord_kwargs: dict[str, Any]
  prior: Any

  def encode(self, x: TensorLike) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    raise NotImplementedError

  def _build_posterior(self, activation: str) -> None:
    """Makes the layers of the posterior flow (`activation`: the MADEs')."""
    d, k = self.latent_dim, self.context_dim
    self.mades: list[MADE] = []
    self.dynamics: ODENet | None = None
    if self.posterior == "maf":
      self.mades = [MADE(d, self.maf_hidden, k, activation, name=f"made_{i}")
                    for i in range(self.maf_steps)]
      self.iafs = iaf_steps(self.mades)
    elif self.posterior == "ffjord":
      self.dynamics = ODENet(hidden=self.cnf_hidden,
                             activation=self.cnf_activation, dim=d,
                             context_dim=k, name="dynamics")
      self.flow = FFJORD(self.dynamics, **ffjord_arguments(self.ffjord_kwargs))
      self.eval_flow = FFJORD(self.dynamics, **ffjord_arguments(
          {**self.ffjord_kwargs, "trace": self.eval_trace}))

  def flow_forward(self, z0: tf.Tensor, h: tf.Tensor, exact: bool = False,
                   probe_seed: SeedLike = None,
                   ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Applies the posterior flow: returns `(zK, log|det dzK/dz0|, nfe)`.

    Args:
      z0: `[n, d]` base samples.
      h: `[n, k]` context (ignored by `"none"`).
      exact: use `eval_flow` (exact trace) for `"ffjord"`.
      probe_seed: optional stateless seed of `"ffjord"`'s Hutchinson probes.
    """
    if self.posterior == "none":
      return z0, tf.zeros(tf.shape(z0)[:1], z0.dtype), tf.constant(0, tf.int32)
    if self.posterior == "maf":
      return (*iaf_forward(self.iafs, z0, h), tf.constant(0, tf.int32))
    flow = self.eval_flow if exact else self.flow
    sol = flow.solve(z0, "forward", context=h, seed=probe_seed)
    return sol.state, sol.log_det, sol.nfe

  def posterior_sample(
      self, x: TensorLike, n: int = 1, exact: bool = False,
      seed: SeedLike = None, noise: TensorLike | None = None,
      probe_seed: SeedLike = None,
  ) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """Draws n samples of q(z|x) per example, with their log-densities.

    Args:
      x: `[batch, *input_shape]` binary images.
      n: samples per example.
      exact: exact trace for the FFJORD log-det.
      seed: optional stateless seed (`[2]` ints) of the base noise.
      noise: optional base noise `[n, batch, d]` to use instead of a draw.
      probe_seed: optional stateless seed of FFJORD's Hutchinson probes.

    Returns:
      `(z, log_q, z0, nfe)`: z `[n, batch, d]`, log q(z|x) `[n, batch]`, the
      base samples z0 `[n, batch, d]` and the flow's NFE.
    """
    mu, sigma, h = self.encode(x)
    batch = tf.shape(mu)[0]
    shape = tf.stack([n, batch, self.latent_dim])
    if noise is not None:
      eps = tf.cast(noise, mu.dtype)
    elif seed is None:
      eps = tf.random.normal(shape, dtype=mu.dtype)
    else:
      eps = tf.random.stateless_normal(shape, seed, dtype=mu.dtype)
    z0 = mu + sigma * eps
    # N(z0; mu, sigma) = N(eps; 0, I) / prod(sigma).
    log_q0 = self.prior.log_prob(eps) - tf.reduce_sum(tf.math.log(sigma), -1)
    flat_z0 = tf.reshape(z0, [-1, self.latent_dim])
    flat_h = tf.reshape(tf.broadcast_to(
        h, tf.stack([n, batch, self.context_dim])), [-1, self.context_dim])
    zk, ldj, nfe = self.flow_forward(flat_z0, flat_h, exact=exact,
                                     probe_seed=probe_seed)
    z = tf.reshape(zk, shape)
    log_q = log_q0 - tf.reshape(ldj, [n, batch])
    return z, log_q, z0, nfe
