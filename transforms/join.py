"""Join impressions with their events in hash buckets of impression_id (a real shuffle).

Flow: parse.ReadParseImpressions + ReadParseEvents -> **BucketedJoinAndLabel** ->
split.SplitBatchesByTime -> ... Every parsed batch is cut into sub-batches by a hash
bucket of impression_id (`bucket_of`, num_buckets configurable), the sub-batches cross
the shuffle packed (zstd Arrow IPC, `transforms.packing`) and are co-grouped per bucket,
and `label.BucketLabeler` joins and labels one bucket's impressions and events in
columns. The Ali-CCP join (layouts/aliccp_join.py) buckets md5s the same way.

Outputs: "records" (labelled RecordBatches, `label.BucketLabeler.output_schema`),
"dead_letter", "attributed" (ints: attributed events per bucket, for the accounting).
"""

from typing import Iterable, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa

from configs import config as config_lib
from transforms import dead_letter as dl
from transforms import label as label_lib
from transforms import packing
from transforms import parse

RECORDS = parse.RECORDS
ATTRIBUTED = "attributed"
DEFAULT_BUCKETS = 64
_HASH_PRIME = np.uint64(1099511628211)  # FNV-1a's 64-bit prime.
_HASH_OFFSET = np.uint64(14695981039346656037)


def string_hash(strings: pa.Array) -> np.ndarray:
  """uint64 [n] FNV-1a hash of each (non-null) string's utf-8 bytes; the same on every
  worker and run (not Python's salted hash)."""
  strings = strings.cast(pa.string()) if strings.type != pa.string() else strings
  n = len(strings)
  hashes = np.full(n, _HASH_OFFSET, dtype=np.uint64)
  if n == 0:
    return hashes
  offsets = np.frombuffer(strings.buffers()[1], dtype=np.int32)[strings.offset:
                                                                 strings.offset + n + 1]
  data = np.frombuffer(strings.buffers()[2], dtype=np.uint8)
  lengths = np.diff(offsets)
  # Step k mixes byte k of every string that is longer than k: O(max length) numpy ops.
  with np.errstate(over="ignore"):
    for k in range(int(lengths.max()) if n else 0):
      active = lengths > k
      byte = data[offsets[:-1][active] + k].astype(np.uint64)
      hashes[active] = (hashes[active] ^ byte) * _HASH_PRIME
  return hashes


def bucket_of(impression_ids: pa.Array, num_buckets: int) -> np.ndarray:
  """int64 [n] bucket in [0, num_buckets) of each impression id."""
  return (string_hash(impression_ids) % np.uint64(num_buckets)).astype(np.int64)


def split_by_bucket(batch: pa.RecordBatch, num_buckets: int, key: str = "impression_id"
                    ) -> Iterable[Tuple[int, pa.RecordBatch]]:
  """(bucket, the batch's rows of that bucket) for each bucket the batch touches; the
  bucket is `bucket_of` the string column `key`."""
  if batch.num_rows == 0:
    return
  buckets = bucket_of(batch.column(batch.schema.get_field_index(key)), num_buckets)
  order = np.argsort(buckets, kind="stable")
  sorted_buckets = buckets[order]
  starts = np.flatnonzero(np.r_[True, sorted_buckets[1:] != sorted_buckets[:-1]])
  stops = np.r_[starts[1:], len(order)]
  ordered = batch.take(pa.array(order))  # One take; each bucket is then a slice of it.
  for start, stop in zip(starts.tolist(), stops.tolist()):
    yield int(sorted_buckets[start]), ordered.slice(start, stop - start)


class KeyByBucketFn(beam.DoFn):

  def __init__(self, num_buckets: int):
    self._num_buckets = num_buckets

  def process(self, batch: pa.RecordBatch):
    for bucket, part in split_by_bucket(batch, self._num_buckets):
      yield bucket, packing.pack_batch(part)


class _LabelBucketFn(beam.DoFn):
  """(bucket, {"impressions": [packed batches], "events": [packed batches]}) -> labelled
  batch (`transforms.packing`)."""

  def __init__(self, data_config: config_lib.DataConfig, impression_schema: pa.Schema):
    self._data_config = data_config
    self._impression_schema = impression_schema

  def setup(self):
    self._labeler = label_lib.BucketLabeler(self._data_config, self._impression_schema)

  def process(self, keyed):
    _, grouped = keyed
    impressions = pa.Table.from_batches(
        [packing.unpack_batch(packed) for packed in grouped["impressions"]],
        schema=self._impression_schema)
    events = pa.Table.from_batches(
        [packing.unpack_batch(packed) for packed in grouped["events"]],
        schema=parse.event_schema())
    batch, dead, attributed = self._labeler.join_and_label(impressions, events)
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    yield beam.pvalue.TaggedOutput(ATTRIBUTED, attributed)
    if batch.num_rows:
      yield batch


class BucketedJoinAndLabel(beam.PTransform):
  """(impression batches, event batches) -> {"records": labelled batches, "dead_letter",
  "attributed": ints (sum = attributed events)}.

  Args:
    data_config: labels, attribution window and orphan policy.
    impression_schema: the parsed impressions' schema.
    num_buckets: hash buckets of impression_id (the shuffle's keys).
  """

  def __init__(self, data_config: config_lib.DataConfig, impression_schema: pa.Schema,
               num_buckets: int = DEFAULT_BUCKETS):
    super().__init__()
    self._data_config = data_config
    self._impression_schema = impression_schema
    self._num_buckets = num_buckets

  def expand(self, impressions_and_events):
    impressions, events = impressions_and_events
    keyed_impressions = impressions | "BucketImpressions" >> beam.ParDo(
        KeyByBucketFn(self._num_buckets))
    keyed_events = events | "BucketEvents" >> beam.ParDo(KeyByBucketFn(self._num_buckets))
    outputs = ({"impressions": keyed_impressions, "events": keyed_events}
               | "CoGroup" >> beam.CoGroupByKey()
               | "Label" >> beam.ParDo(_LabelBucketFn(
                   self._data_config, self._impression_schema)).with_outputs(
                       dl.DEAD_LETTER, ATTRIBUTED, main=RECORDS))
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER],
            ATTRIBUTED: outputs[ATTRIBUTED]}
