"""Type aliases shared by the annotations of tf_ffjord's public API."""

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import tensorflow as tf

__all__ = ["TensorLike", "ShapeLike", "BuildShape", "DTypeLike", "SeedLike",
           "Dynamics", "OdeFn", "TimeLength"]

if TYPE_CHECKING:
  # TensorFlow ships no type information, so to a checker `tf.Tensor` is
  # Any and a union with it accepts anything anyway; plain Any also lets a
  # function rebind its argument to `tf.convert_to_tensor(x)`.
  TensorLike: TypeAlias = Any
  SeedLike: TypeAlias = Any
else:
  # Anything `tf.convert_to_tensor` turns into a float tensor.
  TensorLike = tf.Tensor | tf.Variable | np.ndarray | float | Sequence[float]
  # An integer seed, a stateless `[2]` seed, or None for an unseeded draw.
  SeedLike = int | tf.Tensor | Sequence[int] | None

# A shape, e.g. `(2,)` or `tf.TensorShape([None, 2])` (None: any size).
ShapeLike: TypeAlias = tf.TensorShape | Sequence[int | None]
# The input shape Keras passes to a layer's `build`: a tuple (or TensorShape)
# whose batch entry is None and whose feature sizes are known.
BuildShape: TypeAlias = tf.TensorShape | Sequence[Any]
DTypeLike: TypeAlias = tf.dtypes.DType | str | np.dtype
# Dynamics f(t, z) or f(t, z, context) -> dz/dt: a Keras layer, a
# `tf.Module` or a plain function.
Dynamics: TypeAlias = Callable[..., tf.Tensor]
# An ODE right-hand side of the solvers: `fn(t, ys)` or `fn(t, ys, cs)` on
# lists of tensors, returning the list of dy/dt.
OdeFn: TypeAlias = Callable[..., Sequence[tf.Tensor]]
# An integration length T: a number, a tensor or variable, an `EndTime`, or
# a zero-argument callable returning a scalar tensor.
TimeLength: TypeAlias = (
    float | tf.Tensor | tf.Variable | Callable[[], tf.Tensor])
