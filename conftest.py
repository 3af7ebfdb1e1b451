"""Pytest setup for tests and doctests: quiet TF logs, seeded RNGs, doctest names."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tf_ffjord  # noqa: E402


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
def _seed():
  keras.utils.set_random_seed(1234)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
  doctest_namespace.update(
      tf=tf, np=np, keras=keras, tfp=tfp, tf_ffjord=tf_ffjord,
      FFJORD=tf_ffjord.FFJORD, ODENet=tf_ffjord.ODENet,
      FFJORDModel=tf_ffjord.FFJORDModel, datasets=tf_ffjord.datasets)
