"""Trace estimator objects: several probes, configs, and a user-written estimator in training, evaluation and copies."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ffjord

from tf_ffjord import FFJORD, FFJORDModel, ODENet, datasets
from tf_ffjord.cnf import trace_estimators as divergence
from tf_ffjord.cnf.trace_estimators import Exact, Hutchinson, TraceEstimator

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
  bij = FFJORD(lambda t, x: x, trace=tf_ffjord.Hutchinson("gaussian"))
  assert bij.trace == Hutchinson("gaussian") and bij.trace == "hutchinson"
  assert FFJORD(lambda t, x: x, trace="exact").trace == Exact()
  # noise belongs to the name; an estimator object carries its own.
  assert FFJORD(lambda t, x: x, trace=Exact(), ).trace == "exact"


@pytest.mark.parametrize("gradient,solver", [("adjoint", "dopri5"),
                                             ("interpolated", "dopri5"),
                                             ("backprop", "rk4")])
def test_user_estimator_trains_through_every_gradient(gradient, solver):
  # f = W x: ildj = T Tr(W), d ildj / dW = T I.
  w = tf.Variable(A)
  bij = FFJORD(lambda t, x: tf.linalg.matvec(w, x), time_length=0.5,
               trace=ColumnLoopExact(), solver=solver, adjoint=gradient)
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


# Dynamics that ignore (part of) the state: TFP's own FFJORD test uses the
# translation f = 1. Their Jacobian has zero (or partly zero) columns that
# the tape calls "unconnected"; the trace is the analytic one, not an error.
B = np.array([[0.7, 0.0, 0.4], [0.3, -0.2, 0.0], [0.0, 0.0, 0.0]])


def _ignoring():
  """(name, f, exact trace) of dynamics that ignore all or part of y."""
  def partial(y):  # uses y[:, :3] only: trace of B's used block, 0.5
    used = tf.linalg.matvec(tf.constant(B, y.dtype), y[:, :3])
    return tf.concat([used, tf.zeros_like(y[:, 3:])], -1)
  return [("ones_like", tf.ones_like, 0.0),
          ("constant_of_batch", lambda y: tf.zeros_like(y) + 2.0, 0.0),
          ("partial", partial, 0.5)]


@pytest.mark.parametrize("dim", [5, divergence.LOOP_MAX_DIM + 4])
@pytest.mark.parametrize("graph", [False, True])
@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_traces_of_dynamics_that_ignore_the_state(dtype, graph, dim):
  y = tf.random.stateless_normal([3, dim], [4, dim], dtype=dtype)
  for name, fn, expected in _ignoring():
    ests = [Exact(), Hutchinson(), Hutchinson("gaussian", probes=3)]
    for est in ests:
      noise = est.sample(tf.shape(y), dtype, seed=tf.constant([1, 2]))
      call = lambda y, noise: est(fn, y, noise)[:2]
      if graph:
        call = tf.function(call)
      f, tr = call(y, noise)
      np.testing.assert_allclose(f, fn(y), err_msg=name)
      if name == "partial" and not est.is_exact:
        # eps^T B eps over the used block, probe by probe: no zero-fill bias.
        eps = np.reshape(noise.numpy(), [-1, 3, dim])[..., :3]
        want = np.einsum("kbi,ij,kbj->b", eps, B, eps) / eps.shape[0]
        np.testing.assert_allclose(tr, want, rtol=1e-5, err_msg=name)
      else:
        np.testing.assert_allclose(tr, np.full([3], expected), atol=1e-6,
                                   err_msg=f"{name} {est}")
      assert tr.dtype == dtype


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_flow_of_a_translation_has_zero_log_det(trace):
  # TFP's testBijector on our own class: f = 1 moves every point by T.
  bij = FFJORD(lambda t, z: tf.ones_like(z), time_length=1.0, trace=trace)
  x = np.zeros((2, 5), np.float64)
  np.testing.assert_allclose(bij.inverse(x), x + 1.0, atol=1e-6)
  np.testing.assert_allclose(bij.forward(x + 1.0), x, atol=1e-6)
  np.testing.assert_allclose(bij.inverse_log_det_jacobian(x, 1), [0.0, 0.0])
  np.testing.assert_allclose(bij.forward_log_det_jacobian(x, 1), [0.0, 0.0])
