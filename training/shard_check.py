"""Shard verification: every TFRecord shard read once, a corrupt one named before training.

Flow position: Beam (DATA/<split>/*.tfrecord.gz) -> **verify_shards** -> tf.data
(training.data.make_dataset) -> model. `training.trainer` calls it on the train and eval
splits before `fit`; `pipeline.evaluate` can call it on the eval split before scoring. A
truncated GZIP stream, a record whose CRC does not match or a 0-byte file then fails with
the file's path (and the record offset when TensorFlow reports one) instead of a
DataLossError from the middle of `fit` that names no file.

What counts as corrupt (GZIP shards, the Beam job's output):
  * a read error: `corrupted record at N` (a record's length or data CRC mismatch),
    `truncated record at N` (the stream ends inside a record), `inflate() failed`
    (GZIP data error). N is the byte offset in the *decompressed* record stream of the
    record that failed, as TensorFlow's record reader reports it (None when it does not).
  * a 0-byte file: not a GZIP stream at all (TensorFlow reads it as zero records, which
    would hide a shard the writer never finished). A shard with no records written by
    `tf.io.TFRecordWriter` or Beam is a 20-byte GZIP stream holding nothing: legal,
    reported with `records=0`.

With `skip_corrupt=True` nothing is raised: each corrupt shard's status keeps the number
of records readable before the error (`records`), which the reader then takes
(`ShardReport.record_limits`), so training is still deterministic. The records after the
error cannot be read (a record stream cannot be re-synchronised after a bad length or
inside a broken GZIP stream), so their number is unknown; the report gives the shard,
offset and reason of every corrupt shard instead.
"""

import dataclasses
import re
from typing import Callable, Dict, List, Optional, Tuple

from absl import logging
import tensorflow as tf

COMPRESSION = "GZIP"
COUNT_BATCH = 4096
_OFFSET = re.compile(r"(?:corrupted|truncated) record at (\d+)")
_TF_NOISE = re.compile(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\].*$")

# A predicate over a batch of serialized tf.Examples: tf.string [n] -> tf.bool [n].
RecordPredicate = Callable[[tf.Tensor], tf.Tensor]


class CorruptShardError(ValueError):
  """A TFRecord shard cannot be read; names the path and, when known, the record offset.

  Attributes:
    path: the shard.
    offset: byte offset in the decompressed record stream of the failing record, or None.
    reason: TensorFlow's message (trimmed) or ours (0-byte file).
    records_before_error: records read successfully before the error.
  """

  def __init__(self, path: str, reason: str, offset: Optional[int] = None,
               records_before_error: int = 0):
    self.path, self.reason, self.offset = path, reason, offset
    self.records_before_error = records_before_error
    where = f" at record offset {offset}" if offset is not None else ""
    super().__init__(
        f"{path}: corrupt TFRecord shard{where} ({reason}); {records_before_error} records "
        f"were readable before the error. Re-run pipeline.preprocess to rewrite the data, "
        f"or pass --skip_corrupt_records to train on the readable records only.")


@dataclasses.dataclass(frozen=True)
class ShardStatus:
  """One shard's verification result.

  Attributes:
    path: the shard.
    size_bytes: its size on disk.
    records: readable records (all of them when `error` is None).
    matching: of those, how many the verify_shards `predicate` accepted (0 without one).
    error: why the shard is corrupt, or None.
    offset: the failing record's offset in the decompressed stream, or None.
  """

  path: str
  size_bytes: int
  records: int
  matching: int = 0
  error: Optional[str] = None
  offset: Optional[int] = None

  @property
  def ok(self) -> bool:
    return self.error is None


@dataclasses.dataclass(frozen=True)
class ShardReport:
  """verify_shards' result over every file of a pattern (sorted by path)."""

  file_pattern: str
  shards: Tuple[ShardStatus, ...]

  @property
  def records(self) -> int:
    """Readable records over all shards."""
    return sum(shard.records for shard in self.shards)

  @property
  def matching(self) -> int:
    return sum(shard.matching for shard in self.shards)

  @property
  def corrupt(self) -> List[ShardStatus]:
    return [shard for shard in self.shards if not shard.ok]

  @property
  def record_limits(self) -> Dict[str, int]:
    """path -> records to read: the readable count for corrupt shards, -1 (all) otherwise."""
    return {shard.path: (-1 if shard.ok else shard.records) for shard in self.shards}

  def summary(self) -> dict:
    """A JSON-ready summary for metrics.json."""
    return {
        "file_pattern": self.file_pattern,
        "shards": len(self.shards),
        "records": self.records,
        "corrupt_shards": [
            {"path": shard.path, "offset": shard.offset, "reason": shard.error,
             "records_kept": shard.records} for shard in self.corrupt],
    }


def _trim(message: str) -> str:
  """The error's own line: without a graph function's preamble ("Graph execution error:",
  "Detected at node ...", the Python frames) and the op names TensorFlow appends."""
  lines = [line for line in message.strip().splitlines() if line.strip() and not (
      line.startswith(("Graph execution error", "Detected at node", "  File "))
      or "[[{{node" in line)]
  return _TF_NOISE.sub("", lines[0] if lines else "").strip()


def _count_tensors(dataset: tf.data.Dataset, predicate: Optional[RecordPredicate]):
  """(records, matching records), int64 scalars, of a dataset of serialized records, in
  one C++ loop."""
  def add(totals, batch):
    matched = (tf.reduce_sum(tf.cast(predicate(batch), tf.int64)) if predicate is not None
               else tf.constant(0, tf.int64))
    return totals[0] + tf.size(batch, out_type=tf.int64), totals[1] + matched

  zero = tf.constant(0, tf.int64)
  return dataset.batch(COUNT_BATCH).reduce((zero, zero), add)


def _count(dataset: tf.data.Dataset, predicate: Optional[RecordPredicate]) -> Tuple[int, int]:
  records, matching = _count_tensors(dataset, predicate)
  return int(records), int(matching)


def shard_counter(predicate: Optional[RecordPredicate] = None,
                  compression: str = COMPRESSION) -> Callable[[str], Tuple[int, int]]:
  """path -> (records, matching records) of one shard, traced once for every shard.

  An eager `Dataset.reduce` traces its reduce function anew at each call (~35 ms on this
  project's machines, 4.5 s before the first step for 128 shards); one tf.function with
  the path as its input traces it once. Corruption raises as from the eager reduce
  (tf.errors.DataLossError, ...)."""

  @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
  def count(path):
    return _count_tensors(tf.data.TFRecordDataset(path, compression_type=compression),
                          predicate)

  def counted(path: str) -> Tuple[int, int]:
    records, matching = count(tf.constant(path))
    return int(records), int(matching)

  counted.function = count  # its tracing count: tests/test_training_shard_check.py
  return counted


def verify_shard(path: str, predicate: Optional[RecordPredicate] = None,
                 compression: str = COMPRESSION,
                 counter: Optional[Callable[[str], Tuple[int, int]]] = None) -> ShardStatus:
  """Reads every record of one shard; never raises for corruption (see ShardStatus.error).

  Args:
    path: a TFRecord file.
    predicate: optional tf.string [n] -> tf.bool [n]; its true count goes to `matching`.
    compression: "GZIP" (the Beam job's), "ZLIB" or "" (uncompressed).
    counter: `shard_counter(predicate, compression)`, made once for many shards.
  """
  size = tf.io.gfile.stat(path).length
  if size == 0 and compression:
    return ShardStatus(path, 0, 0, 0, error=(
        f"0-byte file, not a {compression} stream (a shard with no records is a "
        f"non-empty {compression} stream; this one was never finished)"), offset=0)
  records = lambda: tf.data.TFRecordDataset(path, compression_type=compression)
  try:
    count, matching = (counter or shard_counter(predicate, compression))(path)
    return ShardStatus(path, size, count, matching)
  except (tf.errors.DataLossError, tf.errors.OutOfRangeError,
          tf.errors.InvalidArgumentError) as e:
    reason = _trim(e.message)
  # The stream stops at the first error: ignore_errors yields exactly the records before it.
  readable = _count(records().ignore_errors(), None)[0]
  _, matching = _count(records().take(readable), predicate)
  found = _OFFSET.search(reason)
  return ShardStatus(path, size, readable, matching, error=reason,
                     offset=int(found.group(1)) if found else None)


def verify_shards(file_pattern: str, *, skip_corrupt: bool = False,
                  predicate: Optional[RecordPredicate] = None,
                  compression: str = COMPRESSION) -> ShardReport:
  """Reads every record of every shard matching `file_pattern` (O(data), one pass).

  Args:
    file_pattern: glob of the shards (local or gs://).
    skip_corrupt: log corrupt shards and go on (they keep their readable records) instead
      of raising.
    predicate: optional tf.string [n] -> tf.bool [n] over serialized records; the report
      counts the records it accepts (the trainer counts validation records this way).
    compression: "GZIP", "ZLIB" or "".

  Returns:
    ShardReport with one ShardStatus per file (sorted by path).

  Raises:
    FileNotFoundError: nothing matches `file_pattern`.
    CorruptShardError: the first corrupt shard (path, offset, reason), unless skip_corrupt.
  """
  files = sorted(tf.io.gfile.glob(file_pattern))
  if not files:
    raise FileNotFoundError(f"no TFRecord files match {file_pattern}")
  shards = []
  counter = shard_counter(predicate, compression)
  for path in files:
    status = verify_shard(path, predicate, compression, counter)
    if not status.ok:
      if not skip_corrupt:
        raise CorruptShardError(path, status.error, status.offset, status.records)
      logging.warning("Skipping the unreadable rest of %s after %d records (offset %s): %s",
                      path, status.records, status.offset, status.error)
    shards.append(status)
  report = ShardReport(file_pattern, tuple(shards))
  logging.info("Verified %d shards of %s: %d records, %d corrupt", len(shards), file_pattern,
               report.records, len(report.corrupt))
  return report
