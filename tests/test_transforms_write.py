"""transforms.write: TFRecord framing, one-shuffle mixed shard writing, empty shards."""

import glob
import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
import tensorflow as tf

from transforms import packing
from transforms import write


def _read(path):
  return [r.numpy() for r in tf.data.TFRecordDataset(path, compression_type="GZIP")]


def test_frame_is_what_tensorflow_writes(tmp_path):
  records = [b"", b"a", b"\x00" * 1000, "é日本".encode()]
  path = str(tmp_path / "tf.tfrecord")
  with tf.io.TFRecordWriter(path) as writer:
    for record in records:
      writer.write(record)
  with open(path, "rb") as f:
    written = f.read()
  assert written == write.tfrecord_frames(records) == write.tfrecord_frames(records)
  assert write.tfrecord_frames([]) == b""


def test_file_round_trip_leaves_no_temporary(tmp_path, monkeypatch):
  monkeypatch.setattr(write, "BLOCK_BYTES", 100)  # Many compressor writes.
  records = [b"record %d" % i * (i % 7) for i in range(500)]
  path = str(tmp_path / "x.tfrecord.gz")
  assert write.write_tfrecord_file(path, iter(records)) == 500
  assert _read(path) == records
  assert write.write_tfrecord_file(path, []) == 0  # Replaces the file.
  assert _read(path) == [] and os.listdir(tmp_path) == ["x.tfrecord.gz"]


def _mixed_order(lists, num_shards, **kwargs):
  return [e for ordered in write.ordered_passes(lists, num_shards, **kwargs) for e in ordered]


def test_mixed_order_in_passes_is_a_permutation_sorted_per_pass():
  examples = [b"example %d" % i for i in range(1000)]
  lists = [packed for i in range(0, 1000, 64)
           for _, packed in write.shard_lists(examples[i:i + 64], 1, write.mix_key)]
  one_pass = _mixed_order(lists, 3)
  assert one_pass == sorted(examples, key=lambda e: (write.mix_key(e), e))
  total = sum(packing.unpacked_size(packed) for _, packed in lists)
  passes = _mixed_order(lists, 3, sort_bytes=(total + 3) // 4)
  assert sorted(passes) == sorted(examples) and passes != one_pass
  parts = [(write.mix_key(e) // 3) % 4 for e in passes]
  assert parts == sorted(parts)  # Pass by pass, 4 passes...
  for part in range(4):  # ...each in hash order.
    keys = [write.mix_key(e) for e, p in zip(passes, parts) if p == part]
    assert keys == sorted(keys) and keys


def test_equal_keys_are_ordered_by_bytes():
  examples = [b"b", b"c", b"a", b"d"]
  lists = [packed for _, packed in write.shard_lists(examples, 1, lambda e: 7 * (e != b"d"))]
  assert _mixed_order(lists, 1) == [b"d", b"a", b"b", b"c"]


def _write(tmp_path, name, lists, num_shards):
  prefix = str(tmp_path / name / "train")
  with test_pipeline.TestPipeline() as p:
    _ = p | beam.Create(lists) | write.WriteExamples(prefix, num_shards)
  return prefix


def test_shards_are_placed_by_hash_whatever_the_batching(tmp_path):
  examples = [b"example %d" % i for i in range(400)]
  a = _write(tmp_path, "a", [examples[i:i + 50] for i in range(0, 400, 50)], 3)
  b = _write(tmp_path, "b", [[e] for e in reversed(examples)], 3)
  for shard in range(3):
    name = os.path.basename(write.shard_path(a, shard, 3))
    found = _read(os.path.join(os.path.dirname(a), name))
    assert found and all(write.mix_key(e) % 3 == shard for e in found)
    with open(os.path.join(os.path.dirname(a), name), "rb") as fa, open(
        os.path.join(os.path.dirname(b), name), "rb") as fb:
      assert fa.read() == fb.read()


def test_every_shard_exists_even_when_empty(tmp_path):
  prefix = _write(tmp_path, "few", [[b"only one"], [b"and two"]], 5)
  files = sorted(glob.glob(prefix + "-*"))
  assert [os.path.basename(f) for f in files] == [
      f"train-{s:05d}-of-00005.tfrecord.gz" for s in range(5)]
  assert sorted(r for f in files for r in _read(f)) == [b"and two", b"only one"]
  prefix = _write(tmp_path, "none", [], 2)
  assert [_read(f) for f in sorted(glob.glob(prefix + "-*"))] == [[], []]


def test_shards_are_mixed_whatever_the_arrival_order(tmp_path):
  # Arrival sorted by label (all clicks first), as the join emits them on DirectRunner.
  n = 2000
  examples = [tf.train.Example(features=tf.train.Features(feature={
      "impression_id": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"imp%d" % i])),
      "click": tf.train.Feature(float_list=tf.train.FloatList(value=[float(i < n // 5)])),
  })).SerializeToString() for i in range(n)]
  prefix = str(tmp_path / "train" / "train")
  with test_pipeline.TestPipeline() as p:
    # One list per 100 Examples, in arrival order.
    lists = [examples[start:start + 100] for start in range(0, n, 100)]
    _ = p | beam.Create(lists, reshuffle=False) | write.WriteExamples(prefix, 2)
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
