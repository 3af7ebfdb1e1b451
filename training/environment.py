"""The process a CLI runs in: TensorFlow started quietly, the Keras dtype policy (`--precision`), the distribution strategy (`--strategy`)."""

import contextlib
import os
import sys

__all__ = ["start_tensorflow", "use_precision", "use_strategy", "STRATEGIES",
           "PRECISIONS", "LOGICAL_CPUS_ENV"]

STRATEGIES = ("default", "mirrored", "multiworker")
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")

# Testing aid: `--strategy mirrored` over N logical CPU devices of one
# physical CPU (how the tests get 2 replicas on a machine without GPUs).
LOGICAL_CPUS_ENV = "TF_FFJORD_LOGICAL_CPUS"


@contextlib.contextmanager
def _stderr_to_devnull():
  """Sends file descriptor 2 (C++ writes too) to /dev/null for a while."""
  sys.stderr.flush()
  saved = os.dup(2)
  null = os.open(os.devnull, os.O_WRONLY)
  os.dup2(null, 2)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)
    os.close(saved)
    os.close(null)


def start_tensorflow(verbose=False):
  """Imports TensorFlow, without its log lines unless `verbose`.

  Quiet (the default) sets `TF_CPP_MIN_LOG_LEVEL=3` unless the environment
  sets it (which silences the C++ logs: the failed `cuInit` on machines
  without a GPU, XLA's "Ignoring Assert operator" for every
  `tf.debugging` assert in compiled code), hides what TensorFlow's
  libraries print while they load (absl's "All log messages before
  absl::InitializeLog()" and the lines that follow it come before any log
  level is read), and sets the Python loggers of TensorFlow and absl to
  errors. The log level takes effect only if TensorFlow was not imported
  yet. `verbose` sets `TF_CPP_MIN_LOG_LEVEL=0`: every line comes back.

  Returns:
    The `tensorflow` module.
  """
  if verbose:
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
  else:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
  if verbose or "tensorflow" in sys.modules:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  else:
    with _stderr_to_devnull():
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if not verbose:
    from absl import logging as absl_logging  # pylint: disable=g-import-not-at-top
    absl_logging.set_verbosity(absl_logging.ERROR)
    tf.get_logger().setLevel("ERROR")
  return tf


def use_precision(name):
  """Sets the Keras dtype policy that models built afterwards take.

  Args:
    name: one of `PRECISIONS`.

  Raises:
    ValueError: an unknown name.
  """
  if name not in PRECISIONS:
    raise ValueError(f"Unknown precision {name!r}; expected one of "
                     f"{PRECISIONS}.")
  import keras  # pylint: disable=g-import-not-at-top
  keras.mixed_precision.set_global_policy(name)


def use_strategy(name):
  """Makes a `tf.distribute` strategy the process default and returns it.

  Models built afterwards live in it, and `fit` splits each global batch
  over its replicas. Call it first: `MultiWorkerMirroredStrategy` must exist
  before TensorFlow runs any op.

  Args:
    name: `"default"` (no-op), `"mirrored"` (`MirroredStrategy` over all
      local GPUs, else the CPU; with the environment variable
      `TF_FFJORD_LOGICAL_CPUS=N`, over N logical CPU devices instead) or
      `"multiworker"` (`MultiWorkerMirroredStrategy` over the cluster in
      `TF_CONFIG`).

  Raises:
    ValueError: an unknown name, `multiworker` without `TF_CONFIG`, or a bad
      `TF_FFJORD_LOGICAL_CPUS`.
    RuntimeError: `TF_FFJORD_LOGICAL_CPUS` set after TensorFlow started.
  """
  if name not in STRATEGIES:
    raise ValueError(f"Unknown strategy {name!r}; expected one of "
                     f"{STRATEGIES}.")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    strategy = tf.distribute.MirroredStrategy(_logical_cpus())
  else:
    if "TF_CONFIG" not in os.environ:
      raise ValueError("--strategy multiworker needs TF_CONFIG (the cluster "
                       "spec and this worker's task) in the environment.")
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
  tf.distribute.experimental_set_strategy(strategy)
  return strategy


def _logical_cpus():
  """The devices `TF_FFJORD_LOGICAL_CPUS` asks for, or None (the default)."""
  value = os.environ.get(LOGICAL_CPUS_ENV, "")
  if not value:
    return None
  try:
    n = int(value)
  except ValueError:
    n = 0
  if n < 1:
    raise ValueError(f"{LOGICAL_CPUS_ENV} must be a positive integer, got "
                     f"{value!r}.")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices("CPU")[0]
  # (Listing logical devices would start TensorFlow: ask the config.)
  configured = tf.config.get_logical_device_configuration(cpu) or [None]
  if len(configured) != n:
    try:
      tf.config.set_logical_device_configuration(
          cpu, [tf.config.LogicalDeviceConfiguration()] * n)
    except RuntimeError as e:
      raise RuntimeError(
          f"{LOGICAL_CPUS_ENV}={n} must take effect before TensorFlow runs "
          "its first op; choose the strategy first.") from e
  return [d.name for d in tf.config.list_logical_devices("CPU")]
