"""Objectives own their metrics, XLA rule and step; a user's objective trains, saves to .keras and loads back, also in a fresh process."""

import json
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import FFJORD, FFJORDModel, MaximumLikelihood, ODENet, make_solver
from tf_ffjord.cnf.density import FlowView
from tf_ffjord.model import objectives
from tf_ffjord.model.base_distribution import standard_normal
from tf_ffjord.datasets import toy

TESTS = pathlib.Path(__file__).resolve().parent


@keras.saving.register_keras_serializable("tf_ffjord_tests")
class TemperedLikelihood(objectives.Objective):
  """Maximum likelihood with the log-density scaled by 1 / temperature."""

  def __init__(self, temperature=1.0):
    self.temperature = float(temperature)

  def metrics(self, model):
    return {"tempered_nll": "mean", "calls": "last"}

  def jit_compile(self, model, requested):
    return False  # FlowModel must take the objective's word for it

  def loss(self, model, x, context=None):
    nll = -tf.reduce_mean(model(x, training=True)) / self.temperature
    return nll, {"tempered_nll": nll, "calls": tf.constant(1.0)}

  def get_config(self):
    return {"temperature": self.temperature}


def small_model():
  return FFJORDModel((2,), dynamics=ODENet(hidden=(8,), dim=2),
                     solver="rk4", step_size=0.5)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """A model fit 2 steps with the user's objective, and its .keras file."""
  keras.utils.set_random_seed(0)
  model = small_model()
  model.compile(keras.optimizers.Adam(1e-2),
                objective=TemperedLikelihood(2.0))
  x = toy.sample("moons", 64, seed=0)
  before = [w.numpy().copy() for w in model.trainable_weights]
  history = model.fit(x, batch_size=32, epochs=1, verbose=0)
  path = tmp_path_factory.mktemp("user_objective") / "flow.keras"
  model.save(path)
  return model, x, path, history, before


def test_user_objective_trains_with_its_own_logs(trained):
  model, _, _, history, before = trained
  assert set(history.history) == {"loss", "tempered_nll", "calls"}
  assert int(model.optimizer.iterations) == 2
  assert model.jit_compile is False
  assert any(np.any(b != w.numpy())
             for b, w in zip(before, model.trainable_weights))
  assert type(model.trackers["calls"]).__name__ == "LastValue"
  assert type(model.trackers["tempered_nll"]).__name__ == "Mean"


def test_user_objective_loads_back_in_this_process(trained):
  model, x, path, _, _ = trained
  loaded = keras.saving.load_model(path)
  assert type(loaded.objective) is TemperedLikelihood
  assert loaded.objective.temperature == 2.0
  np.testing.assert_allclose(loaded.log_prob(x[:8]), model.log_prob(x[:8]),
                             rtol=1e-6, atol=1e-6)
  assert int(loaded.optimizer.iterations) == 2


def test_user_objective_loads_back_in_a_fresh_process(trained,
                                                      subprocess_env):
  model, x, path, _, _ = trained
  code = (
      "import json, sys, keras, numpy as np\n"
      f"sys.path.insert(0, {str(TESTS)!r})\n"
      "import test_objectives  # registers TemperedLikelihood\n"
      f"m = keras.saving.load_model({str(path)!r})\n"
      f"x = np.array({x[:8].tolist()!r}, np.float32)\n"
      "print(json.dumps({'objective': repr(m.objective),\n"
      "                  'log_prob': m.log_prob(x).numpy().tolist()}))\n")
  out = subprocess.run([sys.executable, "-c", code], env=subprocess_env,
                       capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  result = json.loads(out.stdout.strip().splitlines()[-1])
  assert result["objective"] == "TemperedLikelihood(temperature=2.0)"
  np.testing.assert_allclose(result["log_prob"], model.log_prob(x[:8]),
                             rtol=1e-5, atol=1e-5)


def test_old_keras_files_of_builtin_objectives_still_load():
  # Before registration, compile configs held {"class_name", "config"}.
  old = {"class_name": "MaximumLikelihood",
         "config": {"regularization": {"kinetic": 0.5}}}
  restored = objectives.deserialize(old)
  assert isinstance(restored, MaximumLikelihood)
  assert restored.regularization == {"kinetic": 0.5}
  with pytest.raises(TypeError, match="Objective"):
    objectives.deserialize(keras.saving.serialize_keras_object(
        keras.layers.Dense(2)))


def test_builtin_objectives_declare_their_logs():
  model = small_model().flow_view
  assert MaximumLikelihood({"l2": 1.0}).metrics(model) == {
      "nll": "mean", "nfe": "last", "nfe_backward": "last", "l2": "mean"}
  assert objectives.FlowMatching().metrics(model) == {"fm_loss": "mean"}
  assert objectives.FlowMatching(ot=True).jit_compile(model, "auto") is False
  assert MaximumLikelihood().jit_compile(model, True) is True
  for objective in (MaximumLikelihood({"kinetic": 0.1}),
                    objectives.FlowMatching(ot=True, sigma=0.1)):
    config = keras.saving.serialize_keras_object(objective)
    assert repr(objectives.deserialize(config)) == repr(objective)


def test_a_log_the_objective_does_not_declare_is_named():

  class Undeclared(objectives.Objective):

    def loss(self, model, x, context=None):
      nll = -tf.reduce_mean(model(x, training=True))
      return nll, {"surprise": nll}

  model = small_model()
  model.compile("adam", objective=Undeclared())
  with pytest.raises(ValueError, match=r"logged \['surprise'\].*does not "
                     "declare"):
    model.fit(toy.sample("moons", 8, seed=0), batch_size=8, verbose=0)


# The "Extending" page's example of a user objective, run as the page shows
# it: a fresh process, tiny sizes.
EXTENDING_SNIPPET = '''
import os, tempfile

import keras
import numpy as np
import tensorflow as tf
import tf_ffjord
from tf_ffjord.model.objectives import Objective


@keras.saving.register_keras_serializable("my_project")
class TemperedLikelihood(Objective):
  """Maximum likelihood with the log-density scaled by 1 / temperature."""

  def __init__(self, temperature=1.0):
    self.temperature = float(temperature)

  def metrics(self, flow):  # each log: "mean" over the epoch, or "last"
    return {"tempered_nll": "mean"}

  def loss(self, flow, x, context=None):
    nll = -tf.reduce_mean(flow(x, training=True)) / self.temperature
    return nll, {"tempered_nll": nll}

  def get_config(self):
    return {"temperature": self.temperature}


model = tf_ffjord.FFJORDModel((2,), dynamics=tf_ffjord.ODENet(hidden=(8,)),
                              solver="rk4", step_size=0.5)
model.compile(keras.optimizers.Adam(1e-2), objective=TemperedLikelihood(2.0))
x = tf_ffjord.datasets.toy.sample("moons", 64, seed=0)
history = model.fit(x, batch_size=32, epochs=1, verbose=0)
print(sorted(history.history))  # ['loss', 'tempered_nll']

path = os.path.join(tempfile.mkdtemp(), "tempered.keras")
model.save(path)
loaded = keras.saving.load_model(path)
print(loaded.objective)  # TemperedLikelihood(temperature=2.0)
np.testing.assert_allclose(loaded.log_prob(x[:4]), model.log_prob(x[:4]),
                           atol=1e-5)
'''


def test_extending_page_snippet_runs_in_a_fresh_process(subprocess_env):
  out = subprocess.run([sys.executable, "-c", EXTENDING_SNIPPET],
                       env=subprocess_env, capture_output=True, text=True,
                       timeout=600)
  assert out.returncode == 0, out.stderr[-3000:]
  assert out.stdout.split() == ["['loss',", "'tempered_nll']",
                                "TemperedLikelihood(temperature=2.0)"]


def test_objectives_see_only_a_view_of_a_bare_flow():
  """No FlowModel: a view of a bijector and a base is all an objective needs."""
  keras.utils.set_random_seed(0)
  net = ODENet(hidden=(8,), dim=2)
  flow = FFJORD(net, solver=make_solver("rk4", step_size=0.25), trace="exact")
  base = standard_normal((2,))
  x = tf.constant(toy.sample("moons", 16, seed=0))
  optimizer = keras.optimizers.SGD(0.1)

  def minimize(loss_fn):  # a plain TF training step
    with tf.GradientTape() as tape:
      loss, aux = loss_fn()
    grads = tape.gradient(loss, net.trainable_variables)
    optimizer.apply_gradients(zip(grads, net.trainable_variables))
    return loss, aux

  view = FlowView(flow, base, (2,), minimize=minimize)
  objective = MaximumLikelihood({"kinetic": 0.5})
  objective.check(view)
  loss, logs = objective.loss(view, x)
  # Ground truth: TFP's density of the same flow on the same base.
  want = -tf.reduce_mean(
      tfp.distributions.TransformedDistribution(base, flow).log_prob(x))
  np.testing.assert_allclose(logs["nll"], want, rtol=1e-5)
  np.testing.assert_allclose(loss, logs["nll"] + 0.5 * logs["kinetic"],
                             rtol=1e-6)
  before = [w.numpy().copy() for w in net.trainable_variables]
  logs = objective.step(view, x)
  assert set(logs) == {"loss", "nll", "nfe", "kinetic", "nfe_backward"}
  assert any(not np.allclose(b, w) for b, w in
             zip(before, net.trainable_variables))
  assert float(objective.validation_loss(view, x, None, logs)) > 0
  with pytest.raises(ValueError, match="no optimizer step"):
    MaximumLikelihood().step(FlowView(flow, base, (2,)), x)
