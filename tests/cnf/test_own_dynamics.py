"""A user's own dynamics (Keras layer, tf.Module, function): found variables, training, the contract, no recompiles."""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord import FFJORD, FFJORDModel
from tf_ffjord.cnf.contract import DynamicsError
from tf_ffjord.datasets import toy

import user_dynamics
from benchmarks.latency import tfp_train_step

tfd = tfp.distributions
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _dist(dynamics, **kwargs):
  return tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(2)),
      FFJORD(dynamics, time_length=0.5, **kwargs))


@pytest.mark.parametrize("kind", user_dynamics.KINDS)
def test_canonical_tfp_loop_trains_every_kind(kind):
  keras.utils.set_random_seed(0)
  # Adaptive steps and the adjoint: the default path's gradient.
  dist = _dist(user_dynamics.make(kind, 2, hidden=(16,)),
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-3, atol=1e-3))
  x = toy.sample("8gaussians", 128, seed=0)
  test = toy.sample("8gaussians", 256, seed=1)
  nll = lambda: -float(tf.reduce_mean(tf.function(dist.log_prob)(test)))
  before = nll()
  num_weights = (4 * 16 + 16) + (16 * 2 + 2) if kind != "odenet" else None
  variables = dist.trainable_variables
  if num_weights is not None:  # every weight of the user's net is found
    assert sum(int(np.prod(v.shape)) for v in variables) == num_weights
  step = tfp_train_step(dist, keras.optimizers.Adam(2e-2))
  for _ in range(20):
    step(x)
  assert nll() < before - 0.3


@pytest.mark.parametrize("kind", ["keras", "module", "function"])
def test_linear_user_dynamics_give_t_trace(kind):
  # The same linear f = A z written three ways: log-det = -T Tr(A) (data to
  # base), against the closed form.
  a = np.array([[0.3, -1.0], [0.5, -0.7]], np.float64)
  if kind == "keras":
    class Linear(keras.layers.Layer):
      def build(self, t_shape, z_shape):
        self.a = self.add_weight(shape=(2, 2), dtype="float64",
                                 initializer=keras.initializers.Constant(a.T))

      def call(self, t, z):
        return tf.matmul(z, self.a)
    f = Linear(dtype="float64")
  elif kind == "module":
    class Linear(tf.Module):
      def __init__(self):
        super().__init__()
        self.a = tf.Variable(a.T)

      def __call__(self, t, z):
        return tf.matmul(z, self.a)
    f = Linear()
  else:
    weight = tf.Variable(a.T)
    f = lambda t, z: tf.matmul(z, weight)
  bij = FFJORD(f, time_length=0.7, trace="exact",
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-9, atol=1e-9))
  x = tf.constant([[0.3, -0.2], [1.0, 2.0]], tf.float64)
  ildj = bij.inverse_log_det_jacobian(x, event_ndims=1)
  np.testing.assert_allclose(ildj, [0.7 * np.trace(a)] * 2, rtol=1e-7)
  assert len(bij.trainable_variables) == 1


def test_event_shape_builds_a_user_keras_net_at_construction():
  net = user_dynamics.TimeMLP(2, hidden=(8,))
  dist = _dist(net, event_shape=[2])
  assert net.built and len(dist.trainable_variables) == 4
  optimizer = keras.optimizers.Adam(1e-2)
  optimizer.build(dist.trainable_variables)  # before the first call
  step = tfp_train_step(dist, optimizer)
  x = toy.sample("8gaussians", 64, seed=0)
  step(x)
  step(x)
  assert step.experimental_get_tracing_count() == 1


def test_a_function_with_no_variables_warns_at_the_first_solve():
  bij = FFJORD(lambda t, z: -z, trace="exact")
  with pytest.warns(UserWarning, match="trainable variable.*pass the network"):
    bij.inverse(tf.zeros([3, 2]))
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # once per flow
    bij.inverse(tf.ones([3, 2]))


class _WrongWidth(keras.layers.Layer):
  def __init__(self):
    super().__init__()
    self.dense = keras.layers.Dense(3)

  def call(self, t, z):
    return self.dense(z)


class _NoTime(keras.layers.Layer):
  def __init__(self):
    super().__init__()
    self.dense = keras.layers.Dense(2)

  def call(self, z):
    return self.dense(z)


class _HalfPrecision(keras.layers.Layer):
  def __init__(self):
    super().__init__(dtype="mixed_bfloat16")
    self.dense = keras.layers.Dense(2, dtype="mixed_bfloat16")

  def call(self, t, z):
    return self.dense(z)


MISTAKES = {
    "output-width": (_WrongWidth, r"shape \[1, 3\] for z of shape \[1, 2\]"),
    "no-time-argument": (_NoTime, r"cannot be called as f\(t, z\)"),
    "output-dtype": (_HalfPrecision, r"dtype bfloat16 for z of dtype float32"),
    "function-output": (lambda: (lambda t, z: z[:, :1]),
                        r"shape \[1, 1\] for z of shape \[1, 2\]"),
    "function-arguments": (lambda: (lambda z: z), r"f\(t, z\)"),
}


@pytest.mark.parametrize("solver", ["dopri5", "tfp"])
@pytest.mark.parametrize("name", sorted(MISTAKES))
def test_mistakes_in_own_dynamics_name_the_contract(name, solver):
  make, message = MISTAKES[name]
  solver = tfp.math.ode.DormandPrince() if solver == "tfp" else solver
  with pytest.raises(DynamicsError, match=message) as error:
    dist = _dist(make(), solver=solver)
    tf.function(dist.log_prob)(tf.zeros([4, 2]))
  assert "f(t, z)" in str(error.value)


def test_a_context_needs_a_three_argument_signature():
  bij = FFJORD(user_dynamics.TimeMLP(2, hidden=(4,)), trace="exact")
  with pytest.raises(DynamicsError, match=r"f\(t, z, context\)"):
    bij.inverse(tf.zeros([3, 2]), context=tf.zeros([3, 1]))


def test_fit_trains_a_user_keras_layer():
  keras.utils.set_random_seed(0)
  model = FFJORDModel((2,), dynamics=user_dynamics.TimeMLP(2, hidden=(16,)),
                      time_length=0.5, rtol=1e-3, atol=1e-3,
                      eval_options={"rtol": 1e-3, "atol": 1e-3})
  model.compile(keras.optimizers.Adam(2e-2))
  x = toy.sample("8gaussians", 512, seed=0)
  test = toy.sample("8gaussians", 256, seed=1)
  before = model.evaluate(test, verbose=0, return_dict=True)["nll"]
  model.fit(x, batch_size=128, epochs=5, verbose=0)
  after = model.evaluate(test, verbose=0, return_dict=True)["nll"]
  assert after < before - 0.3


_COMPILES = r"""
import json, sys, time
import keras, tensorflow as tf, tensorflow_probability as tfp
sys.path.insert(0, "tests")
import user_dynamics
import tf_ffjord
from tf_ffjord import FFJORD
from tf_ffjord.datasets import toy
tfd = tfp.distributions
dist = tfd.TransformedDistribution(
    tfd.MultivariateNormalDiag(tf.zeros(2)),
    FFJORD(user_dynamics.make(sys.argv[1], 2, hidden=(16,)), time_length=0.5,
           solver=tf_ffjord.make_solver("dopri5", rtol=1e-4, atol=1e-4),
           jit_compile=True, event_shape=[2]))
from benchmarks.latency import tfp_train_step
optimizer = keras.optimizers.Adam(1e-2)
optimizer.build(dist.trainable_variables)
step = tfp_train_step(dist, optimizer)
x = toy.sample("8gaussians", 64, seed=0)
step(x)
print("FIRST STEP DONE", file=sys.stderr, flush=True)
for _ in range(3):
  step(x)
"""


@pytest.mark.parametrize("kind", ["keras"])
def test_user_net_steps_compile_once(kind, subprocess_env):
  # XLA compiles the forward and the backward loop in the first step, and
  # nothing after it: later steps only change the weights.
  env = {**subprocess_env, "TF_CPP_MIN_LOG_LEVEL": "0",
         "TF_CPP_VMODULE": "device_compiler=1"}
  out = subprocess.run([sys.executable, "-c", _COMPILES, kind], cwd=_ROOT,
                       env=env, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  first, _, later = out.stderr.partition("FIRST STEP DONE")
  assert "Compilation of XLA executable" in first  # the log is there
  assert "Compilation of XLA executable" not in later


@pytest.mark.parametrize("kind", ["module", "function"])
def test_ffjord_model_asks_for_keras_dynamics(kind):
  with pytest.raises(DynamicsError, match="Keras layers or models.*FFJORD"):
    FFJORDModel((2,), dynamics=user_dynamics.make(kind, 2, hidden=(4,)))


@pytest.mark.xla_auto
def test_in_process_calls_serve_every_batch_size_from_one_trace():
  # Under "auto" an eager bijector call and FlowModel.log_prob trace once
  # for all batch sizes and run plain: XLA would compile per batch size.
  from tf_ffjord.solvers import xla  # pylint: disable=g-import-not-at-top
  assert xla.use_xla("auto", weights=5_000, batch=64)
  with xla.any_batch_size():
    assert not xla.use_xla("auto", weights=5_000, batch=64)
    assert xla.use_xla(True, weights=5_000, batch=64)
  assert xla.use_xla("auto", weights=5_000, batch=64)  # the scope ended

  bij = FFJORD(user_dynamics.TimeMLP(2, hidden=(8,)), trace="exact",
               event_shape=[2])
  model = FFJORDModel((2,), dynamics=user_dynamics.TimeMLP(2, hidden=(8,)),
                      solver="rk4")
  for n in (5, 9, 3):
    x = toy.sample("moons", n, seed=n)
    assert bij.inverse(x).shape == (n, 2)
    assert model.log_prob(x).shape == (n,)
  (eager,) = bij.__dict__["_eager_solves"].values()
  (log_prob,) = model._compiled_fns.values()  # pylint: disable=protected-access
  assert eager.experimental_get_tracing_count() == 1
  assert log_prob.experimental_get_tracing_count() == 1
  for fn in (eager, log_prob):  # and nothing in them is compiled by XLA
    library = fn.get_concrete_function().graph.as_graph_def().library
    assert library.function
    assert not [f.signature.name for f in library.function
                if f.attr["_XlaMustCompile"].b]
