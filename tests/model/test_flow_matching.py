"""Flow matching: time convention, OT pairing, the analytic optimum, training."""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf

import tf_ffjord
from scipy.stats import norm

from tf_ffjord import FFJORD, FFJORDModel, FlowMatching, ODENet, datasets
from tf_ffjord.model import flow_matching as fm


def test_path_and_target_follow_the_bijector_time_convention():
  # Data at t0, base at t0 + T: a field that returns (x_t - x) / (t - t0) is
  # the straight path's velocity (z - x) / T exactly, so the loss is 0.
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(size=(256, 3)))
  z = tf.constant(rng.normal(size=(256, 3)))
  t0, t_len = 1.0, 2.0
  exact = lambda t, xt: (xt - x) / (t - t0)[:, None]
  loss = fm.flow_matching_loss(exact, x, time_length=t_len, initial_time=t0,
                               z=z, seed=tf.constant([1, 2]))
  np.testing.assert_allclose(loss.numpy(), 0.0, atol=1e-18)
  zero = lambda t, xt: tf.zeros_like(xt)
  loss = fm.flow_matching_loss(zero, x, time_length=t_len, initial_time=t0,
                               z=z)
  np.testing.assert_allclose(loss.numpy(),
                             np.sum((z.numpy() - x.numpy()) ** 2, -1) / 4.0)


def test_times_are_per_example_and_inside_the_interval():
  seen = {}

  def spy(t, xt):
    seen["t"] = t
    return tf.zeros_like(xt)

  fm.flow_matching_loss(spy, tf.zeros([500, 2]), time_length=3.0,
                        initial_time=-1.0, seed=tf.constant([0, 1]))
  t = seen["t"].numpy()
  assert t.shape == (500,)
  assert t.min() >= -1.0 and t.max() <= 2.0 and t.std() > 0.5


def test_ot_pairing_is_the_optimal_permutation():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(6, 2)).astype("f4")
  z = rng.normal(size=(6, 2)).astype("f4")
  paired = tf.function(fm.ot_pairing)(x, z).numpy()
  # A permutation of z's rows...
  np.testing.assert_array_equal(np.sort(paired, 0), np.sort(z, 0))
  # ...with the brute-force minimal total squared distance.
  best = min(np.sum((x - z[list(p)]) ** 2)
             for p in itertools.permutations(range(6)))
  np.testing.assert_allclose(np.sum((x - paired) ** 2), best, rtol=1e-5)


M, S = np.array([1.5, -0.5]), 0.6  # data N(M, S^2 I), base N(0, I)


def _optimal_field(t_len):
  """E[(z - x) / T | x_t = y] for independent Gaussian x and z."""
  def field(t, y):
    tau = tf.reshape(tf.cast(t, y.dtype) / t_len, [-1, 1])
    a, b = 1.0 - tau, tau
    gain = (b - a * S**2) / (a**2 * S**2 + b**2)
    return (-M + gain * (y - a * M)) / t_len
  return field


def test_optimal_field_gives_exact_density_through_the_bijector():
  # The flow-matching minimizer, integrated by FFJORD (exact trace), must
  # give the data density back: this ties the loss's convention to the
  # bijector's.
  t_len = 2.0
  bij = FFJORD(_optimal_field(t_len), time_length=t_len, trace="exact",
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-8, atol=1e-8))
  x = np.random.default_rng(2).normal(size=(64, 2)) * S + M
  sol = tf.function(lambda x: bij.solve(x))(tf.constant(x))
  logp = norm.logpdf(sol.state.numpy()).sum(-1) + sol.log_det.numpy()
  np.testing.assert_allclose(logp, norm.logpdf(x, M, S).sum(-1), atol=1e-4)
  np.testing.assert_allclose(sol.state.numpy(), (x - M) / S, atol=1e-4)


def test_optimal_field_minimizes_the_loss():
  t_len = 2.0
  x = tf.constant(np.random.default_rng(3).normal(size=(20000, 2)) * S + M)
  best = _optimal_field(t_len)
  seed = tf.constant([4, 5])
  loss = lambda f: float(tf.reduce_mean(fm.flow_matching_loss(
      f, x, time_length=t_len, seed=seed)))
  base = loss(best)
  for delta in (0.2, -0.2):
    shifted = lambda t, y, d=delta: best(t, y) + d
    # The expected excess is |delta|^2 * 2 dims; allow sampling noise.
    assert loss(shifted) - base == pytest.approx(2 * delta**2, rel=0.1)


def test_bad_arguments_raise():
  f = lambda t, x: x
  with pytest.raises(ValueError, match="float"):
    fm.flow_matching_loss(f, tf.zeros([4, 2], tf.int32))
  with pytest.raises(ValueError, match="sigma"):
    fm.flow_matching_loss(f, tf.zeros([4, 2]), sigma=-1.0)
  with pytest.raises(ValueError, match="same shape"):
    fm.ot_pairing(tf.zeros([4, 2]), tf.zeros([4, 3]))


def test_flow_matching_lowers_test_nll_on_8gaussians():
  keras.utils.set_random_seed(0)
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(64, 64)),
                      solver="dopri5", rtol=1e-4, atol=1e-4)
  model.compile(keras.optimizers.Adam(2e-3),
                objective=FlowMatching(ot=True))
  train = datasets.toy.sample("8gaussians", 256 * 400, seed=0).astype("f4")
  test = datasets.toy.sample("8gaussians", 1000, seed=1).astype("f4")
  start = model.evaluate(test, batch_size=1000, verbose=0, return_dict=True)
  hist = model.fit(train, batch_size=256, epochs=1, verbose=0).history
  end = model.evaluate(test, batch_size=1000, verbose=0, return_dict=True)
  assert set(hist) == {"loss", "fm_loss"}
  # Untrained: about 6.2 nats; the data's entropy is 2.83 nats.
  assert end["nll"] < start["nll"] - 2.0, (start, end)
  assert end["nll"] < 3.8, end
  samples = model.sample(500, seed=0).numpy()
  assert samples.shape == (500, 2) and np.all(np.isfinite(samples))
  # Samples land on the ring of modes (radius 4 / 1.414 = 2.83).
  radius = np.linalg.norm(samples, axis=-1)
  assert abs(np.median(radius) - 2.83) < 0.4


@pytest.mark.xla_auto
def test_flow_matching_fit_compiles_dense_fields_with_xla_and_trains():
  # Keras' jit_compile="auto" is off on CPU, and a flow-matching step has no
  # solve of its own to compile: compile decides by the solvers' XLA rule.
  from tf_ffjord import ImageFlow  # pylint: disable=g-import-not-at-top
  from tf_ffjord.solvers import xla  # pylint: disable=g-import-not-at-top
  on_cpu = xla.device_type(tf.zeros([])) == "CPU"
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(16,)))
  model.compile(keras.optimizers.Adam(1e-2), objective="flow_matching")
  assert model.jit_compile is True
  x = datasets.toy.sample("8gaussians", 64 * 40, seed=0).astype("f4")
  hist = model.fit(x, batch_size=64, epochs=2, verbose=0).history["fm_loss"]
  assert np.all(np.isfinite(hist)) and hist[-1] < hist[0]
  # The user's choice and OT (scipy in the step) win over the rule.
  model.compile(keras.optimizers.Adam(), objective="flow_matching",
                jit_compile=False)
  assert model.jit_compile is False
  model.compile(keras.optimizers.Adam(), objective=FlowMatching(ot=True))
  assert model.jit_compile is False
  image = ImageFlow((4, 4, 1), dims=(4,), multiscale=False, num_blocks=1,
                    train_time=False)
  image.compile(keras.optimizers.Adam(), objective="flow_matching")
  assert image.jit_compile is (not on_cpu)  # convolutions run plain on CPU
