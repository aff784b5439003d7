"""The tf.data input pipeline: GZIP TFRecord shards -> batches of (features, labels).

Flow: Beam (OUTPUT/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz) -> **make_dataset** ->
model.fit / evaluate. Order of operations (DESIGN.md section 6):

  list files (sorted) -> shard by InputContext -> shuffle file order (seeded) ->
  parallel interleave of GZIP TFRecordDatasets -> shuffle records (seeded) ->
  [repeat] -> batch -> vectorised parse (features.parsing) -> prefetch(AUTOTUNE)

Sharding: with an `input_context` (tf.distribute's `distribute_datasets_from_function`,
Keras `DatasetCreator`), pipeline `input_pipeline_id` of `num_input_pipelines` reads
every num_input_pipelines-th file of the sorted list, so the pipelines partition the
files; with fewer files than pipelines it falls back to sharding records (each pipeline
reads all files and keeps every n-th record). tf.data auto-sharding is then turned off.

Determinism: with shuffle=False the order is fixed (sorted files, deterministic
interleave, no shuffle). With shuffle=True and a seed, the same seed gives the same
order; with shuffle=True and seed=None, the interleave may also trade order for speed.
"""

import json
import os
from typing import List, Optional, Sequence

from absl import logging
import tensorflow as tf

from features import parsing
from features import spec as spec_lib

LABELS_FILE = "labels.json"
TFRECORD_SUFFIX = ".tfrecord.gz"
COMPRESSION = "GZIP"
MAX_CYCLE_LENGTH = 16


def split_pattern(data_dir: str, split: str) -> str:
  """Glob of a split's TFRecord shards: DATA/<split>/<split>-*.tfrecord.gz."""
  return os.path.join(data_dir, split, f"{split}-*{TFRECORD_SUFFIX}")


def list_files(file_pattern: str) -> List[str]:
  """The files matching `file_pattern` (local or gs://), sorted.

  Raises:
    FileNotFoundError: nothing matches.
  """
  files = sorted(tf.io.gfile.glob(file_pattern))
  if not files:
    raise FileNotFoundError(f"no TFRecord files match {file_pattern}")
  return files


def read_label_names(data_dir: str) -> List[str]:
  """The label names the Beam job wrote to DATA/labels.json (a JSON list).

  Raises:
    FileNotFoundError: DATA/labels.json is missing.
  """
  path = os.path.join(data_dir, LABELS_FILE)
  if not tf.io.gfile.exists(path):
    raise FileNotFoundError(f"{path}: missing; is {data_dir} a pipeline.preprocess output?")
  with tf.io.gfile.GFile(path) as f:
    names = json.load(f)
  if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
    raise ValueError(f"{path}: expected a JSON list of label names, got {names!r}")
  return names


def check_labels(data_dir: str, required_labels: Sequence[str]) -> List[str]:
  """Fails, naming the label and the data directory, if the data lacks a label.

  Args:
    data_dir: a pipeline.preprocess output directory.
    required_labels: the labels a model reads (e.g. `model.required_labels`).

  Returns:
    The label names the data holds (DATA/labels.json).

  Raises:
    ValueError: a required label is not in DATA/labels.json.
    FileNotFoundError: DATA/labels.json is missing.
  """
  available = read_label_names(data_dir)
  missing = [name for name in required_labels if name not in available]
  if missing:
    raise ValueError(
        f"the model needs label(s) {missing} but the data in {data_dir} only has "
        f"{available} (see {os.path.join(data_dir, LABELS_FILE)}); add them to "
        f"data.labels of the config and re-run pipeline.preprocess")
  return available


def count_examples(file_pattern: str) -> int:
  """Counts the records of every matching file by reading them all (O(data)).

  Prefer DATA/counts.json for the Beam job's output; this is for other files and tests.
  """
  files = list_files(file_pattern)
  dataset = tf.data.Dataset.from_tensor_slices(files).interleave(
      lambda path: tf.data.TFRecordDataset(path, compression_type=COMPRESSION),
      cycle_length=min(len(files), MAX_CYCLE_LENGTH), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=False)
  return int(dataset.reduce(tf.constant(0, tf.int64), lambda count, _: count + 1))


def make_dataset(file_pattern: str, spec: spec_lib.FeatureSpec, label_names: Sequence[str],
                 batch_size: int, *, shuffle: bool = True, shuffle_buffer: int = 10000,
                 seed: Optional[int] = None, repeat: bool = False,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 drop_remainder: bool = False, with_metadata: bool = False
                 ) -> tf.data.Dataset:
  """Batches of parsed examples from GZIP TFRecord shards.

  Args:
    file_pattern: glob of the shards, e.g. `split_pattern(data_dir, "train")`.
    spec: the feature spec.
    label_names: labels to parse.
    batch_size: the global batch size; with `input_context`, each pipeline batches
      `input_context.get_per_replica_batch_size(batch_size)`.
    shuffle: shuffle file order and records (buffer of `shuffle_buffer` records).
    shuffle_buffer: records in the shuffle buffer.
    seed: seeds both shuffles; the same seed gives the same order.
    repeat: repeat forever (for `steps_per_epoch` training).
    input_context: tf.distribute.InputContext to shard by.
    drop_remainder: drop the last partial batch (static batch dimension, for TPUs).
    with_metadata: also yield `impression_id` and `timestamp`.

  Returns:
    tf.data.Dataset of (features, labels) or (features, labels, metadata) with the
    shapes of `features.parsing.parse_examples` ([batch] and ragged [batch, None]).
  """
  files = list_files(file_pattern)
  deterministic = (not shuffle) or seed is not None
  num_pipelines, pipeline_id = 1, 0
  if input_context is not None:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
    batch_size = input_context.get_per_replica_batch_size(batch_size)
  shard_records = num_pipelines > 1 and len(files) < num_pipelines
  if num_pipelines > 1 and not shard_records:
    files = files[pipeline_id::num_pipelines]
  logging.info("make_dataset %s: %d files (pipeline %d of %d%s), batch %d, shuffle %s",
               file_pattern, len(files), pipeline_id, num_pipelines,
               ", sharding records" if shard_records else "", batch_size, shuffle)

  dataset = tf.data.Dataset.from_tensor_slices(files)
  if shuffle and not shard_records:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(
      lambda path: tf.data.TFRecordDataset(path, compression_type=COMPRESSION),
      cycle_length=min(len(files), MAX_CYCLE_LENGTH), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic or shard_records)
  if shard_records:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  if shuffle:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  dataset = dataset.map(
      lambda serialized: parsing.parse_examples(serialized, spec, label_names, with_metadata),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = deterministic
  if input_context is not None:
    options.experimental_distribute.auto_shard_policy = (
        tf.data.experimental.AutoShardPolicy.OFF)
  return dataset.with_options(options)
