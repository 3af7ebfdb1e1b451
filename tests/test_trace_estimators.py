"""Trace estimator objects: several probes, configs, and a user-written estimator in training, evaluation and copies."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import FFJORD, FFJORDModel, ODENet, datasets, divergence
from tf_ffjord.divergence import Exact, Hutchinson, TraceEstimator

A = np.array([[0.3, -0.5], [0.2, -0.1]], np.float32)  # Tr(A) = 0.2


class ColumnLoopExact(TraceEstimator):
  """A user's exact trace: one VJP per event dimension, by a Python loop."""
  name = "column_loop_exact"
  is_exact = True

  def __call__(self, fn, y, noise, event_ndims=1):
    with tf.GradientTape(persistent=True) as tape:
      tape.watch(y)
      f = fn(y)
    dim = y.shape[-1]
    trace = tf.add_n([
        tape.gradient(f, y, output_gradients=tf.one_hot(
            tf.fill(tf.shape(y)[:1], i), dim, dtype=y.dtype))[:, i]
        for i in range(dim)])
    return f, trace, None


def _map():
  w = tf.constant(np.random.default_rng(0).normal(size=(4, 4)), tf.float32)
  return lambda y: tf.tanh(y @ w)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_several_probes_are_unbiased_and_their_variance_falls_like_1_over_k(
    noise):
  fn = _map()
  y = tf.tile(tf.random.normal([1, 4], seed=1), [8000, 1])
  _, exact, _ = Exact()(fn, y[:1], None)
  var = {}
  for k in (1, 4):
    est = Hutchinson(noise, probes=k)
    eps = est.sample(tf.shape(y), tf.float32, seed=tf.constant([3, k]))
    _, tr, probe = est(fn, y, eps)
    tr = tr.numpy()
    assert abs(tr.mean() - float(exact[0])) < 4 * tr.std() / np.sqrt(len(tr))
    var[k] = tr.var()
    # The probe product: the mean of ||eps^T J||^2 is ||J||_F^2.
    sq = tf.reduce_sum(probe ** 2, -1).numpy()
    with tf.GradientTape() as tape:
      y1 = y[:1]
      tape.watch(y1)
      f1 = fn(y1)
    frob = float(tf.reduce_sum(tape.batch_jacobian(f1, y1) ** 2))
    assert abs(sq.mean() - frob) < 4 * sq.std() / np.sqrt(len(sq))
  assert var[1] > 0 and 2.8 < var[1] / var[4] < 5.6


def test_estimators_compare_copy_and_serialize():
  est = Hutchinson("gaussian", probes=3)
  assert est == Hutchinson("gaussian", 3) and est != Hutchinson()
  assert est == "hutchinson" and Exact() == "exact" and Exact() != est
  assert repr(est) == "Hutchinson(noise='gaussian', probes=3)"
  assert len({Exact(), Exact(), Hutchinson()}) == 2
  back = keras.saving.deserialize_keras_object(
      keras.saving.serialize_keras_object(est))
  assert back == est and back is not est
  assert Exact().uses_pfor(divergence.LOOP_MAX_DIM + 1)
  assert not Exact().uses_pfor(divergence.LOOP_MAX_DIM)
  assert not est.uses_pfor(10_000)
  with pytest.raises(ValueError, match="noise"):
    Hutchinson("uniform")
  with pytest.raises(ValueError, match="probes"):
    Hutchinson(probes=0)
  with pytest.raises(ValueError, match="trace"):
    FFJORD(lambda t, x: x, trace="hutch++")


def test_names_stand_for_their_estimators():
  bij = FFJORD(lambda t, x: x, trace="hutchinson", noise="gaussian")
  assert bij.trace == Hutchinson("gaussian") and bij.trace == "hutchinson"
  assert FFJORD(lambda t, x: x, trace="exact").trace == Exact()
  # noise belongs to the name; an estimator object carries its own.
  assert FFJORD(lambda t, x: x, trace=Exact(), noise="gaussian").trace == "exact"


@pytest.mark.parametrize("gradient,solver", [("adjoint", "dopri5"),
                                             ("interpolated", "dopri5"),
                                             ("backprop", "rk4")])
def test_user_estimator_trains_through_every_gradient(gradient, solver):
  # f = W x: ildj = T Tr(W), d ildj / dW = T I.
  w = tf.Variable(A)
  bij = FFJORD(lambda t, x: tf.linalg.matvec(w, x), time_length=0.5,
               trace=ColumnLoopExact(), solver=solver, gradient=gradient)
  x = tf.random.normal([8, 2])

  @tf.function
  def grad(x):
    with tf.GradientTape() as tape:
      ildj = tf.reduce_mean(bij.inverse_log_det_jacobian(x, 1))
    return ildj, tape.gradient(ildj, w)

  ildj, g = grad(x)
  assert float(ildj) == pytest.approx(0.5 * 0.2, abs=1e-5)
  np.testing.assert_allclose(g, 0.5 * np.eye(2), atol=1e-4)
  copy = bij.copy(jit_compile=False)
  assert copy.trace == ColumnLoopExact() and copy.trace is bij.trace
  jacobian = bij.copy(trace=Hutchinson(probes=2))
  sol = tf.function(lambda x: jacobian.solve(x, regularizers=("jacobian",)))(x)
  assert np.all(sol.regularization["jacobian"].numpy() > 0)
  with pytest.raises(ValueError, match="jacobian.*probe"):
    bij.solve(x, regularizers=("jacobian",))


def test_user_estimator_in_fit_and_evaluate():
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,)), solver="rk4",
                      trace=ColumnLoopExact(),
                      eval_options={"trace": ColumnLoopExact()})
  model.compile(keras.optimizers.Adam(1e-2))
  x = datasets.toy.sample("8gaussians", 64, seed=0).astype("f4")
  before = [v.copy() for v in model.get_weights()]
  hist = model.fit(x, batch_size=32, epochs=1, verbose=0).history
  assert np.isfinite(hist["nll"][-1])
  assert any(np.max(np.abs(a - b)) > 0
             for a, b in zip(before, model.get_weights()))
  nll = model.evaluate(x, batch_size=32, verbose=0, return_dict=True)["nll"]
  exact = FFJORDModel((2,), dynamics=model.bijector.dynamics, solver="rk4",
                      trace="exact")
  ref = -float(tf.reduce_mean(exact.log_prob(x)))
  assert nll == pytest.approx(ref, rel=1e-4)
