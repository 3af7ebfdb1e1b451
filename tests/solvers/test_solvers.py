"""Tests of tf_ffjord.solvers: accuracy against closed forms, failures, step control, XLA."""

import signal

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord import FFJORD
from tf_ffjord import solvers
from tf_ffjord.solvers import (STATUS, AdaptiveStepSize, ConstantStepSize,
                               make_solver, solve, tableaux)
from tf_ffjord.solvers.step_size import integrate_adaptive

A = np.array([[-0.5, 2.0], [-2.0, -0.3]])  # a decaying rotation


def _alarm(seconds):
  def handler(*_):
    raise TimeoutError(f"solve still running after {seconds} s")
  signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)


def _linear(dtype=tf.float64):
  a = tf.constant(A, dtype)
  return lambda t, y: tf.linalg.matvec(a, y)


def _dopri(tol, **kwargs):
  return dict(method="dopri5",
              controller=AdaptiveStepSize(rtol=tol, atol=tol, **kwargs))


@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_dopri5_matches_exponential_decay(tol):
  y0 = tf.constant([1.0, -2.0, 0.5], tf.float64)
  r = solve(lambda t, y: -y, y0, 0.0, 2.0, **_dopri(tol))
  err = np.max(np.abs(r.state.numpy() - y0.numpy() * np.exp(-2.0)))
  assert err < 10 * tol
  assert err > 1e-14  # a real approximation, not a copy of the answer
  nfe = int(r.nfe)
  # One evaluation at t0, one for the first step size, then 6 per step (FSAL).
  assert nfe >= 8 and (nfe - 2) % 6 == 0
  assert int(r.status) == STATUS["success"]


def test_dopri5_tighter_tolerance_more_steps_smaller_error():
  y0 = tf.constant([1.0, 0.0], tf.float64)
  want = scipy.linalg.expm(A * 3.0) @ y0.numpy()
  errs, nfes = [], []
  for tol in (1e-3, 1e-6, 1e-9):
    r = solve(_linear(), y0, 0.0, 3.0, **_dopri(tol))
    errs.append(np.max(np.abs(r.state.numpy() - want)))
    nfes.append(int(r.nfe))
  assert errs[0] > errs[1] > errs[2]
  assert nfes[0] < nfes[1] < nfes[2]
  assert errs[2] < 1e-7


@pytest.mark.parametrize("jit", [False, True])
def test_time_dependent_dynamics_backward_in_time_in_a_graph(jit):
  # dy/dt = t A y: y(0.5) = expm(A (0.5^2 - 2^2) / 2) y(2).
  y1 = tf.constant([0.3, -1.2], tf.float64)
  fn = tf.function(lambda y: solve(
      lambda t, y: t * _linear()(t, y), y, 2.0, 0.5, jit_compile=jit,
      **_dopri(1e-9)).state)
  want = scipy.linalg.expm(A * (0.25 - 4.0) / 2) @ y1.numpy()
  np.testing.assert_allclose(fn(y1).numpy(), want, atol=1e-7)


@pytest.mark.parametrize("dtype,tol", [(tf.float32, 1e-5), (tf.float64, 1e-9)])
def test_nested_state_and_constants_in_both_dtypes(dtype, tol):
  r = solve(lambda t, s, k: {"y": -k * s["y"], "z": s["y"]},
            {"y": tf.constant([2.0], dtype), "z": tf.zeros([1], dtype)},
            0.0, 1.0, constants={"k": tf.constant(3.0, dtype)}, **_dopri(tol))
  assert r.state["y"].dtype == dtype and r.last_step.dtype == dtype
  np.testing.assert_allclose(r.state["y"].numpy(), 2 * np.exp(-3.0),
                             rtol=20 * tol)
  np.testing.assert_allclose(r.state["z"].numpy(), 2 * (1 - np.exp(-3.0)) / 3,
                             rtol=20 * tol)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2),
                                          ("rk4", 4)])
def test_fixed_grid_converges_at_its_order(method, order):
  y0 = tf.constant([1.0, 0.0], tf.float64)
  want = scipy.linalg.expm(A) @ y0.numpy()
  errs = []
  for n in (16, 32):
    r = solve(_linear(), y0, 0.0, 1.0, method=method,
              controller=ConstantStepSize(n))
    errs.append(np.max(np.abs(r.state.numpy() - want)))
    assert int(r.nfe) == n * {"euler": 1, "midpoint": 2, "rk4": 4}[method]
  rate = np.log2(errs[0] / errs[1])
  assert abs(rate - order) < 0.3


def test_tableaux_are_consistent():
  for tab in solvers.METHODS.values():
    assert abs(sum(tab.b) - 1.0) < 1e-12
    for ci, row in zip(tab.c[1:], tab.a):
      assert abs(sum(row) - ci) < 1e-12  # the stages sit at their nodes
    if tab.b_error is not None:
      assert abs(sum(tab.b_error)) < 1e-12  # both solutions are consistent


@pytest.mark.parametrize("jit", [False, True])
def test_nan_dynamics_stop_with_an_error_instead_of_hanging(jit):
  for controller in (AdaptiveStepSize(max_num_steps=50), ConstantStepSize(4)):
    method = "dopri5" if controller.__class__ is AdaptiveStepSize else "rk4"
    fn = tf.function(lambda y: solve(lambda t, y: y * np.nan, y, 0.0, 1.0,
                                     method=method, controller=controller,
                                     jit_compile=jit).state)
    _alarm(300)
    try:
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match="NaN or inf.*check the inputs"):
        fn(tf.ones([3]))
    finally:
      signal.alarm(0)


def test_under_outer_xla_failures_come_back_as_nan_and_status():
  # XLA drops assertions: the status and NaN states report the failure.
  stiff = lambda t, y: -200.0 * y + tf.sin(40.0 * t)
  run = tf.function(lambda y: solve(
      stiff, y, 0.0, 1.0, **_dopri(1e-10, max_num_steps=4)),
      jit_compile=True)
  r = run(tf.ones([2], tf.float64))
  assert int(r.status) == STATUS["max_num_steps"]
  assert int(r.nfe) == 2 + 4 * 6
  assert np.all(np.isnan(r.state.numpy()))
  nan = tf.function(lambda y: solve(lambda t, y: y * np.nan, y, 0.0, 1.0),
                    jit_compile=True)(tf.ones([3]))
  assert int(nan.status) == STATUS["non_finite"]
  assert np.all(np.isnan(nan.state.numpy()))


@pytest.mark.parametrize("jit", [False, True])
def test_step_limit_names_the_problem_and_the_fix(jit):
  fn = tf.function(lambda y: solve(
      lambda t, y: -200.0 * y + tf.sin(40.0 * t), y, 0.0, 1.0,
      jit_compile=jit, **_dopri(1e-10, max_num_steps=4)).state)
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="exceeded max_num_steps=4.*loosen the tolerances"):
    fn(tf.ones([2], tf.float64))


def test_zero_error_weight_leaves_step_sizes_unchanged():
  wild = lambda t, s: [_linear()(t, s[0]),
                       1e3 * tf.sin(50.0 * t) * tf.ones_like(s[1])]
  y0 = [tf.constant([1.0, 0.0], tf.float64), tf.zeros([1], tf.float64)]
  plain = solve(wild, y0, 0.0, 1.0, **_dopri(1e-6))
  masked = solve(wild, y0, 0.0, 1.0, **_dopri(1e-6, error_weights=(1.0, 0.0)))
  alone = solve(_linear(), y0[0], 0.0, 1.0, **_dopri(1e-6))
  assert int(masked.nfe) == int(alone.nfe)
  assert float(masked.last_step) == float(alone.last_step)
  np.testing.assert_array_equal(masked.state[0].numpy(), alone.state.numpy())
  assert int(plain.nfe) > int(masked.nfe)  # the wild part would add steps
  with pytest.raises(ValueError, match="error_weights"):
    solve(lambda t, y: -y, tf.ones([2]), 0.0, 1.0,
          **_dopri(1e-6, error_weights=(1.0, 0.0)))


def test_dopri5_midpoint_weights_are_4th_order():
  # One step of y' = y: the midpoint value's error falls like h^5.
  errors = []
  for h in (0.4, 0.2, 0.1):
    y0 = [tf.constant(1.0, tf.float64)]
    _, ks, _ = tableaux.rk_step(lambda t, y: y, tableaux.DOPRI5,
                                tf.constant(0.0, tf.float64), y0,
                                tf.constant(h, tf.float64))
    mid = tableaux.combine(y0, h, tableaux.DOPRI5.b_mid, ks)[0]
    errors.append(abs(float(mid) - np.exp(h / 2)))
  assert errors[0] / errors[1] > 16 and errors[1] / errors[2] > 24


@pytest.mark.parametrize("direction", [1.0, -1.0])
def test_dense_output_follows_the_solution_between_steps(direction):
  fn = _linear()
  y0 = tf.constant([1.0, 0.5], tf.float64)
  t1 = 3.0 * direction
  y1, _, status, _, dense = integrate_adaptive(
      lambda t, y: [fn(t, y[0])], tf.constant(0.0, tf.float64),
      tf.constant(t1, tf.float64), [y0], tableaux.DOPRI5,
      AdaptiveStepSize(rtol=1e-6, atol=1e-6), record=True)
  assert int(status) == 0
  starts, spans = dense.starts.numpy(), dense.spans.numpy()
  assert len(starts) > 3 and starts[0] == 0
  np.testing.assert_allclose(starts[1:], np.cumsum(spans)[:-1])
  assert np.cumsum(spans)[-1] == pytest.approx(3.0)
  for tau in np.linspace(0.0, 3.0, 41):
    exact = scipy.linalg.expm(A * tau * direction) @ y0.numpy()
    np.testing.assert_allclose(dense(tf.constant(tau, tf.float64))[0], exact,
                               atol=2e-5)
  np.testing.assert_allclose(dense(tf.constant(3.0, tf.float64))[0], y1[0],
                             atol=1e-12)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float64])
def test_jit_compile_on_and_off_give_the_same_results(dtype):
  w = tf.Variable(np.array([[0.4, -1.1], [0.9, 0.2]]), dtype=dtype)
  y0 = tf.constant(np.random.default_rng(0).normal(size=(16, 2)), dtype)
  fn = lambda t, y: tf.tanh(tf.matmul(y, w)) * (1.0 + t)
  out = []
  for jit in (False, True):
    @tf.function
    def run(y0):
      with tf.GradientTape() as tape:
        tape.watch(y0)
        r = solve(fn, y0, 0.0, 1.0, jit_compile=jit, **_dopri(1e-6))
        v = tf.reduce_sum(r.state ** 2)
      return [r.state, r.nfe] + tape.gradient(v, [y0, w])
    out.append([o.numpy() for o in run(y0)])
  rtol = 1e-5 if dtype == tf.float32 else 1e-12
  for a, b in zip(*out):
    np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol)


def test_tfp_solver_through_its_public_solve():
  solver = tfp.math.ode.DormandPrince(rtol=1e-8, atol=1e-8)
  y0 = tf.constant([1.0, 0.0], tf.float64)
  with tf.GradientTape() as tape:
    tape.watch(y0)
    r = solvers.solve_tfp(solver, _linear(), y0, 0.0, 1.0)
    v = tf.reduce_sum(r.state)
  np.testing.assert_allclose(r.state.numpy(), scipy.linalg.expm(A) @ y0.numpy(),
                             rtol=1e-6)
  np.testing.assert_allclose(tape.gradient(v, y0).numpy(),
                             scipy.linalg.expm(A).T @ np.ones(2), rtol=1e-6)
  assert int(r.nfe) > 0 and int(r.status) == 0


def test_make_solver_names():
  s = make_solver("dopri5", rtol=1e-4, atol=1e-6, max_num_steps=7)
  assert s.adaptive and s.method is solvers.DOPRI5
  assert s.controller == AdaptiveStepSize(rtol=1e-4, atol=1e-6,
                                          max_num_steps=7)
  rk4 = make_solver("rk4", step_size=0.25)
  assert not rk4.adaptive and rk4.controller.num_steps == 4
  bdf = make_solver("bdf", rtol=1e-3)
  assert isinstance(bdf, solvers.TFPSolver)
  assert isinstance(bdf.solver, tfp.math.ode.BDF) and bdf.solver._rtol == 1e-3
  assert bdf.replace(rtol=1e-6).solver._rtol == 1e-6  # a name takes options
  own = tfp.math.ode.DormandPrince()
  assert make_solver(own).solver is own
  assert make_solver(own, rtol=1e-9).solver is own  # an instance keeps its own
  with pytest.raises(ValueError, match="Unknown solver"):
    make_solver("rk45")
  with pytest.raises(ValueError, match="rtol"):
    make_solver("dopri5", rtol=0.0)
  with pytest.raises(ValueError, match="error estimate"):
    solve(lambda t, y: -y, tf.ones([2]), 0.0, 1.0, method="rk4",
          controller=AdaptiveStepSize())


@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_bijector_jit_compile_matches_plain_graph(solver):
  w = tf.Variable([[0.3, -0.8], [0.6, 0.1]])
  f = lambda t, x: tf.tanh(tf.matmul(x, w)) * (1.0 + t)
  x = tf.constant(np.random.default_rng(0).normal(size=(8, 2)), tf.float32)
  out = {}
  for inner, outer in ((False, False), (True, False), (False, True)):
    bij = FFJORD(f, trace="exact", jit_compile=inner,
                 solver=tf_ffjord.make_solver(solver, rtol=1e-6, atol=1e-6),
                 adjoint="adjoint")

    def step(x):
      with tf.GradientTape() as tape:
        sol = bij.solve(x)
        loss = tf.reduce_mean(sol.log_det) + tf.reduce_mean(sol.state ** 2)
      g = tape.gradient(loss, w)
      return loss, g, sol.nfe, bij.nfe_backward.read_value()

    out[inner, outer] = [o.numpy() for o in
                         tf.function(step, jit_compile=outer)(x)]
  ref = out[False, False]
  for key, got in out.items():
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    np.testing.assert_allclose(got[1], ref[1], rtol=1e-4, atol=1e-6)
    assert got[3] > 0  # the backward solve reported its NFE
  if solver == "rk4":
    assert all(got[2] == 16 and got[3] == 16 for got in out.values())
