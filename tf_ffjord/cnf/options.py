"""Loose solve options (`rtol=`, `gradient=`, `noise=`, `train_time=`) as `FFJORD` arguments.

`FFJORD` takes strategy objects: a solver (`make_solver("dopri5", rtol=..)`),
an adjoint, a trace estimator (`Hutchinson("gaussian")`), an end time
(`EndTime(1.0)` to learn T). Higher-level builders (`FFJORDModel`,
`ImageFlow`, `VAE`, the command lines, `eval_options` mappings) still take
the loose options; `ffjord_arguments` is the one place that translates them,
and `reject_loose` the error `FFJORD` raises when it is handed one.

#### Examples

>>> args = ffjord_arguments({"solver": "rk4", "step_size": 0.5,
...                          "gradient": "adjoint", "noise": "gaussian"})
>>> args["solver"].controller.num_steps, args["adjoint"], args["trace"]
(2, 'adjoint', Hutchinson(noise='gaussian', probes=1))
"""

from collections.abc import Mapping
from typing import Any

from tf_ffjord import solvers
from tf_ffjord.cnf import end_time
from tf_ffjord.cnf import trace_estimators

__all__ = ["LOOSE_OPTIONS", "ffjord_arguments", "reject_loose"]

# Each loose option and the FFJORD argument that carries it now.
LOOSE_OPTIONS = {
    **{k: f"solver=make_solver('dopri5', {k}=...) (or Solver(method, "
          "AdaptiveStepSize(...)))" for k in solvers.SOLVER_OPTIONS
       if k != "step_size"},
    "step_size": "solver=make_solver('rk4', step_size=...) (or "
                 "Solver('rk4', ConstantStepSize(num_steps)))",
    "gradient": "adjoint=... (a name in solvers.GRADIENTS or a "
                "solvers.Adjoint)",
    "noise": "trace=Hutchinson('gaussian')",
    "train_time": "time_length=EndTime(initial_T) (a learned T)",
}


def reject_loose(unknown: Mapping[str, Any], owner: str = "FFJORD") -> None:
  """Raises a `TypeError` naming the argument that replaces each loose option.

  Raises:
    TypeError: if `unknown` is not empty.
  """
  if not unknown:
    return
  fixes = [f"{k}= -> {LOOSE_OPTIONS[k]}" for k in unknown
           if k in LOOSE_OPTIONS]
  others = sorted(k for k in unknown if k not in LOOSE_OPTIONS)
  message = f"{owner} got unexpected arguments {sorted(unknown)}."
  if fixes:
    message += (" Solve options now travel in strategy objects: "
                + "; ".join(fixes) + " (tf_ffjord.cnf.options."
                "ffjord_arguments translates a dict of loose options).")
  if others:
    message += f" Unknown: {others}."
  raise TypeError(message)


def ffjord_arguments(options: Mapping[str, Any], base: Any = None,
                     name: str = "ffjord") -> dict[str, Any]:
  """`FFJORD` arguments from a mapping that may hold loose options.

  - `rtol`, `atol`, `max_num_steps`, `step_size`, `first_step_size` build
    the solver with `solvers.make_solver` (of `options["solver"]`, else of
    `base.solver`, else of `"dopri5"`);
  - `gradient` becomes `adjoint`;
  - `noise` makes the Hutchinson estimator of a trace name (of
    `options["trace"]`, else of `base.trace`, else `"hutchinson"`);
  - `train_time=True` makes an `EndTime` of a float `time_length`, named
    `f"{name}_end_time"`.

  Other entries pass through unchanged.

  Args:
    options: `FFJORD` arguments and loose options.
    base: an `FFJORD` whose solver and trace the options modify (as in
      `composite.with_options`), or `None`.
    name: the flow's name (names a new `EndTime`).

  Returns:
    A dict of `FFJORD` constructor arguments.
  """
  out = dict(options)
  loose = {k: out.pop(k) for k in solvers.SOLVER_OPTIONS if k in out}
  if loose:
    solver = out.get("solver", getattr(base, "solver", "dopri5"))
    out["solver"] = solvers.make_solver(solver, **loose)
  if "gradient" in out:
    out["adjoint"] = out.pop("gradient")
  if "noise" in out:
    noise = out.pop("noise")
    trace = out.get("trace", getattr(base, "trace", "hutchinson"))
    if isinstance(trace, trace_estimators.Hutchinson):  # the block's, new noise
      trace = trace_estimators.Hutchinson(noise, trace.probes)
    out["trace"] = trace_estimators.make_estimator(trace, noise)
  if out.pop("train_time", False):
    out["time_length"] = end_time.resolve(
        out.get("time_length", 1.0), True, name=f"{name}_end_time")
  return out
