"""Training on a delayed-feedback method's stream of one or more days, and the export.

Flow position: pipeline.daily (train stage) or pipeline.train on `pipeline.preprocess --day`
output, with a config whose `feedback.method` is not "none" -> **`train_on_streams`**:
  registry.build_model -> feedback_objective.feedback_model (the method's tasks and loss)
  -> warm start (training/warm_start.py) -> ES-DFM / DEFER: the auxiliary classifier
  refitted on the last feedback.auxiliary_days days' closed/ rows (feedback_auxiliary)
  -> fit on the days' streams (feedback_inputs.stream_dataset, one day after another)
  -> feedback_objective.serving_scorer (FNC's correction inside the model) -> SavedModel.

The layout of MODEL_DIR is the trainer's: metrics.json, warm_start/ (the next day starts
from it), export/<version>/; plus auxiliary/metrics.json for ES-DFM and DEFER.

What differs from training.trainer.train_and_export, and why:
  - no validation split, early stopping or output calibration: the labels a split would
    hold are the snapshot's, whose late conversions are still negatives; fitting on them
    undoes the method's correction (configs/config.py refuses the settings).
  - no BackupAndRestore: a killed stream training is redone from its start, as
    pipeline.daily redoes every killed stage; each day's stream is a fraction of a
    snapshot's examples.
  - epochs are passes over the days' streams, `train.epochs` of them, the samples in
    ingestion order within a day, shuffled by `train.shuffle_buffer`.
The oracle (the final labels at once) needs the simulator's outcomes (`final_labels`).
"""

import json
import os
import time
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import success_marker
from models import registry
from training import export as export_lib
from training import feedback_auxiliary
from training import feedback_data
from training import feedback_inputs
from training import feedback_objective as objective
from training import feedback_streams as streams
from training import trainer
from training import warm_start
from transforms import outputs as outputs_lib

AUXILIARY_DIR = "auxiliary"


def stream_config(config: config_lib.ExperimentConfig) -> streams.StreamConfig:
  """The method, W (data.attribution_window_s) and window of `config`'s feedback section."""
  feedback = config.feedback
  if not feedback.enabled:
    raise ValueError(f"{config.source}: feedback.method is 'none': no stream to train on")
  window = feedback.window_s if feedback.method in streams.WINDOWED else 0.0
  return streams.StreamConfig(feedback.method, float(config.data.attribution_window_s),
                              float(window))


def auxiliary_model(config: config_lib.ExperimentConfig, day_dir: str, spec, artifacts,
                    model_dir: str):
  """ES-DFM's and DEFER's classifier of delayed positives, fitted on the closed/ rows of
  the feedback.auxiliary_days days up to DAY_DIR; its metrics in MODEL_DIR/auxiliary/."""
  feedback, train = config.feedback, config.train
  click, conversion = config.data.click_label, config.data.conversion_label
  days = [day_dir, *feedback_inputs.earlier_days(day_dir, feedback.auxiliary_days - 1)]
  closed = feedback_inputs.closed_labels(days, feedback.window_s,
                                         config.data.attribution_window_s, click, conversion)
  dataset = feedback_inputs.delayed_positive_dataset(closed, spec, train.batch_size, click,
                                                     conversion)
  start = time.process_time()
  model = feedback_auxiliary.train_delayed_positive_model(
      config, spec, artifacts, dataset, epochs=feedback.auxiliary_epochs,
      conversion_label=conversion)
  rows, positives = feedback_inputs.delayed_positive_counts(closed)
  record = {"days": days, "clicked_rows": rows, "delayed_positive_rate":
            positives / max(rows, 1), "cpu_seconds": round(time.process_time() - start, 2)}
  directory = os.path.join(model_dir, AUXILIARY_DIR)
  tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(os.path.join(directory, "metrics.json"), "w") as f:
    json.dump(record, f, indent=1)
  logging.info("Auxiliary classifier of delayed positives: %d clicked rows of %d day(s), "
               "rate %.4f", rows, len(days), record["delayed_positive_rate"])
  return model, record


def _stream_counts(stream) -> Dict[str, int]:
  kinds, counts = np.unique(stream.kind, return_counts=True)
  return {str(kind): int(count) for kind, count in zip(kinds, counts)}


def train_on_streams(config: config_lib.ExperimentConfig, day_dirs: Sequence[str],
                     model_dir: str, *, warm_start_from: Optional[str] = None,
                     final_labels: Optional[Mapping[str, int]] = None,
                     export: bool = True) -> trainer.TrainResult:
  """Trains `config`'s model with its feedback method on the streams of DAY_DIRS (oldest
  first; the newest day's transform artifacts) and exports the served scorer.

  Args:
    config: an experiment config with feedback.method other than "none".
    day_dirs: `pipeline.preprocess --day` outputs, oldest first, each with its success
      marker (a from-scratch model trains on several history days, a warm-started one on
      its new day).
    model_dir: backups-free MODEL_DIR (module docstring).
    warm_start_from: an earlier run's MODEL_DIR (training/warm_start.py), same method.
    final_labels: the oracle's impression_id -> final conversion label.
    export: write the SavedModel.

  Returns:
    trainer.TrainResult: the feedback model, the export, metrics.json's content and the
    served scorer (P(final label), FNC's q / (1 - q) applied).
  """
  if not day_dirs:
    raise ValueError("train_on_streams: no day to train on")
  for day_dir in day_dirs:
    success_marker.check_success_marker(day_dir)
  method_config = stream_config(config)
  method = method_config.method
  train = config.train
  if train.deterministic_ops:
    tf.config.experimental.enable_op_determinism()
  tf_keras.utils.set_random_seed(train.seed)
  click, conversion = config.data.click_label, config.data.conversion_label
  newest = day_dirs[-1]
  spec = config.load_feature_spec()
  trainer.check_spec_matches_data(spec, newest)
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(newest))
  artifacts_lib.check_artifacts(spec, artifacts)
  earlier = warm_start.load_state(warm_start_from) if warm_start_from else None
  if earlier:
    artifacts = earlier.with_its_statistics(artifacts)

  inputs = [feedback_inputs.day_stream(day_dir, method_config, click, conversion,
                                       final_labels) for day_dir in day_dirs]
  samples = sum(len(stream) for _, stream in inputs)
  steps_per_epoch = train.steps_per_epoch or max(1, -(-samples // train.batch_size))
  model = objective.feedback_model(registry.build_model(config, spec, artifacts), method,
                                   click, conversion)
  model.compile(optimizer=trainer.make_optimizer(train, steps_per_epoch,
                                                 train.epochs * steps_per_epoch))
  if train.init_output_bias and not earlier:
    counts = trainer.read_counts(newest)
    model.initialize_output_biases(counts.get("labels", {}).get("train", {}),
                                   counts["impressions"]["written"]["train"])
  if earlier:
    earlier.restore(model)
  auxiliary = None
  f_dp = None
  if method in objective.NEEDS_DELAYED_POSITIVE:
    classifier, auxiliary = auxiliary_model(config, newest, spec, artifacts, model_dir)
    f_dp = feedback_inputs.f_dp_function(classifier.scorer)

  datasets = [feedback_inputs.stream_dataset(
      day_dir, method_config, spec, train.batch_size, f_dp=f_dp,
      shuffle_buffer=train.shuffle_buffer, seed=train.seed, click_label=click,
      conversion_label=conversion, stream=stream)
              for day_dir, stream in zip(day_dirs, inputs)]
  dataset = datasets[0]
  for part in datasets[1:]:
    dataset = dataset.concatenate(part)
  if train.steps_per_epoch:
    dataset = dataset.repeat()
  logging.info("Training %s with %s on %d day(s): %d stream samples %s, %d epochs x %d "
               "steps", config.model.name, method, len(day_dirs), samples,
               [_stream_counts(stream) for _, stream in inputs], train.epochs,
               steps_per_epoch)
  throughput = trainer.ThroughputLogger(train.batch_size,
                                        every_steps=max(1, steps_per_epoch // 4))
  steps = trainer.StepRecorder(warm_start_step=earlier.step if earlier else 0)
  start = time.time()
  history = model.fit(dataset, epochs=train.epochs,
                      steps_per_epoch=train.steps_per_epoch or None,
                      callbacks=[steps, throughput], verbose=2)
  train_seconds = time.time() - start
  scorer = objective.serving_scorer(model.scorer, method,
                                    objective.trained_output(model, conversion))
  metrics: Dict[str, Any] = {
      "model": config.model.name,
      "config": config.source,
      "feedback": {"method": method, "window_s": method_config.window_s,
                   "attribution_s": method_config.attribution_s},
      "days": list(day_dirs),
      "stream": [{"day": day_dir, "samples": len(stream), "kinds": _stream_counts(stream)}
                 for day_dir, (_, stream) in zip(day_dirs, inputs)],
      "train_examples": samples,
      "validation_examples": 0,
      "epochs": train.epochs,
      "steps_per_epoch": steps_per_epoch,
      "initial_step": steps.initial_step,
      "final_step": int(model.optimizer.iterations.numpy()),
      "train_seconds": round(train_seconds, 2),
      "examples_per_second": round(throughput.examples_per_second, 1),
      "warm_start": ({"from": warm_start_from, "step": earlier.step} if earlier else None),
      "last_epoch": {k: float(v[-1]) for k, v in history.history.items()},
      "auxiliary": auxiliary,
      "eval": {},
  }
  warm_start.save_state(model, model_dir)
  export_dir = None
  if export:
    warmup = [record.numpy() for record in feedback_data.records(
        outputs_lib.OutputPaths(newest).examples_pattern("train")).take(8)]
    export_dir = export_lib.export_saved_model(
        scorer, spec, os.path.join(model_dir, "export"), warmup_examples=warmup,
        metadata={"model": config.model.name, "config": config.source,
                  "labels": config.data.label_names, "eval": {},
                  "feedback": metrics["feedback"], "calibration": {"method": "none"}})
  metrics["export_dir"] = export_dir
  with tf.io.gfile.GFile(os.path.join(model_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f, indent=1)
  return trainer.TrainResult(model=model, export_dir=export_dir, metrics=metrics,
                             scorer=scorer)
