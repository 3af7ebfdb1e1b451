"""Training processes of the tf.distribute tests.

Run as `python tests/_worker.py SPEC.json` (TF_CONFIG set by the caller for
`multiworker`), or import `train(spec)` for the single-device reference. It
trains a tiny exact-trace FFJORDModel from the weights in `spec["data"]` on the
same global batches and writes the final weights, the history, per-replica
Hutchinson log-densities and NFEs to `spec["out"]` (an .npz); with
`spec["checkpoints"]` it also saves and restores a `Checkpoint` there.
"""

import json
import os
import sys


def _strategy(mode):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if mode == "multiworker":
    # Must exist before any other TF op runs in this process.
    return tf.distribute.MultiWorkerMirroredStrategy()
  if mode == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    return tf.distribute.MirroredStrategy(
        [d.name for d in tf.config.list_logical_devices("CPU")])
  return tf.distribute.get_strategy()


def train(spec):
  """Trains as `spec` says and returns the results dict (see module doc)."""
  strategy = _strategy(spec["mode"])
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tf_ffjord import FFJORDModel, ODENet  # pylint: disable=g-import-not-at-top
  from tf_ffjord.cnf import density  # pylint: disable=g-import-not-at-top
  from tf_ffjord.cnf.trace_estimators import replica_seed  # pylint: disable=g-import-not-at-top

  # The same global seed in every process: any per-replica difference must
  # come from the model, not from unseeded randomness.
  keras.utils.set_random_seed(int(spec.get("seed", 0)))
  data = np.load(spec["data"])
  x = data["x"]
  weights = [data[f"w{i}"] for i in range(int(data["num_weights"]))]
  batch = int(spec["global_batch"])

  with strategy.scope():
    model = FFJORDModel((2,), dynamics=ODENet(hidden=(8,)), solver="euler",
                        step_size=0.5, trace="exact")
    model.set_weights(weights)
    model.compile(keras.optimizers.Adam(spec.get("learning_rate", 1e-2)))
  ds = tf.data.Dataset.from_tensor_slices(x).batch(batch, drop_remainder=True)
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  ds = ds.with_options(options)
  history = model.fit(ds, epochs=1, verbose=0, shuffle=False)
  out = {"replicas": strategy.num_replicas_in_sync,
         "iterations": int(model.optimizer.iterations.numpy()),
         **{f"history_{k}": np.array([float(e) for e in v])
            for k, v in history.history.items()},
         **{f"w{i}": w for i, w in enumerate(model.get_weights())}}

  if spec.get("checkpoints"):
    # Every worker saves (collective reads), only the chief's files stay;
    # after a barrier every worker restores the chief's checkpoint.
    from tf_ffjord.saving.checkpoints import Checkpoint  # pylint: disable=g-import-not-at-top
    Checkpoint(model, spec["checkpoints"]).save(1)
    strategy.reduce("SUM", strategy.run(lambda: tf.constant(1.0)), axis=None)
    out["checkpoint_epoch"] = Checkpoint(model, spec["checkpoints"]).restore()
    out["checkpoint_files"] = np.array(sorted(os.listdir(spec["checkpoints"])))

  # Hutchinson probes: every replica gets the same points; their estimates
  # must differ (a probe per replica), also across workers.
  with strategy.scope():
    hutch = FFJORDModel((2,), dynamics=model.blocks[0].dynamics,
                        solver="euler", step_size=0.5, trace="hutchinson")
  x0 = tf.constant(x[:4])

  @tf.function
  def probe():
    return density.log_prob(hutch.flow_view, x0, None,
                            bijector=hutch.bijector, seed=replica_seed())[0]

  local = strategy.experimental_local_results(strategy.run(probe))
  out["hutchinson"] = np.stack([v.numpy() for v in local])

  if spec.get("adaptive"):
    # Replicas see data of different scales, so dopri5 may take different
    # numbers of steps on each; one train step must still finish (the
    # all-reduce happens once, after the solves).
    with strategy.scope():
      ada = FFJORDModel((2,), dynamics=ODENet(hidden=(8,)), solver="dopri5",
                        rtol=1e-5, atol=1e-5, trace="hutchinson")
      ada.compile(keras.optimizers.Adam(1e-3))
    n = strategy.num_replicas_in_sync
    scaled = np.concatenate([x[:8] * (0.1 if i % 2 else 3.0)
                             for i in range(n)]).astype(np.float32)
    h = ada.fit(scaled, batch_size=8 * n, epochs=1, verbose=0, shuffle=False)
    out["adaptive_nfe"] = np.array([float(e) for e in h.history["nfe"]])
    counts = strategy.run(tf.function(ada.bijector.nfe_backward.read_value))
    out["adaptive_replica_nfe"] = np.array(
        [int(v) for v in strategy.experimental_local_results(counts)])
    out["adaptive_nll"] = np.array([float(e) for e in h.history["nll"]])
  return out


def main():
  with open(sys.argv[1]) as f:
    spec = json.load(f)
  out = train(spec)
  import numpy as np  # pylint: disable=g-import-not-at-top
  task = json.loads(os.environ.get("TF_CONFIG", "{}")).get("task", {})
  path = spec["out"]
  if task:
    path = path.replace(".npz", f"-{task['index']}.npz")
  np.savez(path, **out)


if __name__ == "__main__":
  main()
