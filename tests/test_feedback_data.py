"""training/feedback_data.py: a day's delayed-feedback stream read from stored TFRecords.

Oracle: tests/test_feedback_days.py's 5-day world, whose day outputs are written here as
gzip TFRecord shards (2 per output, rows split between them); the rows read back must be
the written ones, and the tf.data elements the DayStream's samples of the same records
(matched by impression id, with their labels and kinds, duplicates included).
"""

import collections
import os

import numpy as np
import pytest
import tensorflow as tf

from training import feedback_data
from training import feedback_days
from tests import test_feedback_days as world_lib

DAY = world_lib.DAY
KEYS = ("timestamp", "click_timestamp", "purchase_timestamp")


def _write(rows, directory, output):
  """Rows -> DIRECTORY/OUTPUT/OUTPUT-0000S-of-00002.tfrecord.gz; returns the shards' glob."""
  os.makedirs(os.path.join(directory, output))
  count = len(rows["impression_id"])
  for shard, part in enumerate(np.array_split(np.arange(count), 2)):
    path = os.path.join(directory, output, f"{output}-{shard:05d}-of-00002.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
      for index in part:
        feature = {"impression_id": tf.train.Feature(bytes_list=tf.train.BytesList(
            value=[rows["impression_id"][index].encode()]))}
        for key in KEYS:
          feature[key] = tf.train.Feature(int64_list=tf.train.Int64List(
              value=[int(rows[key][index])]))
        writer.write(tf.train.Example(
            features=tf.train.Features(feature=feature)).SerializeToString())
  return os.path.join(directory, output, f"{output}-*-of-*.tfrecord.gz")


@pytest.fixture(scope="module")
def stored(tmp_path_factory):
  """Day 3 of the world (and day 2's train/) as shards: {"patterns", "written"}."""
  root = str(tmp_path_factory.mktemp("feedback_data"))
  world = world_lib.make_world()
  written = dict(world_lib.daily_outputs(world, 3))
  written["previous"] = world_lib.daily_outputs(world, 2)["train"]
  patterns = {output: _write(rows, root, output) for output, rows in written.items()}
  return {"patterns": patterns, "written": written}


def test_rows_read_back_are_the_written_ones(stored):
  for output, pattern in stored["patterns"].items():
    read = feedback_data.read_rows(pattern)
    written = stored["written"][output]
    assert list(read["impression_id"]) == list(written["impression_id"]), output
    for key in KEYS:
      np.testing.assert_array_equal(read[key], written[key], err_msg=f"{output} {key}")


@pytest.mark.parametrize("method", ["defer", "vanilla"])  # every kind; labels at the snapshot
def test_the_dataset_holds_each_sample_of_the_day_stream(stored, method):
  rows = {output: feedback_data.read_rows(pattern)
          for output, pattern in stored["patterns"].items()}
  today = {output: rows[output] for output in ("train", "updates", "closed")}
  stream = feedback_days.day_stream(world_lib.stream_config(method), 3 * DAY, 4 * DAY,
                                    today, rows["previous"])
  expected = collections.Counter(
      (rows[output]["impression_id"][row], int(click), int(conversion), kind)
      for output, row, click, conversion, kind in zip(
          stream.output, stream.row, stream.click, stream.conversion, stream.kind))
  found = collections.Counter()
  for element in feedback_data.samples_dataset(stored["patterns"], stream):
    example = tf.train.Example.FromString(element["example"].numpy())
    impression = example.features.feature["impression_id"].bytes_list.value[0].decode()
    found[(impression, int(element["click"]), int(element["conversion"]),
           feedback_days.KINDS[int(element["kind"])])] += 1
  assert found == expected
  assert sum(found.values()) == len(stream) > 50


def test_an_empty_stream_is_refused(stored):
  empty = feedback_days.DayStream(*(np.zeros([0], dtype) for dtype in (
      object, np.int64, np.float64, np.int64, np.int64, object)))
  with pytest.raises(ValueError, match="no samples"):
    feedback_data.samples_dataset(stored["patterns"], empty)
