"""When compiling a solve with XLA pays: `use_xla` (the rule of `jit_compile="auto"`).

Measured with `benchmarks/xla_crossover.py` on one pinned core of an Intel
Xeon (TF 2.21, CPU), a shared machine, XLA and plain alternating: the cost of
a fresh dopri5 training step's work (20 evaluations of the dynamics with its
Hutchinson VJP + 7 adjoint evaluations), XLA / plain, for concatsquash
softplus MLPs (`benchmarks/results/xla_crossover*.{log,json}`):

| hidden | batch 100 | batch 500 | batch 1000 | (D = 2 / 63) |
| --- | --- | --- | --- | --- |
| 64x64 | 0.27 / 0.58 | 0.44 / 0.48 | 0.43 / 0.44 | |
| 128x128 | 0.24 / 0.60 | 0.52 / 0.49 | 0.56 / 0.57 | |
| 256x256 | 0.47 / 0.58 | 0.53 / 0.69 | 0.66 / 0.64 | |
| 512x512 | 0.63 / 0.64 | 0.90 / 0.63 | 0.76 / 0.82 | |
| 1024x1024 | 0.72 / 1.25 | 0.57 / 0.84 | 0.69 / 0.60 | |
| 860x860 | | | 0.98 (D 43, MINIBOONE's net) | |

XLA wins by 2-4x for small nets, where the plain executor's per-op cost
dominates, and its edge shrinks as the matrix products grow: the forward
evaluation alone is no faster with XLA from 512x512 x batch 500 on (XLA's CPU
matrix products are slower than oneDNN's), while the adjoint evaluation, a
double backward pass with many elementwise ops, still gains. Whole training
steps (`--solves`) measured 0.30 (64x64, batch 100), 0.49-0.57 (64x64,
batch 500-1000), 0.87 (512x512, batch 500, D 16) and 1.11 (1024x1024, batch
1000, D 63, where the chains say 0.60: the whole solve also integrates a
million parameter adjoints per stage). Around weights x batch = 1e8-1e9 the
ratios scatter between 0.6 and 1.25 on this noisy core; the rule switches
XLA off above 4e8 (weights x batch), where the gain is small or negative.
Convolutions are much slower with XLA on CPU: 3.8x (28x28x1, 16-16
channels, batch 16) and 7.8x (32-32 channels, batch 64), so convolutional
(image) dynamics run plain.
On GPUs and TPUs XLA is on.

The environment variable `TF_FFJORD_JIT_COMPILE` (`auto`, the default, `0`
or `1`) overrides what `"auto"` resolves to, for a whole process: `0` when
XLA's compile time outweighs a short run (the test suite, a debugging
session), `1` to compile everywhere. An explicit `True` or `False` wins.
"""

import contextlib
import math
import os
import threading
from typing import Any, Iterator

import tensorflow as tf

from tf_ffjord import _internal_apis

__all__ = ["use_xla", "num_weights", "device_type", "in_xla_context",
           "any_batch_size", "CPU_MAX_WORK", "JIT_ENV"]

# Above this many weights x batch rows, dense dynamics run plain on CPU.
CPU_MAX_WORK = 4e8
# Overrides what "auto" resolves to in this process ("auto", "0" or "1").
JIT_ENV = "TF_FFJORD_JIT_COMPILE"
_ENV_VALUES = {"auto": "auto", "0": False, "false": False, "1": True,
               "true": True}


_SCOPE = threading.local()


@contextlib.contextmanager
def any_batch_size() -> Iterator[None]:
  """Solves traced in this scope will serve calls of every batch size: "auto" runs them plain.

  XLA compiles a program per input shape: seconds for each new batch size,
  for a gain of milliseconds per call. In-process calls (an eager
  `dist.log_prob`, `FlowModel.log_prob`) come in every size, so their one
  shape-polymorphic trace runs plain under `jit_compile="auto"`; training
  steps, whose batch size repeats, follow the rule of `use_xla`. The scope
  is read while a solve is traced; an explicit `True` or
  `TF_FFJORD_JIT_COMPILE=1` still compiles.
  """
  outer = getattr(_SCOPE, "active", False)
  _SCOPE.active = True
  try:
    yield
  finally:
    _SCOPE.active = outer


def num_weights(dynamics: Any) -> int:
  """Number of trainable weights of a Keras layer or `tf.Module` (0 if unknown)."""
  variables: Any = getattr(dynamics, "trainable_weights", None)
  if variables is None:
    variables = getattr(dynamics, "trainable_variables", ())
  return int(sum(math.prod(v.shape) for v in variables))


def device_type(x: Any) -> str:
  """`"CPU"`, `"GPU"` or `"TPU"`: where ops on x run."""
  spec = tf.DeviceSpec.from_string(getattr(x, "device", "") or "")
  if spec.device_type:
    return spec.device_type.upper()
  return "GPU" if tf.config.list_logical_devices("GPU") else "CPU"


def in_xla_context() -> bool:
  """Whether the graph being built will be compiled by XLA, e.g. inside a
  `tf.function(jit_compile=True)` or a Keras step with `jit_compile=True`
  (TensorFlow has no public way to ask: see `tf_ffjord._internal_apis`)."""
  return _internal_apis.in_xla_context()


def use_xla(jit_compile: bool | str, weights: int, batch: int | None,
            event_ndims: int = 1, device: str = "CPU") -> bool:
  """Whether to XLA-compile a solve.

  Args:
    jit_compile: `True`, `False` or `"auto"`.
    weights: number of weights of the dynamics.
    batch: static batch size, or `None` if unknown.
    event_ndims: event dimensions (more than 1: convolutional dynamics).
    device: `"CPU"`, `"GPU"` or `"TPU"`.

  Returns:
    A bool: `jit_compile` itself if it is a bool; for `"auto"`, the value of
    `TF_FFJORD_JIT_COMPILE` if it is `0` or `1`, else False inside
    `any_batch_size()` (in-process calls), else True on GPUs and TPUs,
    and on CPU for dense dynamics (`event_ndims == 1`) with
    `weights * batch <= CPU_MAX_WORK` (an unknown batch counts as 1).

  Raises:
    ValueError: `jit_compile` is none of the three, or the environment
      variable holds another value.

  #### Examples

  >>> use_xla("auto", weights=4_872, batch=512)         # the 2-D toy MLP
  True
  >>> use_xla("auto", weights=1_186_044, batch=1_000)   # 1024x1024, D 63
  False
  >>> use_xla("auto", weights=20_000, batch=64, event_ndims=3)  # conv
  False
  """
  if jit_compile in (True, False):
    return jit_compile
  if jit_compile != "auto":
    raise ValueError(f"jit_compile must be True, False or 'auto', got "
                     f"{jit_compile!r}.")
  env = os.environ.get(JIT_ENV, "auto").strip().lower()
  if env not in _ENV_VALUES:
    raise ValueError(f"{JIT_ENV} must be auto, 0 (or false) or 1 (or true), "
                     f"got {env!r}.")
  if _ENV_VALUES[env] != "auto":
    return bool(_ENV_VALUES[env])  # False or True here
  if getattr(_SCOPE, "active", False):  # see any_batch_size
    return False
  if device != "CPU":
    return True
  if event_ndims > 1:
    return False
  return weights * (batch or 1) <= CPU_MAX_WORK
