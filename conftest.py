"""Pytest setup for tests and doctests: quiet TF logs, seeded RNGs, doctest names."""

import os
import signal
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tf_ffjord  # noqa: E402
from tf_ffjord.solvers.xla import JIT_ENV  # noqa: E402


_ROOT = os.path.dirname(os.path.abspath(__file__))
# The tests' shared helpers (`user_dynamics`, `_worker`) live in tests/, above
# the folders that mirror the package.
sys.path.insert(0, os.path.join(_ROOT, "tests"))


@pytest.fixture
def subprocess_env():
  """Environment for a child Python that runs this checkout.

  The repository comes first on PYTHONPATH, TF logs are quiet, and a
  TF_CONFIG of the calling shell is dropped (children that need one add it).
  """
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(
      [_ROOT, *filter(None, [env.get("PYTHONPATH")])])
  env["TF_CPP_MIN_LOG_LEVEL"] = "2"
  env.pop("TF_CONFIG", None)
  return env


@pytest.fixture
def kill_9_after_first_save(subprocess_env, tmp_path):
  """`kill(module, args, state_file, deadline_s)`: a CLI killed mid-run.

  Runs `python -m module *args` from the repository and sends SIGKILL as
  soon as `state_file` exists (the checkpoint's state file is written last,
  atomically, once a save is whole); fails with the child's stderr unless
  the child died by that signal. Its stderr goes to a file: a full pipe
  would block the child before it saves.
  """

  def kill(module, args, state_file, deadline_s):
    log_path = tmp_path / f"{module}.stderr.log"
    with open(log_path, "w") as log:
      proc = subprocess.Popen([sys.executable, "-m", module, *args],
                              cwd=_ROOT, env=subprocess_env,
                              stdout=subprocess.DEVNULL, stderr=log)
      try:
        deadline = time.time() + deadline_s
        while time.time() < deadline and proc.poll() is None:
          if state_file.exists():
            proc.send_signal(signal.SIGKILL)
            break
          time.sleep(0.02)
        proc.wait(timeout=60)
      finally:
        if proc.poll() is None:
          proc.kill()
          proc.wait()
    assert proc.returncode == -signal.SIGKILL, log_path.read_text()[-3000:]

  return kill


@pytest.fixture(autouse=True)
def _plain_unless_marked(request, monkeypatch):
  """Runs `jit_compile="auto"` plain, unless the test is marked `xla_auto`.

  XLA compiles each fixed grid and solve signature anew, and its compile
  time was most of the suite's time. XLA itself is tested where it is asked
  for (`jit_compile=True`), and the `"auto"` rule by the tests marked
  `xla_auto` and the doctests of `solvers/xla.py`. Child processes inherit
  the setting through the environment.
  """
  node = request.node
  if (node.get_closest_marker("xla_auto")
      or node.nodeid.startswith("tf_ffjord/solvers/xla.py")):
    monkeypatch.delenv(JIT_ENV, raising=False)
  else:
    monkeypatch.setenv(JIT_ENV, "0")


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(1234)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
  doctest_namespace.update(
      tf=tf, np=np, keras=keras, tfp=tfp, tf_ffjord=tf_ffjord,
      FFJORD=tf_ffjord.FFJORD, ODENet=tf_ffjord.ODENet,
      FFJORDModel=tf_ffjord.FFJORDModel, datasets=tf_ffjord.datasets)
