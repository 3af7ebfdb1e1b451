"""`ImageFlow(net=)` takes a shorthand, a factory of Keras layers or the layers; `.keras` keeps a factory's nets."""

import keras
import numpy as np
import pytest

from tf_ffjord import ImageFlow
from tf_ffjord.cnf.contract import DynamicsError
from tf_ffjord.cnf.multiscale import ODENVP
from tf_ffjord.nets.conv import ConvODENet

SMALL = dict(num_blocks=1, solver="rk4", step_size=0.5)


def test_a_factory_builds_one_net_per_block_for_its_shape(tmp_path):
  seen = []

  def factory(shape):
    seen.append(shape)
    return ConvODENet(dims=(4,), activation=keras.activations.gelu,
                      channels=shape[-1])

  keras.utils.set_random_seed(0)
  model = ImageFlow((4, 4, 1), net=factory, num_scales=2, **SMALL)
  # The multiscale stack's blocks see squeezed, factored-out shapes.
  assert seen == [tuple(s) for s in ODENVP.flow_shapes((4, 4, 1), 1, 2)]
  assert [b.dynamics.channels for b in model.blocks] == [s[-1] for s in seen]
  x = np.random.default_rng(0).integers(0, 256, (8, 4, 4, 1)).astype("uint8")
  model.compile(keras.optimizers.Adam(1e-3))
  hist = model.fit(x, batch_size=8, verbose=0).history
  assert np.isfinite(hist["bpd"][0])
  # .keras keeps the nets as their configs (the factory is not needed).
  path = tmp_path / "factory.keras"
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert loaded.blocks[0].dynamics.activation_name["config"] == "gelu"
  xf = (x[:3].astype("float32") + 0.5) / 256
  np.testing.assert_allclose(loaded.log_prob(xf), model.log_prob(xf),
                             atol=1e-4)


def test_a_layer_or_a_list_of_layers():
  net = ConvODENet(dims=(4,), channels=1)
  model = ImageFlow((4, 4, 1), net=net, multiscale=False, **SMALL)
  assert model.blocks[0].dynamics is net
  nets = [ConvODENet(dims=(4,), channels=1) for _ in range(2)]
  model = ImageFlow((4, 4, 1), net=nets, multiscale=False, num_blocks=2,
                    solver="rk4", step_size=0.5)
  assert [b.dynamics for b in model.blocks] == nets
  assert len(ImageFlow.from_config(model.get_config()).blocks) == 2


def test_bad_nets_are_named():
  with pytest.raises(ValueError, match="2 blocks but got 1 nets"):
    ImageFlow((4, 4, 1), net=ConvODENet(dims=(4,), channels=1),
              multiscale=False, num_blocks=2)
  with pytest.raises(ValueError, match="Unknown net 'resnet'"):
    ImageFlow((4, 4, 1), net="resnet")
  with pytest.raises(DynamicsError, match="Keras layers"):
    ImageFlow((4, 4, 1), net=lambda shape: (lambda t, x: x),
              multiscale=False, **SMALL)
  with pytest.raises(ValueError, match="factory"):
    ImageFlow((4, 4, 1), net=3, multiscale=False, **SMALL)
