"""Where XLA inside the solve pays on CPU: jit_compile=True vs False over net sizes.

Two measurements, both alternating XLA and plain at every repetition (so that
load on a shared core hits both alike), on the same weights and batch:

- `chains` (the grid): for dense `ODENet`s (concatsquash, softplus) of several
  widths, batch sizes and event sizes D, and for convolutional nets, the cost
  of one evaluation as the solver makes it: a compiled `tf.while_loop` of
  `chain` dependent evaluations of the dynamics with its Hutchinson VJP (the
  forward solve's unit of work) and of the adjoint evaluation (dynamics,
  probe VJP and the VJPs of both for the state and the weights: the backward
  solve's unit), with and without XLA (`benchmarks.speed.eval_chains`). The
  reported ratio weighs them as a fresh dopri5 training step does, 20
  forward and 7 backward evaluations: (20 e + 7 a) with XLA over the same
  without.
- `solves` (anchors, `--solves`): whole training steps as a user runs them,
  a plain `tf.function` around `FFJORD.solve` (dopri5 at 1e-5, Hutchinson,
  seminorm adjoint) and the weight gradient, with the bijector's
  `jit_compile=True` and `False`; ratio per evaluation (time over forward +
  backward NFE). Slow: each configuration compiles a whole adjoint solve.

The rule `tf_ffjord.solvers.xla.use_xla` encodes the result. Run it pinned to
one core, as the solves of a training run would be:

```
taskset -c 0 python -m benchmarks.xla_crossover --out benchmarks/results/xla_crossover.json
taskset -c 0 python -m benchmarks.xla_crossover --solves --quick   # anchors
```
"""

import argparse
import json
import os
import statistics
import sys
import time

import keras
import numpy as np
import tensorflow as tf

import tf_ffjord

from benchmarks.speed import ConvDynamics, eval_chains, machine
from tf_ffjord import FFJORD, ODENet
from tf_ffjord.solvers import xla

__all__ = ["measure", "measure_chains", "main"]

DENSE = [  # (hidden, batch, D)
    *[((w, w), b, d) for w in (64, 128, 256, 512, 1024)
      for b in (100, 500, 1000) for d in (2, 63)],
    ((64, 64, 64), 512, 2), ((128, 128), 500, 16), ((256, 256), 500, 16),
    ((512, 512), 500, 16), ((172, 172), 1000, 43), ((860, 860), 1000, 43),
]
CONV = [((32, 32), 64, (28, 28, 1)), ((16, 16), 16, (28, 28, 1))]
QUICK = [((64, 64), 500, 2), ((512, 512), 500, 16), ((1024, 1024), 1000, 63)]


def _step_fn(net, event_ndims, jit):
  bij = FFJORD(net, trace="hutchinson", event_ndims=event_ndims,
               jit_compile=jit,
               solver=tf_ffjord.make_solver("dopri5", rtol=1e-5, atol=1e-5))

  @tf.function
  def step(x, seed):
    with tf.GradientTape() as tape:
      sol = bij.solve(x, seed=seed)
      loss = tf.reduce_mean(sol.log_det) + 0.5 * tf.reduce_mean(
          tf.reduce_sum(tf.reshape(sol.state, [tf.shape(x)[0], -1]) ** 2, -1))
    grads = tape.gradient(loss, net.trainable_variables)
    return loss, tf.add_n([tf.reduce_sum(g) for g in grads]), sol.nfe, \
        bij.nfe_backward.read_value()
  return step


def _built(hidden, batch, event_shape, conv):
  """`(event_shape, net, x)`: a seeded net, built on a batch of its events."""
  keras.utils.set_random_seed(0)
  event_shape = tuple(event_shape)
  net = _net(hidden, event_shape, conv)
  x = tf.random.normal([batch, *event_shape])
  net(0.0, x[:2])
  return event_shape, net, x


def measure(hidden, batch, event_shape, conv=False, reps=5, budget_s=60.0,
            log=print):
  """Times jit_compile=True/False on one configuration; returns a dict."""
  event_shape, net, x = _built(hidden, batch, event_shape, conv)
  seed = tf.constant([1, 2])
  steps = {jit: _step_fn(net, len(event_shape), jit) for jit in (False, True)}
  first = {}
  for jit, step in steps.items():
    t = time.perf_counter()
    step(x, seed)[0].numpy()
    first[jit] = time.perf_counter() - t
    step(x, seed)[0].numpy()  # warm-up
  times = {False: [], True: []}
  nfe = {}
  start = time.perf_counter()
  for r in range(reps):
    order = (False, True) if r % 2 == 0 else (True, False)
    for jit in order:
      t = time.perf_counter()
      out = [o.numpy() for o in steps[jit](x, seed)]
      times[jit].append(time.perf_counter() - t)
      nfe[jit] = (int(out[2]), int(out[3]))
    if r >= 1 and time.perf_counter() - start > budget_s:
      break
  med = {jit: statistics.median(v) for jit, v in times.items()}
  per_eval = {jit: med[jit] / sum(nfe[jit]) for jit in med}
  row = {
      "method": "solves", "hidden": list(hidden), "batch": batch,
      "event_shape": list(event_shape),
      "conv": conv, "weights": xla.num_weights(net),
      "work": xla.num_weights(net) * batch,
      "plain_ms": med[False] * 1e3, "xla_ms": med[True] * 1e3,
      "nfe_plain": nfe[False], "nfe_xla": nfe[True],
      "ratio": per_eval[True] / per_eval[False],
      "plain_ms_all": [t * 1e3 for t in times[False]],
      "xla_ms_all": [t * 1e3 for t in times[True]],
      "first_step_s": {"plain": first[False], "xla": first[True]},
      "auto_picks_xla": xla.use_xla("auto", xla.num_weights(net), batch,
                                    len(event_shape), "CPU"),
  }
  log(f"{'conv' if conv else 'dense'} {hidden} batch {batch} event "
      f"{event_shape}: weights {row['weights']}, plain {row['plain_ms']:.1f} "
      f"ms, xla {row['xla_ms']:.1f} ms, nfe {nfe[False]} / {nfe[True]}, "
      f"ratio {row['ratio']:.2f}, first steps {first[False]:.0f} / "
      f"{first[True]:.0f} s")
  return row


def _net(hidden, event_shape, conv):
  if conv:
    return ConvDynamics(channels=hidden, out_channels=event_shape[-1])
  return ODENet(hidden=hidden, layer="concatsquash", activation="softplus",
                dim=event_shape[0])


def measure_chains(hidden, batch, event_shape, conv=False, reps=5, chain=10,
                   log=print):
  """Per-evaluation costs with and without XLA on one configuration."""
  event_shape, net, x = _built(hidden, batch, event_shape, conv)
  t = time.perf_counter()
  timed = {jit: eval_chains(net, x, len(event_shape), jit, chain=chain)
           for jit in (False, True)}
  setup = time.perf_counter() - t
  costs = {False: [], True: []}
  for r in range(reps):
    for jit in ((False, True) if r % 2 == 0 else (True, False)):
      costs[jit].append(timed[jit](x))
  med = {jit: [statistics.median(c[i] for c in costs[jit]) for i in (0, 1)]
         for jit in costs}
  step = {jit: 20 * e + 7 * a for jit, (e, a) in med.items()}
  weights = xla.num_weights(net)
  row = {
      "method": "chains", "hidden": list(hidden), "batch": batch,
      "event_shape": list(event_shape), "conv": conv, "weights": weights,
      "work": weights * batch,
      "eval_ms": {"plain": med[False][0] * 1e3, "xla": med[True][0] * 1e3},
      "adjoint_eval_ms": {"plain": med[False][1] * 1e3,
                          "xla": med[True][1] * 1e3},
      "eval_ratio": med[True][0] / med[False][0],
      "adjoint_ratio": med[True][1] / med[False][1],
      "ratio": step[True] / step[False],
      "all_ms": {str(k): [[c * 1e3 for c in cc] for cc in v]
                 for k, v in costs.items()},
      "setup_s": setup,
      "auto_picks_xla": xla.use_xla("auto", weights, batch, len(event_shape),
                                    "CPU"),
  }
  log(f"{'conv' if conv else 'dense'} {hidden} batch {batch} event "
      f"{event_shape}: weights {weights}, eval {row['eval_ms']['plain']:.2f}"
      f" / {row['eval_ms']['xla']:.2f} ms, adjoint "
      f"{row['adjoint_eval_ms']['plain']:.2f} / "
      f"{row['adjoint_eval_ms']['xla']:.2f} ms (plain / XLA), ratio "
      f"{row['ratio']:.2f}")
  return row


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="three dense configurations only")
  parser.add_argument("--solves", action="store_true",
                      help="time whole training steps (slow) instead of "
                      "evaluation chains")
  parser.add_argument("--reps", type=int, default=5,
                      help="alternating repetitions per configuration")
  parser.add_argument("--budget", type=float, default=60.0,
                      help="--solves: seconds of repetitions per "
                      "configuration (at least 2 repetitions run)")
  parser.add_argument("--only", default="",
                      help="comma-separated hidden widths (e.g. 1024,860) "
                      "and/or 'conv': measure only those configurations")
  parser.add_argument("--out", default="benchmarks/results/xla_crossover.json",
                      help="JSON output path ('' for none), rewritten after "
                      "every configuration")
  args = parser.parse_args(argv)
  log = lambda s: print(s, flush=True)
  rows = []
  t = time.time()
  configs = [(h, b, (d,), False) for h, b, d in
             (QUICK if args.quick else DENSE)]
  if not args.quick:
    configs += [(h, b, shape, True) for h, b, shape in CONV]
  if args.only:
    keep = set(args.only.split(","))
    configs = [c for c in configs if ("conv" in keep if c[3] else
                                      str(c[0][0]) in keep)]
  for hidden, batch, shape, conv in configs:
    if args.solves:
      rows.append(measure(hidden, batch, shape, conv=conv, reps=args.reps,
                          budget_s=args.budget, log=log))
    else:
      rows.append(measure_chains(hidden, batch, shape, conv=conv,
                                 reps=args.reps, log=log))
    _write(args.out, argv, rows)
  print("\n| net | batch | event | weights | weights x batch | XLA/plain "
        "(20 eval + 7 adjoint eval) | auto |")
  print("|" + " --- |" * 7)
  for r in sorted(rows, key=lambda r: (r["conv"], r["work"])):
    print(f"| {'conv' if r['conv'] else 'dense'} "
          f"{'x'.join(map(str, r['hidden']))} | {r['batch']} | "
          f"{r['event_shape']} | {r['weights']} | {r['work']:.2g} | "
          f"{r['ratio']:.2f} | {'XLA' if r['auto_picks_xla'] else 'plain'} |")
  info = machine()
  print(f"\n{info['cpu']}; TF {info['tensorflow']}; {time.time() - t:.0f} s")
  if args.out:
    print(f"wrote {args.out}")


def _write(out, argv, rows):
  if not out:
    return
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  with open(out, "w") as f:
    json.dump({"command": " ".join(["python -m benchmarks.xla_crossover"]
                                   + (argv if argv is not None
                                      else sys.argv[1:])),
               "affinity": sorted(os.sched_getaffinity(0)),
               "machine": machine(), "rows": rows}, f, indent=1)


if __name__ == "__main__":
  main()
