"""How a solve is differentiated: `BacksolveAdjoint`, `InterpolatedAdjoint` or `Backprop`."""

from collections.abc import Sequence
import dataclasses
from typing import Callable, Optional

import tensorflow as tf

from tf_ffjord._types import OdeFn
from tf_ffjord.solvers.fixed_grid import ConstantStepSize
from tf_ffjord.solvers.protocols import Adjoint
from tf_ffjord.solvers.result import check_status
from tf_ffjord.solvers.step_size import AdaptiveStepSize

__all__ = ["Backprop", "BacksolveAdjoint", "InterpolatedAdjoint"]

# `run(fn, t0, t1, ys, cs, controller, first_step=None)` ->
# `(y1, nfe, status, h)`: a solve's (possibly compiled) integration loop.
_Run = Callable[..., tuple]
_Controller = AdaptiveStepSize | ConstantStepSize


def _dynamics_vjp(fn, t, y, cs, train, a):
  """`(f, a^T df/d[y, cs, train])`: the dynamics and their VJP, both adjoints' unit of work."""
  with tf.GradientTape(watch_accessed_variables=False) as tape:
    tape.watch(y)
    tape.watch(cs)
    for v in train:
      tape.watch(v)
    f = fn(t, y, cs)
  return f, tape.gradient(f, y + cs + train, output_gradients=a,
                          unconnected_gradients="zero")


class _ParamAdjoints:
  """The variables' adjoints as state components of the state's dtype, one per variable.

  Not one flat vector: the vector would concatenate each stage's gradients,
  and XLA fuses those concatenations into the step's stage combination, a
  loop fusion that reads some 40 operands for every element (1.1 ms per
  backward step for a 64-64 MLP's 4.6k weights, four evaluations of its
  adjoint). As separate components each weight costs a few elementwise ops
  per stage. The seminorm leaves them out of the error norm (no norm ops).
  Variables of another dtype (float32 weights in a float64 solve) integrate
  with the state's step sizes and come back in their own dtype.
  """

  def __init__(self, variables, dtype):
    self.shapes = [v.shape for v in variables]
    self.dtypes = [v.dtype for v in variables]
    self.dtype = dtype

  def zeros(self):
    """The initial adjoints: zeros, one tensor per variable."""
    return [tf.zeros(s, self.dtype) for s in self.shapes]

  def pack(self, grads):
    """`grads` (one per variable) as the state's parameter components."""
    # A gather's gradient comes as IndexedSlices: made dense for the state.
    return [tf.cast(tf.convert_to_tensor(g), self.dtype) for g in grads]

  def unpack(self, parts):
    """The parameter components back in the variables' dtypes."""
    return [tf.cast(p, d) for p, d in zip(parts, self.dtypes)]

  def __len__(self):
    return len(self.shapes)


def _backward_start(dys, variables, y1):
  """The start of a backward solve: the variables, the floating ones to train, the state cotangents (None -> 0) and their adjoints' layout."""
  variables = list(variables or [])
  train = [v for v in variables if v.dtype.is_floating]
  dy = [tf.zeros_like(y) if d is None else d
        for y, d in zip(y1, dys[:len(y1)])]
  return variables, train, dy, _ParamAdjoints(train, y1[0].dtype)


def _with_variable_grads(grads, params, variables):
  """The custom gradient's return: `grads`, and one per variable if any."""
  if not variables:
    return grads
  it = iter(params)
  return grads, [next(it) if v.dtype.is_floating else None for v in variables]


@dataclasses.dataclass(frozen=True)
class Backprop(Adjoint):
  """Differentiates through the solver's own operations.

  Exact gradients of the discretized solve; memory grows with the number of
  steps (every stage is kept). The natural choice for fixed grids.
  """

  def __call__(self, run: _Run, fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor,
               ys: Sequence[tf.Tensor], cs: Sequence[tf.Tensor],
               controller: _Controller) -> tuple:
    """Runs the forward solve; autodiff sees its operations."""
    return run(fn, t0, t1, ys, cs, controller)


@dataclasses.dataclass(frozen=True)
class BacksolveAdjoint(Adjoint):
  """The adjoint sensitivity method: gradients by a second, backward solve.

  Memory is constant in the number of steps. The backward solve integrates
  the state, its adjoint a = dL/dy and the parameter adjoints from t1 back to
  t0, starting from the forward solve's last step size. With `seminorm=True`
  only the state and its adjoint enter the error norm, not the parameter
  adjoints (Kidger, Chen & Lyons, 2021): fewer backward steps at no loss of
  accuracy in the state. Gradients reach the initial state, the constants
  and the trainable variables the dynamics reads.

  Args:
    seminorm: leave the parameter adjoints out of step control.
    on_backward_nfe: optional callable taking the backward solve's NFE (an
      int32 scalar tensor), e.g. a variable's `assign`. The custom gradient
      returns only gradients, so this side channel is the one way to report
      it.

  #### References

  [1]: Patrick Kidger, Ricky T. Q. Chen, Terry Lyons. "Hey, that's not an
       ODE": Faster ODE Adjoints via Seminorms. ICML 2021.
       https://arxiv.org/abs/2009.09457
  """
  seminorm: bool = True
  on_backward_nfe: Optional[Callable] = None

  def backward_weights(self, weights: Sequence[float],
                       num_params: int) -> tuple[float, ...]:
    """Error weights of the backward state [y, a, parameter adjoints]."""
    return (tuple(weights) * 2
            + ((0.0,) if self.seminorm else (1.0,)) * num_params)

  def __call__(self, run: _Run, fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor,
               ys: Sequence[tf.Tensor], cs: Sequence[tf.Tensor],
               controller: _Controller) -> tuple:
    """Runs the forward solve under a custom gradient.

    Args:
      run: `run(fn, t0, t1, ys, cs, controller, first_step=None)` ->
        `(y1, nfe, status, h)`, the (possibly XLA-compiled) integration loop.
      fn: `fn(t, ys, cs)` -> list of dy/dt.
      t0: initial time, scalar tensor.
      t1: final time, scalar tensor.
      ys: list of initial state tensors.
      cs: list of constant tensors.
      controller: the step-size controller of the forward solve.

    Returns:
      `(y1, nfe, status, h)` of the forward solve.
    """
    n_y, n_c = len(ys), len(cs)

    @tf.custom_gradient
    def adjoint_solve(*args):
      ys, cs = list(args[:n_y]), list(args[n_y:])
      y1, nfe, status, h_last = run(fn, t0, t1, ys, cs, controller)

      def grad_fn(*dys, variables=None):
        variables, train, dy, params = _backward_start(dys, variables, y1)
        n_p = n_c + len(params)

        def aug_fn(t, aug, cs):
          y, a = aug[:n_y], aug[n_y:2 * n_y]
          f, g = _dynamics_vjp(fn, t, y, cs, train, a)
          return (f + [-gi for gi in g[:n_y + n_c]]
                  + params.pack([-gi for gi in g[n_y + n_c:]]))

        aug0 = y1 + dy + [tf.zeros_like(c) for c in cs] + params.zeros()
        back = controller
        if not isinstance(controller, ConstantStepSize):
          back = dataclasses.replace(controller, error_weights=(
              self.backward_weights(controller.weights(n_y), n_p)))
        backward = getattr(run, "backward", run)  # see solve._integrator
        out, bnfe, bstatus, _ = backward(aug_fn, t1, t0, aug0, cs, back,
                                         first_step=h_last)
        out = check_status(bstatus, out, "adjoint (backward)",
                           getattr(back, "max_num_steps", None))
        if self.on_backward_nfe is not None:
          # tf.function's automatic control dependencies run this stateful
          # call, ordered before later reads of the same variable.
          self.on_backward_nfe(bnfe)
        return _with_variable_grads(out[n_y:2 * n_y + n_c],
                                    params.unpack(out[2 * n_y + n_c:]),
                                    variables)

      return y1 + [nfe, status, h_last], grad_fn

    out = adjoint_solve(*(list(ys) + list(cs)))
    return out[:n_y], out[n_y], out[n_y + 1], out[n_y + 2]


@dataclasses.dataclass(frozen=True)
class InterpolatedAdjoint(Adjoint):
  """The adjoint method with the state read from the forward solve's dense output.

  The backward solve integrates only the adjoint a = dL/dy and the
  parameter adjoints from t1 back to t0; the state y(t) at which it
  evaluates the dynamics comes from the forward solve's dense output
  (the continuous extension of a method with `b_mid`, e.g. dopri5,
  `dense_output.py`) instead of being solved
  backwards alongside. Step control then covers a alone: the backward solve
  no longer has to follow the state to the tolerance a second time, and
  its steps stay few while those of `BacksolveAdjoint` grow with the
  forward's as a net learns. Memory: five state-sized tensors per accepted
  forward step (no activations), against `BacksolveAdjoint`'s constant.

  The forward loop records its steps in dynamically sized buffers, which
  XLA cannot compile: it runs plain (the backward loop may still be
  compiled), and the whole solve must not sit inside an XLA-compiled
  function; use `BacksolveAdjoint` there.

  Args:
    on_backward_nfe: as in `BacksolveAdjoint`.

  #### References

  [1]: Talgat Daulbaev, Alexandr Katrutsa, Larisa Markeeva, Julia Gusak,
       Andrzej Cichocki, Ivan Oseledets. Interpolation Technique to Speed Up
       Gradients Propagation in Neural ODEs. NeurIPS 2020.
       https://arxiv.org/abs/2003.05271
  """
  on_backward_nfe: Optional[Callable] = None

  def __call__(self, run: _Run, fn: OdeFn, t0: tf.Tensor, t1: tf.Tensor,
               ys: Sequence[tf.Tensor], cs: Sequence[tf.Tensor],
               controller: _Controller) -> tuple:
    """Runs the forward solve under a custom gradient; see `BacksolveAdjoint`."""
    if isinstance(controller, ConstantStepSize):
      raise ValueError("InterpolatedAdjoint needs adaptive steps (e.g. dopri5); "
                       "fixed grids are differentiated best by Backprop().")
    n_y, n_c = len(ys), len(cs)

    @tf.custom_gradient
    def adjoint_solve(*args):
      ys, cs = list(args[:n_y]), list(args[n_y:])
      y1, nfe, status, h_last, dense = run(fn, t0, t1, ys, cs, controller,
                                           record=True)
      record = dense.tensors()

      def grad_fn(*dys, variables=None):
        variables, train, dy, params = _backward_start(dys, variables, y1)
        n_p = n_c + len(params)

        def aug_fn(t, aug, consts):
          cs, rec = consts[:n_c], consts[n_c:]
          y = dense.from_tensors(rec)(tf.abs(t - t0))
          _, g = _dynamics_vjp(fn, t, y, cs, train, aug[:n_y])
          return ([-gi for gi in g[:n_y + n_c]]
                  + params.pack([-gi for gi in g[n_y + n_c:]]))

        aug0 = dy + [tf.zeros_like(c) for c in cs] + params.zeros()
        back = dataclasses.replace(controller, error_weights=(
            tuple(controller.weights(n_y)) + (0.0,) * n_p))
        backward = getattr(run, "backward", run)
        out, bnfe, bstatus, _ = backward(aug_fn, t1, t0, aug0, cs + record,
                                         back, first_step=h_last)
        out = check_status(bstatus, out, "adjoint (backward)",
                           back.max_num_steps)
        if self.on_backward_nfe is not None:
          self.on_backward_nfe(bnfe)
        return _with_variable_grads(out[:n_y + n_c],
                                    params.unpack(out[n_y + n_c:]), variables)

      return y1 + [nfe, status, h_last], grad_fn

    out = adjoint_solve(*(list(ys) + list(cs)))
    return out[:n_y], out[n_y], out[n_y + 1], out[n_y + 2]
