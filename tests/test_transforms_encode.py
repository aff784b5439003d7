"""transforms.encode: labelled records -> Examples -> GZIP TFRecord shards tf.data can read."""

import glob
import os

import apache_beam as beam
import tensorflow as tf
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from features import example_codec
from transforms import dead_letter as dl
from transforms import encode
from transforms import testing


def _labelled(index):
  spec = testing.small_spec()
  features = example_codec.coerce_features(testing.impression(index, 100 + index), spec)
  return {"impression_id": f"imp{index}", "timestamp": 100 + index, "features": features,
          "labels": {"click": index % 2, "micro": 0, "action": 0, "purchase": 0},
          "file": "f", "line": index}


def test_encode_and_write_shards(tmp_path):
  spec = testing.small_spec()
  prefix = str(tmp_path / "train" / "train")
  records = [_labelled(i) for i in range(10)]
  broken = dict(_labelled(99), labels={"click": 1})  # Missing labels: a bug, dead-lettered.
  with test_pipeline.TestPipeline() as p:
    outputs = (p | beam.Create(records + [broken])
               | encode.EncodeExamples(spec, testing.LABEL_NAMES, "train"))
    _ = outputs[encode.EXAMPLES] | encode.WriteExamples(prefix, num_shards=3)
    assert_that(outputs[dl.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"])),
                equal_to([(99, dl.BAD_VALUE)]))
  shards = sorted(os.path.basename(path) for path in glob.glob(prefix + "*"))
  assert shards == [f"train-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
  dataset = tf.data.TFRecordDataset(sorted(glob.glob(prefix + "*")), compression_type="GZIP")
  decoded = [example_codec.example_to_dict(raw.numpy(), spec, testing.LABEL_NAMES)
             for raw in dataset]
  assert sorted(d["impression_id"] for d in decoded) == sorted(f"imp{i}" for i in range(10))
  by_id = {d["impression_id"]: d for d in decoded}
  assert by_id["imp3"]["click"] == 1 and by_id["imp4"]["click"] == 0
  assert by_id["imp3"]["tags"] == records[3]["features"]["tags"]


def test_shards_are_mixed_whatever_the_arrival_order(tmp_path):
  # Arrival sorted by label (all clicks first), as the join emits them on DirectRunner.
  n = 2000
  examples = [tf.train.Example(features=tf.train.Features(feature={
      "impression_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"imp%d" % i])),
      "click": tf.train.Feature(float_list=tf.train.FloatList(value=[float(i < n // 5)])),
  })).SerializeToString() for i in range(n)]
  prefix = str(tmp_path / "train" / "train")
  with test_pipeline.TestPipeline() as p:
    _ = p | beam.Create(examples, reshuffle=False) | encode.WriteExamples(prefix, 2)
  files = sorted(glob.glob(prefix + "-*.tfrecord.gz"))
  assert len(files) == 2
  written = []
  for path in files:
    clicks = [tf.train.Example.FromString(r.numpy()).features.feature["click"].float_list.value[0]
              for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]
    written += clicks
    # Every fifth of every shard holds the split's click rate (0.2), within sampling noise.
    fifth = len(clicks) // 5
    for k in range(5):
      rate = sum(clicks[k * fifth:(k + 1) * fifth]) / fifth
      assert 0.1 < rate < 0.3, (path, k, rate)
  assert len(written) == n and sum(written) == n // 5
