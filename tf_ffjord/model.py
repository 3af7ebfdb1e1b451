"""`FFJORDModel`: a Keras model that trains a FFJORD flow by maximum likelihood."""

import math

import keras
import numpy as np
import tensorflow as tf

from tf_ffjord import divergence, flow_matching
from tf_ffjord.bijector import FFJORD
from tf_ffjord.dynamics import ODENet

__all__ = ["FFJORDModel", "LastValue", "check_batch", "minimize", "step_logs"]

_LOG_2PI = math.log(2 * math.pi)
OBJECTIVES = ("likelihood", "flow_matching")


def check_batch(x, event_shape, owner, what="examples", floating=True):
  """Converts a batch to a tensor and checks its dtype and example shape.

  Args:
    x: `[batch, *event_shape]` data.
    event_shape: the expected shape of one example.
    owner: the class name that the error messages name.
    what: what one example is, for the messages ("examples", "images").
    floating: require a float dtype.

  Returns:
    x as a tensor.

  Raises:
    ValueError: a non-float dtype (if `floating`) or examples of another
      shape.
  """
  x = tf.convert_to_tensor(x)
  if floating and not x.dtype.is_floating:
    raise ValueError(f"{owner} expects float data, got dtype "
                     f"{x.dtype.name}.")
  if tuple(x.shape[1:]) != tuple(event_shape):
    raise ValueError(f"{owner} expects {what} of shape {tuple(event_shape)}, "
                     f"got data of shape {x.shape}.")
  return x


def minimize(model, loss_fn):
  """One optimizer step of `model` on `loss_fn()` plus the model's own losses.

  Under `tf.distribute` the gradients are summed over replicas, so the loss
  is divided by the number of replicas: each replica's mean then counts as
  its share of the global batch.

  Args:
    model: a compiled Keras model.
    loss_fn: callable returning `(loss, aux)`; runs under the gradient tape.

  Returns:
    `aux`.
  """
  replicas = tf.distribute.get_strategy().num_replicas_in_sync
  with tf.GradientTape() as tape:
    loss, aux = loss_fn()
    if model.losses:
      loss += tf.add_n(model.losses)
    scaled = loss / replicas
  variables = model.trainable_variables
  grads = tape.gradient(scaled, variables)
  model.optimizer.apply_gradients(zip(grads, variables))
  return aux


def step_logs(logs):
  """Step logs in the shape Keras can reduce under the current strategy.

  Keras 3 averages multi-worker step logs with `strategy.reduce("MEAN", v,
  axis=0)`, which fails on scalars; give them a length-1 axis there.
  """
  strategy = tf.distribute.get_strategy()
  if (isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)
      and strategy.extended._in_multi_worker_mode()):  # pylint: disable=protected-access
    return {k: tf.reshape(v, [1]) for k, v in logs.items()}
  return logs


@keras.saving.register_keras_serializable("tf_ffjord")
class LastValue(keras.metrics.Metric):
  """A metric that reports the last value it was given (e.g. the last NFE)."""

  def __init__(self, name="last_value", **kwargs):
    super().__init__(name=name, **kwargs)
    # Under tf.distribute each replica keeps its own value; report their
    # mean, not their sum.
    self.value = self.add_variable(shape=(), initializer="zeros", name="value",
                                   aggregation="mean")

  def update_state(self, value):
    self.value.assign(tf.cast(value, self.value.dtype))

  def result(self):
    return tf.convert_to_tensor(self.value)  # a tensor, also under tf.distribute

  def reset_state(self):
    self.value.assign(0.0)


@keras.saving.register_keras_serializable("tf_ffjord")
class FFJORDModel(keras.Model):
  """A FFJORD density model: dynamics, bijector and a standard-normal base.

  `compile(optimizer)` + `fit(x)` minimizes the mean negative log-likelihood
  (nats). The metrics are `nll`, `nfe` (dynamics evaluations of the last
  forward solve), `nfe_backward` (of its gradient) and one per regularizer.
  `evaluate` reports `nll` with `eval_trace`. `compile(optimizer,
  objective="flow_matching", ot=False)` trains the same dynamics by
  simulation-free flow matching instead (metric `fm_loss`); densities,
  samples and export are unchanged.

  Args:
    event_shape: shape of one example, e.g. `(2,)`.
    dynamics: a callable `f(t, x[, context])`, by default
      `ODENet(dim=event_shape[-1], context_dim=context_dim)`.
    eval_trace: trace used by `evaluate`, `log_prob(exact=True)` and export;
      default `"exact"` for events of up to 64 values, else the training
      trace.
    regularization: dict regularizer name -> weight, e.g.
      `{"kinetic": 0.01, "jacobian": 0.01}`; each integral is added to the
      loss and logged as a metric.
    context_dim: width of the conditioning vector; `fit` then takes
      `(x, context)` pairs.
    train_time: learn the end time T (softplus-parameterized Keras weight).
    **ffjord_kwargs: passed to `FFJORD` (time_length, trace, noise, solver,
      rtol, atol, max_num_steps, step_size, gradient, ...).

  #### Examples

  >>> model = FFJORDModel((2,), dynamics=ODENet(hidden=(16,)), solver="rk4")
  >>> model.compile(keras.optimizers.Adam(1e-3))
  >>> x = datasets.toy.sample("8gaussians", 64, seed=0)
  >>> history = model.fit(x, batch_size=32, epochs=1, verbose=0)
  >>> sorted(history.history)
  ['nfe', 'nfe_backward', 'nll']
  """

  def __init__(self, event_shape, dynamics=None, eval_trace=None,
               regularization=None, context_dim=0, train_time=False,
               **ffjord_kwargs):
    name = ffjord_kwargs.pop("name", None)
    trainable = ffjord_kwargs.pop("trainable", True)
    ffjord_kwargs.pop("dtype", None)
    super().__init__(name=name, trainable=trainable)
    self.event_shape = tuple(int(d) for d in event_shape)
    if not self.event_shape or min(self.event_shape) < 1:
      raise ValueError(f"event_shape must be non-empty and positive, got "
                       f"{event_shape}.")
    self.event_size = int(np.prod(self.event_shape))
    self.context_dim = int(context_dim)
    if dynamics is None:
      if len(self.event_shape) != 1:
        raise ValueError("Pass dynamics for non-vector events (e.g. a conv "
                         "ODENet for images).")
      dynamics = ODENet(dim=self.event_shape[0], context_dim=self.context_dim)
    self.dynamics = dynamics
    self.regularization = dict(regularization or {})
    self.train_time = bool(train_time)
    self.ffjord_kwargs = dict(ffjord_kwargs)
    trace = ffjord_kwargs.get("trace", "hutchinson")
    if eval_trace is None:
      eval_trace = "exact" if self.event_size <= 64 else trace
    self.eval_trace = eval_trace
    kwargs = dict(ffjord_kwargs)
    kwargs["event_ndims"] = len(self.event_shape)
    if self.train_time:
      t_init = float(kwargs.get("time_length", 1.0))
      self.time_raw = self.add_weight(
          shape=(), name="time_length_raw",
          initializer=keras.initializers.Constant(
              np.log(np.expm1(t_init))))  # softplus^-1
      kwargs["time_length"] = lambda: tf.math.softplus(self.time_raw.value)
    self.bijector = FFJORD(self.dynamics, **kwargs)
    self.eval_bijector = FFJORD(self.dynamics, **{**kwargs,
                                                   "trace": eval_trace})
    self.nll_tracker = keras.metrics.Mean(name="nll")
    self.nfe_tracker = LastValue(name="nfe")
    self.nfe_backward_tracker = LastValue(name="nfe_backward")
    self.reg_trackers = {r: keras.metrics.Mean(name=r)
                         for r in self.regularization}
    # Set by compile(objective=...).
    self.objective, self.ot, self.fm_sigma = "likelihood", False, 0.0
    self.fm_tracker = keras.metrics.Mean(name="fm_loss")
    self.build()

  def build(self, input_shape=None):
    # Create every weight now (one dynamics call on zeros), so the model can
    # be checkpointed, restored or exported before it has seen data.
    del input_shape
    x = tf.zeros([1, *self.event_shape], self.compute_dtype)
    context = None
    if self.context_dim:
      context = tf.zeros([1, self.context_dim], self.compute_dtype)
      self.dynamics(tf.zeros([], x.dtype), x, context)
    else:
      self.dynamics(tf.zeros([], x.dtype), x)
    self.built = True

  @property
  def metrics(self):
    if self.objective == "flow_matching":
      return [self.fm_tracker, self.nll_tracker, self.nfe_tracker]
    return [self.nll_tracker, self.nfe_tracker, self.nfe_backward_tracker,
            *self.reg_trackers.values()]

  def compile(self, optimizer="adam", objective="likelihood", ot=False,
              sigma=0.0, **kwargs):
    """Configures training; `objective` picks the loss.

    Args:
      optimizer: a Keras optimizer or its name.
      objective: `"likelihood"` (maximum likelihood through ODE solves, plus
        the regularizers) or `"flow_matching"` (the simulation-free
        regression of `tf_ffjord.flow_matching.flow_matching_loss`; no ODE
        solve while training, metric `fm_loss`). Densities, samples,
        `evaluate` and export use the same bijector either way.
      ot: flow matching with minibatch optimal-transport pairing (scipy's
        `linear_sum_assignment` through `tf.numpy_function`, so the train
        step runs without XLA).
      sigma: flow matching's noise around the straight paths.
      **kwargs: passed to `keras.Model.compile`.

    Raises:
      ValueError: an unknown objective, `ot`/`sigma` without flow matching,
        flow matching with `regularization` or `train_time`, or `ot` with
        `jit_compile=True`.
    """
    if objective not in OBJECTIVES:
      raise ValueError(f"Unknown objective {objective!r}; expected one of "
                       f"{OBJECTIVES}.")
    if objective == "flow_matching":
      if self.regularization:
        raise ValueError("regularization applies to objective='likelihood'; "
                         "flow matching has no ODE solve to regularize.")
      if self.train_time:
        raise ValueError("objective='flow_matching' needs a fixed end time "
                         "(train_time=False).")
      if ot:
        if kwargs.get("jit_compile") is True:
          raise ValueError("ot=True runs scipy in the train step and cannot "
                           "be XLA-compiled; use jit_compile=False.")
        kwargs["jit_compile"] = False
    elif ot or sigma:
      raise ValueError("ot and sigma apply to objective='flow_matching'.")
    self.objective, self.ot, self.fm_sigma = objective, bool(ot), float(sigma)
    super().compile(optimizer=optimizer, **kwargs)

  # -- densities ---------------------------------------------------------

  def _check(self, x, context=None):
    x = tf.cast(check_batch(x, self.event_shape, "FFJORDModel"),
                self.compute_dtype)
    if self.context_dim and context is None:
      raise ValueError(f"This model is conditional (context_dim="
                       f"{self.context_dim}): pass (x, context).")
    if context is not None:
      context = tf.cast(context, x.dtype)
      if not self.context_dim or context.shape[-1] != self.context_dim:
        raise ValueError(f"context has {context.shape[-1]} features; the "
                         f"model expects context_dim={self.context_dim}.")
    return x, context

  def base_log_prob(self, z):
    """Standard-normal log-density, summed over the event."""
    z = tf.reshape(z, [tf.shape(z)[0], -1])
    return -0.5 * tf.reduce_sum(tf.square(z), -1) - 0.5 * self.event_size * _LOG_2PI

  def _log_prob(self, x, context, bijector, seed=None, regularizers=()):
    sol = bijector.solve(x, "inverse", context=context, seed=seed,
                         regularizers=regularizers)
    return self.base_log_prob(sol.state) + sol.log_det, sol

  def _noise_seed(self):
    """A fresh probe seed, distinct per replica (None for the exact trace)."""
    if self.bijector.trace != "hutchinson":
      return None
    return divergence.replica_seed()

  def call(self, x, context=None, training=False):
    """log p(x) with the training trace (training) or `eval_trace`."""
    x, context = self._check(x, context)
    bij = self.bijector if training else self.eval_bijector
    return self._log_prob(x, context, bij)[0]

  def log_prob(self, x, context=None, exact=False):
    """log p(x) in nats per example, computed in a compiled graph.

    Args:
      x: `[batch, *event_shape]` float data.
      context: `[batch, context_dim]` for conditional models.
      exact: use `eval_trace` (exact by default for small events) instead of
        the training trace.
    """
    x, context = self._check(x, context)
    fns = self.__dict__.setdefault("_compiled", {})
    key = ("log_prob", bool(exact), context is not None)
    if key not in fns:
      bij = self.eval_bijector if exact else self.bijector
      fns[key] = tf.function(
          lambda x, c: self._log_prob(x, c, bij)[0], reduce_retracing=True)
    return fns[key](x, context)

  def sample(self, n, context=None, seed=None):
    """Draws `n` samples by integrating base samples forward.

    Args:
      n: number of samples.
      context: `[n, context_dim]` for conditional models.
      seed: int seed for reproducible base samples.
    """
    if seed is None:
      seed = int(np.random.randint(0, 2**31 - 1))
    fns = self.__dict__.setdefault("_compiled", {})
    key = ("sample", context is not None)
    if key not in fns:
      fns[key] = tf.function(self._sample, reduce_retracing=True)
    return fns[key](tf.convert_to_tensor(n, tf.int32),
                    tf.convert_to_tensor(seed, tf.int32), context)

  def _sample(self, n, seed, context=None):
    z = tf.random.stateless_normal(
        tf.concat([[n], self.event_shape], 0), tf.stack([seed, 0]),
        dtype=self.compute_dtype)
    if context is not None:
      context = tf.cast(context, z.dtype)
    return self.eval_bijector.solve(z, "forward", context=context).state

  # -- training ----------------------------------------------------------

  def _unpack(self, data):
    x, context, _ = keras.utils.unpack_x_y_sample_weight(data)
    if isinstance(x, (tuple, list)) and len(x) == 2 and context is None:
      x, context = x  # fit((x, context)) with arrays: Keras keeps the pair
    return self._check(x, context)

  def train_step(self, data):
    x, context = self._unpack(data)
    if self.objective == "flow_matching":
      return self._flow_matching_step(x, context)

    def loss_fn():
      logp, sol = self._log_prob(x, context, self.bijector,
                                 seed=self._noise_seed(),
                                 regularizers=tuple(self.regularization))
      nll = -tf.reduce_mean(logp)
      loss = nll
      for r, w in self.regularization.items():
        loss += w * tf.reduce_mean(sol.regularization[r])
      return loss, (nll, sol)

    nll, sol = minimize(self, loss_fn)
    self.nll_tracker.update_state(nll)
    self.nfe_tracker.update_state(sol.nfe)
    self.nfe_backward_tracker.update_state(
        self.bijector.nfe_backward.read_value())
    for r, tracker in self.reg_trackers.items():
      tracker.update_state(tf.reduce_mean(sol.regularization[r]))
    return step_logs({m.name: m.result() for m in self.metrics})

  def _flow_matching_step(self, x, context):
    def loss_fn():
      fm = tf.reduce_mean(flow_matching.flow_matching_loss(
          self.dynamics, x, context, time_length=self.bijector.time_length,
          initial_time=self.bijector.parameters["initial_time"], ot=self.ot,
          sigma=self.fm_sigma))
      return fm, fm

    fm = minimize(self, loss_fn)
    self.fm_tracker.update_state(fm)
    return step_logs({"fm_loss": self.fm_tracker.result()})

  def test_step(self, data):
    x, context = self._unpack(data)
    logp, sol = self._log_prob(x, context, self.eval_bijector)
    self.nll_tracker.update_state(-tf.reduce_mean(logp))
    self.nfe_tracker.update_state(sol.nfe)
    return step_logs({m.name: m.result()
                      for m in (self.nll_tracker, self.nfe_tracker)})

  # -- saving ------------------------------------------------------------

  def export(self, path, batch_size=None, custom_gradients=False):
    """Writes a SavedModel that serves without tf_ffjord installed.

    Signatures `log_prob` (exact trace; also `serving_default`),
    `log_prob_hutchinson(x, seed)`, `sample(n, seed)`, `forward(z)` and
    `inverse(x)`; see `tf_ffjord.export.export_saved_model` for their
    inputs, outputs and dtypes.

    Args:
      path: output directory.
      batch_size: fix the batch dimension of the signatures (`None`: any).
      custom_gradients: also save the adjoint gradient (slow to save; not
        needed for serving).

    Returns:
      `path`.
    """
    from tf_ffjord import export  # pylint: disable=g-import-not-at-top
    return export.export_saved_model(self, path, batch_size=batch_size,
                                     custom_gradients=custom_gradients)

  def get_compile_config(self):
    # Keras skips compile() on load for a custom compile unless these exist.
    config = super().get_compile_config()
    if config:
      config = {**config, "objective": self.objective, "ot": self.ot,
                "sigma": self.fm_sigma}
    return config

  def compile_from_config(self, config):
    config = dict(config)
    extra = {k: config.pop(k) for k in ("objective", "ot", "sigma")
             if k in config}
    config = keras.saving.deserialize_keras_object(config)
    self.compile(**config, **extra)
    if self.built:
      self.optimizer.build(self.trainable_variables)  # slots to load into

  def get_config(self):
    config = {**super().get_config(), **self.ffjord_kwargs,
              "event_shape": self.event_shape,
              "dynamics": keras.saving.serialize_keras_object(self.dynamics),
              "eval_trace": self.eval_trace,
              "regularization": self.regularization,
              "context_dim": self.context_dim,
              "train_time": self.train_time}
    return config

  @classmethod
  def from_config(cls, config):
    config = dict(config)
    config["dynamics"] = keras.saving.deserialize_keras_object(
        config["dynamics"])
    return cls(**config)
