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
With a seed and repeat=True, the stream of batches is a deterministic function of the
seed: pass p over the data is shuffled by the p-th draw of the seeded shuffles
(`reshuffle_each_iteration`), so batch g of the stream is the same in every run, and
`skip_steps=g` starts a fresh iterator exactly there (how a resumed run continues at the
batch where its checkpoint was taken; docs/TRAINING.md).

Validation split: `ValidationSplit` says which records of the train split are held out
(by timestamp, or by a stable hash of impression_id); `make_dataset(keep=...)` keeps
only the records a predicate accepts, so the train and validation datasets are the two
sides of one predicate over the same files and cannot overlap. The eval split is never
read for either. train.validation_from's default, "auto", is resolved here
(`resolve_validation_from`): the day before the eval day DATA/split.json records.
"""

import dataclasses
import json
import os
from typing import Dict, List, Optional, Sequence

from absl import logging
import tensorflow as tf

from configs import config as config_lib
from features import parsing
from features import spec as spec_lib
from training import shard_check

LABELS_FILE = "labels.json"
TFRECORD_SUFFIX = ".tfrecord.gz"
COMPRESSION = shard_check.COMPRESSION
MAX_CYCLE_LENGTH = 16
FILTER_BATCH = 1024
HASH_BUCKETS = 1_000_000
RecordPredicate = shard_check.RecordPredicate  # tf.string [n] -> tf.bool [n]


@dataclasses.dataclass(frozen=True)
class ValidationSplit:
  """Which records of the train split are validation records (the rest train).

  Exactly one rule is set:
    from_timestamp: a record whose `timestamp` (int64 unix seconds) is >= this is
      validation: the last training days, as the eval split is the days after them.
    fraction: a record whose `impression_id` hashes (FarmHash fingerprint, stable across
      runs, machines and TF versions) into the first `fraction` of HASH_BUCKETS is
      validation: a random-looking but fixed `fraction` of the records.
  """

  from_timestamp: Optional[int] = None
  fraction: Optional[float] = None

  def __post_init__(self):
    if (self.from_timestamp is None) == (self.fraction is None):
      raise ValueError("ValidationSplit needs exactly one of from_timestamp and fraction")
    if self.fraction is not None and not 0.0 < self.fraction < 1.0:
      raise ValueError(f"ValidationSplit.fraction must be in (0, 1), got {self.fraction}")

  def is_validation(self, serialized: tf.Tensor) -> tf.Tensor:
    """tf.string [n] serialized tf.Examples -> tf.bool [n], True for validation records."""
    metadata = tf.io.parse_example(serialized, parsing.metadata_parse_spec())
    if self.from_timestamp is not None:
      return metadata[spec_lib.TIMESTAMP_KEY] >= self.from_timestamp
    buckets = tf.strings.to_hash_bucket_fast(metadata[spec_lib.IMPRESSION_ID_KEY], HASH_BUCKETS)
    return buckets < int(round(self.fraction * HASH_BUCKETS))

  def is_train(self, serialized: tf.Tensor) -> tf.Tensor:
    """tf.string [n] -> tf.bool [n]: the complement of `is_validation`."""
    return tf.logical_not(self.is_validation(serialized))


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


def read_split_dates(data_dir: str) -> Optional[Dict[str, object]]:
  """DATA/split.json (`configs.config.SPLIT_DATES_FILE`): the eval day the --source log
  job used, {"eval_from": "YYYY-MM-DD", "eval_from_timestamp", "chosen_by"}; None when
  the job wrote none (a file-split source, or data preprocessed before the file existed).
  """
  path = os.path.join(data_dir, config_lib.SPLIT_DATES_FILE)
  if not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def resolve_validation_from(train_config: config_lib.TrainConfig, data_dir: str,
                            source: str = "<memory>") -> config_lib.TrainConfig:
  """train_config with validation_from "auto" (the default) resolved against DATA.

  "auto" becomes the day before the eval day recorded in DATA/split.json, or None (no
  validation split, logged once as a warning) on data without a recorded eval day: the
  file-split sources write no split.json. Any other value is returned unchanged.

  Args:
    train_config: the config's train section.
    data_dir: a pipeline.preprocess output directory.
    source: the config file, for the error message.

  Raises:
    config_lib.ConfigError: "auto" found no split and a setting needs one
      (train.early_stopping_patience, train.calibration).
  """
  if train_config.validation_from != config_lib.AUTO:
    return train_config
  path = os.path.join(data_dir, config_lib.SPLIT_DATES_FILE)
  eval_from = (read_split_dates(data_dir) or {}).get("eval_from")
  if eval_from:
    validation_from = config_lib.day_before(eval_from)
    logging.info("train.validation_from auto -> %s (the day before the eval day %s in %s)",
                 validation_from, eval_from, path)
    return dataclasses.replace(train_config, validation_from=validation_from)
  resolved = dataclasses.replace(train_config, validation_from=None)
  why = (f"train.validation_from is '{config_lib.AUTO}' (the default: the day before the "
         f"eval day recorded in {path}) and the data records none (only pipeline.preprocess "
         f"--source log writes it)")
  config_lib.check_validation_needs(resolved, source, why)
  logging.warning("No validation split: %s. Set train.validation_from: YYYY-MM-DD "
                  "(--validation_from) or train.validation_fraction for one, or "
                  "validation_from: none to say so.", why)
  return resolved


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

  Raises:
    training.shard_check.CorruptShardError: a file is corrupt (named, with the offset).
  """
  return shard_check.verify_shards(file_pattern).records


def keep_records(records: tf.data.Dataset, keep: RecordPredicate) -> tf.data.Dataset:
  """The serialized records (tf.string scalars) that `keep` accepts, in order; `keep`
  runs on batches of FILTER_BATCH records."""
  return records.batch(FILTER_BATCH).map(
      lambda serialized: tf.boolean_mask(serialized, keep(serialized)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=True).unbatch()


def make_dataset(file_pattern: str, spec: spec_lib.FeatureSpec, label_names: Sequence[str],
                 batch_size: int, *, shuffle: bool = True, shuffle_buffer: int = 10000,
                 seed: Optional[int] = None, repeat: bool = False,
                 input_context: Optional[tf.distribute.InputContext] = None,
                 drop_remainder: bool = False, with_metadata: bool = False,
                 keep: Optional[RecordPredicate] = None,
                 record_limits: Optional[Dict[str, int]] = None,
                 skip_steps: int = 0) -> tf.data.Dataset:
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
    keep: optional predicate tf.string [n] -> tf.bool [n] over serialized records; only
      records it accepts are read (e.g. `ValidationSplit.is_train`).
    record_limits: optional path -> number of records to read from that file (-1: all);
      how a corrupt shard is read up to its error (training.shard_check.ShardReport).
    skip_steps: global training steps already taken (a resumed run); this pipeline
      skips the batches those steps consumed: `skip_steps * replicas per pipeline`.

  Returns:
    tf.data.Dataset of (features, labels) or (features, labels, metadata) with the
    shapes of `features.parsing.parse_examples` ([batch] and ragged [batch, None]).
  """
  files = list_files(file_pattern)
  deterministic = (not shuffle) or seed is not None
  num_pipelines, pipeline_id, replicas_per_pipeline = 1, 0, 1
  if input_context is not None:
    num_pipelines = input_context.num_input_pipelines
    pipeline_id = input_context.input_pipeline_id
    batch_size = input_context.get_per_replica_batch_size(batch_size)
    replicas_per_pipeline = max(1, input_context.num_replicas_in_sync // num_pipelines)
  shard_records = num_pipelines > 1 and len(files) < num_pipelines
  if num_pipelines > 1 and not shard_records:
    files = files[pipeline_id::num_pipelines]
  logging.info("make_dataset %s: %d files (pipeline %d of %d%s), batch %d, shuffle %s",
               file_pattern, len(files), pipeline_id, num_pipelines,
               ", sharding records" if shard_records else "", batch_size, shuffle)

  limits = [int((record_limits or {}).get(path, -1)) for path in files]
  dataset = tf.data.Dataset.from_tensor_slices((files, tf.constant(limits, tf.int64)))
  if shuffle and not shard_records:
    dataset = dataset.shuffle(len(files), seed=seed, reshuffle_each_iteration=True)
  dataset = dataset.interleave(
      lambda path, limit: tf.data.TFRecordDataset(path, compression_type=COMPRESSION
                                                  ).take(limit),
      cycle_length=min(len(files), MAX_CYCLE_LENGTH), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=deterministic or shard_records)
  if keep is not None:
    dataset = keep_records(dataset, keep)
  if shard_records:
    dataset = dataset.shard(num_pipelines, pipeline_id)
  if shuffle:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  if skip_steps:
    dataset = dataset.skip(skip_steps * replicas_per_pipeline)  # before parsing: cheaper
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
