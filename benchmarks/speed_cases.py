"""The speed benchmark's cases (a), (b), (c): settings, nets and batches."""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf

from benchmarks import DATA_DIR
from tf_ffjord.datasets import toy
from tf_ffjord.nets.dense import ODENet, time_features

__all__ = ["Case", "CASES", "ConvDynamics", "make_net",
           "make_batches"]


# -- cases -------------------------------------------------------------------

@dataclasses.dataclass
class Case:
  """One benchmark setting."""
  key: str
  title: str
  event_shape: tuple
  batch: int
  warmup: int = 3
  reps: int = 10
  logprob_reps: int = 5
  rtol: float = 1e-5
  atol: float = 1e-5
  eval_chain: int = 20
  xla: bool = True  # whether "ours" compiles with XLA (chosen by measurement)


CASES = {
    "a": Case("a", "8gaussians 2-D, MLP 64x3, batch 512", (2,), 512,
              warmup=3, reps=10, logprob_reps=5),
    "b": Case("b", "MINIBOONE 43-D, MLP 860x2, batch 1000", (43,), 1000,
              warmup=1, reps=3, logprob_reps=2, eval_chain=5, xla=False),
    "c": Case("c", "MNIST 28x28x1, conv 32x2, batch 64", (28, 28, 1), 64,
              warmup=1, reps=3, logprob_reps=2, eval_chain=5, xla=False),
}


@keras.saving.register_keras_serializable("tf_ffjord_bench")
class ConvDynamics(keras.Model):
  """f(t, x) for images: concatsquash 3x3 convolutions, tanh between layers."""

  def __init__(self, channels=(32, 32), out_channels=1, **kwargs):
    super().__init__(**kwargs)
    self.channels = tuple(channels)
    widths = self.channels + (out_channels,)
    self.convs = [keras.layers.Conv2D(c, 3, padding="same") for c in widths]
    self.gates = [keras.layers.Dense(c) for c in widths]
    self.biases = [keras.layers.Dense(c, use_bias=False) for c in widths]

  def __call__(self, t, x, **kwargs):
    x = tf.convert_to_tensor(x)
    return super().__call__(tf.convert_to_tensor(t, x.dtype), x, **kwargs)

  def call(self, t, x):
    tc = time_features(t, x)[:, tf.newaxis, tf.newaxis, :]
    h = x
    for i, (conv, gate, bias) in enumerate(
        zip(self.convs, self.gates, self.biases)):
      h = conv(h) * tf.sigmoid(gate(tc)) + bias(tc)
      if i < len(self.convs) - 1:
        h = tf.tanh(h)
    return h


def make_net(case):
  if case.key == "a":
    return ODENet(hidden=(64, 64, 64), layer="concatsquash",
                  activation="tanh", dim=2)
  if case.key == "b":
    return ODENet(hidden=(860, 860), layer="concatsquash",
                  activation="softplus", dim=43)
  return ConvDynamics(channels=(32, 32))


def make_batches(case, n, seed=0):
  """n batches of float32 data for the case."""
  rng = np.random.default_rng(seed)
  if case.key == "a":
    return [toy.sample("8gaussians", case.batch, seed=seed + i).astype(
        np.float32) for i in range(n)]
  if case.key == "b":
    path = os.path.join(DATA_DIR, "miniboone", "val.npy")
    if not os.path.exists(path):
      raise FileNotFoundError(f"MINIBOONE file not found: {path} (set "
                              "TF_FFJORD_DATA to the data folder).")
    data = np.load(path).astype(np.float32)
    return [data[rng.choice(len(data), case.batch, replace=False)]
            for _ in range(n)]
  path = os.path.join(DATA_DIR, "mnist.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"MNIST file not found: {path} (set "
                            "TF_FFJORD_DATA to the data folder).")
  with np.load(path) as f:
    images = f["x_train"][:4096]
  out = []
  for _ in range(n):
    x = images[rng.choice(len(images), case.batch, replace=False)]
    x = (x.astype(np.float32) + rng.uniform(size=x.shape)) / 256.0 - 0.5
    out.append(x[..., np.newaxis].astype(np.float32))
  return out
