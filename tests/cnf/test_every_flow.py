"""One test over every flow configuration: shape, gradients, inverse, log-det, save."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord
import user_dynamics
from tf_ffjord import FFJORD, ODENet, make_solver

tfd = tfp.distributions

# Each flow: (dynamics kind, FFJORD arguments). The arguments are built per
# call: a learned end time is a fresh variable for every flow that takes it.
FLOWS = {
    "exact-dopri5-adjoint": ("odenet", lambda: dict(
        trace="exact", solver=make_solver("dopri5", rtol=1e-5, atol=1e-5))),
    "rademacher-rk4-backprop": ("odenet", lambda: dict(
        trace="hutchinson", solver=make_solver("rk4", step_size=0.25),
        adjoint="backprop")),
    "gaussian-dopri5-train_time": ("odenet", lambda: dict(
        trace=tf_ffjord.Hutchinson("gaussian"), time_length=tf_ffjord.EndTime(1.0),
        solver=make_solver("dopri5", rtol=1e-5, atol=1e-5))),
    "exact-midpoint-t0": ("odenet", lambda: dict(
        trace="exact", solver=make_solver("midpoint", step_size=0.125),
        initial_time=2.0, time_length=0.5)),
    # A user's own Keras layer (tests/user_dynamics.py), on the defaults.
    "user-keras-layer-defaults": ("keras", dict),
}


def make(name):
  kind, arguments = FLOWS[name]
  if kind == "odenet":
    dynamics = ODENet(hidden=(16, 16), dim=3, activation="softplus")
  else:
    dynamics = user_dynamics.make(kind, 3, hidden=(16, 16))
  return FFJORD(dynamics, event_shape=[3], **arguments())


def variables(bij):
  # The bijector exposes its Keras dynamics' weights and its learned T.
  return list(bij.trainable_variables)


def reload(bij, name, tmp_path):
  """The flow saved and loaded.

  Our `ODENet` (a `keras.Model`) goes through a `.keras` file; a user's
  registered Keras layer through its config and `get_weights` (Keras 3's
  tracking does not give `tf.train.Checkpoint` a plain layer's list of
  sublayers). A checkpoint of the bijector carries its own end time.
  """
  kind, arguments = FLOWS[name]
  if kind == "odenet":
    path = str(tmp_path / "dynamics.keras")
    bij.dynamics.save(path)
    dynamics = keras.saving.load_model(path)
  else:
    dynamics = keras.saving.deserialize_keras_object(
        keras.saving.serialize_keras_object(bij.dynamics))
  ckpt_path = tf.train.Checkpoint(bijector=bij).save(str(tmp_path / "ckpt"))
  other = FFJORD(dynamics, event_shape=[3], **arguments())
  if kind != "odenet":
    dynamics.set_weights(bij.dynamics.get_weights())
  tf.train.Checkpoint(bijector=other).restore(ckpt_path)
  return other


@pytest.mark.parametrize("name", sorted(FLOWS))
def test_flow(name, tmp_path):
  bij = make(name)
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
  grid = dict(adjoint="backprop", solver=make_solver("rk4", step_size=0.25))
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
  if bij.trace == "exact":
    np.testing.assert_allclose(
        tf.function(lambda x: bij.solve(x).log_det)(x), ldj, atol=1e-3)

  # Keras save/load of the dynamics (and a checkpoint of the bijector's own
  # end-time variable) gives the same density.
  other = reload(bij, name, tmp_path)
  assert len(variables(other)) == len(variables(bij))
  for a, b in zip(variables(bij), variables(other)):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  other_exact = other.copy(trace="exact", **grid)
  np.testing.assert_allclose(
      tf.function(lambda x: other_exact.solve(x).log_det)(x), ldj, atol=1e-5)

  assert "FFJORD" in repr(bij) and "ffjord" in bij.name
