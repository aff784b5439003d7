"""The training loop: data -> model under a strategy -> fit with resume -> export.

Flow position: called by `pipeline.train`; reads the Beam job's output directory
(TFRecords, transform artifacts, counts.json, labels.json) and writes MODEL_DIR:

  MODEL_DIR/backup/      BackupAndRestore state: a killed run resumes from here
  MODEL_DIR/best/        early-stopping state and the best epoch's weights (resumable)
  MODEL_DIR/logs/        TensorBoard (train and validation, per-task AUC and log loss)
  MODEL_DIR/export/<v>/  the SavedModel (see training/export.py)
  MODEL_DIR/warm_start/  the final weights, optimizer state and baked features a later
                         run starts from (`warm_start_from`, training/warm_start.py)
  MODEL_DIR/metrics.json final Keras metrics on the eval split ("eval") and on the
                         validation split ("validation"), the best epoch, throughput,
                         steps (`final_step` = optimizer.iterations at the end,
                         `initial_step` = where this process started: > 0 after a resume
                         or the step a warm start carried over; "warm_start": its source),
                         and the fitted output calibration ("calibration")

Before training: the data directory must carry the Beam job's success marker
(features.success_marker), and every train/eval shard is read once
(training.shard_check.verify_shards), which names a corrupt shard and counts the train
and validation records of the train split (`train.validation_from`, by default the day
before the eval day in DATA/split.json, training.data.resolve_validation_from; or
`train.validation_fraction`; the eval split is never validation).

An epoch is `steps_per_epoch` steps over a repeated dataset (from the config, else one
pass over the counted train records), so resume and multi-worker runs see the same step
counts as single-process runs. The input stream is a deterministic function of the seed
and a resumed run skips the batches its checkpoint's steps consumed, so it continues at
the batch where the checkpoint was taken (docs/TRAINING.md).

After training, with `train.calibration` other than "none", a calibration of the
probabilities is fitted on the validation split (models.calibration) and exported as a
layer after the scorer (models.layers.calibration): the served outputs are calibrated;
metrics.json "eval" / "validation" are the uncalibrated Keras metrics.
"""

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Dict, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from features import success_marker
from models import calibration as calibration_lib
from models import registry
from models.layers import calibration as calibration_layers
from training import data
from training import early_stopping
from training import export as export_lib
from training import hparams as hparams_lib
from training import optimizers
from training import schedules
from training import shard_check
from training import strategy as strategy_lib
from training import warm_start

COUNTS_FILE = "counts.json"
SPEC_COPY_FILE = "feature_spec.yaml"
BACKUP_DIR = "backup"
BEST_DIR = "best"


@dataclasses.dataclass
class TrainResult:
  """What a training run produced.

  Attributes:
    model: the trained MultiTaskModel (its `scorer` uncalibrated).
    export_dir: the SavedModel version directory (chief), else None.
    metrics: what metrics.json holds.
    scorer: the exported scorer: model.scorer followed by the fitted output calibration
      (models.layers.calibration) when train.calibration is not "none", else model.scorer.
  """

  model: Any
  export_dir: Optional[str]
  metrics: Dict[str, Any]
  scorer: Any = None


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
  """Records optimizer.iterations when fit starts (after BackupAndRestore restored it).

  Args:
    warm_start_step: the step a warm start carried over (training/warm_start.py); a
      start above it is a resume from MODEL_DIR/backup.
  """

  def __init__(self, warm_start_step: int = 0):
    super().__init__()
    self.initial_step = 0
    self._warm_start_step = warm_start_step

  def on_train_begin(self, logs=None):
    self.initial_step = int(self.model.optimizer.iterations.numpy())
    if self.initial_step > self._warm_start_step:
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


def make_optimizer(train_config: config_lib.TrainConfig, steps_per_epoch: int = 1,
                   total_steps: int = 1):
  """The optimizer named by `train.optimizer`, its rate from `train.lr_schedule`.

  "adam": tf_keras' Adam (epsilon `train.adam_epsilon`); "lazy_adam":
  training.optimizers.LazyAdam (Adam that updates only the embedding rows in the batch,
  same epsilon); "adagrad": tf_keras' Adagrad. The learning
  rate is `training.schedules.learning_rate(train_config, steps_per_epoch, total_steps)`.
  """
  rate = schedules.learning_rate(train_config, steps_per_epoch, total_steps)
  if train_config.optimizer == "adam":
    return tf_keras.optimizers.Adam(learning_rate=rate, epsilon=train_config.adam_epsilon)
  if train_config.optimizer == "lazy_adam":
    return optimizers.LazyAdam(learning_rate=rate, epsilon=train_config.adam_epsilon)
  if train_config.optimizer == "adagrad":
    return tf_keras.optimizers.Adagrad(learning_rate=rate)
  raise ValueError(f"train.optimizer {train_config.optimizer!r}: use 'adam', 'lazy_adam' "
                   f"or 'adagrad'")


@dataclasses.dataclass(frozen=True)
class InputPlan:
  """The verified inputs of a run: shard reports and the example counts they give.

  Attributes:
    train_report: verification of the train split (its `matching` records are the
      validation records when there is a validation split).
    eval_report: verification of the eval split, or None when it has no files.
    validation: the validation rule, or None.
    train_examples, validation_examples, eval_examples: readable records of each part.
  """

  train_report: shard_check.ShardReport
  eval_report: Optional[shard_check.ShardReport]
  validation: Optional[data.ValidationSplit]
  train_examples: int
  validation_examples: int
  eval_examples: int


def validation_split(train_config: config_lib.TrainConfig) -> Optional[data.ValidationSplit]:
  """The ValidationSplit of `train.validation_from` / `train.validation_fraction` (or None)."""
  if train_config.validation_from is not None:
    return data.ValidationSplit(from_timestamp=train_config.validation_from_timestamp)
  if train_config.validation_fraction is not None:
    return data.ValidationSplit(fraction=train_config.validation_fraction)
  return None


def plan_inputs(data_dir: str, train_config: config_lib.TrainConfig,
                skip_corrupt_records: bool = False) -> InputPlan:
  """Reads every train and eval shard once: names corrupt ones, counts each part.

  Raises:
    shard_check.CorruptShardError: a corrupt shard (unless skip_corrupt_records).
    config_lib.ConfigError: the validation split takes all or none of the train split.
  """
  validation = validation_split(train_config)
  train_report = shard_check.verify_shards(
      data.split_pattern(data_dir, "train"), skip_corrupt=skip_corrupt_records,
      predicate=validation.is_validation if validation else None)
  eval_pattern = data.split_pattern(data_dir, "eval")
  eval_report = (shard_check.verify_shards(eval_pattern, skip_corrupt=skip_corrupt_records)
                 if tf.io.gfile.glob(eval_pattern) else None)
  validation_examples = train_report.matching if validation else 0
  train_examples = train_report.records - validation_examples
  if validation and not (validation_examples and train_examples):
    if train_config.validation_from is not None:
      setting = f"train.validation_from (--validation_from) {train_config.validation_from}"
      remedy = (f"choose a day inside the training days, before the eval day (the default, "
                f"'{config_lib.AUTO}', is the day before it: the logs need two training "
                f"days), a train.validation_fraction, or '{config_lib.NONE}' for no split")
    else:
      setting = f"train.validation_fraction {train_config.validation_fraction}"
      remedy = "choose another fraction, or none for no split"
    raise config_lib.ConfigError(
        f"{data.split_pattern(data_dir, 'train')}: {setting} leaves {train_examples} train "
        f"and {validation_examples} validation examples; both must be > 0: {remedy}")
  return InputPlan(train_report, eval_report, validation, train_examples,
                   validation_examples, eval_report.records if eval_report else 0)


def resume_step(backup_dir: str, steps_per_epoch: int, save_freq) -> int:
  """The global step at which `fit` resumes from BACKUP_DIR (0 when there is no backup).

  The rule of tf_keras' WorkerTrainingState.maybe_load_initial_counters_from_ckpt:
  a checkpoint saved after batch b of epoch e (save_freq in steps) resumes at step
  e * steps_per_epoch + b + 1; one saved at the end of epoch e ("epoch") at
  (e + 1) * steps_per_epoch.
  """
  latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
  if not latest:
    return 0
  epoch = int(tf.train.load_variable(latest, "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
  batch = int(tf.train.load_variable(latest, "ckpt_saved_batch/.ATTRIBUTES/VARIABLE_VALUE"))
  if isinstance(save_freq, int) and batch >= 0:
    return epoch * steps_per_epoch + batch + 1
  return (epoch + 1) * steps_per_epoch if epoch >= 0 else 0


def _dataset_creator(pattern, spec, label_names, batch_size, train_config, *, training,
                     keep=None, record_limits=None, skip_steps=0, drop_remainder=False):
  """A DatasetCreator over `pattern`.

  training=True: shuffled (seeded) and repeated, skipping `skip_steps` steps' batches.
  training=False (validation, eval): in file order; one pass when a single pipeline
  feeds a single replica (then `ceil(examples / batch)` steps read every example once),
  else repeated so that every worker can take the same number of steps.
  """

  def dataset_fn(input_context):
    single = (input_context is None or input_context.num_replicas_in_sync == 1) and (
        not drop_remainder)
    return data.make_dataset(
        pattern, spec, label_names, batch_size, shuffle=training,
        shuffle_buffer=train_config.shuffle_buffer, seed=train_config.seed,
        repeat=training or not single, input_context=input_context,
        drop_remainder=drop_remainder, keep=keep, record_limits=record_limits,
        skip_steps=skip_steps if training else 0)

  return tf_keras.utils.experimental.DatasetCreator(dataset_fn)


def _warmup_examples(data_dir: str, count: int = 8):
  files = sorted(tf.io.gfile.glob(data.split_pattern(data_dir, "eval")))
  if not files:
    return []
  dataset = tf.data.TFRecordDataset(files[:1], compression_type="GZIP").take(count)
  return [record.numpy() for record in dataset]


def _validate_skipped_epoch_end(model, stopper, backup_dir, start_step, steps_per_epoch,
                                validation_input, validation_steps) -> None:
  """Validates the epoch whose end a killed run checkpointed but did not validate.

  A checkpoint taken at an epoch's last step is saved before that epoch's validation;
  a run killed in between resumes at the next epoch, and Keras never validates the
  finished one. Its weights are the checkpoint's: restore them (fit restores the same
  values again) and record their validation loss, so early stopping sees every epoch.
  """
  if not start_step or start_step % steps_per_epoch:
    return
  epoch = start_step // steps_per_epoch - 1
  if epoch in stopper.history:
    return
  latest = tf.train.latest_checkpoint(os.path.join(backup_dir, "chief"))
  tf.train.Checkpoint(model=model).restore(latest).expect_partial()
  results = model.evaluate(validation_input, steps=validation_steps, return_dict=True,
                           verbose=0)
  value = float(results[stopper.monitor[len("val_"):]])
  logging.info("Validating epoch %d, checkpointed before its validation: %s %.5f",
               epoch + 1, stopper.monitor, value)
  stopper.record(epoch, value)


def fit_output_calibration(model, train_pattern: str, spec: spec_lib.FeatureSpec,
                           label_names, train_config: config_lib.TrainConfig,
                           plan: "InputPlan") -> calibration_lib.Calibration:
  """Scores the validation split with the trained scorer and fits train.calibration
  on it (models.calibration); logs the coefficients."""
  dataset = data.make_dataset(train_pattern, spec, label_names, train_config.eval_batch_size,
                              shuffle=False, repeat=False, keep=plan.validation.is_validation,
                              record_limits=plan.train_report.record_limits)
  score = tf.function(lambda features: model.scorer(features, training=False))
  outputs, labels = {}, {}
  for features, batch_labels in dataset:
    for name, value in score(features).items():
      outputs.setdefault(name, []).append(value.numpy().reshape(-1))
    for name, value in batch_labels.items():
      labels.setdefault(name, []).append(value.numpy().reshape(-1))
  outputs = {name: np.concatenate(values) for name, values in outputs.items()}
  labels = {name: np.concatenate(values) for name, values in labels.items()}
  fitted = calibration_lib.fit_calibration(outputs, labels, train_config.calibration)
  logging.info("Calibration (%s) fitted on %d validation exposures: %s",
               train_config.calibration, len(labels[calibration_lib.CLICK]),
               calibration_lib.summary(fitted))
  return fitted


def epoch_metrics(history, epoch: Optional[int], prefix: str) -> Optional[Dict[str, float]]:
  """The metrics logged as `<prefix><name>` at the end of `epoch` (0-based) of a fit's
  History, as {name: value}; None when that epoch did not run in this fit (e.g. before a
  resume) or logged none with the prefix."""
  if epoch is None or epoch not in history.epoch:
    return None
  index = history.epoch.index(epoch)
  found = {key[len(prefix):]: float(values[index]) for key, values in history.history.items()
           if key.startswith(prefix) and len(values) > index}
  return found or None


def _steps(examples: int, batch_size: int) -> int:
  return max(1, math.ceil(examples / batch_size)) if examples else 0


def train_and_export(config: config_lib.ExperimentConfig, data_dir: str, model_dir: str,
                     strategy: Optional[tf.distribute.Strategy] = None, *,
                     export: bool = True, skip_corrupt_records: bool = False,
                     warm_start_from: Optional[str] = None) -> TrainResult:
  """Trains the configured model on DATA_DIR's train split and exports it.

  Args:
    config: the experiment config.
    data_dir: a pipeline.preprocess output directory (with its success marker).
    model_dir: where backups, logs, metrics and the export go.
    strategy: a tf.distribute.Strategy (default strategy when None).
    export: write the SavedModel (the chief only; other workers export to a scratch
      directory that is deleted, as MultiWorkerMirroredStrategy requires every worker
      to take part in saving).
    skip_corrupt_records: train on the readable records of corrupt shards (counted in
      metrics.json "input") instead of failing.
    warm_start_from: an earlier run's MODEL_DIR: start from its MODEL_DIR/warm_start
      (training/warm_start.py: rows follow their tokens into the new vocabularies, the
      earlier numeric statistics are kept, the optimizer state carries over).

  Returns:
    TrainResult with the trained model, the export directory (chief) and the metrics.

  Raises:
    features.success_marker.IncompleteOutputError: DATA_DIR lacks a valid marker.
    training.shard_check.CorruptShardError: a corrupt shard, naming path and offset.
  """
  success_marker.check_success_marker(data_dir)
  strategy = strategy or tf.distribute.get_strategy()
  strategy_lib.log_strategy(strategy)
  train_config = data.resolve_validation_from(config.train, data_dir, config.source)
  if train_config.deterministic_ops:
    tf.config.experimental.enable_op_determinism()
  tf_keras.utils.set_random_seed(train_config.seed)

  spec = config.load_feature_spec()
  check_spec_matches_data(spec, data_dir)
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(data_dir))
  artifacts_lib.check_artifacts(spec, artifacts)
  earlier = warm_start.load_state(warm_start_from) if warm_start_from else None
  if earlier:  # built with the earlier numeric statistics, so its scores carry over exactly
    artifacts = earlier.with_its_statistics(artifacts)
  counts = read_counts(data_dir)
  written = counts["impressions"]["written"]
  plan = plan_inputs(data_dir, train_config, skip_corrupt_records)
  if plan.train_examples + plan.validation_examples != written["train"]:
    logging.warning("counts.json says %d train examples, the shards hold %d readable ones",
                    written["train"], plan.train_examples + plan.validation_examples)

  batch_size = train_config.batch_size
  steps_per_epoch = train_config.steps_per_epoch or _steps(plan.train_examples, batch_size)
  total_steps = train_config.epochs * steps_per_epoch
  with strategy.scope():
    model = registry.build_model(config, spec, artifacts)
    model.compile(optimizer=make_optimizer(train_config, steps_per_epoch, total_steps))
    if train_config.init_output_bias:  # a resumed run restores its own biases after this
      rates = model.initialize_output_biases(counts.get("labels", {}).get("train", {}),
                                             written["train"])
      logging.info("Output biases start at the train split's rates: %s",
                   {name: round(rate, 5) for name, rate in rates.items()})
    if earlier:  # a resumed run then restores its own backup over it in fit
      earlier.restore(model)
  # Keras' default ("auto") sums the step's logs over replicas on every strategy but
  # TPU. Metric results are already global (synchronised variables), so a sum reports
  # AUC = 2 x the true AUC with 2 workers; "first" reports them as they are.
  model.distribute_reduction_method = "first"
  data.check_labels(data_dir, sorted(model.required_labels))
  label_names = config.data.label_names

  validation_steps = _steps(plan.validation_examples, batch_size)
  eval_steps = _steps(plan.eval_examples, batch_size)
  save_freq = train_config.checkpoint_every_steps or "epoch"
  backup_dir = os.path.join(model_dir, BACKUP_DIR)
  start_step = resume_step(backup_dir, steps_per_epoch, save_freq)
  logging.info("Training %s: %d train / %d validation / %d eval examples, batch %d, "
               "%d epochs x %d steps, input from step %d", config.model.name,
               plan.train_examples, plan.validation_examples, plan.eval_examples,
               batch_size, train_config.epochs, steps_per_epoch, start_step)

  # TPUs need static shapes: every batch full (the repeated dataset loses nothing).
  drop_remainder = strategy_lib.needs_static_shapes(strategy)
  train_pattern = data.split_pattern(data_dir, "train")
  creator = functools.partial(_dataset_creator, spec=spec, label_names=label_names,
                              batch_size=batch_size, train_config=train_config,
                              drop_remainder=drop_remainder)
  train_input = creator(train_pattern, training=True,
                        keep=plan.validation.is_train if plan.validation else None,
                        record_limits=plan.train_report.record_limits, skip_steps=start_step)
  validation_input = (creator(train_pattern, training=False,
                              keep=plan.validation.is_validation,
                              record_limits=plan.train_report.record_limits)
                      if plan.validation else None)
  eval_input = (creator(data.split_pattern(data_dir, "eval"), training=False,
                        record_limits=plan.eval_report.record_limits)
                if eval_steps else None)

  throughput = ThroughputLogger(batch_size, every_steps=max(1, steps_per_epoch // 4))
  steps = StepRecorder(warm_start_step=earlier.step if earlier else 0)
  callbacks = [
      tf_keras.callbacks.BackupAndRestore(backup_dir=backup_dir, save_freq=save_freq,
                                          delete_checkpoint=False),
      steps,  # after BackupAndRestore, so it sees the restored step
      tf_keras.callbacks.TensorBoard(log_dir=os.path.join(model_dir, "logs"),
                                     update_freq=max(1, steps_per_epoch // 4)),
      throughput,
  ]
  # HParams record and per-epoch eval-split metrics in TensorBoard (monitoring only:
  # early stopping reads the validation split). Every worker evaluates; the chief writes.
  callbacks += hparams_lib.tensorboard_callbacks(
      config, os.path.join(model_dir, "logs"), eval_input, eval_steps or None,
      write=strategy_lib.is_chief())
  epochs = train_config.epochs
  stopper = None
  if plan.validation:
    best_dir = os.path.join(model_dir, BEST_DIR)
    stopper = early_stopping.ResumableEarlyStopping(
        best_dir, patience=train_config.early_stopping_patience,
        restore_best_weights=train_config.restore_best_weights,
        write=strategy_lib.is_chief(), monitor="val_" + train_config.early_stopping_monitor)
    callbacks.append(stopper)
    stopper.set_model(model)
    stopper.load()
    _validate_skipped_epoch_end(model, stopper, backup_dir, start_step, steps_per_epoch,
                                validation_input, validation_steps)
    if stopper.stopped_epoch is not None:  # a re-run of an early-stopped run: no more
      epochs = min(epochs, stopper.stopped_epoch + 1)
  start = time.time()
  history = model.fit(train_input, epochs=epochs, steps_per_epoch=steps_per_epoch,
                      validation_data=validation_input,
                      validation_steps=validation_steps or None,
                      callbacks=callbacks, verbose=2)
  train_seconds = time.time() - start

  # The weights the model ends with are one epoch's: the best one's when early stopping
  # restored it, else the last's. When that epoch ran in this fit, its end already
  # evaluated them (validation, and EpochEvaluation's eval split): those metrics are read
  # from the history instead of a second pass over each split.
  restored = (stopper is not None and train_config.restore_best_weights
              and stopper.best_epoch is not None)
  final_epoch = (stopper.best_epoch if restored else
                 history.epoch[-1] if history.epoch else None)

  def evaluate(dataset, steps_count, prefix):
    found = epoch_metrics(history, final_epoch, prefix)
    if found is not None:
      return found
    results = model.evaluate(dataset, steps=steps_count, return_dict=True, verbose=0)
    return {k: float(v) for k, v in results.items()}

  eval_metrics = (evaluate(eval_input, eval_steps, hparams_lib.EVAL_PREFIX)
                  if eval_input is not None else {})
  metrics = {
      "model": config.model.name,
      "config": config.source,
      "train_examples": plan.train_examples,
      "validation_examples": plan.validation_examples,
      "eval_examples": plan.eval_examples,
      "epochs": train_config.epochs,
      "steps_per_epoch": steps_per_epoch,
      "initial_step": steps.initial_step,
      "final_step": int(model.optimizer.iterations.numpy()),
      "num_replicas": strategy.num_replicas_in_sync,
      "train_seconds": round(train_seconds, 2),
      "examples_per_second": round(throughput.examples_per_second, 1),
      "lr_schedule": train_config.lr_schedule,
      "warm_start": ({"from": warm_start_from, "step": earlier.step} if earlier else None),
      "last_epoch": {k: float(v[-1]) for k, v in history.history.items()},
      "eval": eval_metrics,
      "input": {"train": plan.train_report.summary(),
                "eval": plan.eval_report.summary() if plan.eval_report else None,
                "skip_corrupt_records": skip_corrupt_records},
  }
  if stopper is not None:
    metrics.update({
        "validation": evaluate(validation_input, validation_steps, "val_"),
        "validation_from": train_config.validation_from,
        "validation_fraction": train_config.validation_fraction,
        # Epochs counted from 1, as Keras prints them.
        "best_epoch": None if stopper.best_epoch is None else stopper.best_epoch + 1,
        "stopped_epoch": None if stopper.stopped_epoch is None else stopper.stopped_epoch + 1,
        "restored_best_weights": train_config.restore_best_weights,
        "early_stopping_monitor": stopper.monitor,
        "validation_history": [{"epoch": epoch + 1, stopper.monitor: value}
                               for epoch, value in sorted(stopper.history.items())],
    })
  if strategy_lib.is_chief():
    warm_start.save_state(model, model_dir)
  corrupt = [shard for report in (plan.train_report, plan.eval_report) if report
             for shard in report.corrupt]
  if corrupt:
    logging.warning("Trained with --skip_corrupt_records: %d corrupt shard(s) read up to "
                    "their error: %s", len(corrupt),
                    "; ".join(f"{s.path} ({s.records} records kept, offset {s.offset})"
                              for s in corrupt))
  scorer = model.scorer
  if train_config.calibration != "none":  # the config ensures a validation split
    fitted = fit_output_calibration(model, train_pattern, spec, label_names, train_config,
                                    plan)
    metrics["calibration"] = fitted.to_dict()
    scorer = calibration_layers.calibrated_scorer(model.scorer, fitted)
  export_dir = None
  is_chief = strategy_lib.is_chief()
  if export:
    if is_chief:
      export_base = os.path.join(model_dir, "export")
    else:
      task_type, task_id = strategy_lib.task_identity()
      export_base = os.path.join(model_dir, f"scratch_{task_type}_{task_id}")
    export_dir = export_lib.export_saved_model(
        scorer, spec, export_base, warmup_examples=_warmup_examples(data_dir),
        metadata={"model": config.model.name, "config": config.source,
                  "labels": label_names, "eval": metrics["eval"],
                  "calibration": metrics.get("calibration", {"method": "none"})})
    if not is_chief:
      tf.io.gfile.rmtree(export_base)
      export_dir = None
    metrics["export_dir"] = export_dir
  if is_chief:
    with tf.io.gfile.GFile(os.path.join(model_dir, "metrics.json"), "w") as f:
      json.dump(metrics, f, indent=1)
    logging.info("Eval metrics: %s", json.dumps(metrics["eval"], sort_keys=True))
    if "validation" in metrics:
      logging.info("Validation metrics (best epoch %s): %s", metrics["best_epoch"],
                   json.dumps(metrics["validation"], sort_keys=True))
  return TrainResult(model=model, export_dir=export_dir, metrics=metrics, scorer=scorer)
