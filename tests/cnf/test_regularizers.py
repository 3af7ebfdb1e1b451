"""RNODE regularizers: closed forms under linear dynamics, step control, model wiring."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ffjord
from scipy.integrate import quad
from scipy.linalg import expm

from tf_ffjord import FFJORD, FFJORDModel, MaximumLikelihood, ODENet, datasets
from tf_ffjord.cnf import trace_estimators as divergence
from tf_ffjord.cnf import regularizers as regs

A = np.array([[-0.5, 1.0], [-0.3, 0.2]])
X0 = np.array([[1.0, -2.0], [0.5, 0.3], [-1.2, 0.7]])
ALL = ("kinetic", "jacobian", "l1", "l2")


def _linear(t, x):
  del t
  return tf.linalg.matvec(tf.constant(A, x.dtype), x)


def _solve(bij, x, direction="inverse", seed=(1, 2), regularizers=()):
  fn = tf.function(lambda x: bij.solve(x, direction, seed=tf.constant(seed),
                                       regularizers=regularizers))
  return fn(tf.constant(x))


def _closed_forms(x, t_len, sign):
  """Integrals along z(u) = expm(sign u A) x, u in [0, T]."""
  def f(u):
    return A @ expm(sign * u * A) @ x
  integrand = {
      "kinetic": lambda u: np.sum(f(u) ** 2),
      "l1": lambda u: np.mean(np.abs(f(u))),
      "l2": lambda u: np.mean(f(u) ** 2),
  }
  return {k: quad(g, 0.0, t_len, epsabs=1e-12, epsrel=1e-10, limit=200)[0]
          for k, g in integrand.items()}


@pytest.mark.parametrize("direction,solver,rtol", [
    ("inverse", "dopri5", 1e-6), ("forward", "dopri5", 1e-6),
    ("inverse", "rk4", 1e-4)])
def test_linear_dynamics_match_closed_forms(direction, solver, rtol):
  t_len = 1.5
  # rk4 at 8 steps: few steps keep the unrolled graph small.
  bij = FFJORD(_linear, time_length=t_len, initial_time=0.3,
               solver=tf_ffjord.make_solver(solver, rtol=1e-9, atol=1e-9,
                                            step_size=0.125))
  sol = _solve(bij, X0, direction, regularizers=ALL)
  sign = 1.0 if direction == "inverse" else -1.0
  np.testing.assert_allclose(sol.state.numpy(),
                             X0 @ expm(sign * t_len * A).T, rtol=rtol)
  # The solve's own probe eps: Hutchinson log-det T eps^T A eps, Jacobian
  # regularizer T ||A^T eps||^2, both exact for linear dynamics.
  eps = divergence.sample_noise(tf.shape(X0), tf.float64, "rademacher",
                                tf.constant((1, 2))).numpy()
  np.testing.assert_allclose(sol.log_det.numpy(), sign * t_len * np.einsum(
      "bi,ij,bj->b", eps, A, eps), rtol=rtol)
  np.testing.assert_allclose(sol.regularization["jacobian"].numpy(),
                             t_len * np.sum((eps @ A) ** 2, -1), rtol=rtol)
  for i, x in enumerate(X0):
    want = _closed_forms(x, t_len, sign)
    for name, value in want.items():
      # |f| has kinks where a component crosses 0 (and the integrals are
      # left out of dopri5's error norm): l1 converges at a lower order.
      tol = max(50 * rtol, 1e-4) if name == "l1" else rtol
      np.testing.assert_allclose(sol.regularization[name][i].numpy(), value,
                                 rtol=tol,
                                 err_msg=name)


def test_time_dependent_dynamics_with_offset_time():
  # f = t A x on [t0, t0 + T]: z(t) = expm((t^2 - t0^2) / 2 A) x.
  t0, t_len = 1.0, 0.5
  a = tf.constant(A)
  bij = FFJORD(lambda t, x: t * tf.linalg.matvec(a, x), time_length=t_len,
               initial_time=t0,
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-10, atol=1e-10))
  sol = _solve(bij, X0, regularizers=("kinetic",))
  for i, x in enumerate(X0):
    want = quad(lambda t: np.sum(
        (t * A @ expm((t * t - t0 * t0) / 2 * A) @ x) ** 2), t0, t0 + t_len,
                epsabs=1e-12)[0]
    np.testing.assert_allclose(sol.regularization["kinetic"][i].numpy(), want,
                               rtol=1e-6)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_jacobian_hutchinson_mean_is_frobenius_norm(noise):
  t_len, n = 2.0, 20000
  bij = FFJORD(_linear, time_length=t_len,
               solver=tf_ffjord.make_solver("rk4", step_size=0.5),
               trace=tf_ffjord.Hutchinson(noise))
  x = np.tile(X0[:1], (n, 1))
  jac = _solve(bij, x, seed=(3, 4),
               regularizers=("jacobian",)).regularization["jacobian"].numpy()
  want = t_len * np.sum(A ** 2)
  # Standard error of the mean: std / sqrt(n) is about 1% of the mean here.
  assert abs(jac.mean() - want) < 4 * jac.std() / np.sqrt(n)
  assert abs(jac.mean() - want) < 0.05 * want


def test_regularizer_states_do_not_change_step_control():
  # Large, fast-growing integrals: if they entered the error norm, dopri5
  # would take different (more) steps.
  a = tf.constant([[0.0, 6.0], [-6.0, 0.3]], tf.float64)
  fn = lambda t, x: tf.linalg.matvec(a, x) * (1.0 + 3.0 * t)
  x = np.random.default_rng(0).normal(size=(64, 2)) * 5.0
  tight = tf_ffjord.make_solver("dopri5", rtol=1e-5, atol=1e-5)
  plain = _solve(FFJORD(fn, solver=tight), x)
  reg = _solve(FFJORD(fn, solver=tight), x,
               regularizers=ALL)
  assert int(plain.nfe) == int(reg.nfe)
  np.testing.assert_allclose(plain.state.numpy(), reg.state.numpy(),
                             rtol=1e-10)
  np.testing.assert_allclose(plain.log_det.numpy(), reg.log_det.numpy(),
                             rtol=1e-10)


def test_bad_names_raise():
  with pytest.raises(ValueError, match="Unknown regularizer"):
    regs.rate("kinetik", tf.zeros([1, 2]), None)
  with pytest.raises(ValueError, match="hutchinson"):
    regs.rate("jacobian", tf.zeros([1, 2]), None)
  with pytest.raises(ValueError, match="Unknown regularizer"):
    FFJORD(_linear).solve(X0, regularizers=("kinetik",))
  with pytest.raises(ValueError, match="hutchinson"):
    FFJORD(_linear, trace="exact").solve(X0, regularizers=("jacobian",))


def _fit(regularization, steps=40, seed=0):
  keras.utils.set_random_seed(seed)
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(16, 16)), solver="rk4",
                      step_size=0.5)
  model.compile(keras.optimizers.Adam(1e-2),
                objective=MaximumLikelihood(regularization))
  x = datasets.toy.sample("8gaussians", 64 * steps, seed=seed).astype("f4")
  hist = model.fit(x, batch_size=64, epochs=1, verbose=0).history
  return model, hist


def test_model_logs_and_minimizes_regularizers():
  reg_model, hist = _fit({"kinetic": 1.0, "jacobian": 0.01})
  assert {"nll", "nfe", "kinetic", "jacobian"} <= set(hist)
  assert np.isfinite(hist["kinetic"][0]) and hist["kinetic"][0] > 0
  assert np.isfinite(hist["jacobian"][0]) and hist["jacobian"][0] > 0
  # A heavy kinetic weight must give a slower field than no weight at all:
  # measure both trained fields with the same probe-free kinetic integral.
  plain_model, _ = _fit(None)
  x = datasets.toy.sample("8gaussians", 512, seed=9).astype("f4")

  def kinetic(model):
    bij = FFJORD(model.blocks[0].dynamics, trace="exact",
                 solver=tf_ffjord.make_solver("rk4", step_size=0.5))
    return float(tf.reduce_mean(_solve(
        bij, x, regularizers=("kinetic",)).regularization["kinetic"]))

  assert kinetic(reg_model) < 0.5 * kinetic(plain_model)


@keras.saving.register_keras_serializable("tf_ffjord_tests")
class ScaledSpeed(regs.Regularizer):
  """scale * ||f||_1 per example: a user's penalty with a config."""
  name = "scaled_speed"

  def __init__(self, scale=1.0):
    self.scale = float(scale)

  def rate(self, f, probe=None):
    return self.scale * tf.reduce_sum(tf.abs(f), -1)

  def get_config(self):
    return {"scale": self.scale}


def test_a_user_regularizer_integrates_its_rate():
  # Its integral is 2 x dim x the built-in l1 (the mean |f|) on one solve.
  bij = FFJORD(_linear, time_length=1.5,
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-8, atol=1e-8))
  sol = _solve(bij, X0, regularizers=(ScaledSpeed(2.0), "l1"))
  assert sorted(sol.regularization) == ["l1", "scaled_speed"]
  np.testing.assert_allclose(sol.regularization["scaled_speed"].numpy(),
                             2 * 2 * sol.regularization["l1"].numpy(),
                             rtol=1e-6)
  # Against the closed form: |f| has kinks and the integrals are left out
  # of the error norm, so the l1 integral converges at a lower order.
  for i, x in enumerate(X0):
    want = 4 * _closed_forms(x, 1.5, 1.0)["l1"]
    np.testing.assert_allclose(sol.regularization["scaled_speed"][i], want,
                               rtol=1e-3)


def test_regularizers_are_objects_with_shorthands():
  assert regs.get("kinetic") == regs.KineticEnergy() == "kinetic"
  assert regs.check(["l2", ScaledSpeed(3.0)]) == (regs.L2(), ScaledSpeed(3.0))
  assert ScaledSpeed(3.0) != ScaledSpeed(2.0)
  with pytest.raises(ValueError, match="unique"):
    regs.check(["l2", regs.L2()])
  with pytest.raises(ValueError, match="Unknown regularizer"):
    MaximumLikelihood({"kinetik": 1.0})
  with pytest.raises(ValueError, match=">= 0"):
    MaximumLikelihood({ScaledSpeed(): -1.0})
  # The probe check at compile, once per FFJORD block.
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(4,)), trace="exact",
                      solver="rk4", step_size=0.5)
  with pytest.raises(ValueError, match="hutchinson"):
    model.compile("adam", objective=MaximumLikelihood({"jacobian": 0.1}))


def test_a_user_regularizer_trains_logs_and_saves(tmp_path):
  model, hist = _fit({ScaledSpeed(2.0): 0.1, "kinetic": 0.01}, steps=3)
  assert {"nll", "scaled_speed", "kinetic", "loss"} <= set(hist)
  # The loss is the NLL plus weight x penalty, step by step, so in the
  # epoch means too.
  np.testing.assert_allclose(
      hist["loss"][0], hist["nll"][0] + 0.1 * hist["scaled_speed"][0]
      + 0.01 * hist["kinetic"][0], rtol=1e-5)
  assert hist["scaled_speed"][0] > 0
  path = tmp_path / "reg.keras"
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.objective.regularizers == (ScaledSpeed(2.0),
                                           regs.KineticEnergy())
  assert loaded.objective.weights == (0.1, 0.01)
  x = datasets.toy.sample("8gaussians", 4, seed=3)
  np.testing.assert_allclose(loaded.log_prob(x), model.log_prob(x),
                             atol=1e-5)
  history = loaded.fit(x, batch_size=4, verbose=0).history
  assert np.isfinite(history["scaled_speed"][0])
