"""The training loop: data -> model under a strategy -> fit with resume -> export.

Flow position: called by `pipeline.train`; reads the Beam job's output directory
(TFRecords, transform artifacts, counts.json, labels.json) and writes MODEL_DIR:

  MODEL_DIR/backup/      BackupAndRestore state: a killed run resumes from here
  MODEL_DIR/logs/        TensorBoard (train and validation, per-task AUC and log loss)
  MODEL_DIR/export/<v>/  the SavedModel (see training/export.py)
  MODEL_DIR/metrics.json final Keras metrics on the eval split, throughput, steps
                         (`final_step` = optimizer.iterations at the end, `initial_step`
                         = where this process started: > 0 after a resume)

An epoch is `steps_per_epoch` steps over a repeated dataset (from the config, else one
pass over the train split's example count in counts.json), so resume and multi-worker
runs see the same step counts as single-process runs.
"""

import dataclasses
import json
import math
import os
import time
from typing import Any, Dict, Optional

from absl import logging
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import registry
from training import data
from training import export as export_lib
from training import optimizers
from training import strategy as strategy_lib

COUNTS_FILE = "counts.json"
SPEC_COPY_FILE = "feature_spec.yaml"


@dataclasses.dataclass
class TrainResult:
  """What a training run produced."""

  model: Any
  export_dir: Optional[str]
  metrics: Dict[str, Any]


class ThroughputLogger(tf_keras.callbacks.Callback):
  """Logs step, loss and examples/second every `every_steps` steps."""

  def __init__(self, global_batch_size: int, every_steps: int = 100):
    super().__init__()
    self._batch = global_batch_size
    self._every = max(1, every_steps)
    self._start = None
    self._steps = 0
    self.examples_per_second = float("nan")

  def on_train_begin(self, logs=None):
    self._start = time.time()
    self._steps = 0

  def on_train_batch_end(self, batch, logs=None):
    self._steps += 1
    if self._steps % self._every == 0:
      elapsed = time.time() - self._start
      self.examples_per_second = self._steps * self._batch / max(elapsed, 1e-9)
      logging.info("step %d (epoch step %d): loss %.5f, %.0f examples/s", self._steps,
                   batch + 1, (logs or {}).get("loss", float("nan")),
                   self.examples_per_second)

  def on_train_end(self, logs=None):
    if self._steps:
      elapsed = time.time() - self._start
      self.examples_per_second = self._steps * self._batch / max(elapsed, 1e-9)


class StepRecorder(tf_keras.callbacks.Callback):
  """Records optimizer.iterations when fit starts (after BackupAndRestore restored it)."""

  def __init__(self):
    super().__init__()
    self.initial_step = 0

  def on_train_begin(self, logs=None):
    self.initial_step = int(self.model.optimizer.iterations.numpy())
    if self.initial_step:
      logging.info("Resumed from MODEL_DIR/backup at step %d", self.initial_step)


def read_counts(data_dir: str) -> Dict[str, Any]:
  """The Beam job's counts.json (examples per split and more)."""
  path = os.path.join(data_dir, COUNTS_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: missing; is {data_dir} a pipeline.preprocess output?")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def check_spec_matches_data(spec: spec_lib.FeatureSpec, data_dir: str) -> None:
  """Fails when the data was written with a spec that lacks one of the model's features."""
  path = os.path.join(data_dir, SPEC_COPY_FILE)
  if not tf.io.gfile.exists(path):
    return
  written = spec_lib.load_feature_spec(path)
  missing = sorted(set(spec.names) - set(written.names))
  if missing:
    raise ValueError(f"features {missing} of {spec.source} are not in the data "
                     f"{data_dir} (written with {path}); re-run pipeline.preprocess")


def make_optimizer(train_config: config_lib.TrainConfig):
  """The optimizer named by `train.optimizer` at `train.learning_rate`.

  "adam": tf_keras' Adam; "lazy_adam": training.optimizers.LazyAdam (Adam that updates
  only the embedding rows in the batch); "adagrad": tf_keras' Adagrad.
  """
  if train_config.optimizer == "adam":
    return tf_keras.optimizers.Adam(learning_rate=train_config.learning_rate)
  if train_config.optimizer == "lazy_adam":
    return optimizers.LazyAdam(learning_rate=train_config.learning_rate)
  if train_config.optimizer == "adagrad":
    return tf_keras.optimizers.Adagrad(learning_rate=train_config.learning_rate)
  raise ValueError(f"train.optimizer {train_config.optimizer!r}: use 'adam', 'lazy_adam' "
                   f"or 'adagrad'")


def _dataset_creator(data_dir, split, spec, label_names, batch_size, shuffle, train_config,
                     drop_remainder=False):
  pattern = data.split_pattern(data_dir, split)

  def dataset_fn(input_context):
    return data.make_dataset(
        pattern, spec, label_names, batch_size, shuffle=shuffle,
        shuffle_buffer=train_config.shuffle_buffer, seed=train_config.seed, repeat=True,
        input_context=input_context, drop_remainder=drop_remainder)

  return tf_keras.utils.experimental.DatasetCreator(dataset_fn)


def _warmup_examples(data_dir: str, count: int = 8):
  files = sorted(tf.io.gfile.glob(data.split_pattern(data_dir, "eval")))
  if not files:
    return []
  dataset = tf.data.TFRecordDataset(files[:1], compression_type="GZIP").take(count)
  return [record.numpy() for record in dataset]


def train_and_export(config: config_lib.ExperimentConfig, data_dir: str, model_dir: str,
                     strategy: Optional[tf.distribute.Strategy] = None, *,
                     export: bool = True) -> TrainResult:
  """Trains the configured model on DATA_DIR's train split and exports it.

  Args:
    config: the experiment config.
    data_dir: a pipeline.preprocess output directory.
    model_dir: where backups, logs, metrics and the export go.
    strategy: a tf.distribute.Strategy (default strategy when None).
    export: write the SavedModel (the chief only; other workers export to a scratch
      directory that is deleted, as MultiWorkerMirroredStrategy requires every worker
      to take part in saving).

  Returns:
    TrainResult with the trained model, the export directory (chief) and the metrics.
  """
  strategy = strategy or tf.distribute.get_strategy()
  strategy_lib.log_strategy(strategy)
  train_config = config.train
  tf_keras.utils.set_random_seed(train_config.seed)

  spec = config.load_feature_spec()
  check_spec_matches_data(spec, data_dir)
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(data_dir))
  artifacts_lib.check_artifacts(spec, artifacts)
  counts = read_counts(data_dir)
  written = counts["impressions"]["written"]

  with strategy.scope():
    model = registry.build_model(config, spec, artifacts)
    model.compile(optimizer=make_optimizer(train_config))
  # Keras' default ("auto") sums the step's logs over replicas on every strategy but
  # TPU. Metric results are already global (synchronised variables), so a sum reports
  # AUC = 2 x the true AUC with 2 workers; "first" reports them as they are.
  model.distribute_reduction_method = "first"
  data.check_labels(data_dir, sorted(model.required_labels))
  label_names = config.data.label_names

  batch_size = train_config.batch_size
  steps_per_epoch = train_config.steps_per_epoch or max(1, math.ceil(written["train"] / batch_size))
  eval_steps = max(1, math.ceil(written.get("eval", 0) / batch_size)) if written.get("eval") else 0
  logging.info("Training %s: %d train / %d eval examples, batch %d, %d epochs x %d steps",
               config.model.name, written["train"], written.get("eval", 0), batch_size,
               train_config.epochs, steps_per_epoch)

  # TPUs need static shapes: every batch full (the repeated dataset loses nothing).
  drop_remainder = strategy_lib.needs_static_shapes(strategy)
  train_input = _dataset_creator(data_dir, "train", spec, label_names, batch_size, True,
                                 train_config, drop_remainder)
  eval_input = (_dataset_creator(data_dir, "eval", spec, label_names, batch_size, False,
                                 train_config, drop_remainder) if eval_steps else None)
  throughput = ThroughputLogger(batch_size, every_steps=max(1, steps_per_epoch // 4))
  steps = StepRecorder()
  callbacks = [
      tf_keras.callbacks.BackupAndRestore(
          backup_dir=os.path.join(model_dir, "backup"),
          save_freq=train_config.checkpoint_every_steps or "epoch",
          delete_checkpoint=False),
      steps,  # after BackupAndRestore, so it sees the restored step
      tf_keras.callbacks.TensorBoard(log_dir=os.path.join(model_dir, "logs"),
                                     update_freq=max(1, steps_per_epoch // 4)),
      throughput,
  ]
  start = time.time()
  history = model.fit(train_input, epochs=train_config.epochs, steps_per_epoch=steps_per_epoch,
                      validation_data=eval_input, validation_steps=eval_steps or None,
                      callbacks=callbacks, verbose=2)
  train_seconds = time.time() - start

  eval_metrics = {}
  if eval_input is not None:
    eval_metrics = model.evaluate(eval_input, steps=eval_steps, return_dict=True, verbose=0)
  metrics = {
      "model": config.model.name,
      "config": config.source,
      "train_examples": written["train"],
      "eval_examples": written.get("eval", 0),
      "epochs": train_config.epochs,
      "steps_per_epoch": steps_per_epoch,
      "initial_step": steps.initial_step,
      "final_step": int(model.optimizer.iterations.numpy()),
      "num_replicas": strategy.num_replicas_in_sync,
      "train_seconds": round(train_seconds, 2),
      "examples_per_second": round(throughput.examples_per_second, 1),
      "last_epoch": {k: float(v[-1]) for k, v in history.history.items()},
      "eval": {k: float(v) for k, v in eval_metrics.items()},
  }
  export_dir = None
  is_chief = strategy_lib.is_chief()
  if export:
    if is_chief:
      export_base = os.path.join(model_dir, "export")
    else:
      task_type, task_id = strategy_lib.task_identity()
      export_base = os.path.join(model_dir, f"scratch_{task_type}_{task_id}")
    export_dir = export_lib.export_saved_model(
        model.scorer, spec, export_base, warmup_examples=_warmup_examples(data_dir),
        metadata={"model": config.model.name, "config": config.source,
                  "labels": label_names, "eval": metrics["eval"]})
    if not is_chief:
      tf.io.gfile.rmtree(export_base)
      export_dir = None
    metrics["export_dir"] = export_dir
  if is_chief:
    with tf.io.gfile.GFile(os.path.join(model_dir, "metrics.json"), "w") as f:
      json.dump(metrics, f, indent=1)
    logging.info("Eval metrics: %s", json.dumps(metrics["eval"], sort_keys=True))
  return TrainResult(model=model, export_dir=export_dir, metrics=metrics)
