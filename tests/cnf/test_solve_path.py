"""One straight solve: FFJORD.solve checks once and runs `_solve` once; the small constructor; the TFP adapter."""

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord
from tf_ffjord import FFJORD, ODENet, make_solver, solvers

A = np.array([[-0.4, 0.3], [0.1, -0.2]], np.float32)


def _linear(t, x):
  del t
  return tf.linalg.matvec(tf.constant(A), x)


def _count_solves(bij):
  calls = []
  inner = bij._solve

  def counting(*args):
    calls.append(1)
    return inner(*args)

  object.__setattr__(bij, "_solve", counting)
  return calls


@pytest.mark.parametrize("solver", ["dopri5", "rk4", "tfp"])
def test_each_public_call_runs_the_private_solve_once(solver):
  solver = tfp.math.ode.DormandPrince() if solver == "tfp" else solver
  bij = FFJORD(_linear, trace="exact", solver=solver)
  calls = _count_solves(bij)
  bij.solve(tf.ones([3, 2]))  # eager: one trace of the cached function
  assert len(calls) == 1
  bij.solve(tf.ones([5, 2]))  # another batch size: no retrace, no solve
  assert len(calls) == 1
  tf.function(lambda x: bij.solve(x).log_det)(tf.ones([4, 2]))
  assert len(calls) == 2
  empty = bij.solve(tf.zeros([0, 2]))  # empty batch: same path
  assert empty.state.shape == (0, 2) and empty.log_det.shape == (0,)
  assert len(calls) == 2  # same signature as the first eager call


def test_no_instance_flag_steers_the_path():
  bij = FFJORD(_linear, trace="exact", solver=tfp.math.ode.DormandPrince(),
               event_shape=[2])
  bij.solve(tf.ones([1, 2]))  # the first solve probes the function's variables
  before = dict(vars(bij))
  bij.solve(tf.zeros([0, 2]))
  tf.function(lambda x: bij.solve(x).state, input_signature=[
      tf.TensorSpec([None, 2])])(tf.ones([2, 2]))
  after = vars(bij)
  assert set(after) == set(before)
  changed = {k for k in before if after[k] is not before[k]}
  assert changed <= {"_keras_variables"}, changed


def test_tfp_adapter_matches_our_solver_and_counts_backward_nfe():
  w = tf.Variable(A)
  f = lambda t, x: tf.linalg.matvec(w, x)
  x = tf.random.normal([6, 2])
  ours = FFJORD(f, time_length=0.7, trace="exact",
                solver=make_solver("dopri5", rtol=1e-7, atol=1e-7))
  theirs = FFJORD(f, time_length=0.7, trace="exact",
                  solver=tfp.math.ode.DormandPrince(rtol=1e-7, atol=1e-7))
  assert isinstance(theirs.solver, solvers.TFPSolver)
  assert theirs.solver.own_adjoint and not ours.solver.own_adjoint
  np.testing.assert_allclose(theirs.solve(x).state, ours.solve(x).state,
                             atol=1e-5)
  # log det of a linear flow: T tr(A); its gradient in A: T I.
  np.testing.assert_allclose(theirs.solve(x).log_det, 0.7 * np.trace(A),
                             rtol=1e-5)
  with tf.GradientTape() as tape:
    loss = tf.reduce_mean(theirs.solve(x).log_det)
  np.testing.assert_allclose(tape.gradient(loss, w), 0.7 * np.eye(2),
                             atol=1e-4)
  assert int(theirs.nfe_backward) > 0


def test_tfp_adapter_solves_an_empty_state_of_unknown_batch():
  adapter = solvers.TFPSolver(tfp.math.ode.DormandPrince(rtol=1e-7, atol=1e-7))

  @tf.function(input_signature=[tf.TensorSpec([None, 2])])
  def run(y):
    return adapter.integrate(lambda t, y: -y, y, 0.0, 1.0).state

  assert run(tf.zeros([0, 2])).shape == (0, 2)
  np.testing.assert_allclose(run(tf.ones([2, 2])), np.exp(-1.0) * np.ones(
      [2, 2]), rtol=1e-4)
  with pytest.raises(TypeError, match="tfp.math.ode.Solver"):
    solvers.TFPSolver("dopri5")


@pytest.mark.parametrize("loose, fix", [
    (dict(rtol=1e-3), r"solver=make_solver\('dopri5', rtol=...\)"),
    (dict(step_size=0.5), r"solver=make_solver\('rk4', step_size=...\)"),
    (dict(gradient="backprop"), "adjoint="),
    (dict(noise="gaussian"), r"trace=Hutchinson\('gaussian'\)"),
    (dict(train_time=True), r"time_length=EndTime"),
])
def test_loose_options_name_their_replacement(loose, fix):
  with pytest.raises(TypeError, match=fix):
    FFJORD(_linear, **loose)


def test_unknown_argument_and_bad_adjoint_raise():
  with pytest.raises(TypeError, match="Unknown: .'colour'."):
    FFJORD(_linear, colour="red")
  with pytest.raises(TypeError, match="solvers.Adjoint"):
    FFJORD(_linear, adjoint=3)
  with pytest.raises(ValueError, match="own adjoint"):
    FFJORD(_linear, solver=tfp.math.ode.DormandPrince(), adjoint="backprop")


def test_parameters_and_copy_carry_the_strategy_objects():
  solver = make_solver("rk4", step_size=0.5)
  t = tf_ffjord.EndTime(0.6)
  bij = FFJORD(ODENet(hidden=(4,), dim=2), solver=solver, time_length=t,
               adjoint="backprop", trace=tf_ffjord.Hutchinson("gaussian"))
  assert "removed" not in bij.parameters
  copy = bij.copy(trace="exact")
  assert copy.solver is solver and copy.adjoint == "backprop"
  assert copy._time_length is t and copy.trace == "exact"
  assert len(bij.parameters) <= 11


def test_with_options_translates_loose_options_against_each_block():
  tight = tf_ffjord.cnf.composite.with_options
  adaptive = FFJORD(_linear, solver=make_solver("tsit5", rtol=1e-3))
  fixed = FFJORD(_linear, solver=make_solver("rk4", step_size=0.5))
  a = tight(adaptive, rtol=1e-7, atol=1e-8, gradient="adjoint")
  assert a.solver.method is solvers.TSIT5
  assert (a.solver.controller.rtol, a.solver.controller.atol) == (1e-7, 1e-8)
  assert a.adjoint == "adjoint"
  f = tight(fixed, rtol=1e-7, noise="gaussian")  # a grid ignores rtol
  assert f.solver == fixed.solver
  assert f.trace == tf_ffjord.Hutchinson("gaussian")
  assert tight(fixed, solver="euler", step_size=1.0).solver.controller == (
      solvers.ConstantStepSize(1))
