"""SavedModel export of trained FFJORD flows for serving without tf_ffjord."""

import os
import types
from typing import TypeVar

import tensorflow as tf

from tf_ffjord.cnf import density
from tf_ffjord.cnf import composite
from tf_ffjord import validation

__all__ = ["SIGNATURES", "export_model"]

# Serving signature names, in the order they are documented.
SIGNATURES = ("log_prob", "log_prob_hutchinson", "sample", "forward",
              "inverse")

# The output directory, returned as given.
_PathT = TypeVar("_PathT", bound=str | os.PathLike[str])


def _function(fn, input_signature):
  # The solve is plain TF ops and Python control flow on Python values:
  # autograph would only add tracing time.
  return tf.function(fn, input_signature=input_signature, autograph=False)


class _Servable(tf.Module):
  """The exported object: the variables and one tf.function per signature.

  Serves a flow's `FlowView` through `tf_ffjord.cnf.density`, as the model
  itself computes: `log_prob`, `forward`, `inverse` and `sample` run its
  evaluation flow, `log_prob_hutchinson` the same flow with the Hutchinson
  trace and a caller-given seed; inputs and outputs are in the model's
  variable dtype. Only variables and traced graphs are saved, so loading
  needs TensorFlow and nothing else (no tf_ffjord, TFP or Keras).
  """

  def __init__(self, view, batch_size=None, jit_compile=False,
               custom_gradients=False):
    super().__init__(name="ffjord_servable")
    options = {} if jit_compile == "model" else {"jit_compile": jit_compile}
    if not custom_gradients and all(
        not b.solver.own_adjoint
        for b in composite.ffjord_blocks(view.eval_bijector)):
      # Traced without the adjoint's custom gradient, which the SavedModel
      # would not keep (and loading would warn about): the same forward
      # computation, differentiable by plain backprop through the solve.
      options["gradient"] = "backprop"
    # A SimpleNamespace is not trackable: the view and its bijectors stay
    # out of the saved object graph, which then only holds the variables
    # below and the traced functions.
    self._m = types.SimpleNamespace(
        view=view,
        flow=composite.with_options(view.eval_bijector, **options),
        hutchinson=composite.with_options(view.eval_bijector,
                                      trace="hutchinson", **options),
        what="images" if view.dequantize else "examples")
    # Every captured variable: the Keras weights, and the bijectors' own
    # (NFE counters), which Keras does not track.
    blocks = (composite.ffjord_blocks(self._m.flow)
              + composite.ffjord_blocks(self._m.hutchinson))
    seen, captured = set(), []
    for v in [*view.variables, *(v for b in blocks for v in b.variables)]:
      if id(v) not in seen:
        seen.add(id(v))
        captured.append(v)
    self.model_variables = captured
    dtype = view.dtype
    shape = [batch_size, *view.event_shape]
    x_spec = tf.TensorSpec(shape, dtype, name="x")
    z_spec = tf.TensorSpec(shape, dtype, name="z")
    seed_spec = tf.TensorSpec([], tf.int32, name="seed")
    n_spec = tf.TensorSpec([], tf.int32, name="n")
    ctx, ctx_n = [], []
    if view.context_dim:
      ctx = [tf.TensorSpec([batch_size, view.context_dim], dtype,
                           name="context")]
      ctx_n = [tf.TensorSpec([None, view.context_dim], dtype,
                             name="context")]
    self.inverse = _function(self._inverse, [x_spec, *ctx])
    self.forward = _function(self._forward, [z_spec, *ctx])
    self.log_prob = _function(self._log_prob, [x_spec, *ctx])
    self.log_prob_hutchinson = _function(self._log_prob_hutchinson,
                                         [x_spec, seed_spec, *ctx])
    self.sample = _function(self._sample, [n_spec, seed_spec, *ctx_n])

  def _context(self, context):
    view = self._m.view
    return validation.check_events(
        context, [view.context_dim], view.dtype, view.name,
        "contexts", batch_ndims=1, in_graph=True)

  def _check(self, x, context=None):
    # The library's policy, with the shape checked in the graph too: a
    # loaded signature (and TF Serving) passes tensors of any shape.
    view = self._m.view
    x = validation.check_events(
        x, view.event_shape, view.dtype, view.name, self._m.what,
        batch_ndims=1, in_graph=True)
    if context is None:
      return x, None
    context = self._context(context)
    rows = tf.debugging.assert_equal(
        tf.shape(context)[0], tf.shape(x)[0],
        message=f"{view.name} expects one context row per example")
    with tf.control_dependencies([rows]):
      return x, tf.identity(context)

  def _inverse(self, x, context=None):
    x, context = self._check(x, context)
    sol = composite.solve(self._m.flow, x, "inverse", context)
    return {"z": sol.state, "log_det": sol.log_det}

  def _forward(self, z, context=None):
    z, context = self._check(z, context)
    sol = composite.solve(self._m.flow, z, "forward", context)
    return {"x": sol.state, "log_det": sol.log_det}

  def _log_prob(self, x, context=None):
    # Calls the traced `inverse` graph, so the solve is traced once.
    out = self.inverse(x) if context is None else self.inverse(x, context)
    return {"log_prob": density.log_density(self._m.view, out["z"],
                                            out["log_det"])}

  def _log_prob_hutchinson(self, x, seed, context=None):
    x, context = self._check(x, context)
    logp, _ = density.log_prob(self._m.view, x, context,
                               bijector=self._m.hutchinson,
                               seed=tf.stack([seed, 0]))
    return {"log_prob": logp}

  def _sample(self, n, seed, context=None):
    n = validation.check_count(n, self._m.view.name)
    if context is not None:
      context = self._context(context)
    # The same samples as `model.sample(n, seed=seed)`.
    return {"x": density.sample(self._m.view, n, seed, context,
                                bijector=self._m.flow)}


def export_model(model: "density.FlowView | density.HasFlowView",
                 path: _PathT, batch_size: int | None = None,
                 custom_gradients: bool = False,
                 jit_compile: bool | str = False) -> _PathT:
  """Writes a `FlowModel` or `FlowView` as a SavedModel with serving signatures.

  The SavedModel loads with `tf.saved_model.load(path)` in a process that has
  only TensorFlow. Every signature is also a callable attribute of the loaded
  object (e.g. `loaded.log_prob(x)`); all return dicts of tensors. With
  `B` the batch size, `E` the event shape and `float32` the model's variable
  dtype (`float32` under the mixed policies too, `float64` under
  `float64`), which is also the dtype of `model.log_prob` and
  `model.sample`:

  | signature | inputs | outputs |
  | --- | --- | --- |
  | `log_prob` (also `serving_default`) | `x: float32[B, *E]` | `log_prob: float32[B]` (the evaluation flow) |
  | `log_prob_hutchinson` | `x: float32[B, *E]`, `seed: int32[]` | `log_prob: float32[B]` |
  | `sample` | `n: int32[]`, `seed: int32[]` | `x: float32[n, *E]` |
  | `forward` (base -> data) | `z: float32[B, *E]` | `x: float32[B, *E]`, `log_det: float32[B]` |
  | `inverse` (data -> base) | `x: float32[B, *E]` | `z: float32[B, *E]`, `log_det: float32[B]` |

  Conditional models (`context_dim > 0`) take one more input, `context:
  float32[B, context_dim]` (`[n, context_dim]` for `sample`). `log_det` is
  log|det d output / d input|. Image models take dequantized images in
  [0, 1] (log-density in nats), and `forward`/`inverse` include their logit
  transform. A stack of blocks runs block 0 first in `inverse`.

  The signatures compute what the model computes (`tf_ffjord.cnf.density`):
  the evaluation flow (`model.eval_options`, by default at rtol = atol =
  1e-5 whatever the training tolerance), and `log_prob_hutchinson` that
  flow with the Hutchinson trace. `sample(n, seed)` gives the samples of
  `model.sample(n, seed=seed)`.

  Gradients: by default the solves are saved without the adjoint's custom
  gradient (a SavedModel would not keep it, and loading would warn): the
  loaded functions are differentiable by plain backpropagation through
  the saved solver steps, which is exact for the discretized solve and
  costs memory in the number of steps. `custom_gradients=True` saves the
  model's own gradient (the adjoint) instead.

  Every function checks its input at the boundary with the library's policy
  (`tf_ffjord.validation`): a wrong shape fails with the library's message
  (in the graph, as an `InvalidArgumentError`: a loaded signature accepts
  tensors of any shape), NaN or inf with `... input contains NaN or inf`,
  `sample` with `n < 0` says so; empty batches and `n = 0` return empty
  results.

  Serving runs without XLA by default. An XLA-compiled solve loop is
  compiled anew for every batch size a server sees, when the first request
  of that size arrives. Measured roughly (2 CPU cores shared with other
  jobs, so only the orders of magnitude count) on the toy MLP (3 x 64 tanh,
  dopri5, exact trace), `signatures["log_prob"]` at batch sizes 4, 64, 512
  and 37: with XLA, the first request of each new size took 10-19 s and a
  repeated one 3-36 ms; without XLA, the first request of the loaded model
  took 1.4 s, the first of every later new size 6-39 ms, a repeated one
  8-24 ms. One plain graph serves every batch size without compiling and
  wins end to end unless a server sees very few sizes for very long; pass
  `jit_compile=True` (with a fixed `batch_size`) for that case.

  Args:
    model: a `tf_ffjord.FlowModel` (e.g. `FFJORDModel`, `ImageFlow`), or
      the `FlowView` of a flow; the export reads only the view.
    path: output directory.
    batch_size: fix the batch dimension of the signatures (`None`: any).
    custom_gradients: serialize the model's gradient (the adjoint) with
      the functions, instead of saving them for plain backpropagation.
      Much slower to save with adaptive solvers, and not needed for
      serving.
    jit_compile: the served flows' `jit_compile`: `False` (default, see
      above), `True`, `"auto"`, or `"model"` to serve the model's
      evaluation flow as it is.

  Returns:
    `path`.

  #### Examples

  >>> model.export("/tmp/flow")  # doctest: +SKIP
  >>> loaded = tf.saved_model.load("/tmp/flow")  # doctest: +SKIP
  >>> loaded.log_prob(tf.zeros([3, 2]))["log_prob"].shape  # doctest: +SKIP
  TensorShape([3])
  """
  view = model if isinstance(model, density.FlowView) else model.flow_view
  return _save(_Servable(view, batch_size, jit_compile, custom_gradients),
               path, custom_gradients)


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
