"""SavedModel export of trained FFJORD flows for serving without tf_ffjord."""

import math
import types

import tensorflow as tf

from tf_ffjord.bijector import solve_stack

__all__ = ["SIGNATURES", "export_saved_model", "export_flow"]

# Serving signature names, in the order they are documented.
SIGNATURES = ("log_prob", "log_prob_hutchinson", "sample", "forward",
              "inverse")

_LOG_2PI = math.log(2 * math.pi)


def _function(fn, input_signature):
  # The solve is plain TF ops and Python control flow on Python values:
  # autograph would only add tracing time.
  return tf.function(fn, input_signature=input_signature, autograph=False)


class _Servable(tf.Module):
  """The exported object: the variables and one tf.function per signature.

  Serves a stack of FFJORD blocks on a standard-normal base: `inverse` runs
  `bijectors[0]` first (data to base), `forward` the stack backwards. A
  `FFJORDModel` is the stack of one block. Only variables and traced graphs
  are saved, so loading needs TensorFlow and nothing else (no tf_ffjord, TFP
  or Keras).
  """

  def __init__(self, bijectors, event_shape, variables, context_dim=0,
               dtype=tf.float32, batch_size=None):
    super().__init__(name="ffjord_servable")
    bijectors = list(bijectors)
    if not bijectors:
      raise ValueError("Export needs at least one FFJORD bijector.")
    event_shape = [int(d) for d in event_shape]
    dtype = tf.as_dtype(dtype)
    self._event_shape = event_shape
    self._dtype = dtype
    self._event_size = int(math.prod(event_shape))
    # Whatever trace the blocks train and evaluate with, `log_prob`,
    # `forward` and `inverse` use the exact trace; `log_prob_hutchinson`
    # the stochastic estimator with a caller-given seed.
    # A SimpleNamespace is not trackable: the bijectors (and the Keras
    # objects they hold) stay out of the saved object graph, which then only
    # holds the variables below and the traced functions.
    self._bij = types.SimpleNamespace(
        exact=[b if b.trace == "exact"
               else b.copy(trace="exact")
               for b in bijectors],
        hutchinson=[b.copy(trace="hutchinson")
                    for b in bijectors])
    # Every captured variable: Keras weights and the NFE counters of the
    # bijectors (which Keras does not track).
    self.model_variables = list(variables)
    self.nfe_counters = [b.nfe_backward for b in
                         self._bij.exact + self._bij.hutchinson]

    x_spec = tf.TensorSpec([batch_size, *event_shape], dtype, name="x")
    z_spec = tf.TensorSpec([batch_size, *event_shape], dtype, name="z")
    seed_spec = tf.TensorSpec([], tf.int32, name="seed")
    n_spec = tf.TensorSpec([], tf.int32, name="n")
    ctx = []
    if context_dim:
      ctx = [tf.TensorSpec([batch_size, context_dim], dtype, name="context")]
    self.inverse = _function(self._inverse, input_signature=[x_spec, *ctx])
    self.forward = _function(self._forward, input_signature=[z_spec, *ctx])
    self.log_prob = _function(self._log_prob,
                              input_signature=[x_spec, *ctx])
    self.log_prob_hutchinson = _function(
        self._log_prob_hutchinson, input_signature=[x_spec, seed_spec, *ctx])
    ctx_n = ctx and [tf.TensorSpec([None, context_dim], dtype,
                                   name="context")]
    self.sample = _function(self._sample,
                            input_signature=[n_spec, seed_spec, *ctx_n])

  def _base_log_prob(self, z):
    z = tf.reshape(z, [tf.shape(z)[0], -1])
    return (-0.5 * tf.reduce_sum(tf.square(z), -1)
            - 0.5 * self._event_size * _LOG_2PI)

  def _inverse(self, x, context=None):
    z, log_det, _ = solve_stack(self._bij.exact, x, "inverse", context)
    return {"z": z, "log_det": log_det}

  def _forward(self, z, context=None):
    x, log_det, _ = solve_stack(self._bij.exact, z, "forward", context)
    return {"x": x, "log_det": log_det}

  def _log_prob(self, x, context=None):
    # Calls the traced `inverse` graph, so the solve is traced once.
    out = self.inverse(x) if context is None else self.inverse(x, context)
    return {"log_prob": self._base_log_prob(out["z"]) + out["log_det"]}

  def _log_prob_hutchinson(self, x, seed, context=None):
    z, log_det, _ = solve_stack(self._bij.hutchinson, x, "inverse", context,
                                seed=tf.stack([seed, 0]))
    return {"log_prob": self._base_log_prob(z) + log_det}

  def _sample(self, n, seed, context=None):
    # The same base draw as `FFJORDModel.sample(n, seed=seed)`.
    z = tf.random.stateless_normal(
        tf.concat([[n], self._event_shape], 0), tf.stack([seed, 0]),
        dtype=self._dtype)
    out = self.forward(z) if context is None else self.forward(z, context)
    return {"x": out["x"]}


class _MultiscaleServable(tf.Module):
  """The exported `MultiscaleFFJORDModel`: images with pixels in [0, 1].

  `log_prob`, `forward`, `inverse` and `sample` use the model's evaluation
  flows (`eval_trace`: the exact trace costs one VJP per pixel, so image
  models usually evaluate with Hutchinson); `log_prob_hutchinson` uses the
  training flows with a caller-given seed. `forward`/`inverse` include the
  logit transform, so they map between [0, 1] images and the latent.
  """

  def __init__(self, model, batch_size=None):
    super().__init__(name="ffjord_multiscale_servable")
    self._m = types.SimpleNamespace(model=model)  # untracked (see _Servable)
    self.model_variables = list(model.variables)
    self.nfe_counters = [f.nfe_backward for flow in (model.flow,
                                                     model.eval_flow)
                         for f in flow.all_flows]
    dtype = tf.float32
    shape = [batch_size, *model.event_shape]
    x_spec = tf.TensorSpec(shape, dtype, name="x")
    seed_spec = tf.TensorSpec([], tf.int32, name="seed")
    self.inverse = _function(self._inverse, [x_spec])
    self.forward = _function(self._forward,
                             [tf.TensorSpec(shape, dtype, name="z")])
    self.log_prob = _function(self._log_prob, [x_spec])
    self.log_prob_hutchinson = _function(self._log_prob_hutchinson,
                                         [x_spec, seed_spec])
    self.sample = _function(self._sample,
                            [tf.TensorSpec([], tf.int32, name="n"), seed_spec])

  def _to_flow(self, x):
    logit = self._m.model.logit
    return logit.inverse(x), logit.inverse_log_det_jacobian(x, event_ndims=3)

  def _inverse(self, x):
    y, ld = self._to_flow(x)
    z, flow_ld, _ = self._m.model.eval_flow.transform(y, "inverse")
    return {"z": z, "log_det": flow_ld + ld}

  def _forward(self, z):
    model = self._m.model
    y, flow_ld, _ = model.eval_flow.transform(z, "forward")
    ld = model.logit.forward_log_det_jacobian(y, event_ndims=3)
    return {"x": model.logit.forward(y), "log_det": flow_ld + ld}

  def _log_prob(self, x):
    out = self.inverse(x)
    return {"log_prob": self._m.model.base_log_prob(out["z"])
                        + out["log_det"]}

  def _log_prob_hutchinson(self, x, seed):
    y, ld = self._to_flow(x)
    z, flow_ld, _ = self._m.model.flow.transform(y, "inverse",
                                                 seed=tf.stack([seed, 0]))
    return {"log_prob": self._m.model.base_log_prob(z) + flow_ld + ld}

  def _sample(self, n, seed):
    return {"x": self._m.model._sample(n, seed)}  # pylint: disable=protected-access


def export_saved_model(model, path, batch_size=None, custom_gradients=False):
  """Writes `model` as a SavedModel with serving signatures.

  The SavedModel loads with `tf.saved_model.load(path)` in a process that has
  only TensorFlow. Every signature is also a callable attribute of the loaded
  object (e.g. `loaded.log_prob(x)`); all return dicts of tensors. With
  `B` the batch size, `E` the event shape and `float32` the model's compute
  dtype:

  | signature | inputs | outputs |
  | --- | --- | --- |
  | `log_prob` (also `serving_default`) | `x: float32[B, *E]` | `log_prob: float32[B]` (exact trace) |
  | `log_prob_hutchinson` | `x: float32[B, *E]`, `seed: int32[]` | `log_prob: float32[B]` |
  | `sample` | `n: int32[]`, `seed: int32[]` | `x: float32[n, *E]` |
  | `forward` (base -> data) | `z: float32[B, *E]` | `x: float32[B, *E]`, `log_det: float32[B]` |
  | `inverse` (data -> base) | `x: float32[B, *E]` | `z: float32[B, *E]`, `log_det: float32[B]` |

  Conditional models (`context_dim > 0`) take one more input, `context:
  float32[B, context_dim]` (`[n, context_dim]` for `sample`). `log_det` is
  log|det d output / d input|.

  A `MultiscaleFFJORDModel` exports the same signatures over images `E =
  [H, W, C]` with pixels in [0, 1] (log_prob of the dequantized image, in
  nats): `log_prob`, `forward`, `inverse` and `sample` use its `eval_trace`
  and `log_prob_hutchinson` its training flows; `forward`/`inverse` include
  the logit transform.

  Args:
    model: a `tf_ffjord.FFJORDModel` or `MultiscaleFFJORDModel`.
    path: output directory.
    batch_size: fix the batch dimension of the signatures (`None`: any).
    custom_gradients: also serialize the adjoint gradient, so that the
      loaded functions can be differentiated. Much slower to save with
      adaptive solvers, and not needed for serving.

  Returns:
    `path`.

  #### Examples

  >>> model.export("/tmp/flow")  # doctest: +SKIP
  >>> loaded = tf.saved_model.load("/tmp/flow")  # doctest: +SKIP
  >>> loaded.log_prob(tf.zeros([3, 2]))["log_prob"].shape  # doctest: +SKIP
  TensorShape([3])
  """
  if hasattr(model, "eval_flow"):
    servable = _MultiscaleServable(model, batch_size)
  else:
    servable = _Servable([model.eval_bijector], model.event_shape,
                         model.variables, context_dim=model.context_dim,
                         dtype=model.compute_dtype, batch_size=batch_size)
  return _save(servable, path, custom_gradients)


def export_flow(bijectors, event_shape, path, variables, context_dim=0,
                dtype=tf.float32, batch_size=None, custom_gradients=False):
  """Writes a stack of FFJORD blocks on a standard-normal base as a SavedModel.

  The signatures and their inputs are those of `export_saved_model`; the
  density is log N(z; 0, I) + the log-dets of all blocks, with
  `log_prob`, `forward` and `inverse` on the exact trace (blocks with
  another trace are copied with the exact one, at their own solver
  settings) and `log_prob_hutchinson(x, seed)` drawing block k's probes
  from the stateless seed `[seed, k]`. `export_saved_model` of a
  `FFJORDModel` is the case of one block.

  Args:
    bijectors: `tf_ffjord.FFJORD` blocks in data-to-base order (`inverse`
      applies `bijectors[0]` first).
    event_shape: shape of one example, e.g. `(D,)`.
    path: output directory.
    variables: every variable the blocks read (e.g. the owning Keras
      model's `weights`), so that the SavedModel holds them.
    context_dim: width of the context the blocks' dynamics take (0: none).
    dtype: float dtype of the inputs.
    batch_size: fix the batch dimension of the signatures (`None`: any).
    custom_gradients: also serialize the adjoint gradient.

  Returns:
    `path`.

  Raises:
    ValueError: no bijectors.
  """
  servable = _Servable(bijectors, event_shape, variables,
                       context_dim=context_dim, dtype=dtype,
                       batch_size=batch_size)
  return _save(servable, path, custom_gradients)


def _save(servable, path, custom_gradients):
  # Pass the tf.functions, not concrete functions: `save` traces them in its
  # own context anyway, so tracing here first would double the cost.
  signatures = {name: getattr(servable, name) for name in SIGNATURES}
  signatures["serving_default"] = signatures["log_prob"]
  options = tf.saved_model.SaveOptions(
      experimental_custom_gradients=bool(custom_gradients))
  tf.saved_model.save(servable, str(path), signatures=signatures,
                      options=options)
  return path
