"""Keras callbacks of long training runs: a time budget that survives restarts, agreed on by every worker."""

import time
from typing import Any

import keras
import tensorflow as tf

from tf_ffjord._distribute import in_multi_worker_mode

__all__ = ["TimeBudget", "any_worker"]


def any_worker(*flags: Any, strategy: tf.distribute.Strategy | None = None
               ) -> tuple[bool, ...]:
  """Each flag, or-ed over the workers of a multi-worker run.

  Decisions taken from a worker's own clock (stop at the time budget) must
  agree on every worker, or one would wait forever in the next step's
  all-reduce. Without multiple workers the flags are returned as they are,
  at no cost.

  Returns:
    A tuple of bools, one per flag.
  """
  strategy = strategy or tf.distribute.get_strategy()
  if not in_multi_worker_mode(strategy):
    return tuple(bool(f) for f in flags)
  if id(strategy) not in _FLAG_SUMS:
    # Compiled once: eager collectives are slow. tf.distribute reduces by
    # SUM or MEAN only, so a sum > 0 is the "or".
    _FLAG_SUMS[id(strategy)] = tf.function(
        lambda local: strategy.reduce(
            "SUM", strategy.run(tf.identity, args=(local,)), axis=None),
        autograph=False)
  local = tf.constant([float(bool(f)) for f in flags])
  total = _FLAG_SUMS[id(strategy)](local)
  return tuple(bool(v) for v in total.numpy() > 0)


# id(strategy) -> compiled sum of the flags over workers
_FLAG_SUMS: dict[int, Any] = {}


class TimeBudget(keras.callbacks.Callback):
  """Stops `fit` once the training time, summed over restarts, hits a budget.

  Counts the wall-clock seconds spent in training epochs (validation
  included, checkpoint saves not), adds them to the epoch logs as
  `seconds`, and sets `model.stop_training` after the batch that crosses
  the budget. Its `get_state`/`set_state` let a `Checkpoint` carry the
  elapsed time across a restart; `exhausted` says whether a resumed run has
  any budget left. Under multi-worker training the workers stop together.

  Args:
    seconds: the budget; 0 or None for none (the callback then only
      reports `seconds`).

  Raises:
    ValueError: a negative budget.

  #### Examples

  >>> budget = TimeBudget(seconds=600)
  >>> budget.set_state({"elapsed": 700.0})
  >>> budget.exhausted
  True
  """

  def __init__(self, seconds: float | None = 0.0) -> None:
    super().__init__()
    seconds = float(seconds or 0.0)
    if seconds < 0:
      raise ValueError(f"The time budget must be >= 0 seconds, got "
                       f"{seconds}.")
    self.seconds = seconds
    self.elapsed = 0.0
    self._start: float | None = None

  @property
  def exhausted(self) -> bool:
    return bool(self.seconds) and self.elapsed >= self.seconds

  def get_state(self) -> dict[str, float]:
    return {"elapsed": self._now()}

  def set_state(self, state: dict[str, Any]) -> None:
    self.elapsed = float(state["elapsed"])

  def _now(self) -> float:
    if self._start is None:
      return self.elapsed
    return self.elapsed + time.monotonic() - self._start

  def on_epoch_begin(self, epoch: int,
                     logs: dict[str, Any] | None = None) -> None:
    self._start = time.monotonic()

  def on_train_batch_end(self, batch: int,
                         logs: dict[str, Any] | None = None) -> None:
    if self.seconds and any_worker(self._now() >= self.seconds)[0]:
      self.model.stop_training = True

  def on_epoch_end(self, epoch: int,
                   logs: dict[str, Any] | None = None) -> None:
    self.elapsed = self._now()
    self._start = None
    if logs is not None:
      logs["seconds"] = self.elapsed
