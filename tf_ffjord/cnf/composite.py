"""Walking a flow bijector (an FFJORD block, a `tfb.Composition` such as `tfb.Chain`, the multiscale stack): solve it, list its blocks, copy it with other solve options.

A flow is a tree. Its leaves and stacks are `OneSolveBijector`s (`FFJORD`,
`ODENVP`: they solve themselves and list their `parts`); its other inner
nodes are TFP's public `tfb.Composition`s, whose `bijectors` are walked in
`tfb.Chain` order (data side first); any other bijector is a leaf solved
through TFP's `inverse` and log-det. A composition that holds no
`OneSolveBijector` is such a leaf too, so a `tfb.Blockwise` or `tfb.JointMap`
of plain bijectors is solved by TFP itself.
"""

from collections.abc import Callable, Iterable
from typing import Any

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf.regularizers import RegularizerLike, names
from tf_ffjord.cnf.ffjord import FFJORD, Solution
from tf_ffjord.cnf.one_solve import OneSolveBijector, check_direction
from tf_ffjord.cnf.options import ffjord_arguments

__all__ = ["solve", "ffjord_blocks", "keras_layers", "with_options",
           "flow_matching_parts"]

tfb = tfp.bijectors


def _children(bijector):
  """The parts of a composite flow in data-to-base order, or None for a leaf."""
  if isinstance(bijector, OneSolveBijector):
    return list(bijector.parts) or None
  if isinstance(bijector, tfb.Composition):
    # Chain([b1, b2]).inverse applies b1's inverse first: b1 is the data side.
    return tf.nest.flatten(bijector.bijectors)
  return None


def _holds_solvers(bijector):
  """Whether a `OneSolveBijector` is in the flow (at any depth)."""
  return isinstance(bijector, OneSolveBijector) or any(
      _holds_solvers(b) for b in _children(bijector) or ())


def _block_seed(seed, k):
  return None if seed is None else tf.convert_to_tensor(seed, tf.int32) + [0, k]


def solve(bijector: tfp.bijectors.Bijector, x: TensorLike,
          direction: str = "inverse", context: TensorLike | None = None,
          seed: SeedLike = None, regularizers: Iterable[RegularizerLike] = ()) -> Solution:
  """Runs `x` through a flow once and returns a `Solution`.

  Handles a `OneSolveBijector` (an `FFJORD` block, the multiscale
  `ODENVP`: its own `solve`), a `tfb.Composition` (e.g. `tfb.Chain`) that
  holds one, block by block, and any other TFP bijector (log-det over all
  non-batch dimensions). Unlike `tfd.TransformedDistribution.log_prob`, it
  also returns the NFE and the regularizer integrals, summed over the
  blocks.

  Args:
    bijector: the flow; `forward` maps base samples to data.
    x: `[batch, *event]`: data for `"inverse"`, base samples for
      `"forward"`.
    direction: `"inverse"` (data to base) or `"forward"`.
    context: optional conditioning tensor, passed to every FFJORD block.
    seed: optional `[2]` int32 stateless seed; block k of a chain (in
      data-to-base order) draws its Hutchinson probe from `seed + [0, k]`.
    regularizers: RNODE regularizers (objects or names) to integrate in every block.

  Returns:
    A `Solution` whose `log_det` is log|det d state / d x| per example.

  Raises:
    ValueError: an unknown direction.
  """
  check_direction(direction)
  if isinstance(bijector, OneSolveBijector):
    return bijector.solve(x, direction, context=context, seed=seed,
                          regularizers=regularizers)
  if not _holds_solvers(bijector):
    x = tf.convert_to_tensor(x)
    ndims = x.shape.rank - 1
    if direction == "inverse":
      state = bijector.inverse(x)
      log_det = bijector.inverse_log_det_jacobian(x, event_ndims=ndims)
    else:
      state = bijector.forward(x)
      log_det = bijector.forward_log_det_jacobian(x, event_ndims=ndims)
    log_det = tf.broadcast_to(log_det, tf.shape(x)[:1])
    return Solution(state, log_det, {r: tf.zeros_like(log_det)
                                     for r in names(regularizers)},
                    tf.constant(0, tf.int32))
  order = list(enumerate(_children(bijector)))
  if direction == "forward":
    order.reverse()
  keys = names(regularizers)
  log_det, nfe, regs = 0.0, 0, {r: 0.0 for r in keys}
  for k, part in order:
    sol = solve(part, x, direction, context, _block_seed(seed, k),
                regularizers)
    x = sol.state
    log_det += sol.log_det
    nfe += sol.nfe
    regs = {r: regs[r] + sol.regularization[r] for r in keys}
  return Solution(x, log_det, regs, nfe)


def ffjord_blocks(bijector: tfp.bijectors.Bijector) -> list[FFJORD]:
  """Every `FFJORD` block of a flow, in data-to-base order."""
  if isinstance(bijector, FFJORD):
    return [bijector]
  return [b for part in (_children(bijector) or []) for b in ffjord_blocks(part)]


def keras_layers(
    *bijectors: tfp.bijectors.Bijector) -> list[keras.layers.Layer]:
  """The Keras layers (dynamics, learned end times) of flows, each once.

  A Keras model that holds flows tracks these to train, save and checkpoint
  their weights.
  """
  layers, seen = [], set()
  for bijector in bijectors:
    for block in ffjord_blocks(bijector):
      for layer in block.keras_layers:
        if id(layer) not in seen:
          seen.add(id(layer))
          layers.append(layer)
  return layers


def with_options(bijector: tfp.bijectors.Bijector,
                 **options: Any) -> tfp.bijectors.Bijector:
  """A copy of a flow whose FFJORD blocks use other solve options.

  Every block is `block.copy(...)`, which shares its dynamics and its
  learned end time: e.g. `with_options(flow, trace="exact", solver="dopri5")`
  evaluates the trained density of a flow trained with Hutchinson on RK4,
  and `with_options(flow, rtol=1e-5, atol=1e-5)` solves each block with
  its own solver at those tolerances (`Solver.replace`; a fixed grid
  ignores them). Composite flows are rebuilt around the copies; other
  bijectors are shared.

  Args:
    bijector: the flow.
    **options: `FFJORD` arguments (trace, solver, adjoint, jit_compile,
      ...) and loose options (rtol, atol, step_size, max_num_steps,
      gradient, noise), translated per block by
      `tf_ffjord.cnf.options.ffjord_arguments` against the block's solver
      and trace.
  """
  if not options:
    return bijector
  if isinstance(bijector, FFJORD):
    return bijector.copy(**ffjord_arguments(options, base=bijector))
  parts = _children(bijector)
  if parts is None:
    return bijector
  copies = [with_options(p, **options) for p in parts]
  if isinstance(bijector, OneSolveBijector):
    return bijector.with_parts(copies)
  return bijector.copy(bijectors=tf.nest.pack_sequence_as(
      bijector.bijectors, copies))


def flow_matching_parts(
    bijector: tfp.bijectors.Bijector,
) -> tuple[Callable[[tf.Tensor], tf.Tensor], FFJORD]:
  """Splits a flow into (fixed data transform, the one FFJORD block).

  Flow matching regresses one vector field over the whole event, so it is
  defined for a flow whose only FFJORD block sits next to the base: the
  block itself, or a `tfb.Chain` (a `tfb.Composition`) whose last bijector
  is the block and whose others (a logit or affine pre-transform, say) hold
  no FFJORD block.

  Returns:
    `(pre, block)`: `pre(x)` maps data into the block's space (the identity
    if there is no pre-transform), and `block` is the `FFJORD`.

  Raises:
    ValueError: a flow with several FFJORD blocks, or whose block is not next
      to the base, with the models to use instead.
  """
  blocks = ffjord_blocks(bijector)
  if isinstance(bijector, FFJORD):
    return (lambda x: x), bijector
  parts = _children(bijector)
  if (len(blocks) == 1 and isinstance(bijector, tfb.Composition)
      and parts[-1] is blocks[0]):
    pre = tfb.Chain(parts[:-1]) if len(parts) > 1 else None
    return (pre.inverse if pre else (lambda x: x)), blocks[0]
  raise ValueError(
      f"Flow matching regresses one vector field over the whole event, so it "
      f"needs a single FFJORD block next to the base; this flow has "
      f"{len(blocks)} FFJORD block(s) in a {type(bijector).__name__}. Use a "
      "one-block model (FFJORDModel with num_blocks=1, or "
      "ImageFlow with multiscale=False and num_blocks=1), or train this one "
      "by maximum likelihood.")
