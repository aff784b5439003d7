"""Early stopping on validation loss whose state survives a resume (MODEL_DIR/best/).

Flow position: a Keras callback of `training.trainer` beside BackupAndRestore. Keras'
own EarlyStopping keeps its best loss, wait count and best weights in memory, so a run
killed after its best epoch and resumed by BackupAndRestore forgets them. This one
writes, at every epoch end (chief only, atomically):

  STATE_DIR/state.json   {"history": {"<epoch>": val_loss, ...}, "best_epoch": e,
                          "stopped_epoch": e or null}   (epochs counted from 0)
  STATE_DIR/weights.npz  model.get_weights() of the best epoch (arrays arr_0, arr_1, ...)

and reads them back (`load`, or on_train_begin). The best epoch is the first with the
lowest validation loss (or highest validation AUC, when an AUC is monitored); training
stops after `patience` epochs without a better one. `val_loss` is the training loss's
formula over the whole validation split at once (models.multitask.SetLoss: each task's
weighted BCE summed over the split over its weights summed over the split).
Re-running an epoch (a resume from a checkpoint taken inside it) overwrites its entry,
and with a deterministic input order gives the same loss. A run killed between an
epoch's last checkpoint and its validation resumes at the next epoch: the trainer then
validates the restored weights first and `record`s them as that epoch's (see
training.trainer). At the end of training the best weights are restored (from memory
when this process saw the best epoch, else from the file).
"""

import io
import json
import os
from typing import Dict, List, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

STATE_FILE = "state.json"
WEIGHTS_FILE = "weights.npz"


def _write_atomic(path: str, payload: bytes) -> None:
  temporary = path + ".tmp"
  with tf.io.gfile.GFile(temporary, "wb") as f:
    f.write(payload)
  tf.io.gfile.rename(temporary, path, overwrite=True)


def read_state(state_dir: str) -> Dict:
  """The saved state ({"history": {}, "best_epoch": None, "stopped_epoch": None} if none)."""
  path = os.path.join(state_dir, STATE_FILE)
  if not tf.io.gfile.exists(path):
    return {"history": {}, "best_epoch": None, "stopped_epoch": None}
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def higher_is_better(monitor: str) -> bool:
  """True for AUCs (`val_ctr_auc`), False for losses (`val_loss`, `val_ctr_logloss`)."""
  return monitor.endswith("auc")


def best_epoch_of(history: Dict[int, float], maximize: bool = False) -> Optional[int]:
  """The first epoch with the lowest (maximize: highest) value; None for no history."""
  if not history:
    return None
  sign = -1.0 if maximize else 1.0
  return min(sorted(history), key=lambda epoch: sign * history[epoch])


class ResumableEarlyStopping(tf_keras.callbacks.Callback):
  """Tracks `monitor` per epoch, keeps the best weights, stops after `patience` epochs.

  Args:
    state_dir: where state.json and weights.npz live (MODEL_DIR/best).
    patience: epochs without improvement before stopping; 0 = never stop (the best
      epoch is still tracked and, with restore_best_weights, restored).
    restore_best_weights: set the best epoch's weights at the end of training.
    write: whether this process writes the state (the chief, in a multi-worker run).
    monitor: the Keras log key: "val_loss" (lower is better), or another validation
      metric, e.g. "val_ctr_auc" (AUCs: higher is better).
  """

  def __init__(self, state_dir: str, patience: int = 0, restore_best_weights: bool = True,
               write: bool = True, monitor: str = "val_loss"):
    super().__init__()
    self.state_dir, self.patience, self.monitor = state_dir, int(patience), monitor
    self.restore_best_weights, self.write = restore_best_weights, write
    self.history: Dict[int, float] = {}
    self.best_epoch: Optional[int] = None
    self.stopped_epoch: Optional[int] = None
    self._best_weights: Optional[List[np.ndarray]] = None
    self._loaded = False

  def load(self) -> None:
    """Reads STATE_DIR/state.json (a resumed run's history, best and stopped epoch)."""
    state = read_state(self.state_dir)
    self.history = {int(epoch): float(loss) for epoch, loss in state["history"].items()}
    self.best_epoch, self.stopped_epoch = state["best_epoch"], state["stopped_epoch"]
    self._best_weights = None
    self._loaded = True
    if self.history:  # logged with epochs counted from 1, as Keras prints them
      logging.info("Early-stopping state from %s: best epoch %d of %s", self.state_dir,
                   self.best_epoch + 1, [epoch + 1 for epoch in sorted(self.history)])

  def on_train_begin(self, logs=None):
    if not self._loaded:
      self.load()

  def on_epoch_end(self, epoch, logs=None):
    logs = logs or {}
    if self.monitor not in logs:
      raise KeyError(f"early stopping monitors {self.monitor!r}, which the epoch's logs lack "
                     f"({sorted(logs)}): is there validation data?")
    self.record(epoch, float(logs[self.monitor]))

  def record(self, epoch: int, loss: float) -> None:
    """Records the model's current weights as epoch `epoch`'s, with validation `loss`."""
    # Epochs after this one belong to an earlier attempt that this run is redoing.
    self.history = {e: value for e, value in self.history.items() if e < epoch}
    self.history[epoch] = float(loss)
    self.best_epoch = best_epoch_of(self.history, higher_is_better(self.monitor))
    if self.best_epoch == epoch:
      self._best_weights = self.model.get_weights()
      if self.write:
        buffer = io.BytesIO()
        np.savez(buffer, *self._best_weights)
        tf.io.gfile.makedirs(self.state_dir)
        _write_atomic(os.path.join(self.state_dir, WEIGHTS_FILE), buffer.getvalue())
    self.stopped_epoch = None
    if self.patience and epoch - self.best_epoch >= self.patience:
      self.stopped_epoch = epoch
      self.model.stop_training = True
      logging.info("Early stopping after epoch %d: best %s %.5f at epoch %d", epoch + 1,
                   self.monitor, self.history[self.best_epoch], self.best_epoch + 1)
    if self.write:
      tf.io.gfile.makedirs(self.state_dir)
      state = {"history": {str(e): loss for e, loss in sorted(self.history.items())},
               "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}
      _write_atomic(os.path.join(self.state_dir, STATE_FILE),
                    json.dumps(state, indent=1).encode())

  def on_train_end(self, logs=None):
    self._loaded = False  # a later fit reads the state again
    if not self.restore_best_weights or self.best_epoch is None:
      return
    weights = self._best_weights
    if weights is None:
      path = os.path.join(self.state_dir, WEIGHTS_FILE)
      with tf.io.gfile.GFile(path, "rb") as f:
        stored = np.load(io.BytesIO(f.read()))
        weights = [stored[f"arr_{i}"] for i in range(len(stored.files))]
    self.model.set_weights(weights)
    logging.info("Restored the weights of the best epoch %d (%s %.5f)", self.best_epoch + 1,
                 self.monitor, self.history[self.best_epoch])
