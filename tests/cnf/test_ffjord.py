"""FFJORD bijector against closed forms: linear flows, time shifts, traces."""

import signal

import numpy as np
import pytest
import scipy.linalg
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord import FFJORD, ODENet

tfb = tfp.bijectors
tfd = tfp.distributions

A = np.array([[0.3, -0.5], [0.2, -0.1]], np.float32)  # Tr(A) = 0.2


def linear(a):
  a = tf.constant(a)
  return lambda t, x: tf.linalg.matvec(a, x)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
@pytest.mark.parametrize("solver", ["dopri5", "rk4"])
def test_linear_flow_log_det_is_t_trace(trace, solver):
  t_len = 0.7
  # 4 RK4 steps: error ~(h|A|)^5/120 = 1e-7
  bij = FFJORD(linear(A), time_length=t_len, trace=trace,
               solver=tf_ffjord.make_solver(solver, step_size=0.175))
  x = tf.random.normal([4000, 2])
  z, ildj = tf.function(lambda x: (bij.inverse(x),
                                   bij.inverse_log_det_jacobian(x, 1)))(x)
  expected = t_len * np.trace(A)
  tol = 1e-4 if trace == "exact" else 4 * np.std(ildj) / np.sqrt(len(ildj))
  assert abs(np.mean(ildj) - expected) < tol
  if trace == "exact":
    np.testing.assert_allclose(ildj, expected, atol=1e-4)
  # The state itself is expm(T A) x.
  np.testing.assert_allclose(z, x.numpy() @ scipy.linalg.expm(t_len * A).T,
                             rtol=1e-3, atol=1e-4)
  # forward maps base -> data, integrating backwards: log-det -T Tr(A).
  fldj = tf.function(lambda z: bij.forward_log_det_jacobian(z, 1))(z + 0.0)
  assert abs(np.mean(fldj) + expected) < tol


def test_inverse_of_forward_is_identity_at_solver_tolerance():
  f = ODENet(hidden=(32, 32))
  bij = FFJORD(f, time_length=1.0, trace="exact",
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-6, atol=1e-6))
  z = tf.random.normal([64, 2])

  @tf.function
  def round_trip(z):
    x = bij.solve(z, "forward").state
    return x, bij.solve(x, "inverse").state

  x, z_back = round_trip(z)
  assert np.max(np.abs(x - z)) > 1e-2  # the flow does move points
  np.testing.assert_allclose(z_back, z, atol=1e-4)


def test_nonzero_initial_time():
  # f = t x on [1, 2]: data -> base multiplies by exp(int_1^2 t dt) = e^1.5.
  bij = FFJORD(lambda t, x: t * x, initial_time=1.0, time_length=1.0,
               trace="exact")
  x = tf.constant([[1.0, -2.0], [0.5, 0.25]])
  z = tf.function(lambda x: bij.solve(x, "inverse").state)(x)
  np.testing.assert_allclose(z, x * np.exp(1.5), rtol=1e-4)
  x_back = tf.function(lambda z: bij.solve(z, "forward").state)(z)
  np.testing.assert_allclose(x_back, x, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_is_unbiased(noise):
  f = ODENet(hidden=(16, 16), activation="softplus")
  exact = FFJORD(f, trace="exact",
                 solver=tf_ffjord.make_solver("rk4", step_size=0.25))
  hutch = FFJORD(f, solver=tf_ffjord.make_solver("rk4", step_size=0.25),
                 trace=tf_ffjord.Hutchinson(noise))
  x = tf.constant([[0.5, -1.0]])
  reps = tf.tile(x, [5000, 1])  # one probe per row
  ref = tf.function(lambda x: exact.solve(x).log_det)(x)[0]
  est = tf.function(lambda x: hutch.solve(x).log_det)(reps).numpy()
  se = est.std() / np.sqrt(len(est))
  assert est.std() > 0  # the probes really vary
  assert abs(est.mean() - ref) < 4 * se + 1e-5


def test_end_time_gets_its_gradient():
  # d/dT [T Tr(A)] = Tr(A); T = softplus(raw), so d/draw = Tr(A) sigmoid(raw).
  bij = FFJORD(linear(A), trace="exact", time_length=tf_ffjord.EndTime(0.5))
  assert len(bij.trainable_variables) == 1
  x = tf.random.normal([8, 2])

  @tf.function
  def grad(x):
    with tf.GradientTape() as tape:
      ildj = tf.reduce_mean(bij.solve(x).log_det)
    return tape.gradient(ildj, bij.trainable_variables)[0], bij.time_length

  g, t = grad(x)
  assert float(t) == pytest.approx(0.5, rel=1e-5)
  raw = np.log(np.expm1(0.5))
  expected = np.trace(A) / (1 + np.exp(-raw))
  assert float(g) == pytest.approx(expected, rel=1e-3)


@pytest.mark.parametrize("gradient", ["adjoint", "interpolated", "backprop"])
def test_parameter_gradients_match_closed_form(gradient):
  # f = W x: ildj = T Tr(W), so d ildj / dW = T I (on any grid: each
  # stage's trace is Tr(W)).
  w = tf.Variable(A)
  bij = FFJORD(lambda t, x: tf.linalg.matvec(w, x), time_length=0.5,
               trace="exact", solver=tf_ffjord.make_solver(
                   "rk4" if gradient == "backprop" else "dopri5",
                   step_size=0.25), adjoint=gradient)
  x = tf.random.normal([8, 2])

  @tf.function
  def grad(x):
    with tf.GradientTape() as tape:
      ildj = tf.reduce_mean(bij.solve(x).log_det)
    return tape.gradient(ildj, w)

  np.testing.assert_allclose(grad(x), 0.5 * np.eye(2), atol=1e-4)


def test_context_reaches_dynamics_and_gets_gradient():
  f = ODENet(hidden=(8,), context_dim=3)
  bij = FFJORD(f, trace="exact", solver="rk4")
  x = tf.random.normal([5, 2])
  c = tf.random.normal([5, 3])

  @tf.function
  def run(x, c):
    with tf.GradientTape() as tape:
      tape.watch(c)
      sol = bij.solve(x, context=c)
      loss = tf.reduce_sum(sol.state) + tf.reduce_sum(sol.log_det)
    return sol.state, tape.gradient(loss, c)

  z1, gc = run(x, c)
  z2, _ = run(x, c + 1.0)
  assert np.max(np.abs(z1 - z2)) > 1e-4
  assert np.max(np.abs(gc)) > 0


def test_chain_of_flows_adds_log_dets():
  b = np.array([[-0.2, 0.1], [0.0, 0.4]], np.float32)  # Tr = 0.2
  chain = tfb.Chain([FFJORD(linear(A), time_length=0.5, trace="exact"),
                     FFJORD(linear(b), time_length=2.0, trace="exact")])
  dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)),
                                     chain)
  x = tf.random.normal([16, 2])
  logp = tf.function(dist.log_prob)(x)
  z = x.numpy() @ scipy.linalg.expm(0.5 * A).T @ scipy.linalg.expm(2.0 * b).T
  base = tfd.MultivariateNormalDiag(tf.zeros(2)).log_prob(z)
  np.testing.assert_allclose(logp, base + 0.5 * 0.2 + 2.0 * 0.2, atol=1e-4)


def test_log_prob_costs_one_solve_and_nfe_counts_every_evaluation():
  calls = tf.Variable(0)

  def f(t, x):
    with tf.control_dependencies([calls.assign_add(1)]):
      return tf.linalg.matvec(tf.constant(A), x)

  bij = FFJORD(f, trace="exact", solver="dopri5")
  dist = tfd.TransformedDistribution(tfd.MultivariateNormalDiag(tf.zeros(2)),
                                     bij)
  x = tf.random.normal([4, 2])
  solve_nfe = tf.function(lambda x: bij.solve(x).nfe)
  solve_nfe.get_concrete_function(x)  # the first solve probes f once on zeros
  assert int(calls.numpy()) == 1
  calls.assign(0)
  nfe = int(solve_nfe(x))
  assert int(calls.numpy()) == nfe > 2  # Solution.nfe is the real count
  calls.assign(0)
  tf.function(dist.log_prob)(x)
  assert int(calls.numpy()) == nfe


def test_density_integrates_to_one_on_a_grid():
  f = ODENet(hidden=(32, 32))
  dist = tfd.TransformedDistribution(
      tfd.MultivariateNormalDiag(tf.zeros(2)),
      FFJORD(f, time_length=1.0, trace="exact",
             solver=tf_ffjord.make_solver("dopri5", rtol=1e-6, atol=1e-6)))
  side = np.linspace(-7, 7, 141, dtype=np.float32)
  xx, yy = np.meshgrid(side, side)
  grid = np.stack([xx.ravel(), yy.ravel()], 1)
  dens = np.exp(tf.function(dist.log_prob)(grid).numpy())
  mass = dens.sum() * (side[1] - side[0]) ** 2
  assert mass == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("bad,error", [
    (np.array([[np.nan, 0.0]], np.float32), "NaN or inf"),
    (np.array([[np.inf, 0.0]], np.float32), "NaN or inf"),
])
def test_non_finite_input_is_rejected(bad, error):
  bij = FFJORD(linear(A), trace="exact")
  with pytest.raises(tf.errors.InvalidArgumentError, match=error):
    tf.function(lambda x: bij.solve(x).state)(bad)


def test_non_real_input_is_rejected():  # ints are cast (tf_ffjord.validation)
  bij = FFJORD(linear(A))
  with pytest.raises(ValueError, match="floats or ints.*got dtype bool"):
    bij.solve(tf.zeros([2, 2], tf.bool))


def test_auto_gradient_picks_the_adjoint_per_solve():
  from tf_ffjord.solvers import BacksolveAdjoint, InterpolatedAdjoint  # pylint: disable=g-import-not-at-top
  bij = FFJORD(linear(A))  # dopri5, gradient="auto"
  assert isinstance(bij._adjoint_for(False), InterpolatedAdjoint)
  assert isinstance(bij._adjoint_for(True), BacksolveAdjoint)  # compiled loop
  seen = []

  @tf.function(jit_compile=True)
  def inside_xla():
    seen.append(bij._adjoint_for(False))
    return tf.constant(0)

  inside_xla()
  assert isinstance(seen[0], BacksolveAdjoint)  # its record cannot compile
  explicit = FFJORD(linear(A), adjoint="adjoint")
  assert isinstance(explicit._adjoint_for(False), BacksolveAdjoint)


@pytest.mark.parametrize("kwargs,error", [
    (dict(trace="diag"), "trace"),
    (lambda: dict(trace=tf_ffjord.Hutchinson("uniform")), "noise"),
    (dict(solver="rk45"), "solver"), (dict(time_length=-1.0), "time_length"),
    (dict(adjoint="magic"), "adjoint"),
    (lambda: dict(solver=tf_ffjord.make_solver("dopri5", rtol=0.0)), "rtol"),
    (dict(jit_compile="sometimes"), "jit_compile"),
    (lambda: dict(solver=tfp.math.ode.DormandPrince(), adjoint="backprop"),
     "backprop"),
    (dict(solver="rk4", adjoint="interpolated"), "interpolated"),
])
def test_bad_options_are_rejected(kwargs, error):
  with pytest.raises(ValueError, match=error):  # (objects built in the test)
    FFJORD(linear(A), **(kwargs() if callable(kwargs) else kwargs))


def test_unknown_regularizer_is_rejected_at_solve():
  with pytest.raises(ValueError, match="regularizer"):
    FFJORD(linear(A)).solve(tf.zeros([2, 2]), regularizers=("entropy",))


def _alarm(seconds):
  def handler(*_):
    raise TimeoutError(f"solve still running after {seconds} s")
  signal.signal(signal.SIGALRM, handler)
  signal.alarm(seconds)


def test_nan_dynamics_raise_instead_of_hanging():
  bij = FFJORD(lambda t, x: x * np.nan, trace="exact",
               solver=tf_ffjord.make_solver("dopri5", max_num_steps=50))
  _alarm(300)
  try:
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match="max_num_steps|NaN"):
      tf.function(lambda x: bij.solve(x).state)(tf.ones([2, 2]))
  finally:
    signal.alarm(0)


def test_step_limit_error_suggests_looser_tolerances():
  # Stiff, fast dynamics at a tight tolerance cannot finish in 5 steps.
  bij = FFJORD(lambda t, x: -200.0 * x + 50.0 * tf.sin(40.0 * t),
               trace="exact", solver=tf_ffjord.make_solver(
                   "dopri5", rtol=1e-8, atol=1e-8, max_num_steps=5))
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="max_num_steps.*tolerance|tolerance.*max_num_steps"):
    tf.function(lambda x: bij.solve(x).state)(tf.ones([2, 2]))


# Hutchinson, the exact trace by one VJP per dimension (both loops compiled),
# and the exact trace by a batch Jacobian (the backward loop runs plain).
@pytest.mark.parametrize("trace,dim", [("hutchinson", 2), ("exact", 3),
                                       ("exact", 18)])
def test_jit_compile_in_a_plain_tf_function_matches_and_trains_the_net(
    trace, dim):
  # A TFP user's path: log_prob in a plain tf.function; the bijector
  # compiles its own loops. The custom gradient must still find the Keras
  # weights the compiled loop reads.
  f = ODENet(hidden=(16,), dim=dim)
  base = tfd.MultivariateNormalDiag(tf.zeros(dim))
  x = tf.random.normal([64, dim])
  out = {}
  for jit in (False, True):
    dist = tfd.TransformedDistribution(
        base, FFJORD(f, trace=trace, jit_compile=jit))

    @tf.function
    def loss_and_grads(x):
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x, bijector_kwargs={
            "seed": tf.constant([3, 4])}))
      return loss, tape.gradient(loss, f.trainable_variables)

    loss, grads = loss_and_grads(x)
    out[jit] = [loss.numpy()] + [g.numpy() for g in grads]
  assert len(out[True]) == 1 + len(f.trainable_variables)
  for a, b in zip(out[False], out[True]):
    assert np.all(np.isfinite(b)) and np.max(np.abs(b)) > 0
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


def test_fit_with_outer_xla_and_inner_xla():
  import keras  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORDModel, datasets  # pylint: disable=g-import-not-at-top
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,)), jit_compile=True,
                      rtol=1e-4, atol=1e-4)
  model.compile(keras.optimizers.Adam(1e-3), jit_compile=True)
  x = datasets.toy.sample("8gaussians", 64, seed=0).astype("f4")
  before = [w.copy() for w in model.get_weights()]
  hist = model.fit(x, batch_size=32, epochs=1, verbose=0).history
  assert np.isfinite(hist["nll"][-1])
  assert hist["nfe"][-1] > 2 and hist["nfe_backward"][-1] > 1
  assert any(np.max(np.abs(a - b)) > 0
             for a, b in zip(before, model.get_weights()))


@pytest.mark.xla_auto
def test_auto_jit_compile_rule(monkeypatch):
  from tf_ffjord.solvers import use_xla  # pylint: disable=g-import-not-at-top
  assert use_xla("auto", 5_000, 512, 1, "CPU")          # the toy MLP
  assert not use_xla("auto", 1_200_000, 1000, 1, "CPU")  # big matmuls
  assert not use_xla("auto", 20_000, 64, 3, "CPU")      # convolutions
  assert use_xla("auto", 1_200_000, 1000, 3, "GPU")
  assert use_xla(True, 1_200_000, 1000, 3, "CPU") is True
  assert use_xla(False, 10, 1, 1, "GPU") is False
  # The environment overrides "auto" only.
  monkeypatch.setenv("TF_FFJORD_JIT_COMPILE", "0")
  assert use_xla("auto", 5_000, 512, 1, "CPU") is False
  assert use_xla(True, 5_000, 512, 1, "CPU") is True
  monkeypatch.setenv("TF_FFJORD_JIT_COMPILE", "1")
  assert use_xla("auto", 20_000, 64, 3, "CPU") is True
  monkeypatch.setenv("TF_FFJORD_JIT_COMPILE", " False ")
  assert use_xla("auto", 5_000, 512, 1, "CPU") is False
  monkeypatch.setenv("TF_FFJORD_JIT_COMPILE", "true")
  assert use_xla("auto", 20_000, 64, 3, "CPU") is True
  monkeypatch.setenv("TF_FFJORD_JIT_COMPILE", "1")
  assert use_xla(False, 20_000, 64, 3, "CPU") is False
  monkeypatch.setenv("TF_FFJORD_JIT_COMPILE", "sometimes")
  with pytest.raises(ValueError, match=r"TF_FFJORD_JIT_COMPILE must be auto, "
                     r"0 \(or false\) or 1 \(or true\), got 'sometimes'"):
    use_xla("auto", 5_000, 512)


@pytest.mark.parametrize("declared", ["event_shape", "dim", None])
def test_known_event_shape_builds_the_net_and_the_train_step_traces_once(
    declared):
  net = ODENet(hidden=(8,), **({"dim": 2} if declared == "dim" else {}))
  flow = FFJORD(net, solver=tf_ffjord.make_solver("rk4", step_size=0.5),
                **({"event_shape": [2]} if declared == "event_shape" else {}))
  dist = tfp.distributions.TransformedDistribution(
      tfp.distributions.MultivariateNormalDiag(tf.zeros(2)), flow)
  if declared is None:  # the width is unknown until the first call
    assert not net.built and not dist.trainable_variables
    return
  assert net.built and len(dist.trainable_variables) == len(
      net.trainable_weights) > 0
  optimizer = tf.keras.optimizers.Adam(1e-2)
  optimizer.build(dist.trainable_variables)

  @tf.function
  def step(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(x))
    grads = tape.gradient(loss, dist.trainable_variables)
    optimizer.apply_gradients(zip(grads, dist.trainable_variables))
    return loss

  before = [v.numpy() for v in dist.trainable_variables]
  x = tf.random.stateless_normal([16, 2], seed=[0, 1])
  step(x), step(x + 1.0)
  # No variable is created inside the step, so TF traces it once (a step
  # that creates variables is traced twice before its first run).
  assert step.experimental_get_tracing_count() == 1
  assert all(np.any(b != v.numpy())
             for b, v in zip(before, dist.trainable_variables))
