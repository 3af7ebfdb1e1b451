"""Tests of tf_ffjord.solvers: accuracy against closed forms, failures, gradients."""

import signal

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import FFJORD
from tf_ffjord.solvers import STATUS, DormandPrince, FixedGrid, make_solver

A = np.array([[-0.5, 2.0], [-2.0, -0.3]])  # a decaying rotation


def _alarm(seconds):
  def handler(*_):
    raise TimeoutError(f"solve still running after {seconds} s")
  signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)


def _final(results):
  return tf.nest.map_structure(lambda s: s[-1].numpy(), results.states)


@pytest.mark.parametrize("tol", [1e-4, 1e-8])
def test_dopri5_matches_exponential_decay(tol):
  solver = DormandPrince(rtol=tol, atol=tol)
  y0 = tf.constant([1.0, -2.0, 0.5], tf.float64)
  r = solver.solve(lambda t, y: -y, 0.0, y0, solution_times=[2.0])
  err = np.max(np.abs(_final(r) - y0.numpy() * np.exp(-2.0)))
  assert err < 10 * tol
  assert err > 1e-14  # a real approximation, not a copy of the answer
  nfe = int(r.diagnostics.num_ode_fn_evaluations)
  # One evaluation at t0, one for the first step size, then 6 per step (FSAL).
  assert nfe >= 8 and (nfe - 2) % 6 == 0
  assert int(r.diagnostics.status) == STATUS["success"]


def test_dopri5_tighter_tolerance_more_steps_smaller_error():
  y0 = tf.constant([1.0, 0.0], tf.float64)
  errs, nfes = [], []
  want = tf.linalg.expm(tf.constant(A * 3.0)).numpy() @ y0.numpy()
  for tol in (1e-3, 1e-6, 1e-9):
    r = DormandPrince(rtol=tol, atol=tol).solve(
        lambda t, y: tf.linalg.matvec(tf.constant(A), y), 0.0, y0,
        solution_times=[3.0])
    errs.append(np.max(np.abs(_final(r) - want)))
    nfes.append(int(r.diagnostics.num_ode_fn_evaluations))
  assert errs[0] > errs[1] > errs[2]
  assert nfes[0] < nfes[1] < nfes[2]
  assert errs[2] < 1e-7


def test_dopri5_integrates_backward_in_time_and_in_a_graph():
  solver = DormandPrince(rtol=1e-9, atol=1e-9)
  y1 = tf.constant([0.3, -1.2], tf.float64)
  fn = tf.function(lambda y: solver.solve(
      lambda t, y: tf.linalg.matvec(tf.constant(A), y) * t, 2.0, y,
      solution_times=[0.5]).states[-1])
  # dy/dt = t A y: y(0.5) = expm(A (0.5^2 - 2^2) / 2) y(2).
  want = tf.linalg.expm(tf.constant(A * (0.25 - 4.0) / 2)).numpy() @ y1.numpy()
  np.testing.assert_allclose(fn(y1).numpy(), want, atol=1e-7)


def test_dopri5_nested_state_and_constants():
  solver = DormandPrince(rtol=1e-8, atol=1e-8)
  r = solver.solve(lambda t, s, k: {"y": -k * s["y"], "z": s["y"]}, 0.0,
                   {"y": tf.constant([2.0], tf.float64),
                    "z": tf.zeros([1], tf.float64)},
                   solution_times=[1.0],
                   constants={"k": tf.constant(3.0, tf.float64)})
  out = _final(r)
  np.testing.assert_allclose(out["y"], 2 * np.exp(-3.0), rtol=1e-6)
  np.testing.assert_allclose(out["z"], 2 * (1 - np.exp(-3.0)) / 3, rtol=1e-6)


@pytest.mark.parametrize("jit", [False, True])
def test_nan_dynamics_stop_instead_of_hanging(jit):
  solver = DormandPrince(rtol=1e-5, atol=1e-5, max_num_steps=50)
  fn = tf.function(lambda y: solver.solve(
      lambda t, y: y * np.nan, 0.0, y, solution_times=[1.0]), jit_compile=jit)
  _alarm(300)
  try:
    if jit:  # XLA drops assertions: the status and NaN states report it
      r = fn(tf.ones([3]))
      assert int(r.diagnostics.status) == STATUS["non_finite"]
      assert np.all(np.isnan(r.states.numpy()))
    else:
      with pytest.raises(tf.errors.InvalidArgumentError, match="NaN"):
        fn(tf.ones([3]))
  finally:
    signal.alarm(0)


@pytest.mark.parametrize("jit", [False, True])
def test_step_limit_stops_the_solve(jit):
  solver = DormandPrince(rtol=1e-10, atol=1e-10, max_num_steps=4)
  fn = tf.function(lambda y: solver.solve(
      lambda t, y: -200.0 * y + tf.sin(40.0 * t), 0.0, y,
      solution_times=[1.0]), jit_compile=jit)
  _alarm(300)
  try:
    if jit:
      r = fn(tf.ones([2], tf.float64))
      assert int(r.diagnostics.status) == STATUS["max_num_steps"]
      assert int(r.diagnostics.num_ode_fn_evaluations) == 2 + 4 * 6
      assert np.all(np.isnan(r.states.numpy()))
    else:
      with pytest.raises(tf.errors.InvalidArgumentError,
                         match="max_num_steps=4"):
        fn(tf.ones([2], tf.float64))
  finally:
    signal.alarm(0)


def test_zero_error_weight_leaves_step_control_unchanged():
  fn = lambda t, s: [tf.linalg.matvec(tf.constant(A), s[0]),
                     1e3 * tf.sin(50.0 * t) * tf.ones_like(s[1])]
  y0 = [tf.constant([1.0, 0.0], tf.float64), tf.zeros([1], tf.float64)]
  plain = DormandPrince(rtol=1e-6, atol=1e-6)
  masked = DormandPrince(rtol=1e-6, atol=1e-6, error_weights=(1.0, 0.0))
  nfe = [int(s.solve(fn, 0.0, y0, [1.0]).diagnostics.num_ode_fn_evaluations)
         for s in (plain, masked)]
  only = DormandPrince(rtol=1e-6, atol=1e-6).solve(
      lambda t, y: tf.linalg.matvec(tf.constant(A), y), 0.0, y0[0], [1.0])
  assert nfe[1] == int(only.diagnostics.num_ode_fn_evaluations)
  assert nfe[0] > nfe[1]  # the wild component would have forced more steps
  with pytest.raises(ValueError, match="error_weights"):
    masked.solve(lambda t, y: -y, 0.0, tf.ones([2]), [1.0])


def _nonlinear_problem():
  w = tf.Variable([[0.4, -1.1], [0.9, 0.2]], dtype=tf.float64)
  b = tf.constant([0.1, -0.3], tf.float64)

  def ode_fn(t, y, c):
    return c * tf.tanh(tf.linalg.matvec(w, y) + b * t)

  def loss(y1):
    return tf.reduce_sum(y1 * tf.constant([1.0, -2.0], tf.float64)) + \
        tf.reduce_sum(y1 ** 2)

  return w, ode_fn, loss


def test_adjoint_gradients_match_finite_differences_and_backprop():
  w, ode_fn, loss = _nonlinear_problem()
  solver = DormandPrince(rtol=1e-10, atol=1e-10)
  y0 = tf.constant([0.5, -0.7], tf.float64)
  c = tf.constant(1.3, tf.float64)

  def value(y0, c, adjoint=True):
    if adjoint:
      r = solver.solve(ode_fn, 0.0, y0, [1.5], constants={"c": c})
    else:
      r = solver._solve(lambda t, y: ode_fn(t, y, c), 0.0, y0, [1.5])  # pylint: disable=protected-access
    return loss(r.states[-1])

  grads = {}
  for adjoint in (True, False):
    with tf.GradientTape() as tape:
      tape.watch([y0, c])
      v = value(y0, c, adjoint)
    grads[adjoint] = [g.numpy() for g in tape.gradient(v, [y0, c, w])]
  h = 1e-5
  fd_y0 = [(value(y0 + h * e, c) - value(y0 - h * e, c)).numpy() / (2 * h)
           for e in np.eye(2)]
  fd_c = (value(y0, c + h) - value(y0, c - h)).numpy() / (2 * h)
  fd_w = np.zeros((2, 2))
  w0 = w.numpy()
  for i in range(2):
    for j in range(2):
      d = np.zeros((2, 2))
      d[i, j] = h
      w.assign(w0 + d)
      up = value(y0, c).numpy()
      w.assign(w0 - d)
      fd_w[i, j] = (up - value(y0, c).numpy()) / (2 * h)
  w.assign(w0)
  for adjoint in (True, False):
    g_y0, g_c, g_w = grads[adjoint]
    np.testing.assert_allclose(g_y0, fd_y0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_c, fd_c, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_w, fd_w, rtol=1e-5, atol=1e-7)


def test_adjoint_gradients_under_xla_match_closed_form():
  # y' = -k y, z' = y with k = w c: losses and gradients in closed form.
  w = tf.Variable(0.7)
  solver = DormandPrince(rtol=1e-6, atol=1e-6)

  @tf.function(jit_compile=True)
  def run(y0, c):
    with tf.GradientTape() as tape:
      tape.watch([y0, c])
      r = solver.solve(lambda t, s, c: [-w * s[0] * c, s[0]], 0.0,
                       [y0, tf.zeros_like(y0)], [2.0], constants={"c": c})
      v = tf.reduce_sum(r.states[0][-1]) + tf.reduce_sum(r.states[1][-1])
    return v, tape.gradient(v, [y0, c, w])

  v, (g_y0, g_c, g_w) = run(tf.constant([1.0, 2.0, 3.0]), tf.constant(1.5))
  k, t_end, total = 0.7 * 1.5, 2.0, 6.0
  e = np.exp(-k * t_end)
  np.testing.assert_allclose(v.numpy(), total * (e + (1 - e) / k), rtol=1e-5)
  np.testing.assert_allclose(g_y0.numpy(), [e + (1 - e) / k] * 3, rtol=1e-5)
  dk = total * (-t_end * e + (t_end * e * k - (1 - e)) / k**2)
  np.testing.assert_allclose(g_c.numpy(), dk * 0.7, rtol=1e-4)
  np.testing.assert_allclose(g_w.numpy(), dk * 1.5, rtol=1e-4)


@pytest.mark.parametrize("method,order", [("euler", 1), ("midpoint", 2),
                                          ("rk4", 4)])
def test_fixed_grid_converges_at_its_order(method, order):
  y0 = tf.constant([1.0, 0.0], tf.float64)
  want = tf.linalg.expm(tf.constant(A)).numpy() @ y0.numpy()
  errs = []
  for n in (16, 32):
    r = FixedGrid(method, num_steps=n).solve(
        lambda t, y: tf.linalg.matvec(tf.constant(A), y), 0.0, y0, [1.0])
    errs.append(np.max(np.abs(_final(r) - want)))
    nfe = int(r.diagnostics.num_ode_fn_evaluations)
    assert nfe == n * {"euler": 1, "midpoint": 2, "rk4": 4}[method]
  rate = np.log2(errs[0] / errs[1])
  assert abs(rate - order) < 0.3


def test_make_solver_names():
  assert isinstance(make_solver("dopri5"), DormandPrince)
  assert make_solver("rk4", step_size=0.25).num_steps == 4
  own = tfp.math.ode.DormandPrince()
  assert make_solver(own) is own
  with pytest.raises(ValueError, match="Unknown solver"):
    make_solver("rk45")
  with pytest.raises(ValueError, match="rtol"):
    make_solver("dopri5", rtol=0.0)


def test_bijector_solve_under_xla_matches_graph_and_counts_nfe():
  w = tf.Variable([[0.3, -0.8], [0.6, 0.1]])
  f = lambda t, x: tf.tanh(tf.matmul(x, w)) * (1.0 + t)
  bij = FFJORD(f, trace="exact", rtol=1e-6, atol=1e-6)
  x = tf.constant(np.random.default_rng(0).normal(size=(8, 2)), tf.float32)

  def step(x):
    with tf.GradientTape() as tape:
      sol = bij.solve(x)
      loss = tf.reduce_mean(sol.log_det) + tf.reduce_mean(sol.state ** 2)
    g = tape.gradient(loss, w)
    return loss, g, sol.nfe, bij.nfe_counter.read_value()

  plain = tf.function(step)(x)
  xla = tf.function(step, jit_compile=True)(x)
  np.testing.assert_allclose(xla[0].numpy(), plain[0].numpy(), rtol=1e-5)
  np.testing.assert_allclose(xla[1].numpy(), plain[1].numpy(), rtol=1e-4,
                             atol=1e-6)
  assert int(xla[2]) == int(plain[2]) and (int(xla[2]) - 2) % 6 == 0
  assert int(xla[3]) > int(xla[2])  # the backward solve was counted too


@pytest.mark.parametrize("solver", [FixedGrid("rk4", num_steps=2),
                                    DormandPrince()])
def test_several_solution_times_are_refused(solver):
  with pytest.raises(ValueError, match="single solution time"):
    solver.solve(lambda t, y: -y, 0.0, tf.ones([2]),
                 solution_times=[0.5, 1.0])
