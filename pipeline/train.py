r"""Entry point: train a model on pipeline.preprocess output and export a SavedModel.

  python -m pipeline.train --config configs/esmm.yaml --data runs/demo/data \
      --model_dir runs/demo/model [--strategy default|mirrored|multi_worker|tpu]

Re-running the same command after a crash resumes from MODEL_DIR/backup (every
train.checkpoint_every_steps steps) at the batch where the checkpoint was taken;
MODEL_DIR/metrics.json records where it resumed (`initial_step`), the final step, the
validation split's metrics and best epoch, and any corrupt shard skipped with
--skip_corrupt_records (a corrupt shard otherwise stops the run, naming its path).
docs/TRAINING.md: validation split, early stopping, schedules, exact resume. Multi-worker:
the same command in every worker process, each with its own TF_CONFIG, e.g. on one machine

  TF_CONFIG='{"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},
              "task": {"type": "worker", "index": 0}}' \
      python -m pipeline.train --strategy multi_worker ...   # and index 1

See docs/SCALING.md (strategies, input sharding, TPU, fault tolerance).
--warm_start_from EARLIER_MODEL_DIR starts from the state an earlier run left in
EARLIER_MODEL_DIR/warm_start/ (every run writes it when it ends): embedding rows follow their
tokens into the new vocabularies, the optimizer state carries over (docs/TRAINING.md, "Warm
start"); a missing or incomplete state is refused before TensorFlow is imported.
A config with feedback.method (docs/MODELS.md, "Delayed feedback") trains on that
method's stream of the day DATA is (`pipeline.preprocess --day` output), one replica, no
validation split (training/feedback_training.py); 'oracle' needs --truth.
--config resolves as given, else relative to the project root (configs.config.resolve_path).
A bad config, flag or input (a corrupt shard: its path and offset; an output without
pipeline.preprocess's success marker) ends with one line `error: ...` and exit status 2
(pipeline/cli.py; --verbose adds the traceback).
"""

import os

from absl import flags
from absl import logging

from configs import config as config_lib
from features import success_marker
from pipeline import cli
from training import warm_start

FLAGS = flags.FLAGS
flags.DEFINE_string("config", config_lib.DEFAULT_CONFIG,
                    "Experiment YAML (configs/<model>.yaml).")
flags.DEFINE_string("data", None, "Output directory of pipeline.preprocess.", required=True)
flags.DEFINE_string("model_dir", None, "Directory for checkpoints, logs and the export.",
                    required=True)
flags.DEFINE_enum("strategy", "default", list(config_lib.STRATEGIES),
                  "tf.distribute strategy; multi_worker reads TF_CONFIG.")
flags.DEFINE_string("tpu", None, "TPU name or address for --strategy tpu.")
flags.DEFINE_integer("epochs", None, "Override train.epochs.")
flags.DEFINE_integer("steps_per_epoch", None, "Override train.steps_per_epoch.")
flags.DEFINE_integer("batch_size", None, "Override train.batch_size (global batch).")
flags.DEFINE_float("learning_rate", None, "Override train.learning_rate.")
flags.DEFINE_integer("seed", None, "Override train.seed.")
flags.DEFINE_bool("export", True, "Export a SavedModel under MODEL_DIR/export/<version>/.")
flags.DEFINE_bool("skip_corrupt_records", False,
                  "Train on the readable records of a corrupt TFRecord shard (counted in "
                  "metrics.json 'input' and the log) instead of failing with its path.")
flags.DEFINE_bool("deterministic_ops", None,
                  "Override train.deterministic_ops (tf.config.experimental."
                  "enable_op_determinism: bit-identical reruns and resumes on CPU).")
flags.DEFINE_string("validation_from", None,
                    "Override train.validation_from (YYYY-MM-DD, 'auto' = the day "
                    "before the eval day recorded in DATA/split.json, or 'none' = no "
                    "validation split).")
flags.DEFINE_integer("early_stopping_patience", None,
                     "Override train.early_stopping_patience (0 = never stop early).")
flags.DEFINE_enum("calibration", None, list(config_lib.CALIBRATIONS),
                  "Override train.calibration: the output calibration fitted on the "
                  "validation split and exported with the model (docs/TRAINING.md).")
flags.DEFINE_string("truth", None,
                    "feedback.method 'oracle' only: the simulator output whose outcomes "
                    "give each impression's final label.")
flags.DEFINE_string("warm_start_from", None,
                    "MODEL_DIR of an earlier pipeline.train run: start from the weights "
                    "and optimizer state it left in MODEL_DIR/warm_start/ (docs/TRAINING.md, "
                    "'Warm start').")


flags.DEFINE_enum("feedback_method", None, list(config_lib.FEEDBACK_METHODS),
                  "Override feedback.method: train on a delayed-feedback method's stream "
                  "of a day (docs/MODELS.md, 'Delayed feedback'); 'none' = the plain path.")


def _overrides() -> dict:
  train = {key: getattr(FLAGS, key)
           for key in ("epochs", "steps_per_epoch", "batch_size", "learning_rate", "seed",
                       "deterministic_ops", "validation_from", "early_stopping_patience",
                       "calibration")
           if getattr(FLAGS, key) is not None}
  overrides = {"train": train} if train else {}
  if FLAGS.feedback_method is not None:
    overrides["feedback"] = {"method": FLAGS.feedback_method}
  return overrides


def main(argv):
  del argv  # cli.run_main refused any argument that is not a flag
  config = config_lib.load_config(FLAGS.config, overrides=_overrides())
  if "://" not in FLAGS.data:  # a remote one is checked by the trainer, after TensorFlow
    if not os.path.isdir(FLAGS.data):
      raise cli.UserError(f"--data {FLAGS.data}: no such directory (the output directory of "
                          f"pipeline.preprocess)")
    success_marker.check_success_marker(FLAGS.data)  # the trainer checks again: a few ms
  if FLAGS.warm_start_from and "://" not in FLAGS.warm_start_from:
    try:  # the trainer checks again (a remote one only there, after TensorFlow)
      warm_start.check_state(FLAGS.warm_start_from)
    except warm_start.WarmStartError as error:
      raise cli.UserError(f"--warm_start_from: {error}") from error
  if config.feedback.enabled:
    result = _train_on_stream(config)
    logging.info("Done: export %s", result.export_dir)
    return
  # TensorFlow and the trainer only now, after the flags, the config and the data are
  # checked: start-up time of --help and of a user error (0.3 s instead of 4-5 s idle).
  # pylint: disable=g-import-not-at-top
  from training import strategy as strategy_lib
  from training import trainer
  # pylint: enable=g-import-not-at-top
  strategy = strategy_lib.make_strategy(FLAGS.strategy, tpu=FLAGS.tpu)
  result = trainer.train_and_export(config, FLAGS.data, FLAGS.model_dir, strategy,
                                    export=FLAGS.export,
                                    skip_corrupt_records=FLAGS.skip_corrupt_records,
                                    warm_start_from=FLAGS.warm_start_from)
  logging.info("Done: export %s", result.export_dir)


def _train_on_stream(config: config_lib.ExperimentConfig):
  """A config with feedback.method: the method's stream of the day --data is (a
  `pipeline.preprocess --day` output), one replica (training/feedback_training.py)."""
  if FLAGS.strategy != "default":
    raise cli.UserError(f"--strategy {FLAGS.strategy}: a delayed-feedback stream "
                        f"(feedback.method {config.feedback.method!r}) trains on one "
                        f"replica; use --strategy default")
  if "://" not in FLAGS.data and not os.path.isfile(os.path.join(FLAGS.data, "day.json")):
    raise cli.UserError(f"--data {FLAGS.data}: no day.json: feedback.method "
                        f"{config.feedback.method!r} trains on a day's stream, the output "
                        f"of pipeline.preprocess --day")
  if config.feedback.method == "oracle" and not FLAGS.truth:
    raise cli.UserError("feedback.method 'oracle' trains on the final labels: give "
                        "--truth (the simulator output)")
  # pylint: disable=g-import-not-at-top
  from training import feedback_inputs
  from training import feedback_training
  # pylint: enable=g-import-not-at-top
  final = (feedback_inputs.final_labels_of(FLAGS.truth, config.data.conversion_label)
           if config.feedback.method == "oracle" else None)
  return feedback_training.train_on_streams(
      config, [FLAGS.data], FLAGS.model_dir, warm_start_from=FLAGS.warm_start_from,
      final_labels=final, export=FLAGS.export)


if __name__ == "__main__":
  cli.run_main(main)
