"""The private TF/TFP/Keras APIs of tf_ffjord._internal_apis still exist and behave as used.

A failure here means a TensorFlow, TFP or Keras upgrade changed one: the
message names it and the pin (setup.cfg) to revisit.
"""

import types

import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import _internal_apis


def test_tfp_greedy_bijector_cache_keeps_side_results():
  try:
    cache = _internal_apis.greedy_bijector_cache("_fwd", "_inv")
  except (ImportError, AttributeError) as e:
    raise AssertionError(
        "tensorflow_probability.python.internal.cache_util."
        "BijectorCacheWithGreedyAttrs is gone or renamed in TFP "
        f"{tfp.__version__}: FFJORD's one-solve log_prob needs it; revisit "
        "_internal_apis.py and the TFP pin in setup.cfg.") from e

  class Doubler(tfp.bijectors.Bijector):
    _cache = cache
    calls = 0

    def __init__(self):
      super().__init__(forward_min_event_ndims=0, is_constant_jacobian=False)

    def _fwd(self, x):
      Doubler.calls += 1
      return 2.0 * x, {"fldj": tf.math.log(2.0) * tf.ones_like(x)}

    def _forward(self, x):
      return self._fwd(x)[0]

    def _inv(self, y):
      return y / 2.0, {"ildj": -tf.math.log(2.0) * tf.ones_like(y)}

    def _inverse(self, y):
      return self._inv(y)[0]

    def _forward_log_det_jacobian(self, x):
      cached = self._cache.forward_attributes(x)
      assert "fldj" in cached, (
          "TFP's greedy cache no longer stores side results of a forward "
          "call: FFJORD's log_prob would cost two solves.")
      return cached["fldj"]

  bij = Doubler()
  x = tf.constant([1.0, 3.0])
  y = bij.forward(x)
  bij.forward_log_det_jacobian(x, event_ndims=0)
  assert Doubler.calls == 1
  assert y.numpy().tolist() == [2.0, 6.0]


def test_tf_xla_context_query_answers_both_ways():
  from tensorflow.python.ops import control_flow_util  # pylint: disable=g-import-not-at-top
  assert hasattr(control_flow_util, "GraphOrParentsInXlaContext"), (
      "tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext is "
      f"gone in TF {tf.__version__}: revisit _internal_apis.in_xla_context.")
  seen = []

  @tf.function(jit_compile=True)
  def compiled():
    seen.append(_internal_apis.in_xla_context())
    return tf.constant(0)

  @tf.function
  def plain():
    seen.append(_internal_apis.in_xla_context())
    return tf.constant(0)

  compiled()
  plain()
  assert seen == [True, False], (
      f"in_xla_context answered {seen} for (XLA, plain): TF changed "
      "GraphOrParentsInXlaContext.")
  assert _internal_apis.in_xla_context() is False


def test_keras_callbacks_read_directions_from_the_metrics_container():
  import keras  # pylint: disable=g-import-not-at-top
  try:
    nll = keras.metrics.Mean(name="nll")
    nll._direction = "down"  # pylint: disable=protected-access
    entry = _internal_apis.metric_directions([nll])
  except (ImportError, AttributeError) as e:
    raise AssertionError(
        "keras.src.trainers.compile_utils.MetricsList is gone or renamed in "
        f"Keras {keras.__version__}: FlowModel's callbacks lose the "
        "direction of its losses; revisit _internal_apis.metric_directions."
    ) from e
  assert entry.variables == [] and entry.result() == {}
  for metrics, want in (([entry], keras.ops.less), ([nll], None)):
    model = types.SimpleNamespace(metrics=metrics)  # what the callback reads
    cb = keras.callbacks.EarlyStopping(monitor="val_nll")
    cb.set_model(model)
    if want is None:  # the bare metric: Keras cannot tell its direction
      with pytest.raises(ValueError, match="maximized or minimized"):
        cb._set_monitor_op()  # pylint: disable=protected-access
      continue
    cb._set_monitor_op()  # pylint: disable=protected-access
    assert cb.monitor_op is want, (
        "Keras' MonitorCallback no longer reads _direction from a "
        "MetricsList: revisit _internal_apis.metric_directions.")
