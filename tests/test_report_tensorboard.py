"""Tests of training/hparams.py: the HParams record of a run and the eval metrics per epoch.

A tiny Keras model is fit for 3 epochs with the callbacks; the event files are read back
with TensorBoard's own loader, as the board would.
"""

import json
import os

import numpy as np
import tensorflow as tf
import tf_keras
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import metadata as hparams_metadata
from tensorboard.plugins.hparams import plugin_data_pb2

from configs import config as config_lib
from training import hparams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _accumulator(directory: str) -> event_accumulator.EventAccumulator:
  accumulator = event_accumulator.EventAccumulator(
      directory, size_guidance={event_accumulator.TENSORS: 0})
  accumulator.Reload()
  return accumulator


def test_hyperparameters_are_flat_scalars_of_the_config():
  config = config_lib.load_config(os.path.join(REPO, "configs", "esmm.yaml"))
  values = hparams.hyperparameters(config)
  assert values["config"] == "esmm.yaml" and values["model.name"] == "esmm"
  assert values["train.batch_size"] == config.train.batch_size
  assert values["train.learning_rate"] == config.train.learning_rate
  assert values["model.tower_units"] == json.dumps(list(config.model.tower_units))
  assert all(isinstance(v, (bool, int, float, str)) for v in values.values())


def test_callbacks_write_hparams_and_eval_metrics_per_epoch(tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs", "esmm.yaml"))
  rng = np.random.default_rng(0)
  features = rng.normal(size=(256, 4)).astype(np.float32)
  labels = (features[:, 0] > 0).astype(np.float32)
  train = tf.data.Dataset.from_tensor_slices((features, labels)).batch(64)
  model = tf_keras.Sequential([tf_keras.layers.Dense(1, activation="sigmoid")])
  model.compile("adam", "binary_crossentropy", metrics=[tf_keras.metrics.AUC(name="auc")])
  log_dir = str(tmp_path / "esmm" / "logs")
  history = model.fit(train, epochs=3, verbose=0,
                      callbacks=hparams.tensorboard_callbacks(config, log_dir, train, 4))
  assert len(history.history["eval_auc"]) == 3

  eval_scalars = _accumulator(os.path.join(log_dir, hparams.EVAL_DIR))
  steps = [event.step for event in eval_scalars.Tensors("epoch_auc")]
  assert steps == [0, 1, 2]
  last = tf.make_ndarray(eval_scalars.Tensors("epoch_auc")[-1].tensor_proto)
  assert abs(float(last) - history.history["eval_auc"][-1]) < 1e-6

  session = _accumulator(log_dir)
  content = session.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
  start = plugin_data_pb2.HParamsPluginData.FromString(
      content[hparams_metadata.SESSION_START_INFO_TAG])
  recorded = start.session_start_info.hparams
  assert recorded["model.name"].string_value == "esmm"
  assert recorded["train.batch_size"].number_value == config.train.batch_size
  assert start.session_start_info.group_name == "esmm"  # the run's MODEL_DIR name


def test_non_chief_workers_evaluate_but_write_nothing(tmp_path):
  config = config_lib.load_config(os.path.join(REPO, "configs", "esmm.yaml"))
  log_dir = tmp_path / "logs"
  callbacks = hparams.tensorboard_callbacks(config, str(log_dir), eval_dataset=[], eval_steps=1,
                                            write=False)
  assert [type(callback) for callback in callbacks] == [hparams.EpochEvaluation]
  assert not log_dir.exists()
