"""`FlowModel`: a Keras model of a flow bijector on a standard-normal base, trained with `fit`."""

from collections.abc import Mapping, Sequence
import functools
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import validation
from tf_ffjord._types import TensorLike
from tf_ffjord.cnf import composite
from tf_ffjord.cnf import density
from tf_ffjord.cnf.ffjord import FFJORD
from tf_ffjord.model import objectives
from tf_ffjord.model.base_distribution import standard_normal
from tf_ffjord.model.flow_inference import FlowInference
from tf_ffjord.model.metrics import LAST, MEAN, make_metric
from tf_ffjord.model.steps import minimize, monitorable, step_logs

__all__ = ["FlowModel"]


class FlowModel(FlowInference, keras.Model):
  """A density model: a flow bijector on a standard-normal base.

  The training and evaluation loop of the library's flows (the `VAE`, a
  model of another kind, has its own). `compile(optimizer,
  objective)` takes an `Objective` (`MaximumLikelihood`, with optional RNODE
  regularizers, `FlowMatching`, or a user's), which owns the train step, its
  logs and their kinds, and its XLA rule; `fit` runs it; `evaluate` reports
  the exact-likelihood `nll` (nats), the forward `nfe` and, for image models,
  `bpd`, computed with `eval_bijector`. Both also log `loss`, the objective's
  loss (on validation data: `Objective.validation_loss`), so Keras' callbacks
  work with their defaults (`monitor="val_loss"`); `nll`, `bpd` and the
  losses are known to be minimized, so monitoring them needs no `mode`.
  Every entry point checks its input by `tf_ffjord.validation`'s policy;
  empty batches are legal. `FFJORDModel` and `ImageFlow` are constructors
  of it: they only build the bijector.

  Scores are scores: `evaluate`, `log_prob`, `sample` and the export solve
  the evaluation flow at its own tolerance, `eval_options`' `rtol` and
  `atol`, 1e-5 by default (the paper's) whatever the training tolerance.
  Inputs, states, log-densities and samples are in the variable dtype
  (float32 under a mixed policy; see `tf_ffjord.cnf.density.FlowView`).
  Objectives, the density functions and the export see the model only
  through its narrow `flow_view`.

  Args:
    bijector: the flow; `forward` maps base samples to data (an `FFJORD`,
      a `tfb.Chain` of blocks and fixed transforms, or an `ODENVP`).
    event_shape: shape of one example.
    eval_options: `FFJORD` options of the evaluation copy of the flow
      (`evaluate`, `log_prob`, `sample`, export), which shares the weights.
      Over the defaults: `rtol` and `atol` 1e-5 (whatever the training
      ones) and, when `eval_options` is not given, the exact trace for
      events of up to 64 values; other options are the training ones.
      The model's config holds the result.
    context_dim: width of the conditioning vector (0: none); `fit` then
      takes `(x, context)` pairs.
    dequantize: the data are 8-bit images: `fit` and `evaluate` dequantize
      integer inputs uniformly, x = (k + u) / 256 (float inputs are taken as
      dequantized already), and report `bpd`; `log_prob` takes dequantized x
      in [0, 1].
    name: model name.

  #### Examples

  >>> flow = FFJORD(ODENet(hidden=(16,), dim=2), solver="rk4")
  >>> model = FlowModel(flow, (2,))
  >>> model.compile(keras.optimizers.Adam(1e-3))
  >>> x = datasets.toy.sample("8gaussians", 64, seed=0)
  >>> sorted(model.fit(x, batch_size=32, verbose=0).history)
  ['loss', 'nfe', 'nfe_backward', 'nll']
  >>> model.eval_options
  {'rtol': 1e-05, 'atol': 1e-05, 'trace': 'exact'}
  >>> model.log_prob(x[:3]).shape
  TensorShape([3])
  """

  def __init__(self, bijector: tfp.bijectors.Bijector,
               event_shape: Sequence[int],
               eval_options: Mapping[str, Any] | None = None,
               context_dim: int = 0, dequantize: bool = False,
               name: str | None = None, **kwargs: Any) -> None:
    super().__init__(name=name, **kwargs)
    self.event_shape = tuple(int(d) for d in event_shape)
    if not self.event_shape or min(self.event_shape) < 1:
      raise ValueError(f"event_shape must be non-empty and positive, got "
                       f"{event_shape}.")
    self.event_size = int(np.prod(self.event_shape))
    self.context_dim = int(context_dim)
    self.dequantize = bool(dequantize)
    self.eval_options = density.eval_options(eval_options, self.event_size)
    self.bijector = bijector
    self.eval_bijector = composite.with_options(bijector, **self.eval_options)
    # Keras does not look inside tf.Modules: track the flows' layers here.
    self.flow_layers = composite.keras_layers(bijector, self.eval_bijector)
    self.base = standard_normal(self.event_shape, self._dtype())
    self.objective: objectives.Objective = objectives.MaximumLikelihood()
    object.__setattr__(self, "trackers", {})
    object.__setattr__(self, "_monitored", [])
    # Compiled graphs of log_prob and sample, out of Keras' tracking.
    object.__setattr__(self, "_compiled_fns", {})
    self.build()

  def _dtype(self) -> tf.dtypes.DType:
    # The dtype rule of a flow (see `FlowView.dtype`): the variable dtype.
    return tf.as_dtype(self.variable_dtype)

  @property
  def flow_view(self) -> density.FlowView:
    """The narrow `FlowView` that objectives, density and export see."""
    return density.FlowView(
        bijector=self.bijector, base=self.base, event_shape=self.event_shape,
        eval_bijector=self.eval_bijector, dtype=self._dtype(),
        dequantize=self.dequantize, context_dim=self.context_dim,
        minimize=functools.partial(minimize, self, return_loss=True),
        losses=lambda: self.losses, variables=self.variables,
        name=type(self).__name__)

  def build(self, input_shape: Any = None) -> None:
    """Creates every weight now: one Euler step of the flow on zeros.

    So that the model can be checkpointed, restored or exported before it
    has seen data, even with lazily built dynamics.
    """
    del input_shape
    probe = composite.with_options(self.bijector, solver="euler", step_size=1.0,
                               trace="hutchinson")
    x = tf.zeros([1, *self.event_shape], self._dtype())
    context = None
    if self.context_dim:
      context = tf.zeros([1, self.context_dim], self._dtype())
    composite.solve(probe, x, "inverse", context)
    self.built = True

  # -- configuration -----------------------------------------------------

  def compile(self, optimizer: keras.optimizers.Optimizer | str = "adam",
              objective: objectives.Objective | str = "likelihood",
              **kwargs: Any) -> None:
    """Configures training.

    Args:
      optimizer: a Keras optimizer or its name. Its `weight_decay`, if any,
        is decoupled (as in AdamW).
      objective: a `tf_ffjord.model.objectives.Objective`, or `"likelihood"` /
        `"flow_matching"` for their defaults.
      **kwargs: passed to `keras.Model.compile`.

    Raises:
      ValueError: an objective this model cannot train (e.g. flow matching
        of a multiscale flow), or a `jit_compile` it cannot run under (flow
        matching with OT under `jit_compile=True`).
    """
    objective = objectives.get(objective)
    view = self.flow_view
    objective.check(view)
    kwargs["jit_compile"] = objective.jit_compile(
        view, kwargs.get("jit_compile", "auto"))
    self.objective = objective
    # `loss`, the objective's metrics, then evaluate's: nll, nfe (and bpd).
    # Made at compile, after the model is built (and so locked to Keras
    # tracking): `metrics` lists them.
    kinds = {"loss": MEAN, **objective.metrics(view)}
    for name, kind in self.evaluation_metrics.items():
      kinds.setdefault(name, kind)
    # Losses, and the penalties of a likelihood's regularizers.
    lower = _LOWER_IS_BETTER.union(getattr(objective, "regularization", ()))
    object.__setattr__(self, "trackers", {
        name: make_metric(name, kind, lower_is_better=name in lower)
        for name, kind in kinds.items()})
    # Then the directions of the losses, so that EarlyStopping & co.
    # monitor nll, val_nll, bpd... in their default mode="auto".
    object.__setattr__(self, "_monitored",
                       monitorable(list(self.trackers.values())))
    super().compile(optimizer=optimizer, **kwargs)

  @property
  def blocks(self) -> list[FFJORD]:
    """The flow's FFJORD blocks in data-to-base order."""
    return composite.ffjord_blocks(self.bijector)

  @property
  def metrics(self) -> list[Any]:
    return list(self._monitored)

  @property
  def evaluation_metrics(self) -> dict[str, str]:
    """`{name: kind}` of `evaluate`'s logs: `loss`, `nll`, `nfe` (and `bpd`)."""
    kinds = {"loss": MEAN, "nll": MEAN, "nfe": LAST}
    return {**kinds, "bpd": MEAN} if self.dequantize else kinds

  # -- densities ---------------------------------------------------------

  def _check(self, x, context=None, raw_images=False):
    """The shared input policy (`tf_ffjord.validation`) on x and context.

    x must be `[batch, *event_shape]`; real dtypes are cast to the model's,
    except with `raw_images`, which keeps 8-bit integer images for
    `dequantize`.
    """
    owner = type(self).__name__
    what = "images" if self.dequantize else "examples"
    if raw_images:
      x = validation.check_shape(validation.real_input(x, owner),
                                 self.event_shape, owner, what, batch_ndims=1)
      if x.dtype.is_floating:
        x = validation.check_finite(x, owner)
    else:
      x = validation.check_events(x, self.event_shape, self._dtype(),
                                  owner, what, batch_ndims=1)
    # A shape Keras relaxed to an unknown rank is checked in the graph
    # (above, first): give the solve its static event shape.
    x = tf.ensure_shape(x, [None, *self.event_shape])
    if self.context_dim and context is None:
      raise validation.InputError(
          f"This model is conditional (context_dim={self.context_dim}): "
          "pass (x, context).")
    if context is not None:
      if not self.context_dim:
        raise validation.InputError(
            f"{owner} has no context (context_dim=0); got a context.")
      context = validation.check_events(
          context, [self.context_dim], self._dtype(), owner,
          f"context vectors (context_dim={self.context_dim})", batch_ndims=1)
    return x, context

  def _array_input(self, x, method):
    """Arrays and lists for `fit`/`evaluate`, their shape checked up front.

    A list of numbers becomes an array; a list of arrays is the `(x,
    context)` pair. The error for anything else does not print it back.
    """
    owner = type(self).__name__
    if isinstance(x, list):
      if x and all(hasattr(v, "shape") for v in x):
        x = tuple(x)
      else:
        try:
          x = np.asarray(x, np.float32)
        except (TypeError, ValueError):
          raise validation.InputError(
              f"{owner}.{method} takes an array `[batch, "
              f"{', '.join(map(str, self.event_shape))}]`, an (x, context) "
              f"pair or a tf.data.Dataset; got a list of "
              f"{len(x)} items that is not one array.") from None
    first = x[0] if isinstance(x, tuple) and len(x) == 2 else x
    shape = getattr(first, "shape", None)
    if shape is not None and tf.TensorShape(shape).is_fully_defined():
      # The shape alone (no copy): one message before Keras batches it.
      validation.check_shape(tf.TensorSpec(shape), self.event_shape, owner,
                             "images" if self.dequantize else "examples",
                             batch_ndims=1)
    return x

  def call(self, x: TensorLike, context: TensorLike | None = None,
           training: bool = False) -> tf.Tensor:
    """log p(x) with the training flow (training) or the evaluation flow."""
    x, context = self._check(x, context)
    return self.flow_view(x, context, training=training)

  # -- training ----------------------------------------------------------

  def _unpack(self, data):
    x, context, _ = keras.utils.unpack_x_y_sample_weight(data)
    if isinstance(x, (tuple, list)) and len(x) == 2 and context is None:
      x, context = x  # fit((x, context)) with arrays: Keras keeps the pair
    x, context = self._check(x, context, raw_images=self.dequantize)
    return density.dequantize(self.flow_view, x), context

  def fit(self, x: Any = None, y: Any = None, *args: Any,  # pylint: disable=keyword-arg-before-vararg
          **kwargs: Any) -> keras.callbacks.History:
    x = self._array_input(x, "fit")
    try:
      return super().fit(x, y, *args, **kwargs)
    except Exception:
      # A step that failed while tracing leaves a half-called tf.function
      # that would refuse to create the optimizer's slots the next time.
      self.train_function = self.test_function = None
      raise

  def evaluate(self, x: Any = None, y: Any = None, *args: Any,  # pylint: disable=keyword-arg-before-vararg
               **kwargs: Any) -> Any:
    x = self._array_input(x, "evaluate")
    try:
      return super().evaluate(x, y, *args, **kwargs)
    except Exception:
      self.test_function = None
      raise

  def _report(self, logs):
    undeclared = sorted(set(logs) - set(self.trackers))
    if undeclared:
      raise ValueError(f"{self.objective!r} logged {undeclared}, which its "
                       f"metrics(flow) does not declare (as \"mean\" or "
                       f"\"last\").")
    for name, value in logs.items():
      self.trackers[name].update_state(value)
    return step_logs({name: self.trackers[name].result() for name in logs})

  def train_step(self, data: Any) -> dict[str, tf.Tensor]:
    x, context = self._unpack(data)
    return self._report(self.objective.step(self.flow_view, x, context))

  def test_step(self, data: Any) -> dict[str, tf.Tensor]:
    x, context = self._unpack(data)
    view = self.flow_view
    logp, sol = density.log_prob(view, x, context)
    logs = {**density.nll_logs(view, logp), "nfe": sol.nfe}
    loss = self.objective.validation_loss(view, x, context, logs)
    if loss is not None:
      logs["loss"] = loss
    return self._report(logs)

  # -- saving ------------------------------------------------------------

  def get_compile_config(self) -> dict[str, Any] | None:
    # Keras skips compile() on load for a custom compile unless these exist.
    config = super().get_compile_config()
    if config:
      config = {**config, "objective":
                keras.saving.serialize_keras_object(self.objective)}
    return config

  def compile_from_config(self, config: Mapping[str, Any]) -> None:
    config = dict(config)
    objective = config.pop("objective", None)
    config = keras.saving.deserialize_keras_object(config)
    if objective is not None:
      objective = objectives.deserialize(objective)
    self.compile(**config, objective=objective or "likelihood")
    if self.built:
      self.optimizer.build(self.trainable_variables)  # slots to load into


# Logs for which lower is better, whatever objective logs them.
_LOWER_IS_BETTER = frozenset(("loss", "nll", "bpd", "fm_loss"))
