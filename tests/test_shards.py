"""transforms.shards: TFRecord framing, one-shuffle mixed shard writing, empty shards."""

import glob
import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
import tensorflow as tf

from transforms import encode
from transforms import packing
from transforms import shards


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
  assert written == shards.tfrecord_frames(records) == shards.tfrecord_frames(records)
  assert shards.tfrecord_frames([]) == b""


def test_file_round_trip_leaves_no_temporary(tmp_path, monkeypatch):
  monkeypatch.setattr(shards, "BLOCK_BYTES", 100)  # Many compressor writes.
  records = [b"record %d" % i * (i % 7) for i in range(500)]
  path = str(tmp_path / "x.tfrecord.gz")
  assert shards.write_tfrecord_file(path, iter(records)) == 500
  assert _read(path) == records
  assert shards.write_tfrecord_file(path, []) == 0  # Replaces the file.
  assert _read(path) == [] and os.listdir(tmp_path) == ["x.tfrecord.gz"]


def _mixed_order(lists, num_shards, **kwargs):
  return [e for ordered in shards.ordered_passes(lists, num_shards, **kwargs) for e in ordered]


def test_mixed_order_in_passes_is_a_permutation_sorted_per_pass():
  examples = [b"example %d" % i for i in range(1000)]
  lists = [packed for i in range(0, 1000, 64)
           for _, packed in shards.shard_lists(examples[i:i + 64], 1, encode.mix_key)]
  one_pass = _mixed_order(lists, 3)
  assert one_pass == sorted(examples, key=lambda e: (encode.mix_key(e), e))
  total = sum(packing.unpacked_size(packed) for _, packed in lists)
  passes = _mixed_order(lists, 3, sort_bytes=(total + 3) // 4)
  assert sorted(passes) == sorted(examples) and passes != one_pass
  parts = [(encode.mix_key(e) // 3) % 4 for e in passes]
  assert parts == sorted(parts)  # Pass by pass, 4 passes...
  for part in range(4):  # ...each in hash order.
    keys = [encode.mix_key(e) for e, p in zip(passes, parts) if p == part]
    assert keys == sorted(keys) and keys


def test_equal_keys_are_ordered_by_bytes():
  examples = [b"b", b"c", b"a", b"d"]
  lists = [packed for _, packed in shards.shard_lists(examples, 1, lambda e: 7 * (e != b"d"))]
  assert _mixed_order(lists, 1) == [b"d", b"a", b"b", b"c"]


def _write(tmp_path, name, lists, num_shards):
  prefix = str(tmp_path / name / "train")
  with test_pipeline.TestPipeline() as p:
    _ = p | beam.Create(lists) | shards.WriteShards(prefix, num_shards, encode.mix_key)
  return prefix


def test_shards_are_placed_by_hash_whatever_the_batching(tmp_path):
  examples = [b"example %d" % i for i in range(400)]
  a = _write(tmp_path, "a", [examples[i:i + 50] for i in range(0, 400, 50)], 3)
  b = _write(tmp_path, "b", [[e] for e in reversed(examples)], 3)
  for shard in range(3):
    name = os.path.basename(shards.shard_path(a, shard, 3))
    found = _read(os.path.join(os.path.dirname(a), name))
    assert found and all(encode.mix_key(e) % 3 == shard for e in found)
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
