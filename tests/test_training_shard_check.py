"""Tests of training/shard_check.py: corrupt TFRecord shards are named, or skipped on request.

Each test writes its own GZIP shards (`tests.test_data.write_split`) and breaks one:
truncated GZIP stream, a flipped byte inside a record (record CRC mismatch), a flipped
byte of the compressed stream (GZIP data error), a 0-byte file. The reader
(training.data.make_dataset with the report's record_limits) then reads exactly the
records verification found readable.
"""

import gzip
import os

import pytest
import tensorflow as tf

from tests.test_data import LABELS, NUM_FILES, PER_FILE, ids_of, write_split
from tests.test_parsing import SPEC
from training import data
from training import shard_check


def shard_path(pattern, index=1):
  return sorted(tf.io.gfile.glob(pattern))[index]


def truncate(path):
  with open(path, "rb") as f:
    payload = f.read()
  with open(path, "wb") as f:
    f.write(payload[:len(payload) // 2])


def flip_record_byte(path, position=300):
  """Flips one byte of the decompressed record stream (inside record 1 or 2) and re-gzips."""
  with open(path, "rb") as f:
    records = bytearray(gzip.decompress(f.read()))
  records[position] ^= 0xFF
  with open(path, "wb") as f:
    f.write(gzip.compress(bytes(records)))


def flip_gzip_byte(path):
  with open(path, "rb") as f:
    payload = bytearray(f.read())
  payload[len(payload) // 2] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(payload))


def test_intact_shards_are_counted_with_a_predicate(tmp_path):
  pattern = write_split(tmp_path)
  report = shard_check.verify_shards(
      pattern, predicate=data.ValidationSplit(from_timestamp=1010).is_validation)
  assert report.records == NUM_FILES * PER_FILE and not report.corrupt
  assert report.matching == NUM_FILES * 3  # rows 10, 11, 12 (timestamps 1010..1012)
  assert set(report.record_limits.values()) == {-1}


def test_one_counter_traces_once_for_every_shard(tmp_path, monkeypatch):
  """verify_shards counts every shard with one tf.function of the path, traced once: an
  eager Dataset.reduce per shard traced its function again for each (35 ms a shard, 4.5 s
  before the first step for 128)."""
  pattern = write_split(tmp_path)
  made = []
  original = shard_check.shard_counter

  def recording(*args, **kwargs):
    made.append(original(*args, **kwargs))
    return made[-1]

  monkeypatch.setattr(shard_check, "shard_counter", recording)
  report = shard_check.verify_shards(
      pattern, predicate=data.ValidationSplit(from_timestamp=1010).is_validation)
  assert [(shard.records, shard.matching) for shard in report.shards] == [
      (PER_FILE, 3)] * NUM_FILES
  assert len(made) == 1 and made[0].function.experimental_get_tracing_count() == 1


def test_flipped_record_byte_names_the_shard_and_the_offset(tmp_path):
  pattern = write_split(tmp_path)
  broken = shard_path(pattern)
  flip_record_byte(broken)
  with pytest.raises(shard_check.CorruptShardError) as error:
    shard_check.verify_shards(pattern)
  assert broken in str(error.value) and "corrupted record at" in str(error.value)
  assert error.value.path == broken and error.value.offset is not None
  assert 0 < error.value.offset <= 300 and "--skip_corrupt_records" in str(error.value)
  assert "function_node" not in str(error.value)  # TF's noise trimmed


def test_truncated_gzip_shard_names_the_shard(tmp_path):
  pattern = write_split(tmp_path, per_file=200)
  broken = shard_path(pattern, 2)
  truncate(broken)
  with pytest.raises(shard_check.CorruptShardError, match=broken) as error:
    shard_check.verify_shards(pattern)
  assert 0 < error.value.records_before_error < 200


def test_flipped_gzip_byte_names_the_shard(tmp_path):
  pattern = write_split(tmp_path, per_file=200)
  broken = shard_path(pattern, 0)
  flip_gzip_byte(broken)
  with pytest.raises(shard_check.CorruptShardError, match=broken):
    shard_check.verify_shards(pattern)


def test_zero_byte_shard_is_corrupt_but_an_empty_gzip_stream_is_legal(tmp_path):
  pattern = write_split(tmp_path)
  empty = shard_path(pattern, 3)
  with tf.io.TFRecordWriter(empty, options="GZIP"):
    pass  # a shard with no records: a valid (20-byte) GZIP stream
  report = shard_check.verify_shards(pattern)
  assert not report.corrupt and report.records == (NUM_FILES - 1) * PER_FILE
  assert [shard.records for shard in report.shards][3] == 0
  open(empty, "wb").close()  # 0 bytes: never a finished GZIP shard
  with pytest.raises(shard_check.CorruptShardError, match=f"{empty}.*0-byte file"):
    shard_check.verify_shards(pattern)


def test_skip_corrupt_keeps_the_readable_records_and_the_reader_takes_exactly_them(tmp_path):
  pattern = write_split(tmp_path)
  broken = shard_path(pattern, 1)
  flip_record_byte(broken)
  report = shard_check.verify_shards(pattern, skip_corrupt=True)
  [status] = report.corrupt
  assert status.path == broken and 0 < status.records < PER_FILE
  assert report.records == (NUM_FILES - 1) * PER_FILE + status.records
  summary = report.summary()["corrupt_shards"]
  assert summary == [{"path": broken, "offset": status.offset, "reason": status.error,
                      "records_kept": status.records}]
  # Without limits, reading the broken shard fails mid-stream; with them it never errs.
  with pytest.raises(tf.errors.DataLossError):
    ids_of(data.make_dataset(pattern, SPEC, LABELS, batch_size=8, shuffle=False,
                             with_metadata=True))
  ids = ids_of(data.make_dataset(pattern, SPEC, LABELS, batch_size=8, shuffle=False,
                                 with_metadata=True, record_limits=report.record_limits))
  broken_shard = os.path.basename(broken).split("-")[1].lstrip("0") or "0"
  assert len(ids) == report.records == len(set(ids))
  assert sorted(i for i in ids if i.split("-")[1] == broken_shard) == sorted(
      f"imp-{broken_shard}-{row}" for row in range(status.records))


def test_no_files_is_a_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match="no TFRecord files match"):
    shard_check.verify_shards(str(tmp_path / "train-*.tfrecord.gz"))
