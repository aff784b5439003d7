"""tf.distribute strategies by name, for `pipeline.train --strategy`.

Flow position: pipeline.train picks a strategy here, then builds the model inside its
scope and feeds it per-replica batches from training.data.

  default       the default (single-device) strategy.
  mirrored      MirroredStrategy over the local devices (one CPU replica here; all GPUs
                on a GPU machine); the global batch is split across replicas, each
                replica's mean loss is divided by the replica count and the gradients
                summed (models.multitask.MultiTaskModel.train_step; docs/SCALING.md).
  multi_worker  MultiWorkerMirroredStrategy; the cluster comes from the TF_CONFIG
                environment variable (`tf_config` below writes one; see docs/SCALING.md).
                Every worker runs the same command; worker 0 (or "chief") exports.
  tpu           TPUStrategy through TPUClusterResolver(tpu=NAME) (untested here: no TPU);
                batches get static shapes (drop_remainder, see `needs_static_shapes`).
"""

import json
import os
from typing import Optional, Sequence

from absl import logging
import tensorflow as tf

from configs import config as config_lib


def make_strategy(name: str, tpu: Optional[str] = None) -> tf.distribute.Strategy:
  """Returns the tf.distribute.Strategy called `name` (one of configs.config.STRATEGIES)."""
  if name == "default":
    return tf.distribute.get_strategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ValueError("--strategy multi_worker needs the TF_CONFIG environment variable "
                       "(cluster and task); see docs/COMMANDS.md 'Scaling out'")
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "tpu":
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)
  raise ValueError(f"unknown strategy {name!r}; choose one of {config_lib.STRATEGIES}")


def needs_static_shapes(strategy: tf.distribute.Strategy) -> bool:
  """True under TPUStrategy: XLA on TPU compiles for one batch shape (drop_remainder)."""
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def tf_config(workers: Sequence[str], index: int, task_type: str = "worker") -> str:
  """The TF_CONFIG JSON of task `task_type:index` in a cluster of `workers`.

  Args:
    workers: "host:port" of every worker, in order (worker 0 is the chief).
    index: this process's position in `workers`.
    task_type: "worker" (MultiWorkerMirroredStrategy without a separate chief).

  Returns:
    e.g. '{"cluster": {"worker": ["127.0.0.1:20001", "127.0.0.1:20002"]},
           "task": {"type": "worker", "index": 1}}'
  """
  if not 0 <= index < len(workers):
    raise ValueError(f"index {index} outside the {len(workers)} workers {list(workers)}")
  return json.dumps({"cluster": {"worker": list(workers)},
                     "task": {"type": task_type, "index": index}})


def task_identity() -> tuple:
  """(task_type, task_id) of this process from TF_CONFIG; ("chief", 0) when absent."""
  config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
  task = config.get("task", {})
  return task.get("type", "chief"), int(task.get("index", 0))


def is_chief() -> bool:
  """True on the process that owns the export and the final metrics.

  With a TF_CONFIG cluster that has no "chief" job, worker 0 is the chief (the
  MultiWorkerMirroredStrategy convention).
  """
  config = json.loads(os.environ.get("TF_CONFIG", "{}") or "{}")
  task_type, task_id = task_identity()
  if "chief" in config.get("cluster", {}):
    return task_type == "chief"
  return task_type in ("chief", "worker") and task_id == 0


def log_strategy(strategy: tf.distribute.Strategy) -> None:
  task_type, task_id = task_identity()
  logging.info("Strategy %s with %d replica(s) in sync; task %s:%d (chief=%s)",
               type(strategy).__name__, strategy.num_replicas_in_sync, task_type, task_id,
               is_chief())
