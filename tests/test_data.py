"""Tests of training/data.py: file listing, sharding, shuffling, batching and parsing."""

import json
import os

import pytest
import tensorflow as tf

from tests.test_parsing import SPEC, make_example
from training import data

LABELS = ("click", "purchase")
NUM_FILES = 4
PER_FILE = 13


def write_split(data_dir, split="train", num_files=NUM_FILES, per_file=PER_FILE):
  """Writes GZIP shards whose impression ids say their file: `imp-<file>-<row>`."""
  os.makedirs(os.path.join(data_dir, split), exist_ok=True)
  for shard in range(num_files):
    path = os.path.join(data_dir, split,
                        f"{split}-{shard:05d}-of-{num_files:05d}.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
      for row in range(per_file):
        writer.write(make_example(
            {"user_id": f"u{row % 3}", "item_price": float(row), "tags": [row, shard],
             "tags__weight": [1.0, 0.5]},
            {"click": row % 2, "purchase": int(row % 4 == 1)}, f"imp-{shard}-{row}",
            1000 + row))
  return data.split_pattern(str(data_dir), split)


@pytest.fixture(scope="module")
def pattern(tmp_path_factory):
  return write_split(tmp_path_factory.mktemp("data"))


def ids_of(dataset):
  """Impression ids in dataset order (a with_metadata dataset)."""
  ids = []
  for _, _, metadata in dataset:
    ids.extend(value.decode() for value in metadata["impression_id"].numpy())
  return ids


ALL_IDS = sorted(f"imp-{shard}-{row}" for shard in range(NUM_FILES) for row in range(PER_FILE))


def test_split_pattern_and_count_examples(pattern):
  assert pattern.endswith(os.path.join("train", "train-*.tfrecord.gz"))
  assert data.count_examples(pattern) == NUM_FILES * PER_FILE
  with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
    data.list_files(pattern.replace("train-", "nothing-"))


def test_every_example_exactly_once_per_epoch_with_parsed_batches(pattern):
  dataset = data.make_dataset(pattern, SPEC, LABELS, batch_size=8, shuffle=True, seed=3,
                              shuffle_buffer=20, with_metadata=True)
  features, labels, metadata = next(iter(dataset))
  assert features["user_id"].shape == [8] and features["user_id"].dtype == tf.string
  assert isinstance(features["tags"], tf.RaggedTensor)
  assert features["tags__weight"].to_list()[0] == [1.0, 0.5]
  assert labels["click"].dtype == tf.float32 and labels["click"].shape == [8]
  assert metadata["timestamp"].dtype == tf.int64
  assert sorted(ids_of(dataset)) == ALL_IDS
  # Shuffle comes before repeat, so each epoch is a whole permutation (52 * 2 = 13 * 8).
  two_epochs = data.make_dataset(pattern, SPEC, LABELS, batch_size=8, seed=3, repeat=True,
                                 with_metadata=True).take(2 * len(ALL_IDS) // 8)
  assert sorted(ids_of(two_epochs)) == sorted(ALL_IDS * 2)


def test_without_metadata_yields_features_and_labels(pattern):
  element = next(iter(data.make_dataset(pattern, SPEC, LABELS, batch_size=4, shuffle=False)))
  assert len(element) == 2 and sorted(element[1]) == sorted(LABELS)


def test_order_is_deterministic_without_shuffle_and_for_the_same_seed(pattern):
  def order(**kwargs):
    return ids_of(data.make_dataset(pattern, SPEC, LABELS, batch_size=5, with_metadata=True,
                                    shuffle_buffer=30, **kwargs))

  assert order(shuffle=False) == order(shuffle=False)
  assert order(shuffle=True, seed=7) == order(shuffle=True, seed=7)
  assert order(shuffle=True, seed=7) != order(shuffle=True, seed=8)
  assert sorted(order(shuffle=False)) == ALL_IDS


def test_input_context_shards_partition_the_files_and_set_the_replica_batch(pattern):
  shards = []
  for pipeline_id in range(2):
    context = tf.distribute.InputContext(num_input_pipelines=2, input_pipeline_id=pipeline_id,
                                         num_replicas_in_sync=2)
    dataset = data.make_dataset(pattern, SPEC, LABELS, batch_size=8, seed=1,
                                input_context=context, drop_remainder=True, with_metadata=True)
    assert dataset.element_spec[1]["click"].shape.as_list() == [4]  # 8 global / 2 replicas
    assert (dataset.options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.OFF)
    unbatched = data.make_dataset(pattern, SPEC, LABELS, batch_size=8, seed=1,
                                  input_context=context, with_metadata=True)
    shards.append(ids_of(unbatched))
  files = [{identifier.split("-")[1] for identifier in shard} for shard in shards]
  assert files == [{"0", "2"}, {"1", "3"}]  # every other file of the sorted list
  assert sorted(shards[0] + shards[1]) == ALL_IDS


def test_fewer_files_than_pipelines_shards_records(tmp_path):
  pattern = write_split(tmp_path, num_files=1, per_file=9)
  shards = [ids_of(data.make_dataset(
      pattern, SPEC, LABELS, batch_size=3, shuffle=True, seed=5, with_metadata=True,
      input_context=tf.distribute.InputContext(3, pipeline_id, 3))) for pipeline_id in range(3)]
  assert [len(shard) for shard in shards] == [3, 3, 3]
  assert sorted(sum(shards, [])) == sorted(f"imp-0-{row}" for row in range(9))


def test_check_labels_names_the_missing_label_and_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="labels.json"):
    data.check_labels(str(tmp_path), ["click"])
  with open(tmp_path / "labels.json", "w") as f:
    json.dump(["click", "purchase"], f)
  assert data.check_labels(str(tmp_path), ["click", "purchase"]) == ["click", "purchase"]
  with pytest.raises(ValueError, match=r"\['action'\].*" + str(tmp_path)):
    data.check_labels(str(tmp_path), ["click", "action"])


def test_validation_split_by_date_partitions_the_train_split(pattern):
  split = data.ValidationSplit(from_timestamp=1010)  # rows 10..12 of every file

  def ids(keep):
    return ids_of(data.make_dataset(pattern, SPEC, LABELS, batch_size=7, seed=2,
                                    with_metadata=True, keep=keep))

  train, validation = ids(split.is_train), ids(split.is_validation)
  assert not set(train) & set(validation)
  assert sorted(train + validation) == ALL_IDS
  assert sorted(validation) == sorted(f"imp-{shard}-{row}" for shard in range(NUM_FILES)
                                      for row in (10, 11, 12))


def test_validation_split_by_hash_is_stable_and_near_its_fraction(tmp_path):
  pattern = write_split(tmp_path, num_files=2, per_file=500)
  split = data.ValidationSplit(fraction=0.2)

  def ids(keep, seed):
    return ids_of(data.make_dataset(pattern, SPEC, LABELS, batch_size=64, seed=seed,
                                    with_metadata=True, keep=keep))

  validation = ids(split.is_validation, 1)
  train = ids(split.is_train, 1)
  assert not set(train) & set(validation) and len(train) + len(validation) == 1000
  assert 150 <= len(validation) <= 250  # 20% of 1000, binomial sd ~13
  assert sorted(ids(split.is_validation, 9)) == sorted(validation)  # not seed-dependent
  # FarmHash of the id, not Python's hash: these ids are validation on every machine.
  buckets = tf.strings.to_hash_bucket_fast(sorted(validation)[:3], data.HASH_BUCKETS).numpy()
  assert all(bucket < 0.2 * data.HASH_BUCKETS for bucket in buckets)


def test_validation_split_needs_exactly_one_rule():
  with pytest.raises(ValueError, match="exactly one"):
    data.ValidationSplit()
  with pytest.raises(ValueError, match="exactly one"):
    data.ValidationSplit(from_timestamp=1, fraction=0.1)
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    data.ValidationSplit(fraction=1.0)


def test_skip_steps_continues_the_seeded_stream_at_that_batch(pattern):
  def stream(skip_steps=0, context=None, batches=20):
    dataset = data.make_dataset(pattern, SPEC, LABELS, batch_size=6, seed=4, repeat=True,
                                shuffle_buffer=25, with_metadata=True, skip_steps=skip_steps,
                                input_context=context)
    return [list(batch[2]["impression_id"].numpy()) for batch in dataset.take(batches)]

  uninterrupted = stream(batches=20)
  # Batches 12..19 cross the first pass over the data (52 records = 8.7 batches) twice.
  assert stream(skip_steps=12, batches=8) == uninterrupted[12:]
  # 2 replicas fed by 1 pipeline consume 2 of its batches per global step.
  context = tf.distribute.InputContext(num_input_pipelines=1, input_pipeline_id=0,
                                       num_replicas_in_sync=2)
  assert stream(skip_steps=3, context=context, batches=4) == stream(
      context=context, batches=10)[6:10]
