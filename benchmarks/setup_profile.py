import tf_ffjord
"""Where the toy run's setup time goes: Python tracing, graph optimization, XLA compiles.

    taskset -c 0 python -m benchmarks.setup_profile --out benchmarks/results/setup_profile.json

Runs issue 23's side-by-side toy setting (8gaussians, ODENet 64-64-64
concatsquash tanh, batch 512, dopri5 at 1e-5, Hutchinson, T = 0.5, Adam
1e-3; the TFP idiom: `TransformedDistribution` in a plain `tf.function`
custom loop) for `--steps` steps in fresh child processes, under several
configurations:

- `baseline`;
- `grappler_off`: `tf.config.optimizer.set_experimental_options(
  {"disable_meta_optimizer": True})`;
- `xla_cache_cold` then `xla_cache_warm`: TF's persistent XLA cache
  (`TF_XLA_FLAGS=--tf_xla_persistent_cache_directory=DIR`), the second run
  reading what the first wrote.

Each child times the forward-only trace (`get_concrete_function` of the
loss), the whole step's trace (forward, gradient, optimizer), the first call
(graph optimization, XLA compiling, one step) and every later step, and TF's
own log (`TF_CPP_VMODULE=device_compilation_profiler=1`) gives every XLA
compile: which function, how many times, how long.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time

__all__ = ["CONFIGS", "child", "parse_compiles", "main"]

CONFIGS = ("baseline", "grappler_off", "xla_cache_cold", "xla_cache_warm")
_COMPILED = re.compile(r"Compiled (\S+) (\d+) times, compile time: (\d+) us")


def parse_compiles(log):
  """[(function, times compiled so far, microseconds)] from TF's log.

  >>> parse_compiles("x Compiled __inference_f_10 1 times, compile time: "
  ...                "61597 us, cumulative: 61597 us")
  [('__inference_f_10', 1, 61597)]
  """
  return [(m.group(1), int(m.group(2)), int(m.group(3)))
          for m in _COMPILED.finditer(log)]


def child(steps, grappler_off, out_path):
  """One run of the toy TFP loop in this process; writes its timings."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_probability as tfp  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORD, ODENet  # pylint: disable=g-import-not-at-top
  from tf_ffjord.datasets import toy  # pylint: disable=g-import-not-at-top
  from benchmarks.latency import tfp_train_step  # pylint: disable=g-import-not-at-top
  if grappler_off:
    tf.config.optimizer.set_experimental_options(
        {"disable_meta_optimizer": True})
  data = [tf.constant(toy.sample("8gaussians", 512, seed=i))
          for i in range(steps)]
  t = {}
  start = time.perf_counter()
  dist = tfp.distributions.TransformedDistribution(
      tfp.distributions.MultivariateNormalDiag(tf.zeros(2)),
      FFJORD(ODENet(hidden=(64, 64, 64)), time_length=0.5,
             trace="hutchinson",
             solver=tf_ffjord.make_solver("dopri5", rtol=1e-5, atol=1e-5)))
  optimizer = keras.optimizers.Adam(1e-3)
  t["build_s"] = time.perf_counter() - start

  loss_fn = tf.function(lambda x: -tf.reduce_mean(dist.log_prob(x)))

  train_step = tfp_train_step(dist, optimizer)

  lap = time.perf_counter()
  loss_fn.get_concrete_function(data[0])
  t["trace_forward_s"] = time.perf_counter() - lap
  lap = time.perf_counter()
  train_step.get_concrete_function(data[0])
  t["trace_step_s"] = time.perf_counter() - lap
  ends = []
  for x in data:
    float(train_step(x))
    ends.append(time.perf_counter() - start)
  t["first_call_s"] = ends[0] - t["build_s"] - t["trace_forward_s"] - t[
      "trace_step_s"]
  t["step_end_s"] = ends
  t["tracing_count"] = train_step.experimental_get_tracing_count()
  with open(out_path, "w") as f:
    json.dump(t, f)


def _run(config, steps, cache_dir):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="0",
             TF_CPP_VMODULE="device_compilation_profiler=1")
  if config.startswith("xla_cache"):
    env["TF_XLA_FLAGS"] = (env.get("TF_XLA_FLAGS", "") +
                           f" --tf_xla_persistent_cache_directory={cache_dir}")
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [root,
                                                    env.get("PYTHONPATH")]))
  with tempfile.NamedTemporaryFile(suffix=".json") as out:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.setup_profile", "--child",
         "--steps", str(steps), "--out", out.name,
         *(["--grappler-off"] if config == "grappler_off" else [])],
        env=env, cwd=root, capture_output=True, text=True, check=False)
    if proc.returncode:
      raise RuntimeError(proc.stderr[-3000:])
    result = json.load(open(out.name))
  result["process_s"] = time.perf_counter() - start
  compiles = parse_compiles(proc.stderr)
  result["xla_compiles"] = [{"function": f, "count": n, "ms": us / 1e3}
                            for f, n, us in compiles]
  result["xla_compile_total_s"] = sum(us for *_, us in compiles) / 1e6
  result["cache_hits_logged"] = proc.stderr.count("persistent")
  return result


def _summary(config, r):
  ends = r["step_end_s"]
  steps = [b - a for a, b in zip(ends[:-1], ends[1:])]
  slow = sorted(range(len(steps)), key=lambda i: -steps[i])[:3]
  return (f"{config}: build {r['build_s']:.1f} s, trace fwd "
          f"{r['trace_forward_s']:.1f} s, trace step {r['trace_step_s']:.1f}"
          f" s, first call {r['first_call_s']:.1f} s (XLA compiles "
          f"{len(r['xla_compiles'])}, {r['xla_compile_total_s']:.1f} s), "
          f"step {len(ends)} ends at {ends[-1]:.1f} s; slowest later steps "
          f"{[(i + 2, round(steps[i], 2)) for i in slow]}; traced "
          f"{r['tracing_count']}x")


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--configs", default=",".join(CONFIGS))
  parser.add_argument("--out", default="benchmarks/results/setup_profile.json")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--grappler-off", action="store_true",
                      help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.child:
    child(args.steps, args.grappler_off, args.out)
    return
  results = {"argv": sys.argv[1:], "load_avg_start": os.getloadavg(),
             "affinity": sorted(os.sched_getaffinity(0)), "runs": {}}
  with tempfile.TemporaryDirectory() as cache_dir:
    for config in args.configs.split(","):
      results["runs"][config] = _run(config, args.steps, cache_dir)
      print(_summary(config, results["runs"][config]), flush=True)
  results["load_avg_end"] = os.getloadavg()
  os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
