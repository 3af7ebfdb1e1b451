"""Training and log_prob speed of tf-ffjord against `tfp.bijectors.FFJORD`.

Runs the cases side by side in one process, alternating the implementations
at every repetition so that machine noise cancels, and prints a table:

- (a) 8gaussians, batch 512, ODENet 64-64-64 concatsquash tanh;
- (b) MINIBOONE-sized, 43 dims, batch 1000, 2 hidden layers of 860 (20 D),
      softplus (FFJORD's tabular setup), on the real MINIBOONE validation set;
- (c) 28x28x1 MNIST images, batch 64, a 3-layer concatsquash conv net;
- `toy_run` and `miniboone_run` (`benchmarks/user_path.py`): whole training
  runs as users call them, `TransformedDistribution.log_prob` in a plain
  `tf.function`, each implementation in its own process pinned to its own
  core (`--cores 0,1`), side by side: 8gaussians to KL 0.05 nats, and step
  times on the 43-D MINIBOONE shape over a run long enough for the net to
  move from its initialization.

Every implementation uses the same network weights, Dormand-Prince at
atol = rtol = 1e-5 and a Hutchinson trace; each is trained by Adam on the same
batches. Reported: median training step time after warm-up, median log_prob
time, NFE of the forward and backward solves, the peak RSS increase during a
step, the ratio to TFP, and the overhead ratio

    step time / ((NFE forward + NFE backward) x one compiled dynamics + VJP)

(the compiled evaluation is timed in every repetition, right after the
steps, on the same batch, with XLA when the implementation uses XLA, and
each step is divided by the cost timed beside it, so that load changes on a
shared machine cancel); "overhead (adj. cost)" charges the backward
evaluations at the cost of one adjoint evaluation instead. `ours` compiles
with XLA in case (a) and runs as a plain `tf.function` in (b) and (c), where
XLA's CPU matrix products and convolutions measured slower (`ours_xla` and
`ours_noxla` force either). `tfp` runs without XLA: its `vectorized_map`
trace makes XLA recompile after every update. `--memory` adds the peak step
memory of the adjoint and of backprop at two tolerances (case a). Memory is the allocator's peak
during a step above what was in use before it (TF's CPU BFC statistics).

The nets start from their initialization, so the NFE are those of the first
training steps; both implementations see the same weights and batches.

#### Examples

```
python -m benchmarks.speed --quick                 # minutes, all cases
python -m benchmarks.speed --cases a,b --out benchmarks/results/speed.json
python -m benchmarks.speed --impls ours,ours_noxla,ours_backprop,tfp --cases a
python -m benchmarks.speed --cases toy_run,miniboone_run --cores 0,1 \
    --out benchmarks/results/speed_user_path.json   # two quiet cores
```
"""

import argparse
import dataclasses
import json
import os

# TF's CPU allocator keeps no statistics unless it is a BFC allocator; with
# it, tf.config.experimental.get_memory_info gives each step's peak.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
import platform
import statistics
import sys
import time

import keras
import tensorflow as tf
import tensorflow_probability as tfp

from benchmarks import user_path
# xla_crossover.py imports ConvDynamics, eval_chains and machine from here.
from benchmarks.speed_cases import (  # pylint: disable=unused-import
    CASES, Case, ConvDynamics, make_batches, make_net)
from benchmarks.speed_impls import IMPLS, Ours
from benchmarks.speed_measure import PeakRSS, eval_chains, sync

__all__ = ["Case", "CASES", "IMPLS", "run", "main"]


def _clone(net, case, x):
  """A second network with the same weights."""
  other = make_net(case)
  net(0.0, x[:2])
  other(0.0, x[:2])
  other.set_weights(net.get_weights())
  return other


# -- the benchmark -------------------------------------------------------------

def run_case(case, impl_names, log=print):
  """Trains every implementation on the same batches, alternating."""
  keras.utils.set_random_seed(0)
  batches = make_batches(case, case.warmup + case.reps + case.logprob_reps)
  net0 = make_net(case)
  net0(0.0, batches[0][:2])  # build, so that the optimizers see the weights
  impls = {}
  for i, name in enumerate(impl_names):
    net = net0 if i == 0 else _clone(net0, case, batches[0])
    impls[name] = IMPLS[name](net, case)
  res = {name: {"step_s": [], "nfe_fwd": [], "nfe_bwd": [], "mem": [],
                "loss": [], "logprob_s": [], "logprob_nfe": []}
         for name in impls}
  for name, impl in impls.items():
    t = time.perf_counter()
    sync(impl.step(tf.constant(batches[0])))
    res[name]["first_step_s"] = time.perf_counter() - t
    for w in range(1, case.warmup):
      sync(impl.step(tf.constant(batches[w])))
    log(f"  [{case.key}] {name}: first step (trace/compile) "
        f"{res[name]['first_step_s']:.1f} s")
  # The evaluation costs are timed inside the repetitions, next to the
  # steps they divide, so that load changes hit both alike.
  chains = {xla: eval_chains(net0, tf.constant(batches[0]),
                             len(case.event_shape), xla,
                             chain=case.eval_chain)
            for xla in sorted({impl.xla for impl in impls.values()})}
  costs = {xla: [] for xla in chains}
  names = list(impls)
  for r in range(case.reps):
    x = tf.constant(batches[case.warmup + r])
    order = names if r % 2 == 0 else names[::-1]
    for name in order:
      with PeakRSS() as mem:
        t = time.perf_counter()
        loss, nfe_f, total = sync(impls[name].step(x))
        dt = time.perf_counter() - t
      out = res[name]
      out["step_s"].append(dt)
      out["nfe_fwd"].append(int(nfe_f))
      out["nfe_bwd"].append(int(total - nfe_f))
      out["mem"].append(mem.peak)
      out["loss"].append(float(loss))
    for xla, timed in chains.items():
      costs[xla].append(timed(x))
    log(f"  [{case.key}] rep {r}: " + ", ".join(
        f"{n} {res[n]['step_s'][-1] * 1e3:.0f} ms nfe "
        f"{res[n]['nfe_fwd'][-1]}+{res[n]['nfe_bwd'][-1]}" for n in names))
  for name, impl in impls.items():  # warm up log_prob
    sync(impl.log_prob(tf.constant(batches[0])))
  for r in range(case.logprob_reps):
    x = tf.constant(batches[case.warmup + case.reps + r])
    order = names if r % 2 == 0 else names[::-1]
    for name in order:
      t = time.perf_counter()
      _, nfe = sync(impls[name].log_prob(x))
      res[name]["logprob_s"].append(time.perf_counter() - t)
      res[name]["logprob_nfe"].append(int(nfe))
  summary = {}
  for name, impl in impls.items():
    out = res[name]
    step = statistics.median(out["step_s"])
    nfe_f = statistics.median(out["nfe_fwd"])
    nfe_b = statistics.median(out["nfe_bwd"])
    rep_costs = costs[impl.xla]
    c_eval = statistics.median(c for c, _ in rep_costs)
    c_adj = statistics.median(c for _, c in rep_costs)
    # Each repetition's step over the evaluation costs timed beside it.
    nfe_ratio = statistics.median(
        s / ((f + b) * ce) for s, f, b, (ce, _) in zip(
            out["step_s"], out["nfe_fwd"], out["nfe_bwd"], rep_costs))
    ideal_ratio = statistics.median(
        s / (f * ce + b * ca) for s, f, b, (ce, ca) in zip(
            out["step_s"], out["nfe_fwd"], out["nfe_bwd"], rep_costs))
    summary[name] = {
        "xla": impl.xla,
        "step_ms": step * 1e3,
        "step_ms_all": [s * 1e3 for s in out["step_s"]],
        "logprob_ms": statistics.median(out["logprob_s"]) * 1e3,
        "logprob_nfe": statistics.median(out["logprob_nfe"]),
        "nfe_fwd": nfe_f,
        "nfe_bwd": nfe_b,
        "nfe_fwd_all": out["nfe_fwd"],
        "nfe_bwd_all": out["nfe_bwd"],
        "peak_step_mem_mb": max(out["mem"]) / 2**20,
        "eval_ms": c_eval * 1e3,
        "adjoint_eval_ms": c_adj * 1e3,
        "overhead_ratio": nfe_ratio,
        "overhead_ratio_adjoint_cost": ideal_ratio,
        "first_step_s": out["first_step_s"],
        "loss_first_last": [out["loss"][0], out["loss"][-1]],
    }
  if "tfp" in summary:
    ref = summary["tfp"]
    for s in summary.values():
      s["step_vs_tfp"] = s["step_ms"] / ref["step_ms"]
      s["logprob_vs_tfp"] = s["logprob_ms"] / ref["logprob_ms"]
  return summary


def run_memory(tols=(1e-3, 1e-7), reps=3, log=print):
  """Peak step memory of adjoint and backprop at two tolerances (case a)."""
  case = CASES["a"]
  batches = make_batches(case, reps + 1)
  keras.utils.set_random_seed(0)
  net0 = make_net(case)
  net0(0.0, batches[0][:2])
  out = []
  for gradient, xla in (("adjoint", True), ("adjoint", False),
                        ("backprop", False)):
    for tol in tols:
      net = _clone(net0, case, batches[0])
      impl = Ours(net, case, xla=xla, gradient=gradient, rtol=tol, atol=tol)
      sync(impl.step(tf.constant(batches[0])))
      mems, nfes, steps = [], [], []
      for r in range(reps):
        with PeakRSS() as mem:
          t = time.perf_counter()
          _, nfe_f, total = sync(impl.step(tf.constant(batches[1 + r])))
          steps.append(time.perf_counter() - t)
        mems.append(mem.peak)
        nfes.append((int(nfe_f), int(total - nfe_f)))
      row = {"gradient": gradient, "xla": xla, "tol": tol,
             "nfe_fwd": nfes[-1][0], "nfe_bwd": nfes[-1][1],
             "step_ms": statistics.median(steps) * 1e3,
             "peak_step_mem_mb": max(mems) / 2**20}
      log(f"  [memory] {row}")
      out.append(row)
  return out


def machine():
  cpu = platform.processor()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          cpu = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
          "tensorflow": tf.__version__, "tfp": tfp.__version__,
          "keras": keras.__version__, "platform": platform.platform()}


def format_table(results):
  head = ("| case | impl | step ms | vs TFP | log_prob ms | vs TFP | NFE fwd+bwd "
          "| peak step MB | eval / adjoint eval ms | overhead | overhead (adj. cost) |")
  lines = [head, "|" + " --- |" * 11]
  for key, summary in results.items():
    for name, s in summary.items():
      lines.append(
          f"| {key} | {name}{' (XLA)' if s['xla'] else ''} | {s['step_ms']:.0f} "
          f"| {s.get('step_vs_tfp', float('nan')):.2f} | {s['logprob_ms']:.0f} "
          f"| {s.get('logprob_vs_tfp', float('nan')):.2f} "
          f"| {s['nfe_fwd']:.0f}+{s['nfe_bwd']:.0f} "
          f"| {s['peak_step_mem_mb']:.0f} "
          f"| {s['eval_ms']:.2f} / {s['adjoint_eval_ms']:.2f} "
          f"| {s['overhead_ratio']:.2f} "
          f"| {s['overhead_ratio_adjoint_cost']:.2f} |")
  return "\n".join(lines)


def run(cases="abc", impls=("ours", "tfp"), quick=False, memory=False,
        log=print):
  results, mem = {}, None
  for key in cases:
    case = dataclasses.replace(CASES[key])
    if quick:
      case = dataclasses.replace(case, warmup=min(case.warmup, 2),
                                 reps=min(case.reps, 3),
                                 logprob_reps=min(case.logprob_reps, 2))
    log(f"case ({key}): {case.title}")
    results[key] = run_case(case, list(impls), log=log)
  if memory:
    mem = run_memory(reps=2 if quick else 3, log=log)
  return results, mem


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--cases", default="a,b,c",
                      help="comma-separated subset of a,b,c (step times in "
                      "one process) and toy_run,miniboone_run (training "
                      "runs, one process per implementation)")
  parser.add_argument("--impls", default="ours,tfp",
                      help=f"comma-separated subset of {sorted(IMPLS)} "
                      f"(training runs: {list(user_path.RUN_IMPLS)})")
  parser.add_argument("--cores", default="0,1",
                      help="training runs: one CPU core per implementation, "
                      "run at the same time (or one core shared by all; "
                      "then compare CPU times)")
  parser.add_argument("--max-steps", type=int, default=None,
                      help="training runs: override the step limit")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--quick", action="store_true",
                      help="fewer repetitions (for iterating)")
  parser.add_argument("--memory", action="store_true",
                      help="also measure step memory at two tolerances")
  parser.add_argument("--out", default="benchmarks/results/speed.json",
                      help="JSON output path")
  args = parser.parse_args(argv)
  log = lambda s: print(s, flush=True)
  if args.max_steps:
    for c in user_path.RUN_CASES.values():
      c.max_steps = args.max_steps
  if args.worker:  # one implementation of a training run, in this process
    key, impl, path = args.worker.split(":", 2)
    user_path.run_worker(key, impl, path, log=log)
    return
  cases = [c.strip() for c in args.cases.split(",") if c.strip()]
  impls = [i.strip() for i in args.impls.split(",") if i.strip()]
  runs = [c for c in cases if c in user_path.RUN_CASES]
  cases = [c for c in cases if c not in user_path.RUN_CASES]
  for c in cases:
    if c not in CASES:
      parser.error(f"unknown case {c!r}; expected a subset of "
                   f"{sorted(CASES) + sorted(user_path.RUN_CASES)}")
  for i in impls:
    if i not in (user_path.RUN_IMPLS if runs and not cases else IMPLS):
      parser.error(f"unknown impl {i!r}; expected a subset of {sorted(IMPLS)}"
                   f" (training runs: {list(user_path.RUN_IMPLS)})")
  cores = [int(c) for c in args.cores.split(",") if c.strip()]
  t = time.time()
  results, mem = run(cases, impls, quick=args.quick, memory=args.memory,
                     log=log) if cases else ({}, None)
  run_results = {}
  for key in runs:
    log(f"case ({key}): {user_path.RUN_CASES[key].title}")
    run_results[key] = user_path.run_side_by_side(
        key, impls, cores, max_steps=args.max_steps, log=log)
  table = format_table(results) if results else ""
  for key, res in run_results.items():
    table += (f"\n\n{key}: {user_path.RUN_CASES[key].title} (cores "
              f"{args.cores})\n" + user_path.format_run_table(key, res))
  print("\n" + table)
  if mem:
    print("\n| gradient | XLA | tol | NFE fwd+bwd | step ms | peak step MB |")
    print("|" + " --- |" * 6)
    for r in mem:
      print(f"| {r['gradient']} | {r['xla']} | {r['tol']:g} | "
            f"{r['nfe_fwd']}+{r['nfe_bwd']} | {r['step_ms']:.0f} | "
            f"{r['peak_step_mem_mb']:.1f} |")
  info = machine()
  print(f"\nmachine: {info['cpu']}, {info['cores']} cores; TF "
        f"{info['tensorflow']}, TFP {info['tfp']}; {time.time() - t:.0f} s")
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump({"command": " ".join(["python -m benchmarks.speed"]
                                     + (argv if argv is not None
                                        else sys.argv[1:])),
                 "machine": info, "cases": {k: CASES[k].title for k in cases},
                 "results": results, "memory": mem, "runs": run_results,
                 "windows": {k: user_path.run_windows(v)
                             for k, v in run_results.items()},
                 "table": table}, f,
                indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
