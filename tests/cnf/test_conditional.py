"""Conditional flows: context through ODENet, FFJORD, TFP and FFJORDModel."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord import FFJORD, FFJORDModel, MaximumLikelihood, ODENet

tfd = tfp.distributions

# Two classes, one-hot context: N(CENTERS[k], SCALES[k]^2 I).
CENTERS = np.array([[-2.0, 1.0], [1.5, -1.0]], "f4")
SCALES = np.array([0.5, 0.8], "f4")


def _data(n, seed):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, n)
  x = CENTERS[labels] + SCALES[labels, None] * rng.normal(size=(n, 2))
  return x.astype("f4"), np.eye(2, dtype="f4")[labels]


def test_context_through_transformed_distribution():
  keras.utils.set_random_seed(0)
  net = ODENet(hidden=(16,), context_dim=3)
  bij = FFJORD(net, trace="exact",
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-6, atol=1e-6))
  flow = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)),
                                     bij)
  x = tf.random.stateless_normal([6, 2], [0, 1])
  c = tf.one_hot([0, 1, 2, 0, 1, 2], 3)
  logp = tf.function(
      lambda x, c: flow.log_prob(x, bijector_kwargs={"context": c}))
  lp = logp(x, c).numpy()
  # Each row sees its own context: permuting the rows permutes the result...
  perm = [3, 5, 0, 2, 4, 1]
  np.testing.assert_allclose(logp(tf.gather(x, perm), tf.gather(c, perm)),
                             lp[perm], rtol=1e-4, atol=1e-4)
  # ...and matches the bijector's own solve.
  sol = tf.function(lambda x, c: bij.solve(x, context=c))(x, c)
  want = tfd.MultivariateNormalDiag(tf.zeros(2)).log_prob(sol.state)
  np.testing.assert_allclose(lp, want + sol.log_det, rtol=1e-5, atol=1e-5)
  # Another context changes the density.
  other = logp(x, tf.one_hot([1, 2, 0, 1, 2, 0], 3)).numpy()
  assert np.min(np.abs(lp - other)) > 1e-4
  # Samples and the inverse round trip with the same context.
  y = tf.function(lambda c: flow.sample(
      6, seed=(1, 2), bijector_kwargs={"context": c}))(c)
  back = tf.function(lambda y, c: bij.forward(bij.inverse(y, context=c),
                                               context=c))(y, c)
  np.testing.assert_allclose(back, y, atol=1e-4)


def test_context_errors():
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,), context_dim=2),
                      context_dim=2)
  x, c = _data(4, 0)
  with pytest.raises(ValueError, match="conditional"):
    model.log_prob(x)
  with pytest.raises(ValueError, match="context_dim"):
    model.log_prob(x, np.zeros((4, 3), "f4"))
  with pytest.raises(ValueError, match="context_dim"):
    ODENet(hidden=(8,), context_dim=2)(0.0, x)


def test_fit_takes_x_context_pairs_by_likelihood():
  keras.utils.set_random_seed(0)
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(16,), context_dim=2),
                      context_dim=2, solver="rk4", step_size=0.5)
  model.compile(keras.optimizers.Adam(1e-2),
                objective=MaximumLikelihood({"kinetic": 0.01}))
  x, c = _data(64 * 20, 1)
  hist = model.fit((x, c), batch_size=64, epochs=2, verbose=0).history
  assert np.all(np.isfinite(hist["nll"])) and np.all(np.isfinite(hist["kinetic"]))
  assert hist["nll"][-1] < hist["nll"][0]


def test_conditional_densities_differ_and_each_integrates_to_one():
  # Fast to train by flow matching; densities use the exact-trace solve.
  keras.utils.set_random_seed(0)
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(32, 32), context_dim=2),
                      context_dim=2, solver="dopri5", rtol=1e-5, atol=1e-5)
  model.compile(keras.optimizers.Adam(3e-3), objective="flow_matching")
  x, c = _data(256 * 150, 2)
  model.fit((x, c), batch_size=256, epochs=1, verbose=0)

  h = 0.1
  g = np.arange(-6.0, 6.0 + h / 2, h, dtype="f4")
  grid = np.stack(np.meshgrid(g, g, indexing="ij"), -1).reshape(-1, 2)
  dens = []
  for k in range(2):
    ctx = np.tile(np.eye(2, dtype="f4")[k], (len(grid), 1))
    logp = model.log_prob(grid, ctx).numpy()
    p = np.exp(logp)
    mass = p.sum() * h * h
    assert mass == pytest.approx(1.0, abs=0.03), (k, mass)
    dens.append(p)
    # The mode sits near its class's center.
    mode = grid[np.argmax(p)]
    assert np.linalg.norm(mode - CENTERS[k]) < 0.6, (k, mode)
  # Total variation between the two conditionals is large.
  assert 0.5 * np.abs(dens[0] - dens[1]).sum() * h * h > 0.8
  # Each class's test points are likelier under their own label.
  xt, ct = _data(1000, 3)
  own = model.log_prob(xt, ct).numpy()
  swapped = model.log_prob(xt, ct[:, ::-1].copy()).numpy()
  assert np.mean(own) > np.mean(swapped) + 5.0
