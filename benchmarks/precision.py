"""Flow-matching step time and test score, float32 against mixed_bfloat16, side by side.

    taskset -c 0 python -m benchmarks.precision --out benchmarks/results/precision.json
    python -m benchmarks.precision --table benchmarks/results/precision.json

Each case builds one model per precision from the same initial weights
(the mixed one differs only by its dynamics net's `dtype` policy: weights
float32, products in bfloat16, output, ODE state, log-det and loss float32),
and trains both by flow matching on the same batches, alternating the two
every `--block` steps, so that load changes on a shared machine hit both
alike. Reported: the first step (tracing and compiling), the median step
time over the blocks, the loss at the end, and the test score of each
model's evaluation solve (`evaluate`: exact trace for MINIBOONE, the
model's own trace for images), plus the bfloat16-trained weights scored in
float32 (does bfloat16 hurt the training, or only the scoring?).

Cases:
- `unet`: `ImageFlow(net="unet", multiscale=False)` as the `mnist-fm`
  preset builds it (U-Net 32-64-64, GroupNorm 8, swish, batch 128, Adam
  2e-3 clipnorm 1), MNIST from `--data-root` (random images without it);
- `miniboone`: the tabular flow-matching recipe (43-D, 2 x 258 softplus
  concatsquash, batch 256, Adam 1e-3), MINIBOONE's validation split as
  training data and its test split as test (Gaussian data without them);
- `miniboone-860`: the same with the likelihood recipe's 2 x 860, batch 1000.

`--ml-toy STEPS` instead trains the 8gaussians CNF by maximum likelihood
(64-64-64 concatsquash tanh, dopri5 1e-5, Hutchinson, Adam 1e-3, batch 512,
learned end time) in each precision, one after the other, and records the
NFE, loss and wall time of every step: does the adaptive solve stay stable
(no NaN, no NFE blow-up) when the dynamics compute in bfloat16?
"""

import argparse
import json
import os
import platform
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

import tf_ffjord

from tf_ffjord import FFJORD, FFJORDModel, FlowModel, ODENet
from tf_ffjord.cnf.image_transforms import LogitTransform
from tf_ffjord.nets.unet import UNetODENet

from benchmarks import add_table_option, printed_table

__all__ = ["CASES", "POLICIES", "build", "run_case", "ml_toy",
           "format_table", "main"]

POLICIES = ("float32", "mixed_bfloat16")
CASES = ("unet", "miniboone", "miniboone-860")


def _mnist(root, n_train, n_test, seed):
  path = os.path.join(root, "mnist.npz")
  if os.path.exists(path):
    with np.load(path) as d:
      return (d["x_train"][:n_train, ..., None], d["x_test"][:n_test, ..., None],
              path)
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n_train, 28, 28, 1), dtype=np.uint8),
          rng.integers(0, 256, (n_test, 28, 28, 1), dtype=np.uint8), "random")


def _miniboone(root, n_test, seed):
  folder = os.path.join(root, "miniboone")
  if os.path.exists(os.path.join(folder, "val.npy")):
    train = np.load(os.path.join(folder, "val.npy")).astype(np.float32)
    test = np.load(os.path.join(folder, "test.npy")).astype(np.float32)
    return train, test[:n_test], folder
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(3284, 43)).astype(np.float32),
          rng.normal(size=(n_test, 43)).astype(np.float32), "gaussian")


def build(case, policy):
  """The compiled flow-matching model of a case with its net under `policy`."""
  if case == "unet":
    net = UNetODENet(channels=(32, 64, 64), groups=8, activation="swish",
                     out_channels=1, name="unetnet_0", dtype=policy)
    # ImageFlow(net="unet", multiscale=False, num_blocks=1, train_time=False)
    # with the net's policy given (ImageFlow builds its nets itself).
    block = FFJORD(net, time_length=1.0, event_ndims=3, name="ffjord_0")
    model = FlowModel(tfp.bijectors.Chain([LogitTransform(1e-6), block]),
                      (28, 28, 1), eval_options={}, dequantize=True)
    optimizer = keras.optimizers.Adam(2e-3, clipnorm=1.0)
  else:
    width = 860 if case == "miniboone-860" else 258
    net = ODENet(hidden=(width, width), activation="softplus", dim=43,
                 name="odenet_0", dtype=policy)
    model = FFJORDModel((43,), dynamics=net, eval_options=dict(
        trace="exact", solver="dopri5", rtol=1e-5, atol=1e-5))
    optimizer = keras.optimizers.Adam(1e-3)
  return model, optimizer


def _data(case, args):
  if case == "unet":
    train, test, source = _mnist(args.data_root, 60000, args.eval_size,
                                 args.seed)
    return train, test, 128, source
  train, test, source = _miniboone(args.data_root, args.eval_size, args.seed)
  return train, test, (1000 if case == "miniboone-860" else 256), source


def run_case(case, args):
  """Trains both precisions side by side; returns the case's results dict."""
  train, test, batch, source = _data(case, args)
  models = {}
  for policy in POLICIES:
    keras.utils.set_random_seed(args.seed)
    model, optimizer = build(case, policy)
    model.compile(optimizer, objective="flow_matching",
                  jit_compile=args.jit_compile)
    models[policy] = model
  weights = models["float32"].get_weights()
  models["mixed_bfloat16"].set_weights(weights)
  rng = np.random.default_rng(args.seed)
  batches = [train[rng.integers(0, len(train), batch)]
             for _ in range(args.steps)]
  out = {p: {"block_ms": [], "loss": []} for p in POLICIES}
  for p in POLICIES:  # first step: tracing, compiling, one update
    start = time.perf_counter()
    out[p]["loss"].append(float(models[p].train_on_batch(
        batches[0], return_dict=True)["fm_loss"]))
    out[p]["first_step_s"] = time.perf_counter() - start
  for b, i in enumerate(range(1, args.steps, args.block)):
    order = POLICIES if b % 2 == 0 else POLICIES[::-1]
    for p in order:
      start = time.perf_counter()
      for x in batches[i:i + args.block]:
        logs = models[p].train_on_batch(x, return_dict=True)
      out[p]["block_ms"].append(1e3 * (time.perf_counter() - start)
                                / len(batches[i:i + args.block]))
      out[p]["loss"].append(float(logs["fm_loss"]))
  scores = {}
  for p in POLICIES:
    start = time.perf_counter()
    scores[p] = models[p].evaluate(test, batch_size=args.eval_batch,
                                   verbose=0, return_dict=True)
    scores[p]["eval_s"] = time.perf_counter() - start
  twin = models["float32"]
  twin.set_weights(models["mixed_bfloat16"].get_weights())
  scores["bf16_trained_scored_float32"] = twin.evaluate(
      test, batch_size=args.eval_batch, verbose=0, return_dict=True)
  for p in POLICIES:
    out[p]["step_ms"] = float(np.median(out[p]["block_ms"])) if out[p][
        "block_ms"] else None
    out[p]["score"] = scores[p]
  ratio = (out["mixed_bfloat16"]["step_ms"] / out["float32"]["step_ms"]
           if out["float32"]["step_ms"] else None)
  return {"case": case, "data": source, "batch": batch, "steps": args.steps,
          "block": args.block, "eval_size": len(test), **out,
          "bf16_trained_scored_float32": scores["bf16_trained_scored_float32"],
          "step_ratio_bf16_over_f32": ratio}


def ml_toy(policy, steps, seed=0):
  """Maximum-likelihood training of the toy CNF in `policy`: per-step logs."""
  from tf_ffjord.datasets import toy  # pylint: disable=g-import-not-at-top
  keras.utils.set_random_seed(seed)
  model = FFJORDModel((2,), dynamics=ODENet(hidden=(64, 64, 64), dtype=policy),
                      time_length=0.5, train_time=True, trace="hutchinson",
                      solver="dopri5", rtol=1e-5, atol=1e-5)
  model.compile(keras.optimizers.Adam(1e-3))
  rows, start = [], time.perf_counter()

  class Log(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      rows.append({"step": batch, "s": time.perf_counter() - start,
                   **{k: float(v) for k, v in logs.items()}})

  error = None
  try:
    model.fit(toy.sample("8gaussians", 512 * steps, seed=seed),
              batch_size=512, epochs=1, verbose=0, callbacks=[Log()])
  except (tf.errors.OpError, ValueError) as e:  # a failed solve is a result
    error = f"{type(e).__name__}: {str(e).splitlines()[0]}"
  score = None if error else model.evaluate(
      toy.sample("8gaussians", 2000, seed=seed + 1), batch_size=2000,
      verbose=0, return_dict=True)
  return {"policy": policy, "error": error, "score": score, "rows": rows}


def format_table(results):
  """A Markdown table of `main`'s JSON results."""
  lines = ["| case | precision | first step (s) | step (ms) | bf16 / f32 | "
           "final fm_loss | test nll | test bpd | eval NFE | eval (s) |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for r in results["cases"]:
    for p in POLICIES:
      s = r[p]["score"]
      ratio = f"{r['step_ratio_bf16_over_f32']:.2f}" if (
          p != "float32" and r["step_ratio_bf16_over_f32"]) else ""
      step = f"{r[p]['step_ms']:.1f}" if r[p]["step_ms"] else ""
      bpd = f"{s['bpd']:.3f}" if "bpd" in s else ""
      lines.append(
          f"| {r['case']} | {p} | {r[p]['first_step_s']:.1f} | {step} | "
          f"{ratio} | {r[p]['loss'][-1]:.4f} | {s['nll']:.3f} | {bpd} | "
          f"{s['nfe']:.0f} | {s['eval_s']:.1f} |")
    t = r["bf16_trained_scored_float32"]
    bpd = f"{t['bpd']:.3f}" if "bpd" in t else ""
    lines.append(f"| {r['case']} | bf16-trained, scored in float32 | | | | | "
                 f"{t['nll']:.3f} | {bpd} | {t['nfe']:.0f} | |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--cases", default="unet,miniboone",
                      help=f"comma-separated, of {CASES}")
  parser.add_argument("--steps", type=int, default=300,
                      help="training steps per precision (the first is "
                      "reported apart)")
  parser.add_argument("--block", type=int, default=10,
                      help="steps per timed block; precisions alternate")
  parser.add_argument("--eval-size", type=int, default=500)
  parser.add_argument("--eval-batch", type=int, default=250)
  parser.add_argument("--jit-compile", default="auto",
                      choices=("auto", "true", "false"))
  parser.add_argument("--data-root", default="../shared/data")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="benchmarks/results/precision.json")
  parser.add_argument("--ml-toy", type=int, metavar="STEPS",
                      help="run the toy maximum-likelihood check instead")
  add_table_option(parser)
  args = parser.parse_args(argv)
  if printed_table(args, format_table):
    return
  args.jit_compile = {"auto": "auto", "true": True,
                      "false": False}[args.jit_compile]
  if args.ml_toy:
    runs = [ml_toy(p, args.ml_toy, args.seed) for p in POLICIES]
    with open(args.out, "w") as f:
      json.dump({"argv": vars(args), "runs": runs}, f, indent=1)
    for r in runs:
      nfe = [(x["nfe"], x["nfe_backward"]) for x in r["rows"]]
      print(r["policy"], r["error"], r["score"], "NFE fwd/bwd first, last:",
            nfe[:1], nfe[-1:])
    return
  cases = [c.strip() for c in args.cases.split(",") if c.strip()]
  unknown = sorted(set(cases) - set(CASES))
  if unknown:
    parser.error(f"unknown cases {unknown}; expected some of {CASES}")
  results = {"argv": vars(args), "machine": platform.processor() or
             platform.machine(), "tensorflow": tf.__version__,
             "keras": keras.__version__, "affinity": sorted(
                 os.sched_getaffinity(0)), "cases": []}
  for case in cases:
    results["cases"].append(run_case(case, args))
    print(format_table({"cases": results["cases"][-1:]}), flush=True)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(results, f, indent=1, default=str)
  print(format_table(results))


if __name__ == "__main__":
  main()
