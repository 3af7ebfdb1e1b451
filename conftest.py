"""Pytest setup for tests and doctests: quiet TF logs, seeded RNGs, doctest names."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tf_ffjord  # noqa: E402


@pytest.fixture(autouse=True)
def _seed():
  keras.utils.set_random_seed(1234)


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace):
  doctest_namespace.update(
      tf=tf, np=np, keras=keras, tfp=tfp, tf_ffjord=tf_ffjord,
      FFJORD=tf_ffjord.FFJORD, ODENet=tf_ffjord.ODENet,
      FFJORDModel=tf_ffjord.FFJORDModel, datasets=tf_ffjord.datasets)
