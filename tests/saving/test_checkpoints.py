"""Tests of tf_ffjord.saving.checkpoints.Checkpoint: resume after kill -9, callback states, errors that name the bad file."""

import json
import pathlib

import h5py
import keras
import numpy as np
import pytest

from tf_ffjord import FFJORDModel, ODENet, datasets
from tf_ffjord.model.callbacks import TimeBudget
from tf_ffjord.saving.checkpoints import Checkpoint, CheckpointError, read_latest


def _tiny(hidden=(8,), train_time=False):
  model = FFJORDModel((2,), dynamics=ODENet(hidden=hidden), solver="euler",
                      step_size=1.0, trace="exact", train_time=train_time)
  model.compile(keras.optimizers.Adam(1e-2))
  return model


def _variables(prefix):
  """The arrays of a checkpoint's weights file (model and optimizer)."""
  out = {}
  with h5py.File(f"{prefix}.weights.h5", "r") as f:
    f.visititems(lambda name, obj: out.__setitem__(name, obj[()])
                 if isinstance(obj, h5py.Dataset) else None)
  return out


# -- kill -9 of a training CLI --------------------------------------------

TOY = ["--steps", "40", "--steps-per-epoch", "2", "--batch-size", "16",
       "--dims", "8", "--solver", "euler", "--step-size", "1", "--trace",
       "exact", "--train-time", "false", "--test-size", "64", "--plot",
       "false", "--export", "false"]


def test_toy_cli_resumes_after_kill_9_with_the_same_state(
    tmp_path, capsys, kill_9_after_first_save):
  from training import toy_cli as toy  # pylint: disable=g-import-not-at-top
  out = tmp_path / "killed"
  ckpt_dir = out / "checkpoints"
  args = [*TOY, "--out", str(out)]
  kill_9_after_first_save("training.toy_cli", args, ckpt_dir / "checkpoint.json",
                          600)
  latest = json.loads((ckpt_dir / "checkpoint.json").read_text())["latest"]
  saved = int(latest.split("-")[1])
  assert 1 <= saved < 20  # killed mid-run

  # The same command again (here, in this process: a fresh model that knows
  # only the files).
  capsys.readouterr()
  toy.main(args)
  stdout = capsys.readouterr().out
  assert (f"Resumed from {ckpt_dir}/ckpt-{saved} at epoch {saved} "
          f"(step {2 * saved}") in stdout, stdout[-3000:]
  assert f"Epoch {saved + 1}/20" in stdout
  assert f"Epoch {saved}/20" not in stdout  # no finished epoch redone
  metrics = json.loads((out / "metrics.json").read_text())
  assert metrics["steps"] == 40 and np.isfinite(metrics["test_nll"])

  # The final state (weights, Adam moments, step counter) is that of a run
  # never interrupted: the rerun restored the optimizer state, not only the
  # weights, and trained on the batches the lost epochs would have seen.
  config, _ = toy.cli.parse(toy.ToyConfig, "", [*TOY, "--out",
                                                str(tmp_path / "ref")])
  toy.run(config)
  got = _variables(out / "checkpoints" / "ckpt-20")
  want = _variables(tmp_path / "ref" / "checkpoints" / "ckpt-20")
  assert sorted(got) == sorted(want)
  assert sum("optimizer" in k for k in want) > 4  # iterations, moments
  for k, v in want.items():
    np.testing.assert_allclose(got[k], v, rtol=1e-5, atol=1e-7, err_msg=k)


# -- files -----------------------------------------------------------------

@pytest.fixture
def saved(tmp_path):
  """A directory with checkpoints after epochs 1 and 2 of a tiny model."""
  model = _tiny()
  model.optimizer.build(model.trainable_variables)
  ckpt = Checkpoint(model, tmp_path / "ckpt")
  ckpt.save(1)
  for v in model.trainable_variables:
    v.assign(v + 1.0)
  model.optimizer.iterations.assign(7)
  return tmp_path / "ckpt", ckpt.save(2), model


def test_restore_round_trip(saved):
  directory, _, model = saved
  fresh = _tiny()
  assert Checkpoint(fresh, directory).restore() == 2
  assert int(fresh.optimizer.iterations.numpy()) == 7
  assert len(fresh.optimizer.variables) == len(model.optimizer.variables)
  for a, b in zip(model.weights + model.optimizer.variables,
                  fresh.weights + fresh.optimizer.variables):
    np.testing.assert_array_equal(a.numpy(), b.numpy())
  assert Checkpoint(_tiny(), directory.parent / "none").restore() == 0


def _damage(path, how):
  raw = bytearray(pathlib.Path(path).read_bytes())
  if how == "truncated":
    raw = raw[:len(raw) // 2]
  else:  # flipped bytes in the middle
    for i in range(len(raw) // 3, len(raw) // 3 + 16):
      raw[i] ^= 0xFF
  pathlib.Path(path).write_bytes(bytes(raw))


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
@pytest.mark.parametrize("which", ["weights", "progress"])
def test_bad_weights_or_progress_file_is_named(saved, which, how):
  directory, prefix, _ = saved
  path = prefix + (".weights.h5" if which == "weights" else ".json")
  _damage(path, how)
  with pytest.raises(CheckpointError, match="corrupted or truncated") as e:
    Checkpoint(_tiny(), directory).restore()
  assert path in str(e.value)
  assert "ckpt-1" in str(e.value)  # the earlier checkpoint to fall back to


@pytest.mark.parametrize("how", ["truncated", "corrupted"])
def test_bad_state_file_is_named(saved, how):
  directory, _, _ = saved
  if how == "truncated":
    (directory / "checkpoint.json").write_text("")
  else:
    (directory / "checkpoint.json").write_text('{"latest": "ckpt-2", {{{')
  with pytest.raises(CheckpointError, match="state file") as e:
    Checkpoint(_tiny(), directory).restore()
  assert str(directory / "checkpoint.json") in str(e.value)


def _edit_json(path, **changes):
  payload = json.loads(pathlib.Path(path).read_text())
  payload.update(changes)
  pathlib.Path(path).write_text(json.dumps(payload))


def _edit_weight(path):
  """Adds 1 to one array of a weights file: valid HDF5, other values."""
  with h5py.File(path, "r+") as f:
    names = []
    f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset)
                 and o.shape else None)
    f[names[0]][...] = f[names[0]][()] + 1


@pytest.mark.parametrize("which", ["state", "progress", "weights"])
def test_altered_but_valid_file_is_named(saved, which):
  directory, prefix, _ = saved
  if which == "state":  # points at the earlier checkpoint
    path = str(directory / "checkpoint.json")
    _edit_json(path, latest="ckpt-1")
  elif which == "progress":  # an edited epoch, still valid JSON
    path = prefix + ".json"
    _edit_json(path, epoch=5)
  else:
    path = prefix + ".weights.h5"
    _edit_weight(path)
  with pytest.raises(CheckpointError, match="corrupted") as e:
    Checkpoint(_tiny(), directory).restore()
  assert path in str(e.value)
  with pytest.raises(CheckpointError, match="corrupted"):
    read_latest(directory)


def test_json_without_checksum_is_refused(saved):
  directory, prefix, _ = saved
  payload = json.loads(pathlib.Path(prefix + ".json").read_text())
  del payload["checksum"]
  pathlib.Path(prefix + ".json").write_text(json.dumps(payload))
  with pytest.raises(CheckpointError, match="no checksum") as e:
    Checkpoint(_tiny(), directory).restore()
  assert prefix + ".json" in str(e.value)


def test_missing_weights_file_is_named(saved):
  directory, prefix, _ = saved
  pathlib.Path(prefix + ".weights.h5").unlink()
  with pytest.raises(CheckpointError, match="missing") as e:
    Checkpoint(_tiny(), directory).restore()
  assert prefix + ".weights.h5" in str(e.value)


@pytest.mark.parametrize("other", [
    dict(hidden=(16,)),  # a weight of another shape
    dict(train_time=True),  # a variable the checkpoint lacks
])
def test_checkpoint_of_another_configuration_is_refused(saved, other):
  directory, _, _ = saved
  with pytest.raises(CheckpointError, match="does not fit this model"):
    Checkpoint(_tiny(**other), directory).restore()


def test_checkpoint_with_values_this_model_lacks_is_refused(tmp_path):
  # A learned end time in the checkpoint, none in the model: restoring would
  # silently drop it.
  model = _tiny(train_time=True)
  model.optimizer.build(model.trainable_variables)
  Checkpoint(model, tmp_path / "ckpt").save(1)
  with pytest.raises(CheckpointError, match="does not fit this model"):
    Checkpoint(_tiny(), tmp_path / "ckpt").restore()


def test_callbacks_without_state_are_refused(tmp_path):
  with pytest.raises(ValueError, match="CSVLogger"):
    Checkpoint(_tiny(), tmp_path, [keras.callbacks.CSVLogger("x.csv")])


# -- callback states ----------------------------------------------------------

def _callbacks():
  # min_delta so large that no epoch after the first improves: the counters
  # move every epoch.
  stop = keras.callbacks.EarlyStopping("nll", patience=50, min_delta=1e3,
                                       mode="min", restore_best_weights=True)
  plateau = keras.callbacks.ReduceLROnPlateau("nll", factor=0.5, patience=2,
                                              min_delta=1e3, cooldown=1,
                                              mode="min")
  return [stop, plateau, TimeBudget(1e6)]


def test_callback_states_survive_a_restore(tmp_path):
  x = datasets.toy.sample("8gaussians", 32, seed=0)
  model, callbacks = _tiny(), _callbacks()
  ckpt = Checkpoint(model, tmp_path / "ckpt", callbacks)
  model.fit(x, batch_size=16, epochs=4, verbose=0, shuffle=False,
            callbacks=[*callbacks, ckpt])
  stop, plateau, budget = callbacks
  # Epoch 2 reduced the learning rate; epoch 3 ended the cooldown.
  assert stop.wait == 3 and plateau.wait == 1
  assert float(model.optimizer.learning_rate) == pytest.approx(5e-3)

  fresh, restored = _tiny(), _callbacks()
  assert Checkpoint(fresh, tmp_path / "ckpt", restored).restore() == 4
  r_stop, r_plateau, r_budget = restored
  for name in ("wait", "best", "best_epoch"):
    assert getattr(r_stop, name) == getattr(stop, name), name
  for name in ("wait", "best", "cooldown_counter"):
    assert getattr(r_plateau, name) == getattr(plateau, name), name
  assert float(fresh.optimizer.learning_rate) == pytest.approx(5e-3)
  assert r_budget.elapsed == pytest.approx(budget.elapsed) and budget.elapsed
  # The best weights (epoch 1's) come back from the second checkpoint.
  for a, b in zip(r_stop.best_weights, stop.best_weights):
    np.testing.assert_array_equal(a, b)
  best = sorted((tmp_path / "ckpt").glob("best-*.weights.h5"))
  assert [p.name for p in best] == ["best-1.weights.h5"]  # one kept

  # fit's on_train_begin resets the Keras callbacks; the Checkpoint after
  # them puts their state back, so the counters go on.
  ckpt = Checkpoint(fresh, tmp_path / "ckpt", restored)
  ckpt.restore()
  fresh.fit(x, batch_size=16, epochs=5, initial_epoch=4, verbose=0,
            shuffle=False, callbacks=[*restored, ckpt])
  assert r_stop.wait == 4 and r_stop.best == stop.best
  assert r_plateau.cooldown_counter == 1  # a second plateau: reduced again
  assert float(fresh.optimizer.learning_rate) == pytest.approx(2.5e-3)
  assert r_budget.elapsed > budget.elapsed

  # An altered best-weights file is named too.
  _edit_weight(str(best[0]))
  with pytest.raises(CheckpointError, match="corrupted") as e:
    Checkpoint(_tiny(), tmp_path / "ckpt", _callbacks()).restore()
  assert str(best[0]) in str(e.value)
