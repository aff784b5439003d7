"""Tests of training/early_stopping.py: best epoch, patience, restored weights, resume.

The callback is driven directly with the validation losses an epoch would log, on a
one-layer tf_keras model whose weights are set to a known value per epoch, so which
weights end up restored says which epoch was picked.
"""

import json
import os

import numpy as np
import pytest
import tf_keras

from training import early_stopping


def tiny_model():
  model = tf_keras.Sequential([tf_keras.layers.Dense(1, input_shape=(2,))])
  model.compile(optimizer="sgd", loss="mse")
  return model


def run_epochs(callback, model, losses, first_epoch=0):
  """Plays epochs first_epoch.. with `losses`; epoch e's weights are all e. Returns epochs run."""
  model.stop_training = False
  callback.set_model(model)
  callback.on_train_begin()
  ran = []
  for epoch, loss in enumerate(losses, start=first_epoch):
    model.set_weights([np.full(w.shape, float(epoch), np.float32) for w in model.get_weights()])
    callback.on_epoch_end(epoch, {"loss": 1.0, "val_loss": loss})
    ran.append(epoch)
    if model.stop_training:
      break
  callback.on_train_end()
  return ran


def weights_epoch(model):
  values = {float(v) for w in model.get_weights() for v in np.ravel(w)}
  assert len(values) == 1, values
  return int(values.pop())


def test_stops_after_patience_epochs_and_restores_the_best(tmp_path):
  model, callback = tiny_model(), early_stopping.ResumableEarlyStopping(str(tmp_path), patience=2)
  ran = run_epochs(callback, model, [0.50, 0.40, 0.45, 0.41, 0.30])
  assert ran == [0, 1, 2, 3]  # epochs 2 and 3 are no better than epoch 1
  assert callback.best_epoch == 1 and callback.stopped_epoch == 3
  assert weights_epoch(model) == 1
  with open(tmp_path / "state.json") as f:
    state = json.load(f)
  assert state == {"history": {"0": 0.5, "1": 0.4, "2": 0.45, "3": 0.41}, "best_epoch": 1,
                   "stopped_epoch": 3}


def test_patience_zero_never_stops_but_still_restores_the_best(tmp_path):
  model, callback = tiny_model(), early_stopping.ResumableEarlyStopping(str(tmp_path))
  assert run_epochs(callback, model, [0.5, 0.3, 0.4, 0.6]) == [0, 1, 2, 3]
  assert callback.stopped_epoch is None and weights_epoch(model) == 1


def test_best_epoch_and_weights_survive_a_resume(tmp_path):
  first = tiny_model()
  callback = early_stopping.ResumableEarlyStopping(str(tmp_path), patience=2)
  run_epochs(callback, first, [0.5, 0.2])  # killed after epoch 1 (the best so far)
  resumed = tiny_model()  # a new process: fresh weights, a new callback
  callback = early_stopping.ResumableEarlyStopping(str(tmp_path), patience=2)
  ran = run_epochs(callback, resumed, [0.3, 0.25, 0.1], first_epoch=2)
  assert ran == [2, 3] and callback.stopped_epoch == 3  # 2 epochs after best epoch 1
  assert weights_epoch(resumed) == 1  # read back from weights.npz
  assert os.path.exists(tmp_path / early_stopping.WEIGHTS_FILE)


def test_a_redone_epoch_replaces_the_later_history(tmp_path):
  model = tiny_model()
  callback = early_stopping.ResumableEarlyStopping(str(tmp_path), patience=5)
  run_epochs(callback, model, [0.5, 0.4, 0.1])
  callback = early_stopping.ResumableEarlyStopping(str(tmp_path), patience=5)
  run_epochs(callback, model, [0.45], first_epoch=1)  # resumed inside epoch 1
  assert callback.history == {0: 0.5, 1: 0.45} and callback.best_epoch == 1


def test_non_writer_leaves_no_files_and_a_missing_monitor_is_named(tmp_path):
  model = tiny_model()
  callback = early_stopping.ResumableEarlyStopping(str(tmp_path / "best"), write=False)
  run_epochs(callback, model, [0.5, 0.6])
  assert not os.path.exists(tmp_path / "best") and weights_epoch(model) == 0
  callback.on_train_begin()
  with pytest.raises(KeyError, match="val_loss"):
    callback.on_epoch_end(0, {"loss": 1.0})


def test_an_auc_monitor_keeps_the_highest_epoch(tmp_path):
  model = tiny_model()
  callback = early_stopping.ResumableEarlyStopping(str(tmp_path), patience=1,
                                                   monitor="val_ctr_auc")
  model.stop_training = False
  callback.set_model(model)
  callback.on_train_begin()
  for epoch, auc in enumerate([0.70, 0.72, 0.71]):
    model.set_weights([np.full(w.shape, float(epoch), np.float32) for w in model.get_weights()])
    callback.on_epoch_end(epoch, {"val_loss": 0.1 - epoch * 0.01, "val_ctr_auc": auc})
  callback.on_train_end()
  assert callback.best_epoch == 1 and callback.stopped_epoch == 2 and weights_epoch(model) == 1
