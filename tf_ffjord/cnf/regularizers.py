"""RNODE-style regularizers, integrated along the solve as extra ODE states.

`FFJORD.solve(x, regularizers=names)` appends one state per name,
d r/dt = rate(f), to the augmented ODE, so the penalties cost no extra
dynamics evaluations.
They carry error weight 0 in the adaptive solver (`solvers.AdaptiveStepSize`
`error_weights`): the step sizes, NFE and the solution are the same with or
without them, and the integrals are accurate to the order of the method on
the steps the state needs (`l1`, whose integrand has kinks, a bit less).
`FFJORDModel(regularization={"kinetic": 0.01, "jacobian": 0.01})` adds
weight x mean integral to the loss and logs each integral as a metric.

#### References

[1]: Chris Finlay, Joern-Henrik Jacobsen, Levon Nurbekyan, Adam Oberman. How
     to train your neural ODE: the world of Jacobian and kinetic
     regularization. ICML 2020. https://arxiv.org/abs/2002.02798
"""

from collections.abc import Iterable

import tensorflow as tf

from tf_ffjord.cnf.trace_estimators import TraceEstimator

__all__ = ["REGULARIZERS", "rate", "check"]

# name -> per-example rate r(f, vjp) whose time integral is the penalty.
# f is dz/dt, vjp is eps^T df/dz for the solve's Hutchinson probe eps.
REGULARIZERS = ("kinetic", "jacobian", "l1", "l2")


def _flat(v):
  return tf.reshape(v, [tf.shape(v)[0], -1])


def check(names: Iterable[str], estimator: TraceEstimator) -> tuple[str, ...]:
  """The regularizer names as a tuple, checked against a solve's trace estimator.

  Raises:
    ValueError: an unknown name, or `jacobian` with an estimator without a
      probe (`TraceEstimator.has_probe`).
  """
  names = tuple(names)
  for name in names:
    if name not in REGULARIZERS:
      raise ValueError(f"Unknown regularizer {name!r}; expected one of "
                       f"{REGULARIZERS}.")
    if name == "jacobian" and not estimator.has_probe:
      raise ValueError("The 'jacobian' regularizer needs a trace estimator "
                       f"with a probe (trace='hutchinson'), got {estimator!r}.")
  return names


def rate(name: str, f: tf.Tensor, vjp: tf.Tensor | None) -> tf.Tensor:
  """The integrand of regularizer `name` for each example.

  - `kinetic`: ||f||^2 (Finlay et al. 2020).
  - `jacobian`: ||eps^T df/dz||^2, an unbiased estimate of ||df/dz||_F^2 with
    the solve's probe (Finlay et al. 2020; the mean over k probes).
  - `l1`: mean |f| and `l2`: mean f^2, as in the FFJORD code.

  Args:
    name: one of `REGULARIZERS`.
    f: `[batch, *event]` dynamics value.
    vjp: the trace estimator's probe product (`[batch, ...]`, e.g. the
      Hutchinson VJP), or `None` for an estimator without a probe.

  Returns:
    A `[batch]` tensor.

  Raises:
    ValueError: unknown name, or `jacobian` without a Hutchinson probe.
  """
  if name == "kinetic":
    return tf.reduce_sum(tf.square(_flat(f)), -1)
  if name == "jacobian":
    if vjp is None:
      raise ValueError("The 'jacobian' regularizer needs trace='hutchinson' "
                       "(it reuses the Hutchinson probe).")
    return tf.reduce_sum(tf.square(_flat(vjp)), -1)
  if name == "l1":
    return tf.reduce_mean(tf.abs(_flat(f)), -1)
  if name == "l2":
    return tf.reduce_mean(tf.square(_flat(f)), -1)
  raise ValueError(f"Unknown regularizer {name!r}; expected one of "
                   f"{REGULARIZERS}.")
