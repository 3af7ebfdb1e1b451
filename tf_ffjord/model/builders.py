"""Constructors of `FlowModel`: FFJORD blocks on vectors (toys, tabular) and on images (multiscale or single-scale)."""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeAlias

import keras
import numpy as np
import tensorflow_probability as tfp

from tf_ffjord._types import TensorLike
from tf_ffjord.cnf.ffjord import FFJORD
from tf_ffjord.cnf.options import ffjord_arguments
from tf_ffjord.cnf.contract import DynamicsError
from tf_ffjord.nets.conv import ConvODENet
from tf_ffjord.nets.dense import ODENet
from tf_ffjord.cnf.image_transforms import LogitTransform
from tf_ffjord.model.flow_model import FlowModel
from tf_ffjord.cnf.multiscale import ODENVP
from tf_ffjord.nets.unet import UNetODENet

__all__ = ["FFJORDModel", "ImageFlow", "NETS", "NetLike"]

tfb = tfp.bijectors

# The image nets by shorthand name.
NETS = ("conv", "unet")
# What `ImageFlow(net=)` takes: a name of `NETS`, a factory
# `net(event_shape) -> keras layer` called once per block, a layer (one
# block), or a sequence of layers (one per block).
NetLike: TypeAlias = (str | keras.layers.Layer
           | Callable[[tuple[int, ...]], keras.layers.Layer]
           | Sequence[keras.layers.Layer])


def _chain(blocks):
  """One block as itself, several as a Chain (block 0 on the data side)."""
  return blocks[0] if len(blocks) == 1 else tfb.Chain(blocks)


def _check_layers(nets, owner):
  """Raises `DynamicsError` unless every dynamics net is a Keras layer."""
  for net in nets:
    if not isinstance(net, keras.layers.Layer):
      # Keras trains, saves and checkpoints Keras weights only.
      raise DynamicsError(
          f"{owner}'s dynamics must be Keras layers or models (their "
          f"call(self, t, z) is the ODE's f); got {type(net).__name__}. "
          "Write the net as a keras.layers.Layer, or train a tf.Module or "
          "a function with tf_ffjord.FFJORD in a TFP-style loop (see the "
          "Extending guide, 'Your own dynamics').")


@keras.saving.register_keras_serializable("tf_ffjord")
class FFJORDModel(FlowModel):
  """`num_blocks` FFJORD blocks on a standard-normal base, for vector data.

  The paper's toy (one block) and tabular (one to ten blocks) models. Block
  0 sits on the data side; each block has its own dynamics and, with
  `train_time`, its own learned end time.

  Args:
    event_shape: shape of one example, e.g. `(2,)`.
    dynamics: the blocks' networks: `None` for `ODENet(dim=D,
      context_dim=context_dim)` per block, one Keras layer (one block), or a
      list of them (one per block).
    num_blocks: number of blocks (when `dynamics` is not a list).
    context_dim: width of the conditioning vector (0: none).
    train_time: learn each block's end time T.
    time_length: T, or its initial value with `train_time`.
    eval_options: `FFJORD` options of evaluation (see `FlowModel`).
    whitening: optional fixed affine data transform `(mean, scale_tril)`:
      the blocks see y = scale_tril^-1 (x - mean) (e.g. the training data's
      mean and the Cholesky factor of its covariance); its log-det is part
      of the density, and flow matching regresses in y.
    name: model name.
    **ffjord_kwargs: passed to every `FFJORD` (trace, noise, solver, rtol,
      atol, step_size, max_num_steps, gradient, ...).

  Raises:
    ValueError: a bad event shape, or dynamics that do not match
      `num_blocks`.

  #### Examples

  >>> model = FFJORDModel((2,), dynamics=ODENet(hidden=(16,)), solver="rk4")
  >>> model.compile(keras.optimizers.Adam(1e-3))
  >>> x = datasets.toy.sample("8gaussians", 64, seed=0)
  >>> sorted(model.fit(x, batch_size=32, epochs=1, verbose=0).history)
  ['loss', 'nfe', 'nfe_backward', 'nll']
  >>> FFJORDModel((3,), num_blocks=2, solver="rk4").bijector.name
  'chain_of_ffjord_0_of_ffjord_1'
  """

  def __init__(self, event_shape: Sequence[int],
               dynamics: (keras.layers.Layer | Sequence[keras.layers.Layer]
                          | None) = None,
               num_blocks: int = 1, context_dim: int = 0,
               train_time: bool = False, time_length: float = 1.0,
               eval_options: Mapping[str, Any] | None = None,
               whitening: Sequence[TensorLike] | None = None,
               name: str | None = None, **ffjord_kwargs: Any) -> None:
    event_shape = tuple(int(d) for d in event_shape)
    if isinstance(dynamics, (list, tuple)):
      nets = list(dynamics)
    elif dynamics is not None:
      if num_blocks != 1:
        raise ValueError(f"One dynamics network for {num_blocks} blocks: "
                         "pass a list with one network per block.")
      nets = [dynamics]
    else:
      if len(event_shape) != 1:
        raise ValueError("Pass dynamics for non-vector events (e.g. a "
                         "ConvODENet for images).")
      nets = [ODENet(dim=event_shape[0], context_dim=context_dim,
                     name=f"odenet_{i}") for i in range(int(num_blocks))]
    if not nets:
      raise ValueError("FFJORDModel needs at least one block.")
    _check_layers(nets, "FFJORDModel")
    blocks = [FFJORD(net, event_ndims=len(event_shape), name=f"ffjord_{i}",
                     **ffjord_arguments(dict(
                         ffjord_kwargs, time_length=float(time_length),
                         train_time=bool(train_time)), name=f"ffjord_{i}"))
              for i, net in enumerate(nets)]
    pre = []
    if whitening is not None:
      mean, scale_tril = (np.asarray(a, np.float32) for a in whitening)
      pre = [tfb.Shift(mean), tfb.ScaleMatvecTriL(scale_tril)]
    super().__init__(_chain(pre + blocks), event_shape,
                     eval_options=eval_options, context_dim=context_dim,
                     name=name)
    self.whitening = None if whitening is None else tuple(
        np.asarray(a, np.float32).tolist() for a in whitening)
    self.train_time = bool(train_time)
    self.time_length = float(time_length)
    self.ffjord_kwargs = dict(ffjord_kwargs)

  @property
  def end_times(self) -> list[float]:
    """Each block's end time T, as floats."""
    return [float(b.time_length) for b in self.blocks]

  def get_config(self) -> dict[str, Any]:
    return {"name": self.name, "event_shape": self.event_shape,
            "dynamics": [keras.saving.serialize_keras_object(b.dynamics)
                         for b in self.blocks],
            "context_dim": self.context_dim, "train_time": self.train_time,
            "time_length": self.time_length,
            "eval_options": self.eval_options, "whitening": self.whitening,
            **self.ffjord_kwargs}

  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "FFJORDModel":
    config = dict(config)
    config["dynamics"] = [keras.saving.deserialize_keras_object(n)
                          for n in config["dynamics"]]
    return cls(**config)



@keras.saving.register_keras_serializable("tf_ffjord")
class ImageFlow(FlowModel):
  """FFJORD for 8-bit images: a logit transform, then CNF blocks.

  With `multiscale` (the paper's image model) the blocks form an `ODENVP`
  stack; otherwise `num_blocks` CNFs run at full resolution, and with one
  block the model is a single CNF over the whole image, which flow matching
  can train. `fit` and `evaluate` take uint8 images, which they dequantize
  (x = (k + u) / 256), or float images already dequantized into [0, 1), and
  report `bpd`; `sample` returns images in [0, 1].

  Args:
    event_shape: `(H, W, C)`.
    net: the blocks' dynamics (`NetLike`): a shorthand, `"conv"` (the
      paper's `ConvODENet`) or `"unet"` (`UNetODENet`, for a single CNF
      over the image), built from the arguments below; a factory
      `net(event_shape) -> keras layer`, called once per block with the
      `(H, W, C)` the block sees (multiscale blocks see squeezed and
      factored-out shapes); a Keras layer (a single block); or a list of
      layers, one per block. A `.keras` file keeps a factory's nets as
      their Keras configs.
    dims: hidden channels of a `ConvODENet`, or the channels per level of a
      `UNetODENet`.
    strides: strides of a `ConvODENet`'s layers; default all 1.
    layer: a `ConvODENet`'s layer type, `"concat"` (paper),
      `"concatsquash"`, `"ignore"`.
    groups: a `UNetODENet`'s GroupNorm groups (0: none).
    activation: activation of the dynamics (paper: softplus).
    num_blocks: CNF blocks before and after each squeeze (multiscale), or
      in the single-scale stack.
    multiscale: the ODENVP stack (True) or full-resolution blocks (False).
    num_scales: scales of the stack; default the paper's (3 for 28x28).
    alpha: logit-transform margin (paper: 1e-6 for MNIST, 0.05 CIFAR-10).
    train_time: learn each block's end time T.
    time_length: T, or its initial value with `train_time`.
    eval_options: `FFJORD` options of evaluation, e.g. `{"solver":
      "dopri5"}` for a model trained on a fixed grid.
    name: model name.
    **ffjord_kwargs: passed to every `FFJORD`.

  Raises:
    ValueError: a bad event shape, an unknown `net` name, or not one net
      per block.
    DynamicsError: a net that is not a Keras layer.

  #### Examples

  >>> model = ImageFlow((8, 8, 1), dims=(8,), num_blocks=1, solver="rk4",
  ...                   step_size=0.5)
  >>> model.compile(keras.optimizers.Adam(1e-3))
  >>> x = np.random.randint(0, 256, (16, 8, 8, 1)).astype("uint8")
  >>> sorted(model.fit(x, batch_size=8, verbose=0).history)
  ['bpd', 'loss', 'nfe', 'nfe_backward', 'nll']
  >>> small = lambda shape: tf_ffjord.ConvODENet(dims=(4,),
  ...                                            channels=shape[-1])
  >>> ImageFlow((8, 8, 1), net=small, num_blocks=1).blocks[0].dynamics.dims
  (4,)
  """

  def __init__(self, event_shape: Sequence[int] = (28, 28, 1),
               net: NetLike = "conv",
               dims: Sequence[int] = (64, 64, 64),
               strides: Sequence[int] | None = None, layer: str = "concat",
               groups: int = 8, activation: str = "softplus",
               num_blocks: int = 2, multiscale: bool = True,
               num_scales: int | None = None, alpha: float = 1e-6,
               train_time: bool = True, time_length: float = 1.0,
               eval_options: Mapping[str, Any] | None = None,
               name: str | None = None, **ffjord_kwargs: Any) -> None:
    event_shape = tuple(int(d) for d in event_shape)
    if len(event_shape) != 3 or min(event_shape) < 1:
      raise ValueError(f"event_shape must be (H, W, C), got {event_shape}.")
    net_config = dict(dims=tuple(int(d) for d in dims),
                      strides=None if strides is None
                      else tuple(int(s) for s in strides),
                      layer=layer, groups=int(groups), activation=activation)
    num_blocks = int(num_blocks)
    num_scales = num_scales if multiscale else 1
    if multiscale:
      shapes = ODENVP.flow_shapes(event_shape, num_blocks, num_scales)
    else:
      shapes = [event_shape] * num_blocks
    blocks = [FFJORD(dynamics, event_ndims=3, name=f"ffjord_{i}",
                     **ffjord_arguments(dict(
                         ffjord_kwargs, time_length=float(time_length),
                         train_time=bool(train_time)), name=f"ffjord_{i}"))
              for i, dynamics in enumerate(
                  _image_nets(net, shapes, net_config))]
    stack = (ODENVP(blocks, event_shape, num_blocks, num_scales)
             if multiscale else _chain(blocks))
    super().__init__(tfb.Chain([LogitTransform(alpha), stack]),
                     event_shape, eval_options=eval_options or {},
                     dequantize=True, name=name)
    self.net = net if isinstance(net, str) else None  # else: the blocks'
    self.net_config = net_config
    self.num_blocks = num_blocks
    self.multiscale = bool(multiscale)
    self.num_scales = num_scales
    self.alpha = float(alpha)
    self.train_time = bool(train_time)
    self.time_length = float(time_length)
    self.ffjord_kwargs = dict(ffjord_kwargs)

  def get_config(self) -> dict[str, Any]:
    net = self.net or [keras.saving.serialize_keras_object(b.dynamics)
                       for b in self.blocks]
    return {"name": self.name, "event_shape": self.event_shape, "net": net,
            **self.net_config, "num_blocks": self.num_blocks,
            "multiscale": self.multiscale,
            "num_scales": self.num_scales if self.multiscale else None,
            "alpha": self.alpha, "train_time": self.train_time,
            "time_length": self.time_length,
            "eval_options": self.eval_options, **self.ffjord_kwargs}


  @classmethod
  def from_config(cls, config: dict[str, Any]) -> "ImageFlow":
    config = dict(config)
    if not isinstance(config.get("net", "conv"), str):
      config["net"] = [keras.saving.deserialize_keras_object(n)
                       for n in config["net"]]
    return cls(**config)


def _image_nets(net, shapes, net_config):
  """The dynamics of the image blocks on events of `shapes`, from `net`."""
  if isinstance(net, str):
    if net not in NETS:
      raise ValueError(f"Unknown net {net!r}; expected one of {NETS}, a "
                       "factory net(event_shape) -> keras layer, or layers.")
    return [_image_net(shape, f"{net}net_{i}", net, **net_config)
            for i, shape in enumerate(shapes)]
  if isinstance(net, keras.layers.Layer):
    nets = [net]
  elif isinstance(net, (list, tuple)):
    nets = list(net)
  elif callable(net):
    nets = [net(tuple(shape)) for shape in shapes]
  else:
    raise ValueError(f"ImageFlow's net must be one of {NETS}, a factory "
                     "net(event_shape) -> keras layer, a layer or a list of "
                     f"layers; got {type(net).__name__}.")
  if len(nets) != len(shapes):
    raise ValueError(f"ImageFlow has {len(shapes)} blocks but got "
                     f"{len(nets)} nets: pass one per block, or a factory "
                     "net(event_shape) -> keras layer.")
  _check_layers(nets, "ImageFlow")
  return nets


def _image_net(shape, name, net, dims, strides, layer, groups, activation):
  """The dynamics of one named image net on events of `shape`."""
  if net == "unet":
    return UNetODENet(channels=dims, groups=groups, activation=activation,
                      out_channels=shape[-1], name=name)
  return ConvODENet(dims=dims, strides=strides, layer=layer,
                    activation=activation, channels=shape[-1], name=name)
