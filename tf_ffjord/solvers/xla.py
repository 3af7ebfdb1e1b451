"""When compiling a solve with XLA pays: `use_xla` (the rule of `jit_compile="auto"`)."""

import math

import tensorflow as tf

__all__ = ["use_xla", "num_weights", "device_type", "CPU_MAX_WORK"]

# Placeholder until measured (benchmarks/xla_crossover.py).
CPU_MAX_WORK = 2e7


def num_weights(dynamics):
  """Number of trainable weights of a Keras layer or `tf.Module` (0 if unknown)."""
  variables = getattr(dynamics, "trainable_weights", None)
  if variables is None:
    variables = getattr(dynamics, "trainable_variables", ())
  return int(sum(math.prod(v.shape) for v in variables))


def device_type(x):
  """`"CPU"`, `"GPU"` or `"TPU"`: where ops on x run."""
  spec = tf.DeviceSpec.from_string(getattr(x, "device", "") or "")
  if spec.device_type:
    return spec.device_type.upper()
  return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def use_xla(jit_compile, weights, batch, event_ndims=1, device="CPU"):
  """Whether to XLA-compile a solve.

  Args:
    jit_compile: `True`, `False` or `"auto"`.
    weights: number of weights of the dynamics.
    batch: static batch size, or `None` if unknown.
    event_ndims: event dimensions (more than 1: convolutional dynamics).
    device: `"CPU"`, `"GPU"` or `"TPU"`.

  Returns:
    A bool.
  """
  if jit_compile in (True, False):
    return jit_compile
  if jit_compile != "auto":
    raise ValueError(f"jit_compile must be True, False or 'auto', got "
                     f"{jit_compile!r}.")
  if device != "CPU":
    return True
  if event_ndims > 1:
    return False
  return weights * (batch or 1) <= CPU_MAX_WORK
