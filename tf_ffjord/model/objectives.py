"""Training objectives of a `FlowModel`: maximum likelihood (plus RNODE regularizers) and flow matching."""

from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import keras
import tensorflow as tf

from tf_ffjord import solvers
from tf_ffjord._shorthand import resolve
from tf_ffjord.cnf import density
from tf_ffjord.cnf import trace_estimators
from tf_ffjord.cnf import composite
from tf_ffjord.cnf import regularizers as regs
from tf_ffjord.cnf.density import FlowView
from tf_ffjord.model.flow_matching import flow_matching_loss
from tf_ffjord.model.metrics import LAST, MEAN

__all__ = ["Objective", "MaximumLikelihood", "FlowMatching", "get",
           "deserialize"]

_O = TypeVar("_O", bound="Objective")


@keras.saving.register_keras_serializable("tf_ffjord")
class Objective:
  """What a `FlowModel`'s `train_step` minimizes, and what it logs.

  An objective sees the model through its narrow `FlowView` (`flow`: the
  training and evaluation flows, the base, the event shape, the optimizer
  step), never the model itself. A subclass defines `loss(flow, x,
  context)`, which runs under the gradient tape and returns the scalar loss
  and a dict of scalar step logs (`flow(x, training=True)` is the
  log-density by the training flow), and `metrics(flow)`, the kind of each
  log: `"mean"` (the mean over the epoch) or `"last"` (the last step's
  value). The model makes one Keras metric per log and knows nothing else
  of the objective. Optional hooks: `check(flow)` runs at `compile` and
  raises on a flow the objective cannot train; `jit_compile(flow,
  requested)` decides whether Keras may XLA-compile the train step;
  `step(flow, x, context)` is the whole train step (by default one
  optimizer step on `loss`, `flow.step`, logging it as `loss` beside the
  objective's logs), for logs read after the gradient;
  `validation_loss(flow, x, context, logs)` is the `loss` that `evaluate`
  logs (by default `loss` on the batch), so that `val_loss` is the
  objective's.

  Objectives are Keras-serializable: with `get_config` (the constructor's
  arguments) and the `keras.saving.register_keras_serializable` decorator,
  a model compiled with a user's objective saves to `.keras` and loads back.

  #### Examples

  >>> @keras.saving.register_keras_serializable("doctest")
  ... class Energy(Objective):
  ...   def metrics(self, flow):
  ...     return {"energy": "mean"}
  ...   def loss(self, flow, x, context=None):
  ...     e = tf.reduce_mean(tf.square(x))
  ...     return e, {"energy": e}
  >>> keras.saving.deserialize_keras_object(
  ...     keras.saving.serialize_keras_object(Energy()))
  Energy()
  """

  def metrics(self, flow: FlowView) -> dict[str, str]:
    """`{log name: "mean" or "last"}` of the logs `loss` (or `step`) returns."""
    del flow
    return {}

  def check(self, flow: FlowView) -> None:
    """Raises `ValueError` if the objective cannot train `flow`."""
    del flow

  def jit_compile(self, flow: FlowView, requested: bool | str
                  ) -> bool | str:
    """The `jit_compile` of the train step, given the one `compile` got.

    Args:
      flow: the view of the model being compiled.
      requested: `True`, `False` or `"auto"` (Keras' default).

    Returns:
      The value to give `keras.Model.compile`.

    Raises:
      ValueError: a requested XLA compile the objective cannot run under.
    """
    del flow
    return requested

  def loss(self, flow: FlowView, x: tf.Tensor,
           context: tf.Tensor | None = None
           ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    """`(scalar loss, {name: scalar log})` of one batch."""
    raise NotImplementedError

  def step(self, flow: FlowView, x: tf.Tensor,
           context: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    """One training step; returns its logs (`metrics(flow)` names them).

    The default logs the loss minimized (with the model's own losses) as
    `loss`, which Keras' callbacks monitor by default (as `val_loss`).
    """
    loss, logs = flow.step(lambda: self.loss(flow, x, context))
    return {"loss": loss, **logs}

  def validation_loss(self, flow: FlowView, x: tf.Tensor,
                      context: tf.Tensor | None,
                      logs: Mapping[str, tf.Tensor]) -> tf.Tensor | None:
    """The objective's loss on a validation batch (`val_loss`), or None.

    Args:
      flow: the view of the model.
      x: the batch (dequantized).
      context: its context, or None.
      logs: the evaluation logs of the batch: `nll`, `nfe` (and `bpd`), by
        the evaluation flow.

    Returns:
      A scalar, by default `loss(flow, x, context)` plus the model's own
      losses, as in training; None for no `loss` log (an objective that
      only defines `step`).
    """
    del logs
    try:
      loss = self.loss(flow, x, context)[0]
    except NotImplementedError:
      return None
    own = flow.losses()
    return loss + tf.add_n(own) if own else loss

  def get_config(self) -> dict[str, Any]:
    return {}

  @classmethod
  def from_config(cls: type[_O], config: Mapping[str, Any]) -> _O:
    return cls(**config)

  def __repr__(self) -> str:
    args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
    return f"{type(self).__name__}({args})"


# A regularization: `{name: weight}`, or `(regularizer, weight)` pairs whose
# regularizer is a name or a `Regularizer`.
Regularization = (Mapping["str | regs.Regularizer", float]
                  | Sequence[tuple["str | regs.Regularizer", float]])


@keras.saving.register_keras_serializable("tf_ffjord")
class MaximumLikelihood(Objective):
  """Mean negative log-likelihood (nats) through ODE solves, plus penalties.

  Each solve draws fresh Hutchinson probes (distinct per replica). The
  regularizers (Finlay et al. 2020) are integrated along the same solves as
  extra ODE states, so they cost no extra dynamics evaluations; each adds
  weight x its mean integral to the loss and is logged as a metric under
  its name. Logs: `loss`, `nll`, the forward `nfe` and adjoint
  `nfe_backward` of the last step, `bpd` for image models, and each
  regularizer. Without regularizers the loss is the NLL, and `val_loss` is
  the validation `nll` by the evaluation flow (no second solve); with
  them, the loss of the training flow on the validation batch.

  Args:
    regularization: the penalties and their weights: a dict `{name:
      weight}` over the shorthands of `tf_ffjord.cnf.regularizers`
      (`"kinetic"`, `"jacobian"`, `"l1"`, `"l2"`), whose keys may also be
      `Regularizer` objects (a user's own), or a sequence of `(regularizer,
      weight)` pairs.

  Raises:
    ValueError: an unknown regularizer, two of one name, or a negative
      weight.

  #### Examples

  >>> MaximumLikelihood({"kinetic": 0.01, "l2": 0.1}).regularizers
  (KineticEnergy(), L2())
  """

  def __init__(self, regularization: Regularization | None = None) -> None:
    pairs = list(regularization.items()
                 if isinstance(regularization, Mapping)
                 else regularization or ())
    self.regularizers = regs.check(r for r, _ in pairs)
    self.weights = tuple(float(w) for _, w in pairs)
    for r, weight in zip(self.regularizers, self.weights):
      if not weight >= 0:
        raise ValueError(f"Regularization weights must be >= 0, got "
                         f"{r.name}={weight}.")

  @property
  def regularization(self) -> dict[str, float]:
    """`{name: weight}` of the regularizers."""
    return {r.name: w for r, w in zip(self.regularizers, self.weights)}

  def metrics(self, flow: FlowView) -> dict[str, str]:
    kinds = {"nll": MEAN, "nfe": LAST, "nfe_backward": LAST}
    if flow.dequantize:
      kinds["bpd"] = MEAN
    return {**kinds, **dict.fromkeys(self.regularization, MEAN)}

  def check(self, flow: FlowView) -> None:
    for block in composite.ffjord_blocks(flow.bijector):
      regs.check(self.regularizers, block.trace)

  def loss(self, flow: FlowView, x: tf.Tensor,
           context: tf.Tensor | None = None
           ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    logp, sol = density.log_prob(flow, x, context, bijector=flow.bijector,
                                 seed=trace_estimators.replica_seed(),
                                 regularizers=self.regularizers)
    logs = {**density.nll_logs(flow, logp), "nfe": sol.nfe}
    loss = logs["nll"]
    for name, weight in self.regularization.items():
      value = tf.reduce_mean(sol.regularization[name])
      loss += weight * value
      logs[name] = value
    return loss, logs

  def step(self, flow: FlowView, x: tf.Tensor,
           context: tf.Tensor | None = None) -> dict[str, tf.Tensor]:
    logs = super().step(flow, x, context)
    # The adjoint solves run in the gradient: their NFE is known only now.
    logs["nfe_backward"] = flow.nfe_backward()
    return logs

  def validation_loss(self, flow: FlowView, x: tf.Tensor,
                      context: tf.Tensor | None,
                      logs: Mapping[str, tf.Tensor]) -> tf.Tensor | None:
    if not self.regularizers and not flow.losses():
      return logs["nll"]  # the loss itself, by the exact evaluation solve
    return super().validation_loss(flow, x, context, logs)

  def get_config(self) -> dict[str, Any]:
    # Shorthands by name; other regularizers by their Keras config.
    if all(type(r) is regs.REGULARIZERS.get(r.name)  # pylint: disable=unidiomatic-typecheck
           for r in self.regularizers):
      return {"regularization": self.regularization}
    return {"regularization": [
        [keras.saving.serialize_keras_object(r), w]
        for r, w in zip(self.regularizers, self.weights)]}

  @classmethod
  def from_config(cls, config: Mapping[str, Any]) -> "MaximumLikelihood":
    regularization = config.get("regularization")
    if isinstance(regularization, list):
      regularization = [(keras.saving.deserialize_keras_object(r), w)
                        for r, w in regularization]
    return cls(regularization)


@keras.saving.register_keras_serializable("tf_ffjord")
class FlowMatching(Objective):
  """Simulation-free flow matching of the model's one FFJORD block.

  Regresses the block's field onto straight paths from the data (pushed
  through any fixed pre-transform of the flow, such as a logit) to
  N(0, I) samples: no ODE solve while training. Densities, samples,
  `evaluate` and export then integrate the learned field as usual. Defined
  for a flow with a single FFJORD block next to the base and a fixed end
  time; `compile` refuses other models with a message naming what to use.
  The loss (metric `fm_loss`) is the squared error per dimension.

  Args:
    ot: pair each batch with its base samples by exact minibatch optimal
      transport (scipy; the train step then runs without XLA).
    sigma: noise around the straight paths.

  Raises:
    ValueError: a negative sigma.
  """

  def __init__(self, ot: bool = False, sigma: float = 0.0) -> None:
    if not sigma >= 0:
      raise ValueError(f"sigma must be >= 0, got {sigma}.")
    self.ot = bool(ot)
    self.sigma = float(sigma)

  def metrics(self, flow: FlowView) -> dict[str, str]:
    del flow
    return {"fm_loss": MEAN}

  def check(self, flow: FlowView) -> None:
    _, block = composite.flow_matching_parts(flow.bijector)
    if any(layer.trainable_weights for layer in block.keras_layers
           if layer is not block.dynamics):
      raise ValueError("Flow matching regresses a field over a fixed time "
                       "interval and cannot learn the end time: build the "
                       "model with train_time=False.")

  def jit_compile(self, flow: FlowView, requested: bool | str
                  ) -> bool | str:
    if self.ot:
      if requested is True:
        raise ValueError("ot=True runs scipy in the train step and cannot "
                         "be XLA-compiled; use jit_compile=False.")
      return False
    if requested != "auto":
      return requested
    # Keras' "auto" leaves XLA off on CPU, and a flow-matching step has no
    # solve whose own jit_compile would apply: decide by the solvers' rule
    # (on for dense dynamics on CPU, off for convolutions; on for GPUs).
    _, block = composite.flow_matching_parts(flow.bijector)
    return solvers.use_xla(
        "auto", solvers.xla.num_weights(block.dynamics), None,
        len(flow.event_shape), solvers.xla.device_type(tf.zeros([])))

  def loss(self, flow: FlowView, x: tf.Tensor,
           context: tf.Tensor | None = None
           ) -> tuple[tf.Tensor, dict[str, tf.Tensor]]:
    pre, block = composite.flow_matching_parts(flow.bijector)
    # Per dimension, so that learning rates and gradient clipping carry
    # over between data sets of different sizes.
    fm = tf.reduce_mean(flow_matching_loss(
        block.dynamics, pre(x), context, time_length=block.time_length,
        initial_time=block.initial_time, ot=self.ot,
        sigma=self.sigma)) / flow.event_size
    return fm, {"fm_loss": fm}

  def get_config(self) -> dict[str, Any]:
    return {"ot": self.ot, "sigma": self.sigma}


_NAMES: dict[str, type[Objective]] = {
    "likelihood": MaximumLikelihood, "flow_matching": FlowMatching}


def get(objective: Objective | str) -> Objective:
  """An `Objective` from itself, `"likelihood"` or `"flow_matching"`.

  Raises:
    ValueError: an unknown name or type.
  """
  return resolve(objective, Objective, _NAMES, "objective")


def deserialize(config: Mapping[str, Any] | str) -> Objective:
  """The `Objective` of its Keras config, by Keras' deserialization.

  Also reads the `{"class_name", "config"}` of `.keras` files written before
  the objectives were registered (built-in objectives only).

  Raises:
    TypeError: the config is not an objective's.
  """
  legacy = {cls.__name__: cls for cls in (MaximumLikelihood, FlowMatching)}
  objective = keras.saving.deserialize_keras_object(config,
                                                    custom_objects=legacy)
  if not isinstance(objective, Objective):
    raise TypeError(f"Expected the config of an Objective, got one of "
                    f"{type(objective).__name__}.")
  return objective
