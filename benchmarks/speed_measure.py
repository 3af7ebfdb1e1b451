"""Speed benchmark measurements: peak step memory, one evaluation's cost."""

import os
import threading
import time

import tensorflow as tf

from tf_ffjord.cnf import trace_estimators

__all__ = ["PeakRSS", "eval_chains", "sync"]

# benchmarks/speed.py sets TF_CPU_ALLOCATOR_USE_BFC before TensorFlow starts,
# so that PeakRSS reads the allocator's statistics.


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


def eval_chains(net, x, event_ndims, xla, chain=20):
  """Compiled chains of evaluations: (dynamics + probe VJP, adjoint step).

  Each runs `chain` dependent evaluations inside one compiled
  `tf.while_loop` (dispatch amortized, as inside a solver); its time over
  `chain` is the cost of one evaluation. The adjoint step is what the
  backward solve evaluates: the dynamics, its probe VJP, and the VJP of both
  with respect to the state and the weights.
  """
  eps = trace_estimators.sample_noise(tf.shape(x), x.dtype)
  # Keras weights hold their tf.Variable in `.value`; tf.Variables are theirs.
  variables = [v if isinstance(v, tf.Variable) else v.value
               for v in net.trainable_variables]

  def fv(i, z):
    # The time varies as in a solve (a constant would let XLA fold the time
    # layers away and make the evaluation look cheaper than it is).
    t = 0.5 + 1e-3 * tf.cast(i, x.dtype)
    return trace_estimators.hutchinson(lambda z: net(t, z), z, eps,
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
      sync(fn(x))
    fns.append(fn)

  def timed(x):
    """Seconds per evaluation now: (forward + VJP, adjoint step)."""
    out = []
    for fn in fns:
      t = time.perf_counter()
      sync(fn(x))
      out.append((time.perf_counter() - t) / chain)
    return tuple(out)
  return timed


def sync(out):
  """Values of `out` as numpy (waits for the computation)."""
  return tf.nest.map_structure(lambda t: t.numpy(), out)
