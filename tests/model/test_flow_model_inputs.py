"""FlowModel's public surface under the shared input policy: empty batches, sample counts, wrong shapes (eager and in tf.function), lists into fit."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import FFJORDModel, ImageFlow, ODENet
from tf_ffjord.datasets import toy


@pytest.fixture(scope="module")
def model():
  # dopri5: the solver whose error norm over 0 rows was NaN.
  m = FFJORDModel((2,), dynamics=ODENet(hidden=(8,), dim=2), rtol=1e-3,
                  atol=1e-3)
  m.compile(keras.optimizers.Adam(1e-3))
  return m


@pytest.fixture(scope="module")
def x():
  return toy.sample("moons", 8, seed=0)


def test_empty_batches_are_legal(model):
  empty = np.zeros([0, 2], np.float32)
  assert model.log_prob(empty).shape == (0,)
  logp, nfe = model.log_prob(empty, return_nfe=True)
  assert int(nfe) == 0
  traced = tf.function(model.log_prob,
                       input_signature=[tf.TensorSpec([None, 2])])
  assert traced(empty).shape == (0,)
  assert model.sample(0).shape == (0, 2)
  assert tf.function(lambda n: model.sample(n, seed=1))(
      tf.constant(0)).shape == (0, 2)


def test_an_unknown_batch_size_still_solves(model, x):
  traced = tf.function(model.log_prob,
                       input_signature=[tf.TensorSpec([None, 2])])
  np.testing.assert_allclose(traced(x), model.log_prob(x), rtol=1e-5,
                             atol=1e-5)
  samples = tf.function(lambda n: model.sample(n, seed=3))(tf.constant(5))
  np.testing.assert_allclose(samples, model.sample(5, seed=3), atol=1e-5)


def test_a_negative_sample_count_is_refused(model):
  with pytest.raises(ValueError, match="n >= 0; got n = -1"):
    model.sample(-1)
  with pytest.raises(ValueError, match="n >= 0; got n = -1"):
    tf.function(lambda: model.sample(-1))()
  with pytest.raises(tf.errors.InvalidArgumentError, match="n >= 0"):
    tf.function(lambda n: model.sample(n))(tf.constant(-1))


def test_a_wrong_width_names_both_shapes_and_breaks_nothing(model, x):
  before = model.log_prob(x).numpy()
  first_line = ("FFJORDModel expects examples of shape [2] (inputs [batch, "
                "2]); got shape [4, 3].")
  with pytest.raises(ValueError) as e:
    model.log_prob(np.zeros([4, 3], np.float32))
  assert str(e.value).splitlines()[0] == first_line
  with pytest.raises(ValueError) as e:
    tf.function(model.log_prob)(tf.zeros([4, 3]))
  assert str(e.value).splitlines()[0] == first_line
  np.testing.assert_allclose(model.log_prob(x), before, rtol=1e-6)


@pytest.mark.parametrize("shape,received", [([8], "[8]"),
                                            ([8, 2, 1], "[8, 2, 1]")])
def test_fit_on_the_wrong_rank_names_expected_and_received(model, shape,
                                                           received):
  with pytest.raises(ValueError, match=r"of shape \[2\] \(inputs \[batch, "
                     rf"2\]\); got shape {re_escape(received)}"):
    model.fit(np.zeros(shape, np.float32), batch_size=4, verbose=0)
  # Keras may relax a retraced step's shape to an unknown rank: then the
  # same message comes from the graph.
  data = tf.data.Dataset.from_tensors(tf.zeros(shape))
  with pytest.raises((ValueError, tf.errors.InvalidArgumentError),
                     match=r"inputs \[batch, 2\]"):
    model.fit(data, verbose=0, shuffle=False)
  # A step that failed while tracing leaves fit working.
  steps = int(model.optimizer.iterations)
  model.fit(np.zeros([4, 2], np.float32), batch_size=4, verbose=0)
  assert int(model.optimizer.iterations) == steps + 1


def re_escape(text):
  return text.replace("[", r"\[").replace("]", r"\]")


def test_lists_into_fit_train_or_get_a_short_error(model, x):
  steps = int(model.optimizer.iterations)
  model.fit(x.tolist(), batch_size=4, epochs=1, verbose=0)
  assert int(model.optimizer.iterations) == steps + 2
  ragged = [[0.5, 1.0], [2.0]] * 50
  with pytest.raises(ValueError) as e:
    model.fit(ragged, verbose=0)
  message = str(e.value)
  assert "not one array" in message and "[batch, 2]" in message
  assert "0.5" not in message and len(message) < 200


def test_ints_are_cast_by_the_shared_policy(model):
  ints = np.array([[0, 1], [1, 0]], np.int32)
  np.testing.assert_allclose(model.log_prob(ints),
                             model.log_prob(ints.astype(np.float32)),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="dtype bool"):
    model.log_prob(np.zeros([2, 2], bool))


def test_image_flows_follow_the_same_policy():
  model = ImageFlow((4, 4, 1), dims=(4,), num_blocks=1, multiscale=False,
                    train_time=False, solver="euler", step_size=1.0)
  assert model.sample(0).shape == (0, 4, 4, 1)
  assert model.log_prob(np.zeros([0, 4, 4, 1], np.float32)).shape == (0,)
  assert model.bits_per_dim(np.zeros([0, 4, 4, 1], np.uint8)).shape == (0,)
  with pytest.raises(ValueError, match=r"images of shape \[4, 4, 1\].*got "
                     r"shape \[2, 4, 4\]"):
    model.bits_per_dim(np.zeros([2, 4, 4], np.uint8))
  model.compile("adam")
  with pytest.raises(ValueError, match=r"inputs \[batch, 4, 4, 1\]"):
    model.evaluate(np.zeros([4, 4, 4], np.uint8), verbose=0)
