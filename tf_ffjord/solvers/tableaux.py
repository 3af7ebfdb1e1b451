"""Explicit Runge-Kutta methods as Butcher tableaux, and the one step that applies them."""

import collections
from collections.abc import Sequence
import math
from typing import Any

import tensorflow as tf

from tf_ffjord._types import OdeFn

__all__ = ["Tableau", "EULER", "MIDPOINT", "RK4", "BOSH3", "DOPRI5", "TSIT5",
           "METHODS", "combine", "rk_step"]

_TOL = 1e-9  # coefficients are given to ~16 digits


def _floats(values: Sequence[float], what: str) -> tuple[float, ...]:
  try:
    return tuple(float(v) for v in values)
  except (TypeError, ValueError):
    raise ValueError(f"Tableau {what} must be a sequence of numbers, got "
                     f"{values!r}.") from None


# The field names are spelled out in the call, where type checkers read them.
class Tableau(collections.namedtuple(
    "Tableau", ["name", "c", "a", "b", "b_error", "order", "fsal", "b_mid"])):
  """An explicit Runge-Kutta method, defined by its Butcher tableau alone.

  A method with an error estimate (`b_error`) can take adaptive steps; one
  with `b_mid` also has a dense output (the state between steps, which
  `InterpolatedAdjoint` reads). Built from its coefficients, a new method
  needs no edit of the library: pass `Solver(tableau, controller)` as
  `FFJORD(solver=...)`.

  Args:
    name: short name, e.g. `"dopri5"`.
    c: nodes, one per stage (`c[0] == 0`, `c[i] == sum(a[i - 1])`).
    a: stage weights; row `i` weighs stages `0..i` to form stage `i + 1`
      (shorter rows are padded with zeros).
    b: solution weights, one per stage (summing to 1).
    b_error: weights of the local error estimate, solution minus embedded
      solution (`b - b_hat`), one per stage, or `None` for methods without
      one (fixed grids only). Step control uses its norm, so its sign does
      not change the steps.
    order: order of the solution (the step-size exponent is `-1 / order`).
    fsal: "first same as last": the last stage is f(t + h, y_new), so an
      accepted step hands it to the next step as its first stage. `None`
      (default) detects it: the last node is 1 and the last row of `a` is
      `b`.
    b_mid: weights of a 4th-order value at the step's midpoint, one per
      stage, or `None`; with them an FSAL step has a dense output
      (`dense_output.py`).

  Raises:
    ValueError: coefficients of inconsistent shapes, nodes that are not the
      row sums, weights that do not sum to 1 (0 for `b_error`), a
      non-positive order, or `fsal=True` for a method that is not FSAL.

  #### Examples

  Heun's method with Euler embedded, an adaptive 2(1) pair:

  >>> heun_euler = Tableau("heun_euler", c=(0.0, 1.0), a=((1.0,),),
  ...                      b=(0.5, 0.5), b_error=(-0.5, 0.5), order=2)
  >>> heun_euler.fsal, heun_euler.stages
  (False, 2)
  """
  __slots__ = ()

  def __new__(cls, name: str, c: Sequence[float],
              a: Sequence[Sequence[float]], b: Sequence[float],
              b_error: Sequence[float] | None = None,
              order: int | None = None, fsal: bool | None = None,
              b_mid: Sequence[float] | None = None) -> "Tableau":
    c = _floats(c, "c")
    stages = len(c)
    if stages < 1 or c[0] != 0.0:
      raise ValueError(f"Tableau {name!r}: c must start with 0, got {c}.")
    a = tuple(_floats(row, f"a[{i}]") for i, row in enumerate(a))
    if len(a) != stages - 1:
      raise ValueError(f"Tableau {name!r}: a needs {stages - 1} rows for "
                       f"{stages} stages, got {len(a)}.")
    for i, row in enumerate(a):
      if len(row) > i + 1:
        raise ValueError(f"Tableau {name!r}: row a[{i}] may weigh stages "
                         f"0..{i} only (explicit method), got {len(row)} "
                         "weights.")
      if abs(sum(row) - c[i + 1]) > _TOL:
        raise ValueError(f"Tableau {name!r}: c[{i + 1}] = {c[i + 1]} must "
                         f"equal the sum of row a[{i}], {sum(row)}.")
    # The rows are tuples by now (_floats).
    a = tuple(row + (0.0,) * (i + 1 - len(row))  # type: ignore[operator]
              for i, row in enumerate(a))
    weights: dict[str, Any] = {"b": b, "b_error": b_error, "b_mid": b_mid}
    for key, value in weights.items():
      if value is None:
        continue
      value = _floats(value, key)
      if len(value) != stages:
        raise ValueError(f"Tableau {name!r}: {key} needs one weight per "
                         f"stage ({stages}), got {len(value)}.")
      weights[key] = value
    b, b_error, b_mid = weights["b"], weights["b_error"], weights["b_mid"]
    if b is None or abs(sum(b) - 1.0) > _TOL:
      raise ValueError(f"Tableau {name!r}: b must sum to 1, got {b}.")
    if b_error is not None and abs(sum(b_error)) > _TOL:
      raise ValueError(f"Tableau {name!r}: b_error (solution minus embedded "
                       f"solution) must sum to 0, got {sum(b_error)}.")
    if b_mid is not None and abs(sum(b_mid) - 0.5) > _TOL:
      raise ValueError(f"Tableau {name!r}: b_mid must sum to 1/2, got "
                       f"{sum(b_mid)}.")
    if not (isinstance(order, int) and order >= 1):
      raise ValueError(f"Tableau {name!r}: order must be a positive int, got "
                       f"{order!r}.")
    is_fsal = (stages > 1 and c[-1] == 1.0 and b[-1] == 0.0
               and all(math.isclose(x, y, abs_tol=_TOL)
                       for x, y in zip(a[-1], b)))
    if fsal is None:
      fsal = is_fsal
    elif fsal and not is_fsal:
      raise ValueError(f"Tableau {name!r}: fsal=True needs a last stage at "
                       "the new solution (c[-1] = 1, a[-1] = b, b[-1] = 0).")
    if b_mid is not None and not fsal:
      raise ValueError(f"Tableau {name!r}: b_mid (dense output) needs an "
                       "FSAL method, whose last stage is f at the new point.")
    return super().__new__(cls, str(name), c, a, b, b_error, order,
                           bool(fsal), b_mid)

  @property
  def stages(self) -> int:
    """Number of stages (evaluations per step, one fewer with FSAL)."""
    return len(self.c)

  @property
  def embedded(self) -> bool:
    """Whether it has an error estimate, so it can take adaptive steps."""
    return self.b_error is not None

  @property
  def dense_output(self) -> bool:
    """Whether its steps have a dense output (`b_mid` with FSAL)."""
    return self.b_mid is not None and self.fsal


EULER = Tableau("euler", c=(0.0,), a=(), b=(1.0,), order=1)
MIDPOINT = Tableau("midpoint", c=(0.0, 0.5), a=((0.5,),), b=(0.0, 1.0),
                   order=2)
RK4 = Tableau("rk4", c=(0.0, 0.5, 0.5, 1.0),
              a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
              b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), order=4)
# Bogacki & Shampine (1989), a 3(2) FSAL pair; the embedded 2nd-order
# weights are (7/24, 1/4, 1/3, 1/8).
BOSH3 = Tableau(
    "bosh3", c=(0.0, 1 / 2, 3 / 4, 1.0),
    a=((1 / 2,), (0.0, 3 / 4), (2 / 9, 1 / 3, 4 / 9)),
    b=(2 / 9, 1 / 3, 4 / 9, 0.0),
    b_error=(2 / 9 - 7 / 24, 1 / 3 - 1 / 4, 4 / 9 - 1 / 3, -1 / 8),
    order=3)
# Dormand & Prince (1980), RK5(4)7M: the 7th stage sits at the 5th-order
# solution, whose weights are the last row of `a`.
_DP_B = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0)
DOPRI5 = Tableau(
    "dopri5", c=(0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0),
    a=((1 / 5,), (3 / 40, 9 / 40), (44 / 45, -56 / 15, 32 / 9),
       (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
       (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
       _DP_B[:6]),
    b=_DP_B,
    b_error=(71 / 57600, 0.0, -71 / 16695, 71 / 1920, -17253 / 339200,
             22 / 525, -1 / 40),
    order=5,
    # Shampine (1986), "Some practical Runge-Kutta formulas": the midpoint
    # value of the 4th-order continuous extension.
    b_mid=(6025192743 / 60171106304, 0.0, 51252292925 / 130801643196,
           -2691868925 / 90256659456, 187940372067 / 3189068634112,
           -1776094331 / 39487288512, 11237099 / 470086768))
# Tsitouras (2011), a 5(4) FSAL pair that satisfies only the first column
# simplifying assumption, with smaller error terms than dopri5's.
_TS_B = (0.09646076681806523, 0.01, 0.4798896504144996, 1.379008574103742,
         -3.290069515436081, 2.324710524099774, 0.0)
TSIT5 = Tableau(
    "tsit5", c=(0.0, 0.161, 0.327, 0.9, 0.9800255409045097, 1.0, 1.0),
    a=((0.161,),
       (-0.008480655492356989, 0.335480655492357),
       (2.8971530571054935, -6.359448489975075, 4.3622954328695815),
       (5.325864828439257, -11.748883564062828, 7.4955393428898365,
        -0.09249506636175525),
       (5.86145544294642, -12.92096931784711, 8.159367898576159,
        -0.071584973281401, -0.028269050394068383),
       _TS_B[:6]),
    b=_TS_B,
    b_error=(-0.00178001105222577714, -0.0008164344596567469,
             0.007880878010261995, -0.1447110071732629, 0.5823571654525552,
             -0.45808210592918697, 1 / 66),
    order=5,
    # A 4th-order midpoint value: the minimum-norm solution of the order
    # conditions of the trees up to order 4 at theta = 1/2 (one of a line
    # of solutions; tests/solvers/test_tableaux.py checks its order).
    b_mid=(0.1114257489207335, 0.013197067390739337, 0.3778399896729754,
           -0.018471772229543715, 0.003142799070462657, 0.01577833690799852,
           -0.0029121697333655146))

METHODS = {m.name: m for m in (EULER, MIDPOINT, RK4, BOSH3, DOPRI5, TSIT5)}


def combine(y: Sequence[tf.Tensor] | None, h: tf.Tensor,
            coeffs: Sequence[float],
            ks: Sequence[Sequence[tf.Tensor]]) -> list[tf.Tensor]:
  """`[y[j] + h * sum_i coeffs[i] * ks[i][j]]` over the state components.

  The one stage combiner of every method. Zero weights are skipped (no op
  is built for them); `y=None` gives the bare weighted sum times h.

  Args:
    y: list of state tensors, or `None`.
    h: step size, a scalar tensor of the state's dtype.
    coeffs: Python floats, one per entry of `ks` used (extra `ks` ignored).
    ks: list of stages, each a list of tensors shaped like `y`.

  Returns:
    A list of tensors shaped like the components of `ks[0]`.

  #### Examples

  >>> float(combine([tf.constant(1.0)], tf.constant(0.5), (1.0, 3.0),
  ...               [[tf.constant(2.0)], [tf.constant(4.0)]])[0])
  8.0
  """
  out = []
  for j in range(len(ks[0])):
    acc = None
    for c, k in zip(coeffs, ks):
      if c:
        term = k[j] if c == 1.0 else c * k[j]
        acc = term if acc is None else acc + term
    if acc is None:  # all weights 0
      acc = 0.0 * ks[0][j]
    acc = h * acc
    out.append(acc if y is None else y[j] + acc)
  return out


def rk_step(fn: OdeFn, tableau: Tableau, t: tf.Tensor, y: list[tf.Tensor],
            h: tf.Tensor, k1: list[tf.Tensor] | None = None,
            ) -> tuple[list[tf.Tensor], list[list[tf.Tensor]], int]:
  """One explicit Runge-Kutta step from (t, y) with step h.

  Args:
    fn: `fn(t, y) -> dy/dt` on lists of tensors.
    tableau: a `Tableau`.
    t: scalar tensor, the start of the step.
    y: list of state tensors.
    h: signed scalar step (negative to integrate backwards).
    k1: `fn(t, y)` if already known (FSAL, or the solve's first evaluation).

  Returns:
    `(y_new, ks, nfe)`: the new state, the list of stages (each a list of
    tensors; with FSAL the last is f(t + h, y_new)), and the number of
    evaluations made here.
  """
  nfe = 0
  if k1 is None:
    k1 = list(fn(t, y))
    nfe += 1
  ks = [k1]
  y_stage = y
  for i, row in enumerate(tableau.a):
    y_stage = combine(y, h, row, ks)
    ks.append(list(fn(t + tableau.c[i + 1] * h, y_stage)))
    nfe += 1
  # With FSAL the last stage was evaluated at the new solution itself.
  y_new = y_stage if tableau.fsal else combine(y, h, tableau.b, ks)
  return y_new, ks, nfe
