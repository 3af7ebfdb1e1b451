"""Gradients through a solve (tf_ffjord/solvers/adjoint.py): adjoints against backprop, finite differences and closed forms."""

import numpy as np
import pytest
import tensorflow as tf

import tf_ffjord

from tf_ffjord import solvers
from tf_ffjord.solvers import (AdaptiveStepSize, BacksolveAdjoint, Backprop,
                               ConstantStepSize, InterpolatedAdjoint, solve)

A = np.array([[-0.5, 2.0], [-2.0, -0.3]])  # a decaying rotation


def _dopri(tol, **kwargs):
  return dict(method="dopri5",
              controller=AdaptiveStepSize(rtol=tol, atol=tol, **kwargs))


def _nonlinear_problem():
  w = tf.Variable([[0.4, -1.1], [0.9, 0.2]], dtype=tf.float64)
  b = tf.constant([0.1, -0.3], tf.float64)

  def fn(t, y, c):
    return c * tf.tanh(tf.linalg.matvec(w, y) + b * t)

  def loss(y1):
    return (tf.reduce_sum(y1 * tf.constant([1.0, -2.0], tf.float64))
            + tf.reduce_sum(y1 ** 2))

  return w, fn, loss


@pytest.mark.parametrize("jit", [False, True])
def test_adjoint_and_backprop_gradients_match_finite_differences(jit):
  w, fn, loss = _nonlinear_problem()
  y0 = tf.constant([0.5, -0.7], tf.float64)
  c = tf.constant(1.3, tf.float64)

  # The finite differences need no XLA (each eager call would compile).
  def value(y0, c, adjoint=BacksolveAdjoint(), jit=False):
    return loss(solve(fn, y0, 0.0, 1.5, constants={"c": c}, adjoint=adjoint,
                      jit_compile=jit, **_dopri(1e-10)).state)

  grads = {}
  for adjoint in (BacksolveAdjoint(), BacksolveAdjoint(seminorm=False),
                  InterpolatedAdjoint(), Backprop()):
    with tf.GradientTape() as tape:
      tape.watch([y0, c])
      v = value(y0, c, adjoint, jit)
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
  for g_y0, g_c, g_w in grads.values():
    np.testing.assert_allclose(g_y0, fd_y0, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_c, fd_c, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(g_w, fd_w, rtol=1e-5, atol=1e-7)


# inner_jit: (forward loop, backward loop) compiled; (True, False) is the
# bijector's choice for an exact trace that runs a batch Jacobian.
@pytest.mark.parametrize("outer_jit,inner_jit", [
    (True, (False, False)), (False, (True, True)), (False, (True, False)),
    (False, (False, False))])
def test_adjoint_gradients_match_closed_form(outer_jit, inner_jit):
  # y' = -k y, z' = y with k = w c: losses and gradients in closed form.
  w = tf.Variable(0.7)
  nfe_back = tf.Variable(0)
  adjoint = BacksolveAdjoint(on_backward_nfe=nfe_back.assign)

  @tf.function(jit_compile=outer_jit)
  def run(y0, c):
    with tf.GradientTape() as tape:
      tape.watch([y0, c])
      r = solve(lambda t, s, c: [-w * s[0] * c, s[0]], [y0, tf.zeros_like(y0)],
                0.0, 2.0, constants={"c": c}, adjoint=adjoint,
                jit_compile=inner_jit[0], jit_compile_backward=inner_jit[1],
                **_dopri(1e-6))
      v = tf.reduce_sum(r.state[0]) + tf.reduce_sum(r.state[1])
    return v, tape.gradient(v, [y0, c, w]), r.nfe

  v, (g_y0, g_c, g_w), nfe = run(tf.constant([1.0, 2.0, 3.0]),
                                 tf.constant(1.5))
  k, t_end, total = 0.7 * 1.5, 2.0, 6.0
  e = np.exp(-k * t_end)
  np.testing.assert_allclose(v.numpy(), total * (e + (1 - e) / k), rtol=1e-5)
  np.testing.assert_allclose(g_y0.numpy(), [e + (1 - e) / k] * 3, rtol=1e-5)
  dk = total * (-t_end * e + (t_end * e * k - (1 - e)) / k**2)
  np.testing.assert_allclose(g_c.numpy(), dk * 0.7, rtol=1e-4)
  np.testing.assert_allclose(g_w.numpy(), dk * 1.5, rtol=1e-4)
  # The backward solve reported its own NFE: 1 + 6 per step, no first-step
  # evaluation (it starts from the forward's last step).
  back = int(nfe_back.numpy())
  assert back > 1 and (back - 1) % 6 == 0
  assert int(nfe) > 2 and (int(nfe) - 2) % 6 == 0


def test_interpolated_adjoint_controls_the_adjoint_only():
  # A fast oscillator the loss ignores: the backsolve adjoint must follow it
  # back to the tolerance, the interpolated one only the slow decay.
  w = tf.Variable(0.8, dtype=tf.float64)
  fast = tf.constant([[0.0, 40.0], [-40.0, 0.0]], tf.float64)

  def fn(t, y):
    return [-w * y[0], tf.linalg.matvec(fast, y[1])]

  y0 = [tf.constant([1.0, 2.0], tf.float64), tf.constant([1.0, 0.0], tf.float64)]
  out = {}
  for adjoint in (BacksolveAdjoint, InterpolatedAdjoint):
    nfe = tf.Variable(0)

    @tf.function
    def grad(y0, adjoint=adjoint, nfe=nfe):
      with tf.GradientTape() as tape:
        tape.watch(y0)
        r = solve(fn, y0, 0.0, 1.0, adjoint=adjoint(on_backward_nfe=nfe.assign),
                  **_dopri(1e-6))
        v = tf.reduce_sum(r.state[0])
      return tape.gradient(v, [y0[0], w])

    g_y0, g_w = grad(y0)
    out[adjoint] = int(nfe.numpy())
    np.testing.assert_allclose(g_y0, [np.exp(-0.8)] * 2, rtol=1e-5)
    np.testing.assert_allclose(g_w, -3.0 * np.exp(-0.8), rtol=1e-5)
  assert out[InterpolatedAdjoint] * 3 < out[BacksolveAdjoint]


def test_interpolated_adjoint_needs_adaptive_steps():
  with pytest.raises(ValueError, match="adaptive"):
    solve(lambda t, y: -y, tf.ones([2]), 0.0, 1.0, method="rk4",
          adjoint=InterpolatedAdjoint())


def test_fixed_grid_adjoint_and_backprop_agree():
  w, fn, loss = _nonlinear_problem()
  y0 = tf.constant([0.5, -0.7], tf.float64)
  grads = []
  for adjoint in (Backprop(), BacksolveAdjoint()):
    with tf.GradientTape() as tape:
      tape.watch(y0)
      r = solve(fn, y0, 0.0, 1.5, constants={"c": tf.constant(1.0, tf.float64)},
                method="rk4", controller=ConstantStepSize(64), adjoint=adjoint)
      v = loss(r.state)
    grads.append([g.numpy() for g in tape.gradient(v, [y0, w])])
  for a, b in zip(*grads):
    np.testing.assert_allclose(a, b, rtol=1e-7)


@pytest.mark.parametrize("mixed_dtypes", [False, True])
@pytest.mark.parametrize("adjoint", [BacksolveAdjoint(seminorm=False),
                                     InterpolatedAdjoint()])
def test_adjoint_gradients_of_several_variables_match_backprop(
    adjoint, mixed_dtypes):
  # Several variables: their adjoints travel as state components of the
  # state's dtype, a float32 variable's too (in a float64 solve), and must
  # come back as backprop's gradients, each in its variable's dtype.
  w = tf.Variable([[0.3, -0.8], [0.6, 0.2]], dtype=tf.float64)
  b = tf.Variable([0.1, -0.2], dtype=tf.float64)
  s = tf.Variable(1.2, dtype=tf.float32 if mixed_dtypes else tf.float64)
  fn = lambda t, y: tf.tanh(tf.linalg.matvec(w, y) + b) * tf.cast(
      s, tf.float64) - 0.1 * t * y
  y0 = tf.constant([[0.5, -0.7], [1.0, 0.3]], tf.float64)

  def grads(adj):
    with tf.GradientTape() as tape:
      tape.watch(y0)
      r = solve(fn, y0, 0.0, 1.5, adjoint=adj, **_dopri(1e-10))
      v = tf.reduce_sum(tf.sin(r.state))
    return [g.numpy() for g in tape.gradient(v, [y0, w, b, s])]

  got, want = grads(adjoint), grads(Backprop())
  assert got[3].dtype == s.dtype.as_numpy_dtype
  for g, r in zip(got, want):
    np.testing.assert_allclose(g, r, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("jit", [False, True])
def test_adjoint_gradient_of_a_gathered_variable_matches_backprop(jit):
  # A gather's gradient is IndexedSlices; as a state component of the
  # backward solve it must be dense, and rows never read get zero.
  table = tf.Variable([[0.5, -0.3], [0.2, 0.9], [-0.4, 0.1]],
                      dtype=tf.float64)
  rows = tf.constant([2, 0, 2])
  fn = lambda t, y: -tf.gather(table, rows) * y
  y0 = tf.constant([[1.0, 0.5], [-0.3, 0.8], [0.6, -1.0]], tf.float64)

  @tf.function(autograph=False)
  def grads(y0):
    with tf.GradientTape() as tape:
      r = solve(fn, y0, 0.0, 1.0, adjoint=BacksolveAdjoint(),
                jit_compile=jit, **_dopri(1e-10))
      v = tf.reduce_sum(r.state ** 2)
    return tf.convert_to_tensor(tape.gradient(v, table))

  # y1 = y0 exp(-g), g the gathered rows: dv/dg = -2 y1^2, summed per row.
  y1 = y0.numpy() * np.exp(-table.numpy()[rows.numpy()])
  want = np.zeros((3, 2))
  np.add.at(want, rows.numpy(), -2.0 * y1 ** 2)
  np.testing.assert_allclose(grads(y0).numpy(), want, rtol=1e-6, atol=1e-9)
