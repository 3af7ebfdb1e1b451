"""The inference side of `FlowModel`: compiled `log_prob`, `bits_per_dim` and `sample`, and the SavedModel `export`."""

import os
from typing import Any, Literal, TypeVar, overload

import numpy as np
import tensorflow as tf

from tf_ffjord import validation
from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf import density
from tf_ffjord.cnf import image_transforms
from tf_ffjord.saving import export
from tf_ffjord.solvers import xla

__all__ = ["FlowInference"]

# The output directory of `export`, returned as given.
_PathT = TypeVar("_PathT", bound=str | os.PathLike[str])


class FlowInference:
  """`FlowModel`'s in-process inference and export, through its `FlowView`.

  A mixin: the model provides `flow_view`, `context_dim` and the input
  check `_check(x, context, raw_images)`. Every entry point solves the
  evaluation flow, at its own tolerance (`FlowModel.eval_options`).
  """
  context_dim: int
  _compiled_fns: dict[Any, Any]

  @property
  def flow_view(self) -> density.FlowView:
    raise NotImplementedError

  def _check(self, x: Any, context: Any = None, raw_images: bool = False
             ) -> tuple[tf.Tensor, tf.Tensor | None]:
    raise NotImplementedError

  def _compiled(self, key, fn, input_signature=None):
    """`fn` as a cached `tf.function` for in-process calls of any batch size.

    Traced under `solvers.xla.any_batch_size()`: with `jit_compile="auto"`
    its solves run plain, so a new batch size reuses the trace instead of
    waiting for an XLA compile of its own.
    """
    if key not in self._compiled_fns:
      def traced(*args):
        with xla.any_batch_size():
          return fn(*args)
      self._compiled_fns[key] = tf.function(
          traced, input_signature=input_signature,
          reduce_retracing=input_signature is None)
    return self._compiled_fns[key]

  # The return type follows `return_nfe`: a tensor, or (tensor, NFE).
  @overload
  def log_prob(self, x: TensorLike, context: TensorLike | None = None,
               seed: SeedLike = None,
               return_nfe: Literal[False] = False) -> tf.Tensor: ...

  @overload
  def log_prob(self, x: TensorLike, context: TensorLike | None = None,
               seed: SeedLike = None, *,
               return_nfe: Literal[True]) -> tuple[tf.Tensor, tf.Tensor]: ...

  @overload
  def log_prob(self, x: TensorLike, context: TensorLike | None = None,
               seed: SeedLike = None, return_nfe: bool = False
               ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]: ...

  def log_prob(self, x: TensorLike, context: TensorLike | None = None,
               seed: SeedLike = None, return_nfe: bool = False
               ) -> tf.Tensor | tuple[tf.Tensor, tf.Tensor]:
    """log p(x) in nats per example, by the evaluation flow, compiled.

    The evaluation flow solves at its own tolerance (`eval_options`,
    default rtol = atol = 1e-5), not the training one.

    Args:
      x: `[batch, *event_shape]` float data (dequantized, in [0, 1], for
        image models).
      context: `[batch, context_dim]` for conditional models.
      seed: optional `[2]` stateless seed of Hutchinson probes (if the
        evaluation flow uses that trace).
      return_nfe: also return the NFE of the solve.

    Returns:
      log p(x), or `(log p(x), nfe)`.
    """
    x, context = self._check(x, context)

    has_context, has_seed = context is not None, seed is not None
    args = [x] + ([context] if has_context else []) + (
        [tf.convert_to_tensor(seed, tf.int32)] if has_seed else [])
    # Every batch size from the first call on: one trace, no retrace. The
    # checked input fixes the rest of the signature, so the key is the
    # arguments present.
    specs = [tf.TensorSpec([None, *a.shape[1:]], a.dtype)
             for a in args[:1 + has_context]]
    specs += [tf.TensorSpec([2], tf.int32)] if has_seed else []

    def fn(x, *rest):
      c = rest[0] if has_context else None
      s = rest[-1] if has_seed else None

      def solve():
        logp, sol = density.log_prob(self.flow_view, x, c, seed=s)
        return logp, tf.cast(sol.nfe, tf.int32)
      return density.unless_empty(x.shape[0], tf.shape(x)[0], solve, lambda: (
          tf.zeros([0], x.dtype), tf.constant(0, tf.int32)))

    compiled = self._compiled(("log_prob", has_context, has_seed), fn, specs)
    logp, nfe = compiled(*args)
    return (logp, nfe) if return_nfe else logp

  def bits_per_dim(self, images: TensorLike, seed: SeedLike = None
                   ) -> tf.Tensor:
    """bits/dim of each 8-bit image under one (seeded) dequantization."""
    images, _ = self._check(images, raw_images=True)
    view = self.flow_view
    x = density.dequantize(view, image_transforms.dequantize(images,
                                                             seed=seed))
    return image_transforms.bits_per_dim(self.log_prob(x, seed=seed),
                                         view.event_size)

  def sample(self, n: int, context: TensorLike | None = None,
             seed: int | None = None) -> tf.Tensor:
    """Draws `n` samples by integrating base samples forward.

    By the evaluation flow, at its tolerance (see `log_prob`).

    Args:
      n: number of samples.
      context: `[n, context_dim]` for conditional models.
      seed: int seed for reproducible samples (the export's `sample(n,
        seed)` gives the same ones).
    """
    n = validation.check_count(n, type(self).__name__)
    if seed is None:
      seed = int(np.random.randint(0, 2**31 - 1))
    if context is not None:
      context = validation.check_events(
          context, [self.context_dim], self.flow_view.dtype,
          type(self).__name__, "context vectors", batch_ndims=1)
    fn = self._compiled(("sample", context is not None), self.sample_fn)
    return fn(n, tf.convert_to_tensor(seed, tf.int32), context)

  def sample_fn(self, n: TensorLike, seed: TensorLike,
                context: TensorLike | None = None) -> tf.Tensor:
    """The graph of `sample` (also traced by the SavedModel export)."""
    n = validation.check_count(n, type(self).__name__)
    return density.sample(self.flow_view, n, seed, context)

  # -- saving ------------------------------------------------------------

  def export(self, path: _PathT, batch_size: int | None = None,
             custom_gradients: bool = False) -> _PathT:
    """Writes a SavedModel that serves without tf_ffjord installed.

    Signatures `log_prob` (the evaluation flow; also `serving_default`),
    `log_prob_hutchinson(x, seed)`, `sample(n, seed)`, `forward(z)` and
    `inverse(x)`; see `tf_ffjord.saving.export.export_model`.

    Args:
      path: output directory.
      batch_size: fix the batch dimension of the signatures (`None`: any).
      custom_gradients: save the adjoint gradient (slow to save; not
        needed for serving); by default the loaded functions differentiate
        by plain backpropagation through the solve.

    Returns:
      `path`.
    """
    return export.export_model(self.flow_view, path, batch_size=batch_size,
                               custom_gradients=custom_gradients)
