"""The strategy protocols: a user's step-size controller and adjoint train an FFJORD."""

import dataclasses

import keras
import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf

from tf_ffjord import FFJORD, solvers
from tf_ffjord.solvers import tableaux

A = np.array([[-0.4, 0.3], [0.1, -0.2]], np.float32)
T = 0.7


class Grid(solvers.StepSizeController):
  """A user's controller: steps between chosen fractions of [t0, t1]."""

  def __init__(self, fractions):
    self.fractions = tuple(fractions)

  def integrate(self, fn, t0, t1, y0, method, first_step=None, record=False):
    y, nfe = list(y0), 0
    for a, b in zip(self.fractions[:-1], self.fractions[1:]):
      ta = t0 + a * (t1 - t0)
      y, _, n = tableaux.rk_step(fn, method, ta, y, (b - a) * (t1 - t0))
      nfe += n
    return y, tf.constant(nfe, tf.int32), tf.constant(0, tf.int32), tf.abs(
        t1 - t0)


CALLS = []


@dataclasses.dataclass(frozen=True)
class CountingBackprop(solvers.Backprop):
  """A user's adjoint: backprop that counts the solves it differentiates."""

  def __call__(self, run, fn, t0, t1, ys, cs, controller):
    CALLS.append(type(controller).__name__)
    return super().__call__(run, fn, t0, t1, ys, cs, controller)


def test_user_controller_and_adjoint_train_an_ffjord():
  CALLS.clear()
  w = tf.Variable(A)
  grid = Grid([0.0, 0.1, 0.35, 0.7, 1.0])
  bij = FFJORD(lambda t, x: tf.linalg.matvec(w, x), time_length=T,
               trace="exact", solver=solvers.Solver("rk4", grid),
               adjoint=CountingBackprop(), jit_compile=False)
  assert bij.solver.controller is grid and not bij.solver.adaptive
  x = tf.random.normal([16, 2])
  sol = tf.function(bij.solve)(x)
  assert int(sol.nfe) == 4 * 4  # four RK4 steps
  # The log-det of a linear flow is T tr(A) and its gradient in A is T I,
  # whatever the grid: the trace is constant along the path.
  np.testing.assert_allclose(sol.log_det, T * np.trace(A), rtol=1e-5)
  np.testing.assert_allclose(sol.state, x.numpy() @ scipy.linalg.expm(T * A).T,
                             atol=1e-3)

  @tf.function
  def step(target):
    with tf.GradientTape() as tape:
      loss = tf.square(tf.reduce_mean(bij.solve(x).log_det) - target)
    grad = tape.gradient(loss, w)
    optimizer.apply_gradients([(grad, w)])
    return loss, grad

  optimizer = keras.optimizers.SGD(0.5)
  loss0, grad0 = step(tf.constant(0.0))
  residual = T * np.trace(A)
  np.testing.assert_allclose(grad0, 2 * residual * T * np.eye(2), rtol=1e-4)
  for _ in range(20):
    loss, _ = step(tf.constant(0.0))
  assert float(loss) < 1e-3 * float(loss0)  # trained: tr(w) -> 0
  assert CALLS and set(CALLS) == {"Grid"}


def test_solver_takes_any_controller_and_rejects_others():
  with pytest.raises(TypeError, match="StepSizeController"):
    solvers.Solver("rk4", object())
  s = solvers.Solver("dopri5", Grid([0.0, 1.0]))
  assert solvers.choose_adjoint(s) is solvers.Backprop  # not adaptive
  with pytest.raises(ValueError, match="dense output"):
    solvers.choose_adjoint(s, "interpolated")


def test_builtins_are_protocol_subclasses():
  assert issubclass(solvers.AdaptiveStepSize, solvers.StepSizeController)
  assert issubclass(solvers.ConstantStepSize, solvers.StepSizeController)
  for cls in (solvers.Backprop, solvers.BacksolveAdjoint,
              solvers.InterpolatedAdjoint):
    assert issubclass(cls, solvers.Adjoint)
  assert isinstance(solvers.make_solver("dopri5"), solvers.ODESolver)
  report = lambda n: None
  assert solvers.BacksolveAdjoint().with_backward_nfe(
      report).on_backward_nfe is report
  assert solvers.Backprop().with_backward_nfe(report) == solvers.Backprop()
