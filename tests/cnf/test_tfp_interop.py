"""FFJORD as TFP users use any bijector: variable tracking, copies, float64, porting from tfb.FFJORD."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord import FFJORD, ODENet
from tf_ffjord.datasets import toy

tfb = tfp.bijectors
tfd = tfp.distributions


def normal(dim, dtype=tf.float32):
  return tfd.MultivariateNormalDiag(tf.zeros(dim, dtype))


def backing(layer):
  """The tf.Variables behind a Keras layer's weights."""
  return {id(w.value) for w in layer.weights}


def test_tfp_custom_loop_over_dist_trainable_variables_lowers_nll():
  f = ODENet(hidden=(32, 32), dim=2)
  dist = tfd.TransformedDistribution(
      normal(2), FFJORD(f, trace="exact",
                        solver=tf_ffjord.make_solver("rk4", step_size=0.25),
                        time_length=tf_ffjord.EndTime(0.5)))
  x_test = toy.sample("8gaussians", 2000, seed=1)
  nll = tf.function(lambda x: -tf.reduce_mean(dist.log_prob(x)))
  before = float(nll(x_test))
  # The variables exist once the lazily built net has run.
  variables = dist.trainable_variables
  assert {id(v) for v in variables} == backing(f) | {
      id(dist.bijector.keras_layers[1].raw.value)}
  optimizer = tf.keras.optimizers.Adam(1e-2)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(x))
    grads = tape.gradient(loss, variables)
    optimizer.apply_gradients(zip(grads, variables))
    return grads

  grads = None
  for i in range(150):
    grads = step(toy.sample("8gaussians", 256, seed=100 + i))
  assert all(g is not None for g in grads)
  after = float(nll(x_test))
  assert after < before - 1.0, (before, after)


def test_chain_of_blocks_exposes_every_weight_and_both_end_times():
  nets = [ODENet(hidden=(8, 8), dim=2) for _ in range(2)]
  blocks = [FFJORD(net, trace="exact",
                   solver="rk4", time_length=tf_ffjord.EndTime(t))
            for net, t in zip(nets, (0.5, 0.3))]
  chain = tfb.Chain(blocks)
  dist = tfd.TransformedDistribution(normal(2), chain)
  tf.function(dist.log_prob)(tf.zeros([3, 2]))
  expected = set()
  for b in blocks:
    for layer in b.keras_layers:
      expected |= backing(layer)
  assert len(expected) == 2 * (len(nets[0].weights) + 1)
  for variables in (chain.trainable_variables, dist.trainable_variables,
                    dist.variables):
    ids = [id(v) for v in variables]
    assert len(ids) == len(set(ids))  # each once
    assert expected <= set(ids)
  assert {id(v) for v in dist.trainable_variables} == expected


def test_frozen_dynamics_are_not_trainable():
  f = ODENet(hidden=(8,), dim=2)
  f(0.0, tf.zeros([1, 2]))
  f.trainable = False
  bij = FFJORD(f, trace="exact", solver="rk4")
  tf.function(lambda x: bij.solve(x).state)(tf.zeros([2, 2]))
  assert bij.trainable_variables == ()


def test_copy_of_trained_bijector_keeps_learned_end_time_and_density():
  f = ODENet(hidden=(16,), dim=2)
  bij = FFJORD(f, trace="exact",
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-6, atol=1e-6),
               time_length=tf_ffjord.EndTime(0.5))
  end_time = bij.keras_layers[1]
  end_time.raw.assign(np.log(np.expm1(0.4288)))  # as if trained to T=0.4288
  copy = bij.copy()
  assert copy.parameters["time_length"] is end_time
  assert float(copy.time_length) == pytest.approx(0.4288, rel=1e-5)
  x = tf.random.normal([32, 2])
  log_det = lambda b: tf.function(lambda x: b.solve(x).log_det)(x)
  np.testing.assert_allclose(log_det(copy), log_det(bij), atol=1e-6)
  # A copy with other solver settings still shares the learned T.
  other = bij.copy(solver=tf_ffjord.make_solver("rk4", step_size=0.01))
  assert other.time_length.numpy() == bij.time_length.numpy()


def test_train_time_refuses_a_time_length_it_cannot_learn():
  # (train_time= survives as a loose option of the builders and CLIs.)
  from tf_ffjord.cnf.options import ffjord_arguments  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match="train_time"):
    ffjord_arguments(dict(time_length=lambda: tf.constant(1.0),
                          train_time=True))


def test_float64_linear_log_det_is_t_trace_to_1e7():
  a = np.array([[0.3, -0.5], [0.2, -0.1]])  # Tr = 0.2
  a_t = tf.constant(a, tf.float64)
  bij = FFJORD(lambda t, x: tf.linalg.matvec(a_t, x), time_length=0.7,
               trace="exact",
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-11, atol=1e-11))
  x = tf.random.normal([64, 2], dtype=tf.float64)
  z, ildj = tf.function(lambda x: (bij.inverse(x),
                                   bij.inverse_log_det_jacobian(x, 1)))(x)
  assert z.dtype == ildj.dtype == tf.float64
  np.testing.assert_allclose(ildj, 0.7 * np.trace(a), rtol=0, atol=1e-7)
  np.testing.assert_allclose(z, x.numpy() @ scipy.linalg.expm(0.7 * a).T,
                             rtol=0, atol=1e-7)


def test_float64_dynamics_train_end_to_end():
  f = ODENet(hidden=(8,), dim=2, dtype="float64")
  dist = tfd.TransformedDistribution(
      normal(2, tf.float64),
      FFJORD(f, trace="hutchinson", time_length=tf_ffjord.EndTime(0.5)))
  x = tf.constant(toy.sample("8gaussians", 64, seed=0), tf.float64)

  @tf.function
  def grads(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(x))
    return loss, tape.gradient(loss, dist.trainable_variables)

  loss, g = grads(x)
  assert loss.dtype == tf.float64 and np.isfinite(loss.numpy())
  assert {tf.as_dtype(v.dtype) for v in f.trainable_variables} == {tf.float64}
  assert all(gi is not None and np.all(np.isfinite(gi)) for gi in g)


@pytest.mark.parametrize("time_dependent", [False, True])
def test_porting_recipe_matches_tfp_ffjord(time_dependent):
  # tfb.FFJORD integrates its dynamics g from initial_time (base) to
  # final_time (data); ours puts the data at initial_time. Port g by
  # reversing time: f(t, z) = -g(t0 + t1 - t, z), i.e. f = -g when g does
  # not depend on t.
  t0, t1 = 0.0, 0.8
  net = ODENet(hidden=(16, 16), dim=2,
               layer="concatsquash" if time_dependent else "ignore")
  g = lambda t, z: net(t, z)
  theirs = tfb.FFJORD(
      state_time_derivative_fn=g, initial_time=t0, final_time=t1,
      ode_solve_fn=tfp.math.ode.DormandPrince(rtol=1e-7, atol=1e-7).solve,
      trace_augmentation_fn=tfb.ffjord.trace_jacobian_exact)
  if time_dependent:
    f = lambda t, z: -g(t0 + t1 - t, z)
  else:
    f = lambda t, z: -g(t, z)
  ours = FFJORD(f, initial_time=t0, time_length=t1 - t0, trace="exact",
                solver=tf_ffjord.make_solver("dopri5", rtol=1e-7, atol=1e-7))
  x = tf.random.normal([16, 2]) * 2.0
  lp = [tf.function(tfd.TransformedDistribution(normal(2), b).log_prob)(x)
        for b in (theirs, ours)]
  assert np.max(np.abs(lp[0] - tfd.MultivariateNormalDiag(
      tf.zeros(2)).log_prob(x))) > 1e-2  # the flow changes the density
  np.testing.assert_allclose(lp[1], lp[0], atol=1e-4)
