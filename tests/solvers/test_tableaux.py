"""Runge-Kutta methods from their tableaux: order conditions, observed order, adaptive solves, user methods."""

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

import tf_ffjord

from tf_ffjord import FFJORD
from tf_ffjord import solvers
from tf_ffjord.solvers import (AdaptiveStepSize, BacksolveAdjoint, Backprop,
                               ConstantStepSize, InterpolatedAdjoint, Solver,
                               Tableau, choose_adjoint, make_solver, solve)

A = np.array([[-0.5, 2.0], [-2.0, -0.3]])  # a decaying rotation
HEUN_EULER = dict(c=(0.0, 1.0), a=((1.0,),), b=(0.5, 0.5),
                  b_error=(-0.5, 0.5), order=2)


def _matrix(tab):
  s = tab.stages
  a = np.zeros((s, s))
  for i, row in enumerate(tab.a):
    a[i + 1, :len(row)] = row
  return a, np.array(tab.c)


def _order_conditions(b, a, c):
  """Residuals of the order conditions of the trees up to order 5, by order."""
  b = np.asarray(b)
  ac = a @ c
  return {
      1: [b.sum() - 1],
      2: [b @ c - 1 / 2],
      3: [b @ c**2 - 1 / 3, b @ ac - 1 / 6],
      4: [b @ c**3 - 1 / 4, b @ (c * ac) - 1 / 8, b @ (a @ c**2) - 1 / 12,
          b @ (a @ ac) - 1 / 24],
      5: [b @ c**4 - 1 / 5, b @ (c**2 * ac) - 1 / 10,
          b @ (c * (a @ c**2)) - 1 / 15, b @ (c * (a @ ac)) - 1 / 30,
          b @ ac**2 - 1 / 20, b @ (a @ c**3) - 1 / 20,
          b @ (a @ (c * ac)) - 1 / 40, b @ (a @ a @ c**2) - 1 / 60,
          b @ (a @ a @ ac) - 1 / 120],
  }


@pytest.mark.parametrize("name", sorted(solvers.METHODS))
def test_nodes_are_row_sums_and_order_conditions_hold(name):
  tab = solvers.METHODS[name]
  a, c = _matrix(tab)
  np.testing.assert_allclose(a.sum(1), c, atol=1e-14)
  res = _order_conditions(tab.b, a, c)
  for order in range(1, tab.order + 1):
    np.testing.assert_allclose(res[order], 0.0, atol=1e-12,
                               err_msg=f"{name} order {order}")
  if tab.order < 5:  # the claimed order is the order: the next one fails
    assert np.max(np.abs(res[tab.order + 1])) > 1e-3
  if tab.b_mid is not None:  # a 4th-order value at the step's midpoint
    # As a step of h / 2: weights 2 b_mid, stages at 2 c with 2 a.
    res = _order_conditions(np.array(tab.b_mid) * 2, a * 2, c * 2)
    for order in range(1, 5):
      np.testing.assert_allclose(res[order], 0.0, atol=1e-12)
  if tab.embedded:  # the embedded solution: one order lower, and not more
    emb = _order_conditions(np.array(tab.b) - np.array(tab.b_error), a, c)
    for order in range(1, tab.order):
      np.testing.assert_allclose(emb[order], 0.0, atol=1e-12)
    assert np.max(np.abs(emb[tab.order])) > 1e-4


def _nonlinear(t, y):
  # y0' = -2 t y0^2 -> 1 / (1 + t^2); y1' = cos(t) y1 -> exp(sin t).
  return tf.stack([-2.0 * t * y[0] ** 2, tf.cos(t) * y[1]])


@pytest.mark.parametrize("name,order", [("bosh3", 3), ("tsit5", 5),
                                        ("dopri5", 5)])
def test_observed_order_on_a_nonlinear_time_dependent_ode(name, order):
  y0 = tf.constant([1.0, 1.0], tf.float64)
  want = np.array([0.5, np.exp(np.sin(1.0))])
  errs = []
  for n in (8, 16, 32):
    r = solve(_nonlinear, y0, 0.0, 1.0, method=name,
              controller=ConstantStepSize(n))
    errs.append(np.max(np.abs(r.state.numpy() - want)))
  rates = np.log2(np.array(errs[:-1]) / np.array(errs[1:]))
  assert np.all(np.abs(rates - order) < 0.5), rates


@pytest.mark.parametrize("name", ["tsit5", "bosh3"])
@pytest.mark.parametrize("tol", [1e-5, 1e-8])
def test_adaptive_solves_of_linear_dynamics_match_expm(name, tol):
  y0 = tf.constant([1.0, -0.5], tf.float64)
  a = tf.constant(A)
  r = solve(lambda t, y: tf.linalg.matvec(a, y), y0, 0.0, 3.0, method=name,
            controller=AdaptiveStepSize(rtol=tol, atol=tol,
                                        max_num_steps=20_000))
  err = np.max(np.abs(r.state.numpy() - scipy.linalg.expm(3 * A) @ y0.numpy()))
  assert 1e-15 < err < 20 * tol
  # FSAL: one evaluation at t0, one for the first step, then stages - 1.
  stages = solvers.METHODS[name].stages
  assert (int(r.nfe) - 2) % (stages - 1) == 0


@pytest.mark.parametrize("name", ["dopri5", "tsit5"])
def test_dense_output_between_steps_and_the_interpolated_adjoint(name):
  from tf_ffjord.solvers.step_size import integrate_adaptive  # pylint: disable=g-import-not-at-top
  a = tf.constant(A)
  fn = lambda t, y: [tf.linalg.matvec(a, y[0])]
  y0 = tf.constant([1.0, 0.5], tf.float64)
  _, _, status, _, dense = integrate_adaptive(
      fn, tf.constant(0.0, tf.float64), tf.constant(3.0, tf.float64), [y0],
      solvers.METHODS[name], AdaptiveStepSize(rtol=1e-6, atol=1e-6),
      record=True)
  assert int(status) == 0 and len(dense.starts.numpy()) > 3
  for tau in np.linspace(0.0, 3.0, 31):
    np.testing.assert_allclose(dense(tf.constant(tau, tf.float64))[0],
                               scipy.linalg.expm(A * tau) @ y0.numpy(),
                               atol=2e-5)
  with tf.GradientTape() as tape:
    tape.watch(y0)
    r = solve(lambda t, y: tf.linalg.matvec(a, y), y0, 0.0, 1.0, method=name,
              adjoint=InterpolatedAdjoint(),
              controller=AdaptiveStepSize(rtol=1e-8, atol=1e-8))
    v = tf.reduce_sum(r.state)
  np.testing.assert_allclose(tape.gradient(v, y0),
                             scipy.linalg.expm(A).T @ np.ones(2), rtol=1e-6)


def test_a_user_method_without_fsal_takes_adaptive_steps():
  heun_euler = Tableau("heun_euler", **HEUN_EULER)
  assert not heun_euler.fsal
  a = tf.constant(A)
  calls = tf.Variable(0)

  def fn(t, y):  # traced once per solve: count in the graph, per call
    calls.assign_add(1)
    return tf.linalg.matvec(a, y)

  y0 = tf.constant([1.0, -0.5], tf.float64)
  with tf.GradientTape() as tape:  # backprop through the loop and its cond
    tape.watch(y0)
    r = solve(fn, y0, 0.0, 1.0, method=heun_euler, adjoint=Backprop(),
              controller=AdaptiveStepSize(rtol=1e-6, atol=1e-6,
                                          max_num_steps=10_000))
    v = tf.reduce_sum(r.state)
  err = np.max(np.abs(r.state.numpy() - scipy.linalg.expm(A) @ y0.numpy()))
  assert err < 1e-4
  assert int(r.nfe) == int(calls.numpy()) > 100  # every evaluation counted
  np.testing.assert_allclose(tape.gradient(v, y0),
                             scipy.linalg.expm(A).T @ np.ones(2), rtol=1e-3)


def test_user_method_in_ffjord_log_det_is_t_trace_with_its_gradient():
  w = tf.Variable(np.array([[0.3, -0.5], [0.2, -0.1]], np.float32))
  heun_euler = Tableau("heun_euler", **HEUN_EULER)
  bij = FFJORD(lambda t, x: tf.linalg.matvec(w, x), time_length=0.5,
               trace="exact",
               solver=Solver(heun_euler, AdaptiveStepSize(rtol=1e-4,
                                                          atol=1e-4)))
  assert bij.adjoint == "adjoint"
  assert isinstance(bij._adjoint_for(False), BacksolveAdjoint)

  @tf.function
  def run(x):
    with tf.GradientTape() as tape:
      ildj = tf.reduce_mean(bij.inverse_log_det_jacobian(x, 1))
    return ildj, tape.gradient(ildj, w)

  ildj, g = run(tf.random.normal([8, 2]))
  assert float(ildj) == pytest.approx(0.5 * 0.2, abs=1e-5)
  np.testing.assert_allclose(g, 0.5 * np.eye(2), atol=1e-4)


@pytest.mark.parametrize("kwargs,error", [
    (dict(c=(0.1, 1.0)), "c must start with 0"),
    (dict(c=(0.0, 0.7)), "sum of row"),
    (dict(a=((1.0,), (0.5, 0.5))), "rows"),
    (dict(b=(0.5,)), "one weight per stage"),
    (dict(b=(0.6, 0.6)), "sum to 1"),
    (dict(b_error=(-0.5, 0.4)), "sum to 0"),
    (dict(order=0), "order"),
    (dict(fsal=True), "fsal=True"),
    (dict(b_mid=(0.25, 0.25)), "FSAL"),
])
def test_bad_tableaux_are_rejected_with_the_problem_named(kwargs, error):
  with pytest.raises(ValueError, match=error):
    Tableau("bad", **{**HEUN_EULER, **kwargs})


def test_tableau_keeps_its_namedtuple_fields():
  tab = Tableau("heun_euler", **HEUN_EULER)
  assert tab.b_mid is None and tab.a == ((1.0,),)
  assert tab._replace(name="x").name == "x" and tab == tuple(tab)
  assert solvers.DOPRI5.fsal and solvers.DOPRI5.dense_output


def test_solver_objects_and_names():
  assert make_solver("tsit5").method is solvers.TSIT5
  assert make_solver("bosh3", rtol=1e-3).controller.rtol == 1e-3
  own = Solver("rk4", ConstantStepSize(8))
  # Loose options replace what the controller has and ignore the rest.
  assert make_solver(own, step_size=0.5).controller.num_steps == 2
  assert make_solver(own, rtol=1e-9) == own
  assert make_solver(solvers.BOSH3).adaptive
  assert not make_solver(solvers.RK4, step_size=0.5).adaptive
  with pytest.raises(ValueError, match="error estimate.*'rk4'"):
    Solver(solvers.RK4, AdaptiveStepSize())
  with pytest.raises(TypeError, match="Tableau"):
    Solver(3.0)
  with pytest.raises(TypeError, match="controller"):
    Solver("rk4", "fast")
  bij = FFJORD(lambda t, x: -x, solver=own)
  assert bij.solver is own and bij.adjoint == "backprop"


def test_adjoint_follows_from_the_solver_object():
  dopri, tsit = make_solver("dopri5"), make_solver("tsit5")
  assert choose_adjoint(dopri, "auto") is InterpolatedAdjoint
  assert choose_adjoint(dopri, "auto", xla_loop=True) is BacksolveAdjoint
  assert choose_adjoint(tsit, "auto") is InterpolatedAdjoint
  bosh = make_solver("bosh3")
  assert choose_adjoint(bosh, "auto") is BacksolveAdjoint  # no dense output
  assert choose_adjoint(make_solver("rk4"), "auto") is Backprop
  assert choose_adjoint(make_solver("bdf"), "auto") is None
  with pytest.raises(ValueError, match="dense output.*'bosh3'"):
    choose_adjoint(bosh, "interpolated")
  with pytest.raises(ValueError, match="interpolated"):
    FFJORD(lambda t, x: -x, solver="bosh3", adjoint="interpolated")
  with pytest.raises(ValueError, match="backprop"):
    choose_adjoint(make_solver("bdf"), "backprop")
