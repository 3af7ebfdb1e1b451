"""A user's own dynamics against `ODENet`: step time against the cost of the net's own math.

    taskset -c 0 python -m benchmarks.own_dynamics --out benchmarks/results/own_dynamics.json

Four dynamics (`tests/user_dynamics.py`: `ODENet`, a plain Keras layer, a
`tf.Module` with its own variables, a lambda closing over a Keras layer;
MLP 64-64 on `[z, sin t, cos t]` for the user's nets) train on 8gaussians,
batch 256, T = 0.5, dopri5 at the library's default tolerances, Hutchinson
trace, Adam 1e-3, in two loops:

- `tfp`: TFP's canonical loop, `TransformedDistribution.log_prob` in a
  plain `tf.function`, a tape over `dist.trainable_variables`;
- `fit`: `FFJORDModel(...).fit` (Keras dynamics only: a Keras model trains,
  saves and checkpoints Keras weights);

each on the default path (`jit_compile="auto"`) and plain (`False`). Every
case runs in a fresh process; all run one after the other in one
invocation, on the cores the caller gives (`taskset`).

For each case the child reports the median step time after the first
`--warmup` steps, the forward and backward NFE of those steps, and the cost
of one evaluation of that net with its probe VJP (`eval_ms`) and of one
adjoint evaluation (`adjoint_ms`), both timed in a compiled chain of 20 in
the mode the solve ran in (`speed_measure.eval_chains`). Two ratios:

- `rule`: step / ((NFE forward + NFE backward) x eval_ms), the issue's
  rule (at most 1.5);
- `overhead`: step / (NFE forward x eval_ms + NFE backward x adjoint_ms),
  the time not spent in the net's own math.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

__all__ = ["KINDS", "LOOPS", "MODES", "child", "main", "format_table"]

KINDS = ("odenet", "keras", "module", "function")
LOOPS = ("tfp", "fit")
MODES = ("auto", "plain")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cases(loops=LOOPS):
  return [(k, l, m) for l in loops for k in KINDS for m in MODES
          if l == "tfp" or k in ("odenet", "keras")]


def child(kind, loop, mode, steps, warmup, out_path, batch=256,
          hidden=(64, 64)):
  """Runs one case in this process and writes its JSON to `out_path`."""
  sys.path.insert(0, os.path.join(_ROOT, "tests"))
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  import user_dynamics  # pylint: disable=g-import-not-at-top
  from benchmarks import latency, speed_measure  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORD, FFJORDModel, solvers  # pylint: disable=g-import-not-at-top
  from tf_ffjord.datasets import toy  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(0)
  dim = 2
  options = {"time_length": 0.5, "jit_compile": "auto" if mode == "auto"
             else False}
  dynamics = user_dynamics.make(kind, dim, hidden=hidden)
  data = [toy.sample("8gaussians", batch, seed=i) for i in range(steps)]
  ms, nfe = [], []
  if loop == "tfp":
    bijector = FFJORD(dynamics, event_shape=[dim], **options)
    dist = tfp.distributions.TransformedDistribution(
        tfp.distributions.MultivariateNormalDiag(tf.zeros(dim)), bijector)
    step = latency.tfp_train_step(dist, keras.optimizers.Adam(1e-3))
    forward_nfe = tf.function(lambda x: bijector.solve(x).nfe)
    for x in data:
      t = time.perf_counter()
      float(step(x))
      ms.append(1e3 * (time.perf_counter() - t))
      nfe.append((int(forward_nfe(x)), int(bijector.nfe_backward.numpy())))
    variables = dist.trainable_variables
  else:
    model = FFJORDModel((dim,), dynamics=dynamics, **options)
    model.compile(keras.optimizers.Adam(1e-3))
    bijector = model.bijector
    ends = []

    class Log(keras.callbacks.Callback):

      def on_train_batch_begin(self, batch, logs=None):
        ends.append(time.perf_counter())

      def on_train_batch_end(self, batch, logs=None):
        ms.append(1e3 * (time.perf_counter() - ends[-1]))
        nfe.append((float(logs["nfe"]), float(logs["nfe_backward"])))

    model.fit(np.concatenate(data), batch_size=batch, epochs=1,
              shuffle=False, verbose=0, callbacks=[Log()])
    variables = model.trainable_variables

  xla = bijector._use_xla(tf.zeros([batch, dim]))  # pylint: disable=protected-access

  class Net:  # what eval_chains reads: the call and the weights
    trainable_variables = variables

    def __call__(self, t, z):
      return dynamics(t, z)

  timed = speed_measure.eval_chains(Net(), data[0], 1, xla)
  costs = [timed(data[0]) for _ in range(5)]
  eval_ms = 1e3 * statistics.median(c[0] for c in costs)
  adjoint_ms = 1e3 * statistics.median(c[1] for c in costs)
  later = list(range(warmup, len(ms)))
  step_ms = statistics.median(ms[i] for i in later)
  nfe_f = statistics.median(nfe[i][0] for i in later)
  nfe_b = statistics.median(nfe[i][1] for i in later)
  result = {
      "kind": kind, "loop": loop, "mode": mode, "xla": bool(xla),
      "batch": batch, "hidden": list(hidden),
      "first_step_ms": ms[0], "step_ms": step_ms, "nfe_forward": nfe_f,
      "nfe_backward": nfe_b, "eval_ms": eval_ms, "adjoint_ms": adjoint_ms,
      "rule": step_ms / ((nfe_f + nfe_b) * eval_ms),
      "overhead": step_ms / (nfe_f * eval_ms + nfe_b * adjoint_ms),
      "steps_ms": ms, "nfe": nfe, "solver": repr(solvers.make_solver(
          "dopri5")),
  }
  with open(out_path, "w") as f:
    json.dump(result, f, indent=1)


def format_table(results):
  """The results as a Markdown table, one row per case."""
  lines = ["| dynamics | net, batch | loop | path | XLA | first step (ms) | "
           "step (ms) | NFE fwd+bwd | eval+VJP (ms) | rule ratio | overhead |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results:
    lines.append(
        f"| {r['kind']} | {'-'.join(map(str, r.get('hidden', [64, 64])))}, "
        f"{r.get('batch', 256)} | {r['loop']} | {r['mode']} | "
        f"{'yes' if r['xla'] else 'no'} | {r['first_step_ms']:.0f} | "
        f"{r['step_ms']:.1f} | {r['nfe_forward']:.0f}+{r['nfe_backward']:.0f}"
        f" | {r['eval_ms']:.3f} | {r['rule']:.2f} | {r['overhead']:.2f} |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", default="benchmarks/results/own_dynamics.json")
  parser.add_argument("--steps", type=int, default=40)
  parser.add_argument("--warmup", type=int, default=10)
  parser.add_argument("--batch", type=int, default=256)
  parser.add_argument("--hidden", default="64,64",
                      help="widths of the user's nets and ODENet")
  parser.add_argument("--loops", default=",".join(LOOPS))
  parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    kind, loop, mode, out = args.child
    child(kind, loop, mode, args.steps, args.warmup, out, args.batch,
          tuple(int(h) for h in args.hidden.split(",")))
    return
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
         "PYTHONPATH": _ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
  env.pop("TF_FFJORD_JIT_COMPILE", None)  # the default path is the point
  results = []
  for kind, loop, mode in _cases(tuple(args.loops.split(","))):
    part = f"{args.out}.{kind}-{loop}-{mode}.part"
    subprocess.run([sys.executable, "-m", "benchmarks.own_dynamics",
                    "--steps", str(args.steps), "--warmup", str(args.warmup),
                    "--batch", str(args.batch), "--hidden", args.hidden,
                    "--child", kind, loop, mode, part], check=True, env=env,
                   cwd=_ROOT)
    with open(part) as f:
      results.append(json.load(f))
    os.remove(part)
    print(format_table(results[-1:]).splitlines()[-1], flush=True)
  with open(args.out, "w") as f:
    json.dump({"command": "python -m benchmarks.own_dynamics "
                          + " ".join(sys.argv[1:]), "results": results}, f,
              indent=1)
  print(format_table(results))


if __name__ == "__main__":
  main()
