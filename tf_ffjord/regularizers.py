"""RNODE-style regularizers, integrated along the solve as extra ODE states."""

import tensorflow as tf

__all__ = ["REGULARIZERS", "rate"]

# name -> per-example rate r(f, vjp) whose time integral is the penalty.
# f is dz/dt, vjp is eps^T df/dz for the solve's Hutchinson probe eps.
REGULARIZERS = ("kinetic", "jacobian", "l1", "l2")


def _flat(v):
  return tf.reshape(v, [tf.shape(v)[0], -1])


def rate(name, f, vjp):
  """The integrand of regularizer `name` for each example.

  - `kinetic`: ||f||^2 (Finlay et al. 2020).
  - `jacobian`: ||eps^T df/dz||^2, an unbiased estimate of ||df/dz||_F^2 with
    the solve's probe (Finlay et al. 2020).
  - `l1`: mean |f| and `l2`: mean f^2, as in the FFJORD code.

  Args:
    name: one of `REGULARIZERS`.
    f: `[batch, *event]` dynamics value.
    vjp: `[batch, *event]` probe VJP, or `None` under the exact trace.

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
