"""RNODE-style regularizers, integrated along the solve as extra ODE states: `Regularizer` and the built-in penalties.

`FFJORD.solve(x, regularizers=...)` appends one state per regularizer,
d r/dt = `Regularizer.rate(f, probe)`, to the augmented ODE, so the
penalties cost no extra dynamics evaluations. They carry error weight 0 in
the adaptive solver (`solvers.AdaptiveStepSize` `error_weights`): the step
sizes, NFE and the solution are the same with or without them, and the
integrals are accurate to the order of the method on the steps the state
needs (`l1`, whose integrand has kinks, a bit less).
`MaximumLikelihood({"kinetic": 0.01, "jacobian": 0.01})` adds weight x mean
integral to the loss and logs each integral as a metric, by its name.

The names in `REGULARIZERS` are shorthands for the built-in classes; a new
penalty subclasses `Regularizer` and is passed in as it is.

#### References

[1]: Chris Finlay, Joern-Henrik Jacobsen, Levon Nurbekyan, Adam Oberman. How
     to train your neural ODE: the world of Jacobian and kinetic
     regularization. ICML 2020. https://arxiv.org/abs/2002.02798
"""

from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import keras
import tensorflow as tf

from tf_ffjord._shorthand import resolve
from tf_ffjord.cnf.trace_estimators import TraceEstimator

__all__ = ["Regularizer", "KineticEnergy", "JacobianFrobenius", "L1", "L2",
           "REGULARIZERS", "RegularizerLike", "get", "check", "names",
           "rate"]

_R = TypeVar("_R", bound="Regularizer")


def _flat(v):
  return tf.reshape(v, [tf.shape(v)[0], -1])


class Regularizer:
  """Base class of the penalties integrated along a solve.

  A subclass sets `name` (the key of the penalty in
  `Solution.regularization` and of its logged metric) and defines
  `rate(f, probe)`, the per-example integrand whose time integral is the
  penalty. Its constructor arguments are its config (`get_config`), so it
  copies, compares and serializes with Keras: register it with
  `keras.saving.register_keras_serializable` to save a model compiled
  with it to `.keras` and load it back.

  Like a `TraceEstimator`, a regularizer compares equal to its name, so
  `Solution.regularization[name]` finds it.

  Attributes:
    name: the penalty's name; unique among the regularizers of one solve.
    needs_probe: `rate` reads the trace estimator's probe product (the
      solve then needs an estimator with `has_probe`, e.g. Hutchinson).

  #### Examples

  >>> @keras.saving.register_keras_serializable("doctest")
  ... class Speed(Regularizer):
  ...   name = "speed"
  ...   def rate(self, f, probe=None):
  ...     return tf.norm(tf.reshape(f, [tf.shape(f)[0], -1]), axis=-1)
  >>> Speed().rate(tf.constant([[3.0, 4.0]])).numpy().tolist()
  [5.0]
  >>> Speed() == "speed"
  True
  """
  name: str = ""
  needs_probe = False

  def rate(self, f: tf.Tensor, probe: tf.Tensor | None = None) -> tf.Tensor:
    """The integrand of the penalty for each example.

    Args:
      f: `[batch, *event]` dynamics value dz/dt.
      probe: the trace estimator's probe product (`[batch, ...]`, e.g. the
        Hutchinson VJP eps^T df/dz), or `None` for an estimator without one.

    Returns:
      A `[batch]` tensor.
    """
    raise NotImplementedError

  def get_config(self) -> dict[str, Any]:
    return {}

  @classmethod
  def from_config(cls: type[_R], config: Mapping[str, Any]) -> _R:
    return cls(**config)

  def __eq__(self, other: object) -> bool:
    if isinstance(other, str):
      return other == self.name
    return isinstance(other, Regularizer) and (
        (type(other), other.get_config()) == (type(self), self.get_config()))

  def __hash__(self) -> int:
    return hash(self.name)  # equal to its name, so hashed like it

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable("tf_ffjord")
class KineticEnergy(Regularizer):
  """`"kinetic"`: ||f||^2, the kinetic energy of the flow (Finlay et al.)."""
  name = "kinetic"

  def rate(self, f: tf.Tensor, probe: tf.Tensor | None = None) -> tf.Tensor:
    return tf.reduce_sum(tf.square(_flat(f)), -1)


@keras.saving.register_keras_serializable("tf_ffjord")
class JacobianFrobenius(Regularizer):
  """`"jacobian"`: ||eps^T df/dz||^2, an unbiased estimate of ||df/dz||_F^2.

  Reuses the solve's Hutchinson probe eps (Finlay et al.; with k probes the
  mean over them), so it needs a trace estimator with a probe.
  """
  name = "jacobian"
  needs_probe = True

  def rate(self, f: tf.Tensor, probe: tf.Tensor | None = None) -> tf.Tensor:
    if probe is None:
      raise ValueError("The 'jacobian' regularizer needs trace='hutchinson' "
                       "(it reuses the Hutchinson probe).")
    return tf.reduce_sum(tf.square(_flat(probe)), -1)


@keras.saving.register_keras_serializable("tf_ffjord")
class L1(Regularizer):
  """`"l1"`: mean |f| over the event, as in the FFJORD code."""
  name = "l1"

  def rate(self, f: tf.Tensor, probe: tf.Tensor | None = None) -> tf.Tensor:
    return tf.reduce_mean(tf.abs(_flat(f)), -1)


@keras.saving.register_keras_serializable("tf_ffjord")
class L2(Regularizer):
  """`"l2"`: mean f^2 over the event, as in the FFJORD code."""
  name = "l2"

  def rate(self, f: tf.Tensor, probe: tf.Tensor | None = None) -> tf.Tensor:
    return tf.reduce_mean(tf.square(_flat(f)), -1)


# A regularizer or its shorthand name, as solves and objectives take them.
RegularizerLike = str | Regularizer

# The shorthands: name -> built-in class.
REGULARIZERS: dict[str, type[Regularizer]] = {
    cls.name: cls for cls in (KineticEnergy, JacobianFrobenius, L1, L2)}


def get(regularizer: RegularizerLike) -> Regularizer:
  """The `Regularizer` of a shorthand name, or the regularizer itself.

  The one place where names are resolved.

  Raises:
    ValueError: an unknown name or something that is not a regularizer.
  """
  return resolve(regularizer, Regularizer, REGULARIZERS, "regularizer")


def check(regularizers: Iterable[RegularizerLike],
          estimator: TraceEstimator | None = None
          ) -> tuple[Regularizer, ...]:
  """The regularizers of one solve as objects, checked.

  Args:
    regularizers: names (`REGULARIZERS`) or `Regularizer` objects.
    estimator: the solve's trace estimator, or `None` to skip the probe
      check.

  Returns:
    A tuple of `Regularizer`.

  Raises:
    ValueError: an unknown name, two regularizers of one name, or one that
      needs a probe (`needs_probe`, e.g. `"jacobian"`) with an estimator
      without one (`TraceEstimator.has_probe`).
  """
  regs = tuple(get(r) for r in regularizers)
  names = [r.name for r in regs]
  if len(set(names)) != len(names):
    raise ValueError(f"Regularizer names must be unique, got {names}.")
  for r in regs:
    if r.needs_probe and estimator is not None and not estimator.has_probe:
      raise ValueError(f"The {r.name!r} regularizer reuses the trace "
                       "estimator's probe: train with a probing trace "
                       f"(trace='hutchinson'), got {estimator!r}.")
  return regs


def names(regularizers: Iterable[RegularizerLike]) -> tuple[str, ...]:
  """The names of regularizers: the keys of `Solution.regularization`."""
  return tuple(r.name for r in check(regularizers))


def rate(regularizer: RegularizerLike, f: tf.Tensor,
         probe: tf.Tensor | None) -> tf.Tensor:
  """`get(regularizer).rate(f, probe)`: the `[batch]` integrand."""
  return get(regularizer).rate(f, probe)
