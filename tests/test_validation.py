"""Tests of the shared input policy (tf_ffjord.validation)."""

import re

import numpy as np
import pytest
import tensorflow as tf

from tf_ffjord import ODENet
from tf_ffjord import validation
from tf_ffjord.validation import InputError

SHAPE_MSG = (r"^FFJORD expects events of shape \[2\] \(inputs \[batch\.\.\., "
             r"2\]\); got shape \[4, 3\]\.$")


def first_line(err):
  return str(err.value).splitlines()[0]


def test_shape_error_first_line_is_the_same_eager_and_traced():
  with pytest.raises(InputError) as eager:
    validation.check_events(tf.zeros([4, 3]), [2])
  traced_fn = tf.function(lambda x: validation.check_events(x, [2]))
  with pytest.raises(ValueError) as traced:
    traced_fn(tf.zeros([4, 3]))
  assert first_line(eager) == first_line(traced)
  assert tf.errors.InvalidArgumentError not in type(traced.value).__mro__
  assert re.match(SHAPE_MSG, first_line(traced))


@pytest.mark.parametrize("shape", [[3], [4, 3], [2, 2, 1], []])
def test_dynamic_shapes_are_checked_in_the_graph(shape):
  fn = tf.function(lambda x: validation.check_events(x, [2]),
                   input_signature=[tf.TensorSpec(None)])
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match=r"FFJORD expects events of shape \[2\].*got shape"):
    fn(tf.zeros(shape))
  assert fn(tf.zeros([0, 2])).shape == (0, 2)
  assert fn(tf.ones([3, 5, 2])).numpy().sum() == 30


def test_batch_ndims_is_enforced():
  with pytest.raises(InputError, match=r"inputs \[batch, 2\]\); got shape "
                     r"\[1, 4, 2\]"):
    validation.check_events(tf.zeros([1, 4, 2]), [2], batch_ndims=1)


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.float16,
                                   np.float32, np.float64])
def test_real_numbers_are_cast_to_the_flow_dtype(dtype):
  x = np.array([[1, 2], [3, 4]], dtype)
  for flow in (tf.float32, tf.float64):
    out = validation.check_events(x, [2], flow)
    assert out.dtype == flow
    np.testing.assert_array_equal(out.numpy(), [[1, 2], [3, 4]])


def test_flow_dtype_follows_keras_dynamics_then_input():
  assert validation.flow_dtype(ODENet(hidden=(4,), dtype="float64"),
                               tf.float32) == tf.float64
  assert validation.flow_dtype(ODENet(hidden=(4,)), tf.float64) == tf.float32
  assert validation.flow_dtype(lambda t, z: z, tf.float16) == tf.float16
  assert validation.flow_dtype(lambda t, z: z, tf.int64) == tf.float32


@pytest.mark.parametrize("value,dtype", [
    ([[True, False]], "bool"), ([["a", "b"]], "string"),
    (np.ones([1, 2], np.complex64), "complex64")])
def test_other_dtypes_are_refused_naming_both(value, dtype):
  with pytest.raises(InputError, match=f"floats or ints.*got dtype {dtype}"):
    validation.check_events(value, [2], tf.float32)


def test_unconvertible_input_is_refused():
  with pytest.raises(InputError, match="real-valued tensor; got object"):
    validation.check_events(object(), [2])


def test_non_finite_after_the_cast():
  with pytest.raises(tf.errors.InvalidArgumentError,
                     match="FFJORD input contains NaN or inf"):
    validation.check_events(np.array([[1e300, 0.0]]), [2], tf.float32)


def test_count():
  assert int(validation.check_count(np.int64(5))) == 5
  for bad in (-1, 2.5, True, tf.constant([1, 2])):
    with pytest.raises(InputError, match="n >= 0"):
      validation.check_count(bad)
  fn = tf.function(validation.check_count,
                   input_signature=[tf.TensorSpec([], tf.int32)])
  assert int(fn(0)) == 0
  with pytest.raises(tf.errors.InvalidArgumentError, match="n >= 0"):
    fn(-3)
