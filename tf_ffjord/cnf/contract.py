"""The dynamics contract: `f(t, z)` or `f(t, z, context)` returns dz/dt, shaped and typed like z.

FFJORD's dynamics are free-form: a Keras layer or model, a `tf.Module`, or a
plain function (a lambda closing over a network included). The flow checks
the one thing it relies on, at the first call, with a message that names the
contract:

- the signature: `f(t, z)` without a context, `f(t, z, context)` with one
  (`t` a scalar tensor, `z` of shape `[batch, *event]`; a Keras layer's
  `call` is what is checked);
- the output: a tensor of z's shape and dtype (a net under a mixed
  precision policy must cast its output back to z's dtype).

It also finds the trainable variables of dynamics that Keras and `tf.Module`
tracking cannot see (a function closing over a network), by one call on
zeros under a tape (`probe`).
"""

import inspect
import warnings

import keras
import tensorflow as tf

from tf_ffjord._types import Dynamics

__all__ = ["CONTRACT", "DynamicsError", "call", "check_signature", "probe",
           "warn_no_variables"]

CONTRACT = ("dynamics must be callable as f(t, z) (or f(t, z, context) when "
            "a context is passed), t a scalar tensor and z of shape "
            "[batch, *event], and return dz/dt with z's shape and dtype")


class DynamicsError(TypeError, ValueError):
  """Dynamics that break the contract: a signature or an output that does not fit.

  A `TypeError` (a call that cannot bind) and a `ValueError` (an output of
  the wrong shape or dtype) at once, so either `except` catches it.
  """

  # Read by AutoGraph: re-raise this error unchanged inside tf.function.
  ag_pass_through = True


def _name(dynamics):
  if isinstance(dynamics, (keras.layers.Layer, tf.Module)):
    return f"{type(dynamics).__name__} {dynamics.name!r}"
  return getattr(dynamics, "__qualname__", None) or type(dynamics).__name__


def _signature(dynamics):
  """The signature a call binds to, or None where Python cannot tell."""
  target = dynamics.call if isinstance(dynamics, keras.layers.Layer) else dynamics
  try:
    return inspect.signature(target)
  except (TypeError, ValueError):  # builtins, some C-level callables
    return None


def check_signature(dynamics: Dynamics, with_context: bool = False) -> None:
  """Raises `DynamicsError` unless `dynamics` binds `(t, z)` or `(t, z, context)`.

  Args:
    dynamics: the flow's dynamics.
    with_context: whether the flow passes a context.

  Raises:
    DynamicsError: the call cannot bind, e.g. a Keras layer written
      `call(self, z)` or a function of `(z, t)` with a context to pass.

  #### Examples

  >>> check_signature(lambda t, z: -z)
  >>> check_signature(lambda z: -z)
  Traceback (most recent call last):
  ...
  tf_ffjord.cnf.contract.DynamicsError: The dynamics <lambda>(z) cannot be called as f(t, z): ...
  """
  if not callable(dynamics):
    raise DynamicsError(f"{CONTRACT}; got {type(dynamics).__name__}, which "
                        "is not callable.")
  sig = _signature(dynamics)
  if sig is None:
    return
  args = ("t", "z", "context") if with_context else ("t", "z")
  try:
    sig.bind(*args)
  except TypeError as e:
    raise DynamicsError(
        f"The dynamics {_name(dynamics)}{sig} cannot be called as "
        f"f({', '.join(args)}): {e}. The contract: {CONTRACT}. Fix the "
        "signature (a Keras layer: `def call(self, t, z)`), or wrap the "
        "net, e.g. `lambda t, z: net(z)` for a net that ignores time."
    ) from None


def call(dynamics: Dynamics, t: tf.Tensor, z: tf.Tensor,
         context: tf.Tensor | None = None) -> tf.Tensor:
  """`dynamics(t, z[, context])`, its output checked against z (static shapes only).

  The check runs while Python runs (eagerly, or when a graph is traced), so
  it adds no op to the graph.

  Raises:
    DynamicsError: the output is not a tensor of z's shape and dtype.
  """
  out = dynamics(t, z) if context is None else dynamics(t, z, context)
  try:
    out = tf.convert_to_tensor(out)
  except (TypeError, ValueError) as e:
    raise DynamicsError(f"The dynamics {_name(dynamics)} returned "
                        f"{type(out).__name__}, not a tensor: {e}. The "
                        f"contract: {CONTRACT}.") from None
  if out.dtype != z.dtype:
    raise DynamicsError(
        f"The dynamics {_name(dynamics)} returned dz/dt of dtype "
        f"{out.dtype.name} for z of dtype {z.dtype.name}. The contract: "
        f"{CONTRACT}. Cast the output (e.g. `tf.cast(out, z.dtype)` at the "
        "end of a net under a mixed precision policy), or give the net z's "
        "dtype (`dtype=` of the layer).")
  if not out.shape.is_compatible_with(z.shape):
    raise DynamicsError(
        f"The dynamics {_name(dynamics)} returned dz/dt of shape "
        f"{out.shape.as_list() if out.shape.rank is not None else '?'} for z "
        f"of shape {z.shape.as_list()}. The contract: {CONTRACT}. Give the "
        "last layer as many units as z has features.")
  return out


def probe(dynamics: Dynamics, event_shape: tf.TensorShape, dtype: tf.DType,
          context_shape: tf.TensorShape | None = None) -> list[tf.Variable]:
  """Calls `dynamics` once on zeros, eagerly: builds it, checks it, finds its variables.

  This is one real call of the user's f (a counter in f counts it), made
  once per flow: at construction for a Keras net of known event shape,
  else at the first solve.

  Runs under `tf.init_scope`, so a lazily built Keras net creates its
  weights outside any graph. The variables are those a trace of the same
  call captures (tapes are paused under `init_scope`, traces are not).

  Args:
    dynamics: the flow's dynamics.
    event_shape: fully defined `TensorShape` of one event.
    dtype: the state's dtype.
    context_shape: `TensorShape` of one context row, or `None`.

  Returns:
    The trainable `tf.Variable`s the call reads.

  Raises:
    DynamicsError: the signature or the output breaks the contract.
  """
  check_signature(dynamics, context_shape is not None)
  with tf.init_scope():
    specs = [tf.TensorSpec([1, *event_shape], dtype)]
    if context_shape is not None:
      specs.append(tf.TensorSpec([1, *context_shape], dtype))
    first = lambda z, *context: call(dynamics, tf.zeros([], dtype), z,
                                      *context)
    first(*[tf.zeros(s.shape, dtype) for s in specs])  # builds, checks
    traced = tf.function(first, autograph=False).get_concrete_function(*specs)
  return [v for v in traced.trainable_variables if v.dtype.is_floating]


def warn_no_variables(dynamics: Dynamics) -> None:
  """Warns that a flow over `dynamics` has nothing to train, and how to fix it."""
  warnings.warn(
      f"FFJORD: the dynamics {_name(dynamics)} read no trainable variable "
      "in a first call on zeros, so the flow's trainable_variables is empty "
      "and a training loop over `dist.trainable_variables` would train "
      "nothing. If f has weights, pass the network itself as dynamics (a "
      "Keras layer or model, or a tf.Module), or read its variables in "
      "every call; analytic dynamics can ignore this warning.",
      UserWarning, stacklevel=4)
