"""One test over every flow configuration: shape, gradients, inverse, log-det, save."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import FFJORD, ODENet

tfd = tfp.distributions

FLOWS = {
    "exact-dopri5-adjoint": dict(trace="exact", solver="dopri5",
                                 rtol=1e-5, atol=1e-5),
    "rademacher-rk4-backprop": dict(trace="hutchinson", solver="rk4",
                                    step_size=0.25),
    "gaussian-dopri5-train_time": dict(trace="hutchinson", noise="gaussian",
                                       train_time=True, rtol=1e-5, atol=1e-5),
    "exact-midpoint-t0": dict(trace="exact", solver="midpoint",
                              step_size=0.125, initial_time=2.0,
                              time_length=0.5),
}


def make(config):
  dynamics = ODENet(hidden=(16, 16), dim=3, activation="softplus")
  dynamics(0.0, tf.zeros([1, 3]))
  return FFJORD(dynamics, **config)


def variables(bij):
  # The bijector exposes its Keras dynamics' weights and its learned T.
  return list(bij.trainable_variables)


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow(name, tmp_path):
  bij = make(FLOWS[name])
  dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(3)),
                                     bij)
  x = tf.random.normal([7, 3])

  # log_prob shape, and a gradient on every parameter.
  @tf.function
  def loss_and_grads(x):
    with tf.GradientTape() as tape:
      lp = dist.log_prob(x)
      loss = -tf.reduce_mean(lp)
    return lp, tape.gradient(loss, variables(bij))

  lp, grads = loss_and_grads(x)
  assert lp.shape == (7,)
  assert len(grads) == len(variables(bij)) > 0
  for v, g in zip(variables(bij), grads):
    assert g is not None and np.any(g.numpy() != 0), v.name

  # inverse(forward(z)) = z, without the bijector cache.
  z = tf.random.normal([7, 3])
  round_trip = tf.function(
      lambda z: bij.solve(bij.solve(z, "forward").state, "inverse").state)
  np.testing.assert_allclose(round_trip(z), z, atol=1e-3)

  # log-det against the autodiff Jacobian of the map x -> z (taken through
  # a backprop copy; the exact-trace copy integrates the log-det itself).
  grid = dict(gradient="backprop", solver="rk4", step_size=0.25)
  state_map = bij.copy(trace="hutchinson", **grid)
  exact = bij.copy(trace="exact", **grid)

  @tf.function
  def jac_and_ldj(x):
    with tf.GradientTape() as tape:
      tape.watch(x)
      z = state_map.solve(x).state
    return tape.batch_jacobian(z, x), exact.solve(x).log_det

  jac, ldj = jac_and_ldj(x)
  np.testing.assert_allclose(np.linalg.slogdet(jac.numpy())[1], ldj,
                             atol=1e-3)
  if FLOWS[name]["trace"] == "exact":
    np.testing.assert_allclose(
        tf.function(lambda x: bij.solve(x).log_det)(x), ldj, atol=1e-3)

  # Keras save/load of the dynamics (and a checkpoint of the bijector's own
  # end-time variable) gives the same density.
  path = str(tmp_path / "dynamics.keras")
  bij.dynamics.save(path)
  ckpt_path = tf.train.Checkpoint(bijector=bij).save(str(tmp_path / "ckpt"))
  other = FFJORD(keras.saving.load_model(path), **FLOWS[name])
  tf.train.Checkpoint(bijector=other).restore(ckpt_path)
  for a, b in zip(variables(bij), variables(other)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  other_exact = other.copy(trace="exact", **grid)
  np.testing.assert_allclose(
      tf.function(lambda x: other_exact.solve(x).log_det)(x), ldj, atol=1e-5)

  assert "FFJORD" in repr(bij) and "ffjord" in bij.name
