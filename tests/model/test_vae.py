"""Tests of tf_ffjord.model.vae: bounds vs quadrature, change of variables, adjoint, Hutchinson, MADE, fit."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord.model.vae import MADE, VAE, binarize

SMALL = dict(encoder_hidden=(16,), decoder_hidden=(16,), maf_hidden=(16,),
             cnf_hidden=(16,), context_dim=4)


def _images(n, shape=(4, 4), seed=0):
  rng = np.random.default_rng(seed)
  probs = rng.uniform(0.1, 0.9, size=(n, *shape)).astype("float32")
  return binarize(probs, seed=[seed, 1])


def _randomize_made_outputs(vae, scale=0.3):
  # MADE output layers start at zero (identity flow); make them non-trivial.
  rng = np.random.default_rng(1)
  for made in vae.mades:
    for w in (made.kernels[-1], made.biases[-1]):
      w.assign(scale * rng.standard_normal(w.shape).astype("float32"))


def _tiny_vae(posterior, latent_dim=2, broad=False, **kwargs):
  keras.utils.set_random_seed(0)
  kwargs = {**SMALL, "solver": "rk4", "step_size": 0.25, **kwargs}
  vae = VAE((4, 4), latent_dim=latent_dim, posterior=posterior, **kwargs)
  if posterior == "maf":
    _randomize_made_outputs(vae, 0.1 if broad else 0.3)
  # A sharper decoder makes the true posterior non-Gaussian, so the bound
  # has a visible gap.
  for w in vae.decoder.trainable_weights:
    w.assign(1.5 * w)
  if broad:
    # q0 close to N(0, 1.5^2), wider than the prior and so than the true
    # posterior: importance weights stay bounded and IWAE converges fast.
    d = latent_dim
    kernel, bias = vae.encoder_out.kernel, vae.encoder_out.bias
    k = kernel.numpy()
    k[:, :2 * d] *= 0.05
    kernel.assign(k)
    b = np.zeros(bias.shape, "float32")
    b[d:2 * d] = math.log(math.expm1(1.5))  # softplus^-1
    bias.assign(b)
  return vae


def _log_px_quadrature(vae, x, half_width=6.0, n=301):
  """log p(x) = log int p(x|z) N(z; 0, I) dz on a 2-D grid (ground truth)."""
  g = np.linspace(-half_width, half_width, n).astype("float32")
  zz = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  z = tf.constant(zz)[:, tf.newaxis, :]  # [grid, 1, 2]: one "sample" each
  log_prior = -0.5 * tf.reduce_sum(z * z, -1) - math.log(2 * math.pi)
  log_cell = 2 * math.log(g[1] - g[0])
  out = []
  for i in range(x.shape[0]):
    ll = vae.log_likelihood(x[i:i + 1], z)  # [grid, 1]
    out.append(tf.reduce_logsumexp(ll + log_prior) + log_cell)
  return np.array(out)


@pytest.mark.parametrize("posterior", ["none", "maf", "ffjord"])
def test_elbo_below_iwae_and_log_px(posterior):
  kwargs = dict(time_length=0.5, step_size=0.5) if posterior == "ffjord" else {}
  vae = _tiny_vae(posterior, broad=True, **kwargs)
  x = _images(6)
  log_px = _log_px_quadrature(vae, x)
  samples = 4096
  a, b, c, _ = tf.function(lambda x: vae.log_weights(x, samples))(x)
  lw = (a + b - c).numpy()  # [samples, batch] single-sample ELBOs
  elbo = lw.mean(0)
  se = lw.std(0) / math.sqrt(samples)
  # The ELBO is a lower bound of log p(x) up to its Monte Carlo error, and
  # not a tight one here.
  assert np.all(elbo - 4 * se <= log_px), (elbo, se, log_px)
  assert np.all(log_px - elbo > 10 * se), (log_px - elbo, se)
  # IWAE with many samples lies above the ELBO and converges to log p(x):
  # the latter holds only if log q(z|x) is the density of the samples.
  # (Its Monte Carlo error here, from repeated runs, is below 0.03 nats.)
  for _ in range(2):
    iwae = vae.iwae(x, 4 * samples, chunk=samples).numpy()
    assert np.all(elbo < iwae), (elbo, iwae)
    np.testing.assert_allclose(iwae, log_px, atol=0.06)


@pytest.mark.parametrize("posterior", ["maf", "ffjord"])
def test_log_q_matches_change_of_variables(posterior):
  vae = _tiny_vae(posterior, latent_dim=3, step_size=0.5)
  x = _images(5, seed=3)
  d, eps = 3, 1e-2

  @tf.function
  def run():
    z, log_q, z0, _ = vae.posterior_sample(x, 1, exact=True, seed=[4, 2])
    mu, sigma, h = vae.encode(x)
    z0 = z0[0]
    # z0 and its central-difference neighbours, pushed through in one batch.
    steps = tf.eye(d)[:, tf.newaxis, :] * eps
    pts = tf.concat([z0[tf.newaxis], z0 + steps, z0 - steps], 0)
    hs = tf.tile(h, [2 * d + 1, 1])
    out = vae.flow_forward(tf.reshape(pts, [-1, d]), hs, exact=True)[0]
    return z[0], log_q[0], z0, mu, sigma, tf.reshape(out, pts.shape)

  z, log_q, z0, mu, sigma, out = [t.numpy().astype("float64") for t in run()]
  np.testing.assert_allclose(out[0], z, atol=1e-6)
  jac = np.stack([(out[1 + j] - out[1 + d + j]) / (2 * eps)
                  for j in range(d)], -1)  # [batch, d_out, d_in]
  log_det = np.linalg.slogdet(jac)[1]
  assert np.min(np.abs(log_det)) > 0.05  # the flow is not volume preserving
  log_q0 = np.sum(-0.5 * ((z0 - mu) / sigma)**2 - np.log(sigma)
                  - 0.5 * math.log(2 * math.pi), -1)
  np.testing.assert_allclose(log_q, log_q0 - log_det, atol=2e-3)


def test_ffjord_hutchinson_log_q_is_unbiased():
  vae = _tiny_vae("ffjord", latent_dim=3, step_size=0.5)
  x = tf.repeat(_images(1, seed=5), 2000, axis=0)
  log_q = tf.function(lambda exact: vae.posterior_sample(
      x, 1, exact=exact, seed=[1, 1])[1])
  exact, noisy = log_q(True), log_q(False)
  diff = (noisy - exact).numpy().ravel()
  assert np.std(diff) > 0
  assert abs(diff.mean()) < 4 * diff.std() / math.sqrt(diff.size)


def test_context_gradient_reaches_encoder_through_adjoint():
  # Hutchinson with one fixed probe: both differentiate the same solve.
  kwargs = dict(latent_dim=3, trace="hutchinson", step_size=0.5)
  adjoint = _tiny_vae("ffjord", gradient="adjoint", **kwargs)
  backprop = _tiny_vae("ffjord", gradient="backprop", **kwargs)
  backprop.set_weights(adjoint.get_weights())
  x = _images(8, seed=7)

  @tf.function
  def grads(vae):
    with tf.GradientTape() as tape:
      a, b, c, _ = vae.log_weights(x, 2, seed=[3, 3], probe_seed=[5, 5])
      loss = -tf.reduce_mean(a + b - c)
    return loss, tape.gradient(loss, vae.encoder_out.kernel)

  loss_a, g_a = grads(adjoint)
  loss_b, g_b = grads(backprop)
  np.testing.assert_allclose(loss_a.numpy(), loss_b.numpy(), rtol=1e-6)
  d = adjoint.latent_dim
  # The context columns of the encoder's last layer reach the loss only
  # through the ODE's constants.
  g_h_a, g_h_b = g_a[:, 2 * d:].numpy(), g_b[:, 2 * d:].numpy()
  assert np.linalg.norm(g_h_a) > 1e-4
  # On the same fixed grid the two agree to ~1e-5 (measured 4e-6).
  np.testing.assert_allclose(g_h_a, g_h_b, rtol=1e-4,
                             atol=1e-4 * np.abs(g_h_b).max())
  np.testing.assert_allclose(g_a.numpy(), g_b.numpy(), rtol=1e-4,
                             atol=1e-4 * np.abs(g_b.numpy()).max())


def test_made_is_autoregressive():
  made = MADE(5, hidden=(12, 12), context_dim=2)
  rng = np.random.default_rng(0)
  for w in made.weights:
    w.assign(rng.standard_normal(w.shape).astype("float32"))
  x = tf.constant(rng.standard_normal((3, 5)).astype("float32"))
  c = tf.constant(rng.standard_normal((3, 2)).astype("float32"))
  with tf.GradientTape() as tape:
    tape.watch([x, c])
    shift, log_scale = made(x, c)
    out = tf.concat([shift, log_scale], -1)
  jac = tape.batch_jacobian(out, x).numpy()  # [3, 10, 5]
  for i in range(5):
    for j in range(5):
      if j >= i:
        assert np.all(jac[:, i, j] == 0) and np.all(jac[:, 5 + i, j] == 0)
  assert np.abs(jac[:, 4, :4]).min() > 0  # the last output sees the rest
  with tf.GradientTape() as tape:
    tape.watch(c)
    out = tf.concat(made(x, c), -1)
  assert np.abs(tape.jacobian(out, c).numpy()).sum() > 0


def test_fit_reduces_negative_elbo():
  keras.utils.set_random_seed(0)
  vae = VAE((4, 4), latent_dim=2, posterior="ffjord", solver="euler",
            step_size=0.5, **SMALL)
  vae.compile(keras.optimizers.Adam(1e-2))
  x = _images(256, seed=11)
  neg_elbo = tf.function(
      lambda: -tf.reduce_mean(vae.elbo(x, 4, seed=[0, 0])))
  before = float(neg_elbo())
  hist = vae.fit(x, batch_size=64, epochs=6, verbose=0)
  after = float(neg_elbo())
  assert set(hist.history) >= {"neg_elbo", "kl", "nfe", "nfe_backward"}
  assert hist.history["nfe"][-1] == 2  # 2 Euler steps
  assert after < before - 0.5, (before, after)


def test_bad_input():
  with pytest.raises(ValueError, match="posterior"):
    VAE((4, 4), posterior="realnvp")
  vae = VAE((4, 4), latent_dim=2, posterior="none", encoder_hidden=(4,),
            decoder_hidden=(4,))
  with pytest.raises(ValueError, match="shape"):
    vae.elbo(tf.zeros([2, 3, 3]))
  with pytest.raises(ValueError, match="dtype bool"):
    vae.elbo(tf.zeros([2, 4, 4], tf.bool))
  # The shared policy casts real dtypes.
  np.testing.assert_allclose(vae.elbo(tf.ones([2, 4, 4], tf.int32), seed=[1, 2]),
                             vae.elbo(tf.ones([2, 4, 4]), seed=[1, 2]))




@pytest.mark.parametrize("posterior", ["maf", "ffjord"])
def test_config_round_trip(posterior):
  vae = _tiny_vae(posterior, latent_dim=3)
  clone = VAE.from_config(vae.get_config())
  clone.set_weights(vae.get_weights())
  assert clone.posterior == posterior and clone.latent_dim == 3
  x = _images(4)
  if posterior == "maf":
    np.testing.assert_allclose(clone.elbo(x, seed=[1, 2]).numpy(),
                               vae.elbo(x, seed=[1, 2]).numpy(), rtol=1e-5)
  else:
    assert (clone.flow.solver.controller.num_steps
            == vae.flow.solver.controller.num_steps == 4)
