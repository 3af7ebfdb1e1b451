"""`OneSolveBijector`: a TFP bijector whose one solve gives both the state and its log-det.

A continuous flow cannot compute a log-det without computing the state it
belongs to: both come out of the same ODE solve. TFP's bijector methods ask
for them separately (`TransformedDistribution.log_prob` calls `inverse` and
then `inverse_log_det_jacobian`), so this base class keeps the log-det of
every solve next to its state in TFP's greedy cache
(`_internal_apis.greedy_bijector_cache`): `log_prob` costs one solve.

A subclass implements the flow protocol, one method:

    solve(x, direction="inverse", context=None, seed=None, regularizers=())
        -> Solution

(`tf_ffjord.cnf.augmented_ode.Solution`: the end state, log|det d state/d x|,
the regularizer integrals and the NFE), and, if it is built from other
bijectors, lists them in `parts`. `FFJORD` (one block) and `ODENVP` (a stack
of blocks) are such bijectors; `tf_ffjord.cnf.composite` walks them and
`tfb.Composition`s of them.
"""

from collections.abc import Iterable, Sequence
from typing import Any

import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import _internal_apis
from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf.augmented_ode import Solution
from tf_ffjord.cnf.regularizers import RegularizerLike

__all__ = ["DIRECTIONS", "OneSolveBijector", "check_direction"]

DIRECTIONS = ("inverse", "forward")


def check_direction(direction: str) -> str:
  """Returns `direction` if it is `"inverse"` (data to base) or `"forward"`.

  Raises:
    ValueError: any other value.

  #### Examples

  >>> check_direction("forward")
  'forward'
  """
  if direction not in DIRECTIONS:
    raise ValueError(f"direction must be 'inverse' (data to base) or "
                     f"'forward' (base to data), got {direction!r}.")
  return direction


class OneSolveBijector(tfp.bijectors.Bijector):
  """A bijector whose `solve` gives the state and its log-det at once.

  Subclasses implement `solve` (see the module docstring) and call
  `tfb.Bijector.__init__` as usual; this class turns `solve` into TFP's
  `_forward`, `_inverse` and log-det methods, with TFP's bijector keyword
  arguments (`context=`, `seed=`) passed on to it. Each solve stores its
  log-det (and the opposite direction's, its negative) in TFP's cache next
  to its state, so asking for the state and then the log-det of the same
  input, as `TransformedDistribution.log_prob` does, solves once.

  #### Examples

  >>> class Shift(OneSolveBijector):
  ...   def __init__(self):
  ...     super().__init__(forward_min_event_ndims=1, parameters={})
  ...   def solve(self, x, direction="inverse", context=None, seed=None,
  ...             regularizers=()):
  ...     x = tf.convert_to_tensor(x)
  ...     sign = 1.0 if check_direction(direction) == "forward" else -1.0
  ...     return Solution(x + sign, tf.zeros(tf.shape(x)[:-1]), {}, 1)
  >>> Shift().forward(tf.zeros([1, 2])).numpy().tolist()
  [[1.0, 1.0]]
  """

  _cache = _internal_apis.greedy_bijector_cache(
      forward_name="_solve_forward", inverse_name="_solve_inverse")

  def solve(self, x: TensorLike, direction: str = "inverse",
            context: TensorLike | None = None, seed: SeedLike = None,
            regularizers: Iterable[RegularizerLike] = ()) -> Solution:
    """Runs `x` through the flow once (the protocol subclasses implement).

    Args:
      x: `[*batch, *event]`: data for `"inverse"`, base samples for
        `"forward"`.
      direction: `"inverse"` (data to base) or `"forward"`.
      context: optional conditioning tensor.
      seed: optional stateless seed of the trace estimator's noise.
      regularizers: names of regularizers to integrate along the solve.

    Returns:
      A `Solution` whose `log_det` is log|det d state / d x| per example.
    """
    raise NotImplementedError(
        f"{type(self).__name__} must implement solve(x, direction, context="
        "None, seed=None, regularizers=()) -> Solution.")

  @property
  def parts(self) -> tuple[tfp.bijectors.Bijector, ...]:
    """The bijectors this one is built from, data side first (none for a block)."""
    return ()

  def with_parts(
      self, parts: Sequence[tfp.bijectors.Bijector]) -> "OneSolveBijector":
    """A copy of this bijector built around other `parts` (same order)."""
    if parts:
      raise NotImplementedError(
          f"{type(self).__name__} lists no parts, so it cannot be rebuilt "
          "around others: override parts and with_parts together.")
    return self

  @classmethod
  def _parameter_properties(cls, dtype):
    return dict()

  def _is_increasing(self):
    return False

  def _state_and_log_det(self, x: tf.Tensor, direction: str,
                         **kwargs: Any) -> tuple[tf.Tensor, tf.Tensor]:
    """The one solve behind the bijector methods; `kwargs` are TFP's bijector kwargs."""
    sol = self.solve(x, direction, **kwargs)
    return sol.state, sol.log_det

  def _solve_direction(self, x, direction, kwargs):
    state, log_det = self._state_and_log_det(x, direction, **kwargs)
    same, other = ("ildj", "fldj") if direction == "inverse" else ("fldj",
                                                                   "ildj")
    return state, {same: log_det, other: -log_det}

  def _solve_forward(self, x, **kwargs):
    return self._solve_direction(x, "forward", kwargs)

  def _solve_inverse(self, y, **kwargs):
    return self._solve_direction(y, "inverse", kwargs)

  def _forward(self, x, **kwargs):
    return self._solve_forward(x, **kwargs)[0]

  def _inverse(self, y, **kwargs):
    return self._solve_inverse(y, **kwargs)[0]

  # TFP asks for a log-det only when its cache has none for this input:
  # solve through the cache, so that the state is kept as well.

  def _forward_log_det_jacobian(self, x, **kwargs):
    self._cache.forward(x, **kwargs)
    return self._cache.forward_attributes(x, **kwargs)["fldj"]

  def _inverse_log_det_jacobian(self, y, **kwargs):
    self._cache.inverse(y, **kwargs)
    return self._cache.inverse_attributes(y, **kwargs)["ildj"]
