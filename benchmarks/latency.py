"""Where users wait: time to the first training step, the first 100, the first log_prob and served request.

    taskset -c 0 python -m benchmarks.latency --out benchmarks/results/latency.json
    python -m benchmarks.latency --table benchmarks/results/latency.json

Every part runs in a fresh Python process (nothing traced or compiled
before it), timed from after the imports, which are reported apart:

- `train_tfp`: the TFP idiom, `TransformedDistribution(base, FFJORD(net))`
  with a plain `tf.function` custom loop (Adam 1e-3, dopri5 at 1e-5,
  Hutchinson, T = 0.5), as in issue 23's side-by-side toy run: time to the
  end of the first step and of the first `--steps` (100) steps;
- `train_tfp_built`: the same, with the optimizer built on the flow's
  weights before the loop (`optimizer.build(dist.trainable_variables)`, as
  the docs advise), so that the step creates no variables and traces once;
- `train_fit`: the same model and settings through `FFJORDModel.fit`;
- `log_prob`: a fresh flow's exact-trace `log_prob`, eager (TFP
  distribution and `FFJORDModel.log_prob`) and under `tf.function`, first
  call and steady state; then `FFJORDModel.export`;
- `serve`: that SavedModel loaded in a new process: the first request of
  its `log_prob` signature, the steady state, and the first request of a
  second batch size.

Models: `toy` (2-D, 64-64-64 concatsquash tanh, batch 512) and `miniboone`
(43-D, 860-860 concatsquash softplus, batch 1000; MINIBOONE's validation
rows from `--data-root` when present, else Gaussian data of that shape).
`--env KEY=VALUE` sets variables in every child (e.g. `TF_XLA_FLAGS=...`).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from benchmarks import add_table_option, printed_table

_T_START = time.perf_counter()

__all__ = ["MODELS", "PARTS", "run_part", "run_all", "measures", "format_table",
           "main"]

MODELS = {
    "toy": dict(dim=2, hidden=(64, 64, 64), activation="tanh", batch=512),
    "miniboone": dict(dim=43, hidden=(860, 860), activation="softplus",
                      batch=1000),
}
PARTS = ("train_tfp", "train_tfp_built", "train_fit", "log_prob", "serve")


def _data(model, n, seed, data_root):
  import numpy as np  # pylint: disable=g-import-not-at-top
  if model == "toy":
    from tf_ffjord.datasets import toy  # pylint: disable=g-import-not-at-top
    return toy.sample("8gaussians", n, seed=seed)
  path = os.path.join(data_root, "miniboone", "val.npy")
  rng = np.random.default_rng(seed)
  if os.path.exists(path):
    rows = np.load(path).astype(np.float32)
    return rows[rng.integers(0, len(rows), n)]
  return rng.normal(size=(n, 43)).astype(np.float32)


def _settings(args):
  spec = dict(MODELS[args.model])
  if args.hidden:
    spec["hidden"] = tuple(int(h) for h in args.hidden.split(","))
  if args.batch:
    spec["batch"] = args.batch
  return spec


def _net(spec):
  from tf_ffjord import ODENet  # pylint: disable=g-import-not-at-top
  return ODENet(hidden=spec["hidden"], activation=spec["activation"],
                dim=spec["dim"])


def _solver(args, trace):
  """The solve options of every flow: `FFJORD` arguments (a solver object)."""
  from tf_ffjord import make_solver  # pylint: disable=g-import-not-at-top
  return dict(time_length=0.5, trace=trace,
              solver=make_solver("dopri5", rtol=args.rtol, atol=args.rtol))


def tfp_train_step(dist, optimizer):
  """The TFP idiom's training step: a plain `tf.function` over the NLL."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function
  def train_step(x):
    with tf.GradientTape() as tape:
      loss = -tf.reduce_mean(dist.log_prob(x))
    variables = dist.trainable_variables
    optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
    return loss

  return train_step


def _train_tfp(args, spec, data, t0, build_optimizer=False):
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORD  # pylint: disable=g-import-not-at-top
  dist = tfp.distributions.TransformedDistribution(
      tfp.distributions.MultivariateNormalDiag(tf.zeros(spec["dim"])),
      FFJORD(_net(spec), **_solver(args, "hutchinson")))
  optimizer = keras.optimizers.Adam(1e-3)
  if build_optimizer:  # the net knows its width (dim=), so it is built
    optimizer.build(dist.trainable_variables)
  train_step = tfp_train_step(dist, optimizer)

  ends = []
  for x in data:
    float(train_step(x))
    ends.append(time.perf_counter() - t0)
  return {"step_end_s": ends,
          "tracing_count": train_step.experimental_get_tracing_count()}


def _train_fit(args, spec, data, t0):
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORDModel  # pylint: disable=g-import-not-at-top
  model = FFJORDModel((spec["dim"],), dynamics=_net(spec),
                      **_solver(args, "hutchinson"))
  model.compile(keras.optimizers.Adam(1e-3))
  ends, nfe = [], []

  class Log(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      ends.append(time.perf_counter() - t0)
      nfe.append([float(logs["nfe"]), float(logs["nfe_backward"])])

  model.fit(np.concatenate(data), batch_size=spec["batch"], epochs=1,
            shuffle=False, verbose=0, callbacks=[Log()])
  return {"step_end_s": ends, "nfe_first_last": [nfe[0], nfe[-1]]}


def _timed(fn, repeats):
  """(first call, median of the next `repeats`) in seconds."""
  times = []
  for _ in range(1 + repeats):
    start = time.perf_counter()
    out = fn()
    getattr(out, "numpy", lambda: out)()
    times.append(time.perf_counter() - start)
  return times[0], statistics.median(times[1:]) if repeats else None


def _new_batch_sizes(log_prob, x):
  """Seconds of first calls with three batch sizes not seen before."""
  n = int(x.shape[0])
  times = []
  for size in (n // 2, n // 4 + 1, 3 * n // 4 - 1):
    start = time.perf_counter()
    log_prob(x[:size]).numpy()
    times.append(time.perf_counter() - start)
  return times


def _log_prob(args, spec, data, t0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORD, FFJORDModel  # pylint: disable=g-import-not-at-top
  x = tf.constant(data[0])
  out = {}
  dist = tfp.distributions.TransformedDistribution(
      tfp.distributions.MultivariateNormalDiag(tf.zeros(spec["dim"])),
      FFJORD(_net(spec), **_solver(args, "exact")))
  out["tfp_eager"] = _timed(lambda: dist.log_prob(x), args.eager_repeats)
  out["tfp_eager_new_batch"] = _new_batch_sizes(dist.log_prob, x)
  fn = tf.function(dist.log_prob)
  out["tfp_function"] = _timed(lambda: fn(x), args.repeats)
  model = FFJORDModel((spec["dim"],), dynamics=_net(spec),
                      **_solver(args, "hutchinson"))  # evaluates exactly
  out["model_eager"] = _timed(lambda: model.log_prob(x), args.eager_repeats)
  out["model_eager_new_batch"] = _new_batch_sizes(model.log_prob, x)
  fn = tf.function(model.log_prob)
  out["model_function"] = _timed(lambda: fn(x), args.repeats)
  start = time.perf_counter()
  model.export(args.saved)
  out["export_s"] = time.perf_counter() - start
  out["since_start_s"] = time.perf_counter() - t0
  return out


def _serve(args, spec, data, t0):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  loaded = tf.saved_model.load(args.saved)
  out = {"load_s": time.perf_counter() - t0}
  signature = loaded.signatures["log_prob"]
  for name, x in (("first_batch", data[0]),
                  ("second_batch", data[0][:args.second_batch])):
    x = tf.constant(x)
    out[name] = _timed(lambda x=x: signature(x=x)["log_prob"], args.repeats)
  return out


def run_part(args):
  """Runs one part in this process; returns its results dict."""
  spec = _settings(args)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_ffjord  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  if args.grappler == "off":
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": True})
  steps = args.steps if args.part.startswith("train") else 1
  data = [_data(args.model, spec["batch"], i, args.data_root)
          for i in range(steps)]
  import_s = time.perf_counter() - _T_START
  t0 = time.perf_counter()
  fn = {"train_tfp": _train_tfp, "train_fit": _train_fit,
        "train_tfp_built": lambda *a: _train_tfp(*a, build_optimizer=True),
        "log_prob": _log_prob, "serve": _serve}[args.part]
  out = fn(args, spec, data, t0)
  return {"part": args.part, "model": args.model, "import_s": import_s,
          "settings": {k: list(v) if isinstance(v, tuple) else v
                       for k, v in spec.items()}, **out}


def run_all(args):
  """Runs every requested part of every model in its own child process."""
  results = {"argv": sys.argv[1:], "env": args.env,
             "affinity": sorted(os.sched_getaffinity(0)),
             "load_avg_start": os.getloadavg(), "parts": []}
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
  env.update(kv.split("=", 1) for kv in args.env)
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root,
                                                    env.get("PYTHONPATH")]))
  for model in args.models.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      for part in args.parts.split(","):
        out = os.path.join(tmp, f"{part}.json")
        cmd = [sys.executable, "-m", "benchmarks.latency", "--child", part,
               "--model", model, "--child-out", out,
               "--saved", os.path.join(tmp, "saved_model")]
        for flag in ("steps", "repeats", "eager_repeats", "second_batch",
                     "rtol", "hidden", "batch", "grappler", "data_root"):
          value = getattr(args, flag)
          if value is not None:
            cmd += [f"--{flag.replace('_', '-')}", str(value)]
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=root, check=True)
        with open(out) as f:
          row = json.load(f)
        row["process_s"] = time.perf_counter() - start
        results["parts"].append(row)
        print(format_table({"parts": [row]}), flush=True)
  results["load_avg_end"] = os.getloadavg()
  return results


def _fmt(v):
  return "" if v is None else f"{v:.2f}"


def measures(r):
  """`[(measure, seconds), ...]` of one part's result row."""
  rows = [("imports (apart)", r["import_s"])]
  if r["part"].startswith("train"):
    ends = r["step_end_s"]
    rows += [("to the end of step 1 (setup included)", ends[0]),
             (f"to the end of step {len(ends)}", ends[-1])]
    if len(ends) > 20:
      rows.append(("later steps, per 100 (median of the second half x 100)",
                   100 * statistics.median(
                       b - a for a, b in zip(ends[len(ends) // 2:-1],
                                             ends[len(ends) // 2 + 1:]))))
  elif r["part"] == "log_prob":
    for key in ("tfp_eager", "tfp_function", "model_eager",
                "model_function"):
      rows += [(f"{key}: first call", r[key][0]),
               (f"{key}: steady", r[key][1])]
      if f"{key}_new_batch" in r:
        rows.append((f"{key}: a new batch size (median of 3 first calls)",
                     statistics.median(r[f"{key}_new_batch"])))
    rows.append(("export", r["export_s"]))
  else:
    rows += [("load", r["load_s"]),
             ("first request", r["first_batch"][0]),
             ("steady request", r["first_batch"][1]),
             ("first request, second batch size", r["second_batch"][0]),
             ("steady, second batch size", r["second_batch"][1])]
  return rows


def format_table(results):
  """A Markdown table (seconds) of `run_all`'s results."""
  lines = ["| model | part | measure | seconds |", "| --- | --- | --- | --- |"]
  for r in results["parts"]:
    lines += [f"| {r['model']} | {r['part']} | {m} | {_fmt(v)} |"
              for m, v in measures(r)]
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--models", default="toy,miniboone")
  parser.add_argument("--parts", default=",".join(PARTS))
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--repeats", type=int, default=5,
                      help="calls after the first, for the steady state")
  parser.add_argument("--eager-repeats", type=int, default=2)
  parser.add_argument("--second-batch", type=int, default=100)
  parser.add_argument("--rtol", type=float, default=1e-5,
                      help="rtol = atol of every solve")
  parser.add_argument("--hidden", help="override the widths (smoke tests)")
  parser.add_argument("--batch", type=int, help="override the batch size")
  parser.add_argument("--grappler", choices=("on", "off"), default="on",
                      help="off: tf.config.optimizer disable_meta_optimizer")
  parser.add_argument("--data-root", default="../shared/data")
  parser.add_argument("--env", action="append", default=[],
                      metavar="KEY=VALUE", help="set in every child")
  parser.add_argument("--out", default="benchmarks/results/latency.json")
  add_table_option(parser)
  parser.add_argument("--child", choices=PARTS, help=argparse.SUPPRESS)
  parser.add_argument("--model", help=argparse.SUPPRESS)
  parser.add_argument("--child-out", help=argparse.SUPPRESS)
  parser.add_argument("--saved", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if printed_table(args, format_table):
    return
  if args.child:
    args.part = args.child
    with open(args.child_out, "w") as f:
      json.dump(run_part(args), f)
    return
  results = run_all(args)
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)
  print(format_table(results))


if __name__ == "__main__":
  main()
