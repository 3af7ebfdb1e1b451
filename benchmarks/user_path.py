"""Training as users call it: `TransformedDistribution.log_prob` in a plain `tf.function`.

Both `tf_ffjord.FFJORD` and `tfp.bijectors.FFJORD` train the same `ODENet`
(same initial weights, same batches) through
`tfd.TransformedDistribution(base, bijector).log_prob` inside an ordinary
`tf.function` (no XLA of the caller's own), with Adam, Dormand-Prince at the
same tolerances and a Hutchinson trace. Each implementation runs in its own
process pinned to its own core, both at the same time (`--cores 0,1`), so
that both see the same machine. Two runs:

- `toy_run`: 8gaussians, MLP 64-64-64 tanh concatsquash, batch 512, T = 0.5,
  trained until the test KL to the true density is <= 0.05 nats: test NLL
  (exact trace, dopri5 at 1e-5, on a fixed sample of fresh data, the same
  evaluator for both models) minus the true entropy
  (`tf_ffjord.datasets.toy.entropy("8gaussians")`, 2.834), evaluated every
  `eval_every` steps. Evaluation time is not training time.
- `miniboone_run`: the 43-D MINIBOONE shape (MLP 860x2 softplus
  concatsquash, batch 1000; rows of `miniboone/val.npy` when present, else a
  synthetic Gaussian of that shape), 200 training steps, so that the net
  moves away from its initialization (both implementations' NFE grow over
  the first hundred); the step time is the median over the second half, and
  `run_windows` shows the whole run.

Every step logs its wall and CPU time, forward NFE and backward NFE (both
counted the same way: a counter in the dynamics), so a run shows where the
time goes as training proceeds.
"""

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

import tf_ffjord
from benchmarks import DATA_DIR

__all__ = ["RunCase", "RUN_CASES", "RUN_IMPLS", "run_worker", "run_side_by_side",
           "format_run_table", "run_windows", "format_windows"]



@dataclasses.dataclass
class RunCase:
  """One training-run setting."""
  key: str
  title: str
  dim: int
  hidden: tuple
  activation: str
  batch: int
  time_length: float = 0.5
  rtol: float = 1e-5
  atol: float = 1e-5
  lr: float = 1e-3
  max_steps: int = 4000
  target_kl: float = None  # None: run max_steps and report step times
  eval_every: int = 100
  eval_size: int = 5000
  budget_s: float = 3600.0


RUN_CASES = {
    "toy_run": RunCase("toy_run", "8gaussians to KL 0.05, MLP 64x3 tanh, "
                       "batch 512", 2, (64, 64, 64), "tanh", 512,
                       target_kl=0.05, max_steps=4000, eval_every=100),
    "miniboone_run": RunCase("miniboone_run", "MINIBOONE 43-D, MLP 860x2 "
                             "softplus, batch 1000", 43, (860, 860),
                             "softplus", 1000, time_length=1.0, max_steps=200),
}
RUN_IMPLS = ("ours", "ours_interp", "ours_xla", "ours_noxla", "tfp")


_ROWS = {}  # the MINIBOONE-shaped rows, loaded once


def _data(case, step):
  """The training batch of a step: the same for every implementation."""
  from tf_ffjord.datasets import toy  # pylint: disable=g-import-not-at-top
  if case.dim == 2:
    return toy.sample("8gaussians", case.batch, seed=step).astype(np.float32)
  if "rows" not in _ROWS:
    path = os.path.join(DATA_DIR, "miniboone", "val.npy")
    if os.path.exists(path):
      rows = np.load(path).astype(np.float32)
      rows = (rows - rows.mean(0)) / rows.std(0)
      _ROWS["source"] = os.path.abspath(path)
    else:
      rows = np.random.default_rng(0).normal(size=(4000, 43)).astype(
          np.float32)
      _ROWS["source"] = "synthetic Gaussian"
    _ROWS["rows"] = rows
  rows = _ROWS["rows"]
  idx = np.random.default_rng(step).choice(len(rows), case.batch, replace=False)
  return rows[idx]


def run_worker(case_key, impl, out_path, log=print):
  """Trains one implementation on one case in this process; writes JSON."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORD, ODENet  # pylint: disable=g-import-not-at-top
  from tf_ffjord.datasets import toy  # pylint: disable=g-import-not-at-top
  tfd, tfb = tfp.distributions, tfp.bijectors
  tf.config.threading.set_intra_op_parallelism_threads(1)
  tf.config.threading.set_inter_op_parallelism_threads(1)
  case = RUN_CASES[case_key]
  keras.utils.set_random_seed(0)
  net = ODENet(hidden=case.hidden, layer="concatsquash",
               activation=case.activation, dim=case.dim)
  net(0.0, tf.zeros([1, case.dim]))
  init_sum = float(sum(np.abs(w).sum() for w in net.get_weights()))
  calls = tf.Variable(0, trainable=False)

  class Counted:
    """The net, counting its calls; exposes the weights for jit "auto"."""
    trainable_weights = property(lambda self: net.trainable_weights)

    def __call__(self, t, x):
      with tf.control_dependencies([calls.assign_add(1)]):
        return tf.identity(net(t, x))

  f = Counted()
  t_len = case.time_length
  if impl.startswith("ours"):
    jit = {"ours_xla": True, "ours_noxla": False}.get(impl, "auto")
    gradient = "interpolated" if impl == "ours_interp" else "auto"
    bij = FFJORD(f, time_length=t_len, trace="hutchinson", jit_compile=jit,
                 solver=tf_ffjord.make_solver("dopri5", rtol=case.rtol,
                                              atol=case.atol),
                 adjoint=gradient)
  else:
    # tfb.FFJORD puts the data at final_time: the same net defines another
    # density than ours, which is why each model is evaluated in its own
    # convention below.
    solver = tfp.math.ode.DormandPrince(rtol=case.rtol, atol=case.atol,
                                        max_num_steps=1000)
    bij = tfb.FFJORD(state_time_derivative_fn=f, ode_solve_fn=solver.solve,
                     final_time=t_len,
                     trace_augmentation_fn=tfb.ffjord.trace_jacobian_hutchinson)
  base = tfd.MultivariateNormalDiag(tf.zeros(case.dim))
  dist = tfd.TransformedDistribution(base, bij)
  opt = keras.optimizers.Adam(case.lr)
  opt.build(net.trainable_variables)

  @tf.function
  def step(x):
    calls.assign(0)
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(x))
    with tf.control_dependencies([loss]):
      nfe_fwd = calls.read_value()
    grads = tape.gradient(loss, net.trainable_variables)
    opt.apply_gradients(zip(grads, net.trainable_variables))
    with tf.control_dependencies(grads):
      total = calls.read_value()
    return loss, nfe_fwd, total - nfe_fwd

  evaluate = None
  if case.target_kl is not None:
    # One exact-trace evaluator for both models (the same solver and
    # tolerance), each net in its own time convention.
    if impl.startswith("ours"):
      g = lambda t, z: net(t, z)
    else:
      g = lambda s, z: -net(t_len - s, z)
    ev = FFJORD(g, time_length=t_len, trace="exact", jit_compile=False,
                solver=tf_ffjord.make_solver("dopri5", rtol=1e-5, atol=1e-5))
    ev_dist = tfd.TransformedDistribution(base, ev)
    test_x = toy.sample("8gaussians", case.eval_size, seed=10_000)
    entropy = toy.entropy("8gaussians")
    lp = tf.function(ev_dist.log_prob)

    def evaluate():
      parts = [lp(tf.constant(test_x[i:i + 1000]))
               for i in range(0, len(test_x), 1000)]
      return float(-np.mean(np.concatenate([p.numpy() for p in parts])))

  rows, evals = [], []
  train_wall = train_cpu = 0.0
  reached = None
  t_start = time.time()
  for s in range(case.max_steps):
    x = tf.constant(_data(case, s))
    w0, c0 = time.perf_counter(), time.process_time()
    loss, nf, nb = [o.numpy() for o in step(x)]
    dw, dc = time.perf_counter() - w0, time.process_time() - c0
    if s > 0:  # the first step traces and compiles
      train_wall += dw
      train_cpu += dc
    rows.append({"step": s, "wall_ms": dw * 1e3, "cpu_ms": dc * 1e3,
                 "nfe_fwd": int(nf), "nfe_bwd": int(nb), "loss": float(loss)})
    if not np.isfinite(loss):
      log(f"[{impl}] non-finite loss at step {s}")
      break
    if evaluate is not None and (s + 1) % case.eval_every == 0:
      nll = evaluate()
      kl = nll - entropy
      evals.append({"step": s + 1, "test_nll": nll, "kl": kl,
                    "train_wall_s": train_wall, "train_cpu_s": train_cpu})
      recent = rows[-case.eval_every:]
      log(f"[{impl}] step {s + 1}: KL {kl:.3f}, train {train_wall:.0f} s "
          f"(cpu {train_cpu:.0f}), last {case.eval_every}: "
          f"{statistics.median(r['wall_ms'] for r in recent):.0f} ms/step, "
          f"NFE {statistics.median(r['nfe_fwd'] for r in recent):.0f}+"
          f"{statistics.median(r['nfe_bwd'] for r in recent):.0f}")
      if kl <= case.target_kl:
        reached = evals[-1]
        break
    elif evaluate is None and (s + 1) % 10 == 0:
      log(f"[{impl}] step {s + 1}: {dw * 1e3:.0f} ms, NFE {nf}+{nb}")
    if time.time() - t_start > case.budget_s:
      log(f"[{impl}] time budget reached at step {s + 1}")
      break
  half = rows[1 + (len(rows) - 1) // 2:] or rows
  out = {
      "case": case_key, "impl": impl, "title": case.title,
      "affinity": sorted(os.sched_getaffinity(0)),
      "init_weight_abs_sum": init_sum,
      "data": _ROWS.get("source", "8gaussians"),
      "first_step_s": rows[0]["wall_ms"] / 1e3,
      "steps": len(rows), "train_wall_s": train_wall, "train_cpu_s": train_cpu,
      "reached": reached, "evals": evals, "rows": rows,
      "step_ms_second_half": statistics.median(r["wall_ms"] for r in half),
      "step_cpu_ms_second_half": statistics.median(r["cpu_ms"] for r in half),
      "nfe_second_half": [statistics.median(r["nfe_fwd"] for r in half),
                          statistics.median(r["nfe_bwd"] for r in half)],
  }
  with open(out_path, "w") as fh:
    json.dump(out, fh, indent=1)
  return out


def run_side_by_side(case_key, impls, cores, max_steps=None, log=print):
  """Runs each implementation in its own pinned process, all at once.

  Args:
    case_key: a key of `RUN_CASES`.
    impls: implementation names (`RUN_IMPLS`).
    cores: one core per implementation (`[0, 1]`), or a single core shared
      by all of them (then compare CPU times, not wall times).
    max_steps: optional override of the case's step limit.
  """
  if len(cores) not in (1, len(impls)):
    raise ValueError(f"--cores needs one core or one per implementation "
                     f"({len(impls)}), got {cores}.")
  cores = cores * len(impls) if len(cores) == 1 else cores
  tmp = tempfile.mkdtemp(prefix="ffjord_run_")
  procs = {}
  root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      [root, *filter(None, [os.environ.get("PYTHONPATH")])]),
             TF_CPP_MIN_LOG_LEVEL="2")
  for impl, core in zip(impls, cores):
    path = os.path.join(tmp, f"{case_key}_{impl}.json")
    cmd = ["taskset", "-c", str(core), sys.executable, "-m",
           "benchmarks.speed", "--worker", f"{case_key}:{impl}:{path}"]
    if max_steps:
      cmd += ["--max-steps", str(max_steps)]
    log(f"  [{case_key}] {impl} on core {core}: {' '.join(cmd)}")
    procs[impl] = (subprocess.Popen(cmd, cwd=root, env=env), path)
  results = {}
  try:
    for impl, (proc, path) in procs.items():
      if proc.wait() != 0:
        raise RuntimeError(f"{impl} worker failed (exit {proc.returncode}).")
      with open(path) as fh:
        results[impl] = json.load(fh)
  finally:  # no orphaned workers if this process fails or is interrupted
    for proc, _ in procs.values():
      if proc.poll() is None:
        proc.terminate()
  sums = {r["init_weight_abs_sum"] for r in results.values()}
  if len(sums) != 1:
    raise RuntimeError(f"The implementations started from different weights: "
                       f"{sums}")
  if "tfp" in results:
    ref = results["tfp"]
    for r in results.values():
      if ref["reached"] and r["reached"]:
        r["time_vs_tfp"] = (r["reached"]["train_wall_s"]
                            / ref["reached"]["train_wall_s"])
        r["cpu_time_vs_tfp"] = (r["reached"]["train_cpu_s"]
                                / ref["reached"]["train_cpu_s"])
      r["step_vs_tfp"] = r["step_ms_second_half"] / ref["step_ms_second_half"]
      r["step_cpu_vs_tfp"] = (r["step_cpu_ms_second_half"]
                              / ref["step_cpu_ms_second_half"])
  return results


def format_run_table(key, results):
  """Markdown rows for one run case."""
  lines = []
  if RUN_CASES[key].target_kl is not None:
    lines += ["| impl | steps to KL 0.05 | train s (wall) | vs TFP | train s "
              "(CPU) | vs TFP | NFE fwd+bwd at start / end | ms/step start / "
              "end | first step s |", "|" + " --- |" * 9]
    for name, r in results.items():
      re, rows = r["reached"], r["rows"]
      first, last = rows[1:101], rows[-100:]
      med = lambda rs, k: statistics.median(x[k] for x in rs)
      lines.append(
          f"| {name} | {re['step'] if re else 'not reached'} | "
          f"{re['train_wall_s'] if re else r['train_wall_s']:.0f} | "
          f"{r.get('time_vs_tfp', float('nan')):.2f} | "
          f"{re['train_cpu_s'] if re else r['train_cpu_s']:.0f} | "
          f"{r.get('cpu_time_vs_tfp', float('nan')):.2f} | "
          f"{med(first, 'nfe_fwd'):.0f}+{med(first, 'nfe_bwd'):.0f} / "
          f"{med(last, 'nfe_fwd'):.0f}+{med(last, 'nfe_bwd'):.0f} | "
          f"{med(first, 'wall_ms'):.0f} / {med(last, 'wall_ms'):.0f} | "
          f"{r['first_step_s']:.1f} |")
  else:
    lines += ["| impl | steps | step ms (2nd half, wall) | vs TFP | step ms "
              "(CPU) | vs TFP | NFE fwd+bwd (2nd half) | first step s |",
              "|" + " --- |" * 8]
    for name, r in results.items():
      lines.append(
          f"| {name} | {r['steps']} | {r['step_ms_second_half']:.0f} | "
          f"{r.get('step_vs_tfp', float('nan')):.2f} | "
          f"{r['step_cpu_ms_second_half']:.0f} | "
          f"{r.get('step_cpu_vs_tfp', float('nan')):.2f} | "
          f"{r['nfe_second_half'][0]:.0f}+{r['nfe_second_half'][1]:.0f} | "
          f"{r['first_step_s']:.1f} |")
    lines += ["", format_windows(results)]
  return "\n".join(lines)


def run_windows(results, parts=4):
  """Per-window step times: the run after its first step, in `parts` pieces.

  The NFE of both implementations grow as the net learns, at different
  rates, so one window's ratio does not describe the run: each window gives
  its median step time and NFE per implementation, and the ratio of the
  window's summed training time to TFP's.
  """
  n = min(len(r["rows"]) for r in results.values())
  bounds = [1 + (n - 1) * i // parts for i in range(parts + 1)]
  out = []
  for lo, hi in zip(bounds, bounds[1:]):
    w = {"steps": [lo, hi - 1]}
    for name, r in results.items():
      rows = r["rows"][lo:hi]
      w[name] = {
          "step_ms": statistics.median(x["wall_ms"] for x in rows),
          "total_s": sum(x["wall_ms"] for x in rows) / 1e3,
          "nfe": [statistics.median(x["nfe_fwd"] for x in rows),
                  statistics.median(x["nfe_bwd"] for x in rows)]}
    if "tfp" in results:
      for name in results:
        w[name]["time_vs_tfp"] = w[name]["total_s"] / w["tfp"]["total_s"]
    out.append(w)
  return out


def format_windows(results, parts=4):
  """Markdown rows of `run_windows`."""
  lines = ["| steps | impl | median step ms | window s | vs TFP | NFE fwd+bwd "
           "(median) |", "|" + " --- |" * 6]
  for w in run_windows(results, parts):
    for name in results:
      x = w[name]
      lines.append(f"| {w['steps'][0]}-{w['steps'][1]} | {name} | "
                   f"{x['step_ms']:.0f} | {x['total_s']:.0f} | "
                   f"{x.get('time_vs_tfp', float('nan')):.2f} | "
                   f"{x['nfe'][0]:.0f}+{x['nfe'][1]:.0f} |")
  return "\n".join(lines)
