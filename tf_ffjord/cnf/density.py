"""The density and the samples of a `FlowModel`, in one place: the dtype rule, base log-density plus log-det, sampling, dequantization and bits/dim."""

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord.cnf import composite as flows
from tf_ffjord.cnf import image_transforms as images
from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf.augmented_ode import Solution

if TYPE_CHECKING:
  from tf_ffjord.model.flow_model import FlowModel

__all__ = ["EVAL_TOLERANCE", "dtype", "eval_options", "log_prob", "density",
           "base_sample", "sample", "dequantize", "bits_per_dim",
           "unless_empty"]

# rtol and atol of the evaluation flow unless `eval_options` says otherwise:
# the FFJORD paper's evaluation tolerance, whatever the training one.
EVAL_TOLERANCE = 1e-5

_T = TypeVar("_T")


def dtype(model: "FlowModel") -> tf.dtypes.DType:
  """The dtype of a model's inputs, states, log-dets, densities and samples.

  The variable dtype: `float32` under `mixed_bfloat16` or `mixed_float16`,
  whose low precision stays inside each evaluation of the dynamics (they
  cast their input down and their output back); `float64` under
  `float64`. The model, its objectives and its SavedModel all take and
  return this dtype, so that they agree to rounding under every policy.
  """
  return tf.as_dtype(model.variable_dtype)


def eval_options(options: Mapping[str, Any] | None,
                 event_size: int) -> dict[str, Any]:
  """A model's evaluation options: the given ones over the defaults.

  The tolerances default to `EVAL_TOLERANCE` whatever the training ones;
  without any `options`, the trace is exact for events of up to 64 values
  (else the training trace).

  Args:
    options: a dict of `FFJORD` options, or `None`.
    event_size: values per example.

  Returns:
    The dict of options of the evaluation flow.

  #### Examples

  >>> eval_options(None, 2)
  {'rtol': 1e-05, 'atol': 1e-05, 'trace': 'exact'}
  >>> eval_options({"rtol": 1e-3}, 784)
  {'rtol': 0.001, 'atol': 1e-05}
  """
  defaults: dict[str, Any] = {"rtol": EVAL_TOLERANCE, "atol": EVAL_TOLERANCE}
  if options is None and event_size <= 64:
    defaults["trace"] = "exact"
  return {**defaults, **dict(options or {})}


def density(model: "FlowModel", z: tf.Tensor,
            log_det: tf.Tensor) -> tf.Tensor:
  """log p(x) = log N(z) + log|det dz/dx|, of a solve's end state and log-det."""
  return model.base.log_prob(z) + log_det


def log_prob(model: "FlowModel", x: TensorLike,
             context: TensorLike | None = None,
             bijector: tfp.bijectors.Bijector | None = None,
             seed: SeedLike = None,
             regularizers: Sequence[str] = ()) -> tuple[tf.Tensor, Solution]:
  """log p(x) by one inverse solve, and the solve.

  Args:
    model: a `FlowModel`.
    x: `[batch, *event_shape]` in `dtype(model)`.
    context: optional `[batch, context_dim]`.
    bijector: the flow to solve; default the evaluation flow.
    seed: optional `[2]` stateless seed of Hutchinson probes.
    regularizers: RNODE regularizers to integrate along the solve.

  Returns:
    `(log p(x), solution)`.
  """
  sol = flows.solve(model.eval_bijector if bijector is None else bijector,
                    x, "inverse", context, seed=seed,
                    regularizers=regularizers)
  return density(model, sol.state, sol.log_det), sol


def base_sample(model: "FlowModel", n: TensorLike,
                seed: TensorLike) -> tf.Tensor:
  """`n` standard-normal base samples from the int32 scalar `seed`."""
  shape = tf.concat([[n], model.event_shape], 0)
  return tf.random.stateless_normal(shape, tf.stack([seed, 0]),
                                    dtype=dtype(model))


def sample(model: "FlowModel", n: TensorLike, seed: TensorLike,
           context: TensorLike | None = None,
           bijector: tfp.bijectors.Bijector | None = None) -> tf.Tensor:
  """`n` samples: base samples from `seed` integrated forward.

  The same in the model (`FlowModel.sample`) and its SavedModel. Image
  models' samples are clipped into [0, 1]. `n = 0` gives an empty batch
  without a solve.

  Args:
    model: a `FlowModel`.
    n: int32 scalar (checked by the caller).
    seed: int32 scalar.
    context: optional `[n, context_dim]`.
    bijector: the flow; default the evaluation flow.
  """
  flow = model.eval_bijector if bijector is None else bijector
  shape = tf.concat([[n], model.event_shape], 0)

  def solve():
    z = base_sample(model, n, seed)
    return flows.solve(flow, z, "forward", context).state

  x = unless_empty(tf.get_static_value(n), n, solve,
                   lambda: tf.zeros(shape, dtype(model)))
  return tf.clip_by_value(x, 0.0, 1.0) if model.dequantize else x


def dequantize(model: "FlowModel", images_or_x: tf.Tensor,
               seed: SeedLike = None) -> tf.Tensor:
  """A batch of an image model in `dtype(model)`: integer images dequantized.

  Float inputs are taken as dequantized already (e.g. by a seeded
  pipeline) and only cast.
  """
  x = images_or_x
  if model.dequantize and x.dtype.is_integer:
    x = images.dequantize(x, seed=seed)
  return tf.cast(x, dtype(model))


def bits_per_dim(model: "FlowModel", log_p: TensorLike) -> tf.Tensor:
  """bits/dim of log-densities (nats) of a model's dequantized images."""
  return images.bits_per_dim(log_p, model.event_size)


def unless_empty(static_rows: int | None, rows: TensorLike,
                 solve: Callable[[], _T], empty: Callable[[], _T]) -> _T:
  """`solve()`, or `empty()` for 0 rows: an empty batch needs no solve.

  (An adaptive solver's error norm over no rows is NaN.) Decided in Python
  when the row count is static, else by `tf.cond`.
  """
  if static_rows is not None:
    return empty() if int(static_rows) == 0 else solve()
  return tf.cond(rows > 0, solve, empty)
