"""Explicit Runge-Kutta methods as Butcher tableaux, and the one step that applies them."""

import collections

__all__ = ["Tableau", "EULER", "MIDPOINT", "RK4", "DOPRI5", "METHODS",
           "combine", "rk_step"]

Tableau = collections.namedtuple(
    "Tableau", ["name", "c", "a", "b", "b_error", "order", "fsal", "b_mid"],
    defaults=(None,))
Tableau.__doc__ = """An explicit Runge-Kutta method.

Fields:
  name: short name, e.g. `"dopri5"`.
  c: nodes, one per stage (`c[0] == 0`).
  a: stage weights; row `i` weighs stages `0..i` to form stage `i + 1`.
  b: solution weights, one per stage (with FSAL, the last stage is f at the
    new point and its weight is 0).
  b_error: weights of the local error estimate (solution minus embedded
    solution), one per stage, or `None` for methods without one.
  order: order of the solution.
  fsal: "first same as last": the last stage is f(t + h, y_new), so an
    accepted step hands it to the next step as its first stage.
  b_mid: weights of a 4th-order value at the step's midpoint, one per stage,
    or `None`; with them a step has a dense output (`dense_output.py`).
"""

EULER = Tableau("euler", c=(0.0,), a=(), b=(1.0,), b_error=None, order=1,
                fsal=False)
MIDPOINT = Tableau("midpoint", c=(0.0, 0.5), a=((0.5,),), b=(0.0, 1.0),
                   b_error=None, order=2, fsal=False)
RK4 = Tableau("rk4", c=(0.0, 0.5, 0.5, 1.0),
              a=((0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)),
              b=(1 / 6, 1 / 3, 1 / 3, 1 / 6), b_error=None, order=4,
              fsal=False)
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
    order=5, fsal=True,
    # Shampine (1986), "Some practical Runge-Kutta formulas": the midpoint
    # value of the 4th-order continuous extension.
    b_mid=(6025192743 / 60171106304, 0.0, 51252292925 / 130801643196,
           -2691868925 / 90256659456, 187940372067 / 3189068634112,
           -1776094331 / 39487288512, 11237099 / 470086768))

METHODS = {m.name: m for m in (EULER, MIDPOINT, RK4, DOPRI5)}


def combine(y, h, coeffs, ks):
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


def rk_step(fn, tableau, t, y, h, k1=None):
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
