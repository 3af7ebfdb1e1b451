"""Pytest setup for tests and doctests: quiet TF logs, seeded RNGs, doctest names."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tf_ffjord  # noqa: E402
from tf_ffjord.solvers.xla import JIT_ENV  # noqa: E402


_ROOT = os.path.dirname(os.path.abspath(__file__))


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
