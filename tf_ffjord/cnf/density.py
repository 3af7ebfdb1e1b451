"""Density and sampling of a flow on a base, in one place: the narrow `FlowView` of a model, base log-density plus log-det, sampling, dequantization and bits/dim."""

from collections.abc import Callable, Mapping, Sequence
import dataclasses
from typing import Any, Protocol, TypeVar

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord.cnf import composite
from tf_ffjord.cnf import image_transforms
from tf_ffjord.cnf import regularizers as regs
from tf_ffjord._types import SeedLike, TensorLike
from tf_ffjord.cnf.augmented_ode import Solution

__all__ = ["EVAL_TOLERANCE", "FlowView", "HasFlowView", "eval_options",
           "log_density", "log_prob", "nll_logs", "base_sample", "sample",
           "dequantize", "unless_empty"]

# rtol and atol of the evaluation flow unless `eval_options` says otherwise:
# the FFJORD paper's evaluation tolerance, whatever the training one.
EVAL_TOLERANCE = 1e-5

_T = TypeVar("_T")
# An optimizer step: `minimize(loss_fn)` runs `loss_fn() -> (loss, aux)`
# under a gradient tape, applies the gradients and returns `(loss, aux)`.
Minimize = Callable[[Callable[[], tuple[tf.Tensor, Any]]],
                    tuple[tf.Tensor, Any]]


@dataclasses.dataclass(frozen=True, eq=False)
class FlowView:
  """The narrow view of a flow model that density, objectives and export see.

  A `FlowModel` builds one (`FlowModel.flow_view`); the functions of this
  module, the `Objective`s and `tf_ffjord.saving.export` read nothing else
  of the model. A view of a bare flow works as well (see the example).

  Attributes:
    bijector: the training flow; `forward` maps base samples to data.
    base: the base distribution; its `log_prob` sums over the event.
    event_shape: shape of one example.
    eval_bijector: the evaluation flow (`log_prob`, `sample`, export);
      default the training flow.
    dtype: the dtype of inputs, states, log-dets, densities and samples:
      a model's variable dtype (`float32` under `mixed_bfloat16` or
      `mixed_float16`, whose low precision stays inside each evaluation of
      the dynamics), so that the model, its objectives and its SavedModel
      agree to rounding under every policy.
    dequantize: the data are 8-bit images (samples are clipped into
      [0, 1], `nll_logs` adds `bpd`).
    context_dim: width of the conditioning vector (0: none).
    minimize: the optimizer step of objectives (`Minimize`), or `None` for
      a view that only evaluates.
    losses: the model's own losses (e.g. weight penalties), added to an
      objective's loss.
    variables: every variable an export captures.
    name: the owner's name, for error messages.

  #### Examples

  >>> flow = FFJORD(ODENet(hidden=(8,), dim=2), solver="rk4")
  >>> base = tfp.distributions.MultivariateNormalDiag(tf.zeros([2]))
  >>> view = FlowView(flow, base, (2,))
  >>> log_prob(view, tf.zeros([3, 2]))[0].shape
  TensorShape([3])
  """
  bijector: tfp.bijectors.Bijector
  base: tfp.distributions.Distribution
  event_shape: tuple[int, ...]
  eval_bijector: tfp.bijectors.Bijector | None = None
  dtype: tf.dtypes.DType = tf.float32
  dequantize: bool = False
  context_dim: int = 0
  minimize: Minimize | None = None
  losses: Callable[[], Sequence[tf.Tensor]] = tuple
  variables: Sequence[tf.Variable] = ()
  name: str = "flow"

  def __post_init__(self):
    object.__setattr__(self, "event_shape",
                       tuple(int(d) for d in self.event_shape))
    object.__setattr__(self, "dtype", tf.as_dtype(self.dtype))
    if self.eval_bijector is None:
      object.__setattr__(self, "eval_bijector", self.bijector)

  def __call__(self, x: TensorLike, context: TensorLike | None = None,
               training: bool = False) -> tf.Tensor:
    """log p(x) by the training flow (`training`) or the evaluation flow.

    As a `FlowModel` called on checked input: an objective's `loss` may
    call its view as it would the model.
    """
    return log_prob(self, x, context,
                    self.bijector if training else self.eval_bijector)[0]

  @property
  def event_size(self) -> int:
    """Values per example."""
    return int(np.prod(self.event_shape))

  def step(self, loss_fn: Callable[[], tuple[tf.Tensor, Any]]
           ) -> tuple[tf.Tensor, Any]:
    """`minimize(loss_fn)`: one optimizer step; returns `(loss, aux)`.

    Raises:
      ValueError: a view without an optimizer step.
    """
    if self.minimize is None:
      raise ValueError(f"The view of {self.name} has no optimizer step: "
                       "build it with minimize=... (FlowModel.flow_view "
                       "does after compile).")
    return self.minimize(loss_fn)

  def nfe_backward(self) -> tf.Tensor:
    """The NFE of the last adjoint solves, summed over the training blocks.

    Known after the gradient of a step (the adjoint counts them in a
    variable of each `FFJORD` block).
    """
    counts = [b.nfe_backward.read_value()
              for b in composite.ffjord_blocks(self.bijector)]
    return tf.add_n(counts) if counts else tf.constant(0, tf.int32)


class HasFlowView(Protocol):
  """A model that exposes its `FlowView` (e.g. `FlowModel`)."""

  @property
  def flow_view(self) -> FlowView: ...

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


def log_density(view: FlowView, z: tf.Tensor,
                log_det: tf.Tensor) -> tf.Tensor:
  """log p(x) = log p_base(z) + log|det dz/dx|, of a solve's z and log-det."""
  return view.base.log_prob(z) + log_det


def log_prob(view: FlowView, x: TensorLike,
             context: TensorLike | None = None,
             bijector: tfp.bijectors.Bijector | None = None,
             seed: SeedLike = None,
             regularizers: Sequence[regs.RegularizerLike] = ()
             ) -> tuple[tf.Tensor, Solution]:
  """log p(x) by one inverse solve, and the solve.

  Args:
    view: the flow.
    x: `[batch, *event_shape]` in `view.dtype`.
    context: optional `[batch, context_dim]`.
    bijector: the flow to solve; default the evaluation flow.
    seed: optional `[2]` stateless seed of Hutchinson probes.
    regularizers: RNODE regularizers (names or `Regularizer`s) to
      integrate along the solve.

  Returns:
    `(log p(x), solution)`; `solution.regularization` maps each
    regularizer's name to its `[batch]` integral.
  """
  checked = regs.check(regularizers)
  sol = composite.solve(view.eval_bijector if bijector is None else bijector,
                    x, "inverse", context, seed=seed, regularizers=checked)
  sol = sol._replace(regularization={
      r.name: sol.regularization[r.name] for r in checked})
  return log_density(view, sol.state, sol.log_det), sol


def nll_logs(view: FlowView, log_p: tf.Tensor) -> dict[str, tf.Tensor]:
  """`{"nll": mean -log p}` of a batch, and its `bpd` for image flows.

  The one place bits/dim joins the logs (the model's evaluation and the
  objectives' training logs).
  """
  nll = -tf.reduce_mean(log_p)
  logs = {"nll": nll}
  if view.dequantize:
    logs["bpd"] = image_transforms.bits_per_dim(-nll, view.event_size)
  return logs


def base_sample(view: FlowView, n: TensorLike,
                seed: TensorLike) -> tf.Tensor:
  """`n` standard-normal base samples from the int32 scalar `seed`."""
  shape = tf.concat([[n], view.event_shape], 0)
  return tf.random.stateless_normal(shape, tf.stack([seed, 0]),
                                    dtype=view.dtype)


def sample(view: FlowView, n: TensorLike, seed: TensorLike,
           context: TensorLike | None = None,
           bijector: tfp.bijectors.Bijector | None = None) -> tf.Tensor:
  """`n` samples: base samples from `seed` integrated forward.

  The same in the model (`FlowModel.sample`) and its SavedModel. Image
  flows' samples are clipped into [0, 1]. `n = 0` gives an empty batch
  without a solve.

  Args:
    view: the flow.
    n: int32 scalar (checked by the caller).
    seed: int32 scalar.
    context: optional `[n, context_dim]`.
    bijector: the flow; default the evaluation flow.
  """
  flow = view.eval_bijector if bijector is None else bijector
  shape = tf.concat([[n], view.event_shape], 0)

  def solve():
    z = base_sample(view, n, seed)
    return composite.solve(flow, z, "forward", context).state

  x = unless_empty(tf.get_static_value(n), n, solve,
                   lambda: tf.zeros(shape, view.dtype))
  return tf.clip_by_value(x, 0.0, 1.0) if view.dequantize else x


def dequantize(view: FlowView, images_or_x: tf.Tensor,
               seed: SeedLike = None) -> tf.Tensor:
  """A batch of an image flow in `view.dtype`: integer images dequantized.

  Float inputs are taken as dequantized already (e.g. by a seeded
  pipeline) and only cast.
  """
  x = images_or_x
  if view.dequantize and x.dtype.is_integer:
    x = image_transforms.dequantize(x, seed=seed)
  return tf.cast(x, view.dtype)


def unless_empty(static_rows: int | None, rows: TensorLike,
                 solve: Callable[[], _T], empty: Callable[[], _T]) -> _T:
  """`solve()`, or `empty()` for 0 rows: an empty batch needs no solve.

  (An adaptive solver's error norm over no rows is NaN.) Decided in Python
  when the row count is static, else by `tf.cond`.
  """
  if static_rows is not None:
    return empty() if int(static_rows) == 0 else solve()
  return tf.cond(rows > 0, solve, empty)
