"""`TFPFFJORD`'s arguments (solvers, traces, copies, condition kwargs) and its variables in TFP's training loop."""

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from benchmarks.latency import tfp_train_step

import tf_ffjord
from tf_ffjord import TFPFFJORD, datasets
from tf_ffjord.cnf import trace_estimators as divergence
from tf_ffjord.cnf.tfp_port import AugmentationTrace

import user_dynamics

tfb, tfd = tfp.bijectors, tfp.distributions

EXACT = tfb.ffjord.trace_jacobian_exact


def _close(a, b, **kw):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), **kw)


# -- arguments: solvers, traces, copies, errors ---------------------------------


def test_ode_solve_fn_and_trace_augmentation_fn_map_to_ours():
  g = lambda t, z: -z
  solver = tfp.math.ode.DormandPrince(rtol=1e-7, atol=1e-7)
  assert TFPFFJORD(g, ode_solve_fn=solver.solve).solver.solver is solver
  assert TFPFFJORD(g, ode_solve_fn=solver).solver.solver is solver
  default = TFPFFJORD(g)
  assert isinstance(default.solver, tf_ffjord.Solver)
  assert default.trace == divergence.Hutchinson("gaussian")  # TFP's default
  assert TFPFFJORD(g, trace_augmentation_fn=EXACT).trace == divergence.Exact()
  assert TFPFFJORD(g, trace_augmentation_fn="exact").trace == "exact"
  x = np.array([[1.0, 2.0]], np.float32)
  _close(TFPFFJORD(g, ode_solve_fn=solver.solve,
                   trace_augmentation_fn=EXACT).forward(x),
         x * np.exp(-1.0), rtol=1e-5)

  def my_solve(ode_fn, initial_time, initial_state, solution_times):
    raise AssertionError("never called")

  with pytest.raises(NotImplementedError, match="ode_solve_fn.*Solver"):
    TFPFFJORD(g, ode_solve_fn=my_solve)
  with pytest.raises(TypeError, match="trace_augmentation_fn"):
    TFPFFJORD(g, trace_augmentation_fn=3)
  with pytest.raises(ValueError, match="final_time"):
    TFPFFJORD(g, initial_time=1.0, final_time=1.0)
  with pytest.raises(TypeError, match="unknown options.*train_time"):
    TFPFFJORD(g, train_time=True)


def test_user_augmentation_fn_gives_the_exact_trace_of_a_net():
  # TFP's trace_jacobian_exact through AugmentationTrace, against our Exact.
  g = user_dynamics.tfp_style_net(np.float32, seed=3)
  x = np.random.default_rng(0).normal(size=(5, 2)).astype(np.float32)
  mine = TFPFFJORD(g, trace_augmentation_fn=lambda *a: EXACT(*a))
  ours = TFPFFJORD(g, trace_augmentation_fn=EXACT)
  assert isinstance(mine.trace, AugmentationTrace)
  _close(mine.forward_log_det_jacobian(x, 1),
         ours.forward_log_det_jacobian(x, 1), rtol=1e-5, atol=1e-6)


def test_copy_rebuilds_from_tfp_arguments():
  g = lambda t, z: 0.5 * z
  port = TFPFFJORD(g, trace_augmentation_fn=EXACT, final_time=2.0,
                   dtype=tf.float64, rtol=1e-7)
  assert port.parameters["final_time"] == 2.0
  assert port.parameters["rtol"] == 1e-7
  copy = port.copy(final_time=3.0)
  assert isinstance(copy, TFPFFJORD) and copy.final_time == 3.0
  assert copy.state_time_derivative_fn is g
  _close(copy.forward_log_det_jacobian(np.ones((1, 2)), 1), [3.0], rtol=1e-6)


def test_condition_kwargs_broadcast_and_reach_log_prob():
  # dz/dt = c z + sum_j k[:, j]: z(1) = e^c z0 + s (e^c - 1) / c.
  g = lambda t, z, c, k: z * c + tf.reduce_sum(k, 1)
  x = np.ones((3, 2))
  c = np.array([[0.1], [0.2], [0.3]])  # [batch, 1]: broadcast against z
  k = np.arange(24.0).reshape(3, 4, 2) / 24  # trailing shape [4, 2] kept
  s = k.sum(1)
  port = TFPFFJORD(g, trace_augmentation_fn=EXACT, dtype=tf.float64,
                   rtol=1e-9, atol=1e-9)
  _close(port.forward(x, c=c, k=k),
         np.exp(c) * x + s * (np.exp(c) - 1) / c, rtol=1e-7)
  _close(port.forward_log_det_jacobian(x, 1, c=c, k=k), 2 * c[:, 0],
         rtol=1e-7)
  port = TFPFFJORD(lambda t, z, c: z * c, trace_augmentation_fn=EXACT,
                   dtype=tf.float64)
  _close(port.forward(x, c=c), x * np.exp(c), rtol=1e-6)
  dist = tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64)), port)
  y = x * np.exp(c)
  base = tfd.MultivariateNormalDiag(tf.zeros(2, tf.float64)).log_prob(x)
  _close(dist.log_prob(y, bijector_kwargs={"c": c}), base - 2 * c[:, 0],
         rtol=1e-6)
  with pytest.raises(ValueError, match="'c'.*batch dimensions"):
    port.forward(x, c=np.float64(0.5))
  with pytest.raises(ValueError, match="differ from those of the first"):
    port.forward(x, c=np.ones((3, 2)))


# -- trainable variables and TFP's training loop --------------------------------


class KerasDynamics(keras.Model):
  """g(t, z) written as a Keras model."""

  def __init__(self):
    super().__init__()
    self.hidden = keras.layers.Dense(16, activation="tanh")
    self.out = keras.layers.Dense(2)

  def call(self, t, z):
    tz = tf.concat([z, tf.fill([tf.shape(z)[0], 1], t)], -1)
    return self.out(self.hidden(tz))


class ModuleDynamics(tf.Module):
  """The TFP tutorial's style: a tf.Module holding (Keras 3) Dense layers."""

  def __init__(self):
    super().__init__()
    self.layers = [keras.layers.Dense(16, activation="tanh"),
                   keras.layers.Dense(2)]

  def __call__(self, t, z):
    tz = tf.concat([z, tf.fill([tf.shape(z)[0], 1], t)], -1)
    return self.layers[1](self.layers[0](tz))


def _variables(owner):
  if isinstance(owner, keras.layers.Layer):
    return owner.trainable_weights
  return [w for layer in owner.layers for w in layer.trainable_weights]


@pytest.mark.parametrize("kind", ["keras", "module", "closure", "method",
                                  "owner"])
def test_dist_trainable_variables_find_the_dynamics_weights(kind):
  net = ModuleDynamics() if kind == "module" else KerasDynamics()
  owner = None
  if kind in ("keras", "module"):
    fn = net
  elif kind == "closure":
    fn = lambda t, z: net(t, z)
  elif kind == "method":
    fn = net.call
  else:  # a function that hides the net from the search: name its owner
    hidden = {"net": net}
    fn, owner = (lambda t, z, h=hidden: h["net"](t, z)), net
  port = TFPFFJORD(fn, trace_augmentation_fn=EXACT, variables_owner=owner)
  dist = tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(2)), port)
  dist.log_prob(tf.zeros([3, 2]))
  want = {id(w.value) for w in _variables(net)}
  got = [id(v) for v in dist.trainable_variables]
  assert len(want) == 4 and set(got) == want and len(got) == len(want)


def test_canonical_tfp_training_loop_trains_the_port():
  keras.utils.set_random_seed(0)
  net = KerasDynamics()
  port = TFPFFJORD(net, ode_solve_fn=None, trace_augmentation_fn=EXACT)
  dist = tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(2)), port)
  data = datasets.toy.sample("8gaussians", 256, seed=0).astype("float32")
  step = tfp_train_step(dist, keras.optimizers.Adam(1e-2))

  losses = [float(step(data[i % 4 * 64:(i % 4 + 1) * 64])) for i in range(30)]
  assert np.all(np.isfinite(losses))
  # The NLL drops: the last five steps' mean against the first five's.
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.3, losses
