"""TensorBoard for comparing runs: the run's hyperparameters (HParams plugin) and the eval
split's metrics per epoch.

Flow position: pipeline.train -> training.trainer (Keras fit) -> **these callbacks** ->
MODEL_DIR/logs/ (beside Keras' own TensorBoard callback, which writes logs/train and,
with a validation split, logs/validation). One board over several runs:

  .venv/bin/tensorboard --logdir runs/demo/models      # then http://localhost:6006

Scalars: every run's `epoch_<metric>` under train/, validation/ and eval/; HPARAMS: one row
per run (model, bottom, batch size, learning rate, ...) with its last epoch's metrics.

  hyperparameters(config)          -> {name: bool | int | float | str}, flat
  tensorboard_callbacks(config, log_dir, eval_dataset=None, eval_steps=None)
                                   -> [HParams callback(, EpochEvaluation)]
  EpochEvaluation                  evaluates the eval split at each epoch's end and writes
                                   its metrics to log_dir/eval (monitoring only: nothing
                                   stops, restores or checkpoints on it)
"""

import dataclasses
import json
import os
from typing import Any, Dict, List, Mapping, Optional

import tensorflow as tf
import tf_keras
from tensorboard.plugins.hparams import api as hp

EVAL_DIR = "eval"
HPARAM_TYPES = (bool, int, float, str)


def _flatten(prefix: str, value: Any, into: Dict[str, Any]) -> None:
  if dataclasses.is_dataclass(value) and not isinstance(value, type):
    value = {field.name: getattr(value, field.name) for field in dataclasses.fields(value)}
  if isinstance(value, Mapping):
    for key, item in value.items():
      _flatten(f"{prefix}.{key}" if prefix else str(key), item, into)
  elif value is None:
    return
  elif isinstance(value, HPARAM_TYPES):
    into[prefix] = value
  else:  # lists, tuples: one comparable string
    into[prefix] = json.dumps(value, default=str)


def hyperparameters(config) -> Dict[str, Any]:
  """The run's hyperparameters, flat, as the HParams plugin takes them.

  Args:
    config: a configs.config.ExperimentConfig.

  Returns:
    {"config": source file, "model.name": ..., "model.params.bottom.name": ...,
     "train.batch_size": ..., "train.learning_rate": ..., ...}: the model and train
    sections (None values left out; lists and tuples as JSON strings).
  """
  flat = {"config": os.path.basename(str(config.source))}
  _flatten("model", config.model, flat)
  _flatten("train", config.train, flat)
  return flat


EVAL_PREFIX = "eval_"  # EpochEvaluation's metrics in the epoch's logs: eval_<metric>


class EpochEvaluation(tf_keras.callbacks.Callback):
  """At each epoch's end: model.evaluate on the eval split -> log_dir/eval/epoch_<metric>.

  Monitoring only (the eval split steers nothing). Costs one pass over the eval split
  per epoch.
  """

  def __init__(self, dataset, steps: Optional[int], log_dir: str, write: bool = True):
    """`write=False` on non-chief workers: they evaluate (a collective step) but write
    nothing."""
    super().__init__()
    self._dataset = dataset
    self._steps = steps
    self._writer = (tf.summary.create_file_writer(os.path.join(log_dir, EVAL_DIR))
                    if write else None)

  def on_epoch_end(self, epoch, logs=None):
    results = self.model.evaluate(self._dataset, steps=self._steps, return_dict=True,
                                  verbose=0)
    if self._writer is not None:
      with self._writer.as_default():
        for name, value in results.items():
          tf.summary.scalar(f"epoch_{name}", float(value), step=epoch)
      self._writer.flush()
    if logs is not None:  # also in the History and the Keras log line, as eval_<metric>
      logs.update({f"{EVAL_PREFIX}{name}": float(value) for name, value in results.items()})


def tensorboard_callbacks(config, log_dir: str, eval_dataset=None,
                          eval_steps: Optional[int] = None,
                          write: bool = True) -> List[tf_keras.callbacks.Callback]:
  """The HParams callback of the run, and EpochEvaluation when an eval dataset is given.

  Args:
    config: the ExperimentConfig (its hyperparameters are recorded).
    log_dir: the run's TensorBoard directory (MODEL_DIR/logs, as Keras' callback); its
      parent's name (MODEL_DIR's) names the run in the HParams table.
    eval_dataset: optional eval split input (as given to model.evaluate).
    eval_steps: steps of one pass over eval_dataset.
    write: False on non-chief workers of a multi-worker run: no HParams record, and
      EpochEvaluation evaluates (every worker must) without writing.
  """
  callbacks = []
  if write:
    callbacks.append(hp.KerasCallback(log_dir, hyperparameters(config),
                                      trial_id=os.path.basename(os.path.dirname(
                                          os.path.abspath(log_dir)))))
  if eval_dataset is not None:
    callbacks.append(EpochEvaluation(eval_dataset, eval_steps, log_dir, write=write))
  return callbacks
