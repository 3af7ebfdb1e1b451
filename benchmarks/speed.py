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
import threading
import time

import keras
import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

from tf_ffjord import divergence
from tf_ffjord.bijector import FFJORD
from tf_ffjord.datasets import toy
from tf_ffjord.dynamics import ODENet, time_features
from benchmarks import user_path

__all__ = ["Case", "CASES", "IMPLS", "run", "main"]

tfb = tfp.bijectors
tfd = tfp.distributions

DATA_DIR = os.environ.get("TF_FFJORD_DATA",
                          os.path.join(os.path.dirname(__file__), "..", "..",
                                       "shared", "data"))


# -- cases -------------------------------------------------------------------

@dataclasses.dataclass
class Case:
  """One benchmark setting."""
  key: str
  title: str
  event_shape: tuple
  batch: int
  warmup: int = 3
  reps: int = 10
  logprob_reps: int = 5
  rtol: float = 1e-5
  atol: float = 1e-5
  eval_chain: int = 20
  xla: bool = True  # whether "ours" compiles with XLA (chosen by measurement)


CASES = {
    "a": Case("a", "8gaussians 2-D, MLP 64x3, batch 512", (2,), 512,
              warmup=3, reps=10, logprob_reps=5),
    "b": Case("b", "MINIBOONE 43-D, MLP 860x2, batch 1000", (43,), 1000,
              warmup=1, reps=3, logprob_reps=2, eval_chain=5, xla=False),
    "c": Case("c", "MNIST 28x28x1, conv 32x2, batch 64", (28, 28, 1), 64,
              warmup=1, reps=3, logprob_reps=2, eval_chain=5, xla=False),
}


@keras.saving.register_keras_serializable("tf_ffjord_bench")
class ConvDynamics(keras.Model):
  """f(t, x) for images: concatsquash 3x3 convolutions, tanh between layers."""

  def __init__(self, channels=(32, 32), out_channels=1, **kwargs):
    super().__init__(**kwargs)
    self.channels = tuple(channels)
    widths = self.channels + (out_channels,)
    self.convs = [keras.layers.Conv2D(c, 3, padding="same") for c in widths]
    self.gates = [keras.layers.Dense(c) for c in widths]
    self.biases = [keras.layers.Dense(c, use_bias=False) for c in widths]

  def __call__(self, t, x, **kwargs):
    x = tf.convert_to_tensor(x)
    return super().__call__(tf.convert_to_tensor(t, x.dtype), x, **kwargs)

  def call(self, t, x):
    tc = time_features(t, x)[:, tf.newaxis, tf.newaxis, :]
    h = x
    for i, (conv, gate, bias) in enumerate(
        zip(self.convs, self.gates, self.biases)):
      h = conv(h) * tf.sigmoid(gate(tc)) + bias(tc)
      if i < len(self.convs) - 1:
        h = tf.tanh(h)
    return h


def make_net(case):
  if case.key == "a":
    return ODENet(hidden=(64, 64, 64), layer="concatsquash",
                  activation="tanh", dim=2)
  if case.key == "b":
    return ODENet(hidden=(860, 860), layer="concatsquash",
                  activation="softplus", dim=43)
  return ConvDynamics(channels=(32, 32))


def make_batches(case, n, seed=0):
  """n batches of float32 data for the case."""
  rng = np.random.default_rng(seed)
  if case.key == "a":
    return [toy.sample("8gaussians", case.batch, seed=seed + i).astype(
        np.float32) for i in range(n)]
  if case.key == "b":
    path = os.path.join(DATA_DIR, "miniboone", "val.npy")
    if not os.path.exists(path):
      raise FileNotFoundError(f"MINIBOONE file not found: {path} (set "
                              "TF_FFJORD_DATA to the data folder).")
    data = np.load(path).astype(np.float32)
    return [data[rng.choice(len(data), case.batch, replace=False)]
            for _ in range(n)]
  path = os.path.join(DATA_DIR, "mnist.npz")
  if not os.path.exists(path):
    raise FileNotFoundError(f"MNIST file not found: {path} (set "
                            "TF_FFJORD_DATA to the data folder).")
  with np.load(path) as f:
    images = f["x_train"][:4096]
  out = []
  for _ in range(n):
    x = images[rng.choice(len(images), case.batch, replace=False)]
    x = (x.astype(np.float32) + rng.uniform(size=x.shape)) / 256.0 - 0.5
    out.append(x[..., np.newaxis].astype(np.float32))
  return out


# -- memory --------------------------------------------------------------------

def _rss_bytes():
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _tf_memory():
  try:
    return tf.config.experimental.get_memory_info("CPU:0")
  except ValueError:  # allocator without statistics
    return None


class PeakRSS:
  """Peak memory of a block: `.peak` is the allocator's peak above the bytes
  in use at entry (TF's BFC statistics), or else the sampled peak RSS above
  the RSS at entry."""

  def __init__(self, interval=1e-3):
    self.interval = interval
    self.peak = 0

  def __enter__(self):
    self._tf = _tf_memory()
    if self._tf is not None:
      tf.config.experimental.reset_memory_stats("CPU:0")
      self._tf = _tf_memory()
      return self
    self.start = _rss_bytes()
    self._max = self.start
    self._stop = threading.Event()
    self._thread = threading.Thread(target=self._run, daemon=True)
    self._thread.start()
    return self

  def _run(self):
    while not self._stop.is_set():
      self._max = max(self._max, _rss_bytes())
      time.sleep(self.interval)

  def __exit__(self, *exc):
    if self._tf is not None:
      self.peak = _tf_memory()["peak"] - self._tf["current"]
      return False
    self._stop.set()
    self._thread.join()
    self._max = max(self._max, _rss_bytes())
    self.peak = self._max - self.start
    return False


# -- implementations -----------------------------------------------------------

def _base_log_prob(z, event_ndims):
  axes = list(range(1, 1 + event_ndims))
  d = float(np.prod(z.shape[1:]))
  return (-0.5 * tf.reduce_sum(tf.square(z), axes)
          - 0.5 * d * np.log(2 * np.pi))


class Ours:
  """tf_ffjord.FFJORD with its Dormand-Prince and adjoint (or backprop)."""

  def __init__(self, net, case, xla=True, gradient="adjoint", rtol=None,
               atol=None):
    self.net = net
    self.xla = xla
    nd = len(case.event_shape)
    # The step itself is compiled (or not) here: the solve adds no XLA.
    self.bij = FFJORD(net, trace="hutchinson", solver="dopri5",
                      rtol=rtol or case.rtol, atol=atol or case.atol,
                      gradient=gradient, event_ndims=nd, jit_compile=False)
    self.opt = keras.optimizers.Adam(1e-3)
    self.opt.build(net.trainable_variables)
    bij, opt = self.bij, self.opt

    def step(x):
      with tf.GradientTape() as tape:
        sol = bij.solve(x, "inverse")
        loss = -tf.reduce_mean(_base_log_prob(sol.state, nd) + sol.log_det)
      variables = net.trainable_variables
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))
      return loss, sol.nfe, sol.nfe + bij.nfe_backward.read_value()

    def log_prob(x):
      sol = bij.solve(x, "inverse")
      return _base_log_prob(sol.state, nd) + sol.log_det, sol.nfe

    self.step = tf.function(step, jit_compile=xla)
    self.log_prob = tf.function(log_prob, jit_compile=xla)


class TFP:
  """tfp.bijectors.FFJORD with tfp.math.ode.DormandPrince (its adjoint)."""

  def __init__(self, net, case, rtol=None, atol=None):
    self.net = net
    self.xla = False  # its vectorized_map trace recompiles under XLA
    nd = len(case.event_shape)
    counter = tf.Variable(0, trainable=False, dtype=tf.int32)
    self.counter = counter

    def f(t, x):
      with tf.control_dependencies([counter.assign_add(1)]):
        return net(t, x)

    solver = tfp.math.ode.DormandPrince(rtol=rtol or case.rtol,
                                        atol=atol or case.atol,
                                        max_num_steps=1000)
    bij = tfb.FFJORD(state_time_derivative_fn=f, ode_solve_fn=solver.solve,
                     trace_augmentation_fn=tfb.ffjord.trace_jacobian_hutchinson)
    base = tfd.Independent(tfd.Normal(tf.zeros(case.event_shape), 1.0),
                           reinterpreted_batch_ndims=nd)
    dist = tfd.TransformedDistribution(base, bij)
    self.opt = keras.optimizers.Adam(1e-3)
    self.opt.build(net.trainable_variables)
    opt = self.opt

    def step(x):
      counter.assign(0)
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(dist.log_prob(x))
      with tf.control_dependencies([loss]):
        nfe_fwd = counter.read_value()
      variables = net.trainable_variables
      grads = tape.gradient(loss, variables)
      opt.apply_gradients(zip(grads, variables))
      with tf.control_dependencies(grads):
        total = counter.read_value()
      return loss, nfe_fwd, total

    def log_prob(x):
      counter.assign(0)
      lp = dist.log_prob(x)
      with tf.control_dependencies([lp]):
        return lp, counter.read_value()

    self.step = tf.function(step)
    self.log_prob = tf.function(log_prob)


IMPLS = {
    "ours": lambda net, case, **kw: Ours(net, case, xla=case.xla, **kw),
    "ours_xla": lambda net, case, **kw: Ours(net, case, xla=True, **kw),
    "ours_noxla": lambda net, case, **kw: Ours(net, case, xla=False, **kw),
    "ours_backprop": lambda net, case, **kw: Ours(
        net, case, xla=False, gradient="backprop", **kw),
    "tfp": lambda net, case, **kw: TFP(net, case, **kw),
}


def eval_chains(net, x, event_ndims, xla, chain=20):
  """Compiled chains of evaluations: (dynamics + probe VJP, adjoint step).

  Each runs `chain` dependent evaluations inside one compiled
  `tf.while_loop` (dispatch amortized, as inside a solver); its time over
  `chain` is the cost of one evaluation. The adjoint step is what the
  backward solve evaluates: the dynamics, its probe VJP, and the VJP of both
  with respect to the state and the weights.
  """
  eps = divergence.sample_noise(tf.shape(x), x.dtype)
  variables = [getattr(v, "value", v) for v in net.trainable_variables]

  def fv(i, z):
    # The time varies as in a solve (a constant would let XLA fold the time
    # layers away and make the evaluation look cheaper than it is).
    t = 0.5 + 1e-3 * tf.cast(i, x.dtype)
    return divergence.hutchinson(lambda z: net(t, z), z, eps,
                                 event_ndims)[:2]

  def forward_chain(x):
    def body(i, z, acc):
      f, tr = fv(i, z)
      return i + 1, z + 1e-3 * f, acc + tr
    return tf.while_loop(lambda i, *_: i < chain, body,
                         (0, x, tf.zeros([tf.shape(x)[0]], x.dtype)))[1:]

  def adjoint_chain(x):
    def body(i, z, a, g):
      with tf.GradientTape(watch_accessed_variables=False) as tape:
        tape.watch(z)
        tape.watch(variables)
        f, tr = fv(i, z)
      grads = tape.gradient([f, tr], [z] + variables,
                            output_gradients=[a, tf.ones_like(tr)])
      g = [gi + 1e-3 * d for gi, d in zip(g, grads[1:])]
      return i + 1, z - 1e-3 * f, a - 1e-3 * grads[0], g
    g0 = [tf.zeros(v.shape, v.dtype) for v in variables]
    return tf.while_loop(lambda i, *_: i < chain, body, (0, x, x, g0))[1:3]

  fns = []
  for fn in (forward_chain, adjoint_chain):
    fn = tf.function(fn, jit_compile=xla)
    for _ in range(2):
      _sync(fn(x))
    fns.append(fn)

  def timed(x):
    """Seconds per evaluation now: (forward + VJP, adjoint step)."""
    out = []
    for fn in fns:
      t = time.perf_counter()
      _sync(fn(x))
      out.append((time.perf_counter() - t) / chain)
    return tuple(out)
  return timed


def _sync(out):
  return tf.nest.map_structure(lambda t: t.numpy(), out)


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
    _sync(impl.step(tf.constant(batches[0])))
    res[name]["first_step_s"] = time.perf_counter() - t
    for w in range(1, case.warmup):
      _sync(impl.step(tf.constant(batches[w])))
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
        loss, nfe_f, total = _sync(impls[name].step(x))
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
    _sync(impl.log_prob(tf.constant(batches[0])))
  for r in range(case.logprob_reps):
    x = tf.constant(batches[case.warmup + case.reps + r])
    order = names if r % 2 == 0 else names[::-1]
    for name in order:
      t = time.perf_counter()
      _, nfe = _sync(impls[name].log_prob(x))
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
      _sync(impl.step(tf.constant(batches[0])))
      mems, nfes, steps = [], [], []
      for r in range(reps):
        with PeakRSS() as mem:
          t = time.perf_counter()
          _, nfe_f, total = _sync(impl.step(tf.constant(batches[1 + r])))
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
                 "table": table}, f,
                indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
