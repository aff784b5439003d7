"""Join impressions with their events and label them, columnar, inside hash buckets.

Flow: ReadParseImpressions + ReadParseEvents -> **BucketedJoinAndLabel** -> split -> ...
The columnar counterpart of `transforms.label.JoinAndLabel`. The join stays a real Beam
shuffle: every parsed batch is cut into sub-batches by a hash bucket of impression_id
(`bucket_of`, num_buckets configurable), the sub-batches cross the shuffle packed
(zstd Arrow IPC, `transforms.packing`) and are co-grouped per bucket, and
`join_and_label` joins and labels one bucket's impressions and events in columns.

The rules are `transforms.label.EventLabeler`'s, and its own code decides every case
that is not plain: duplicate impression ids go through `EventLabeler.choose_impression`,
and an impression with any event before it, outside the window, repeated, or an orphan
goes through `EventLabeler.attribute` (with its events as dicts). Impressions whose events
are all valid (the vast majority) are labelled in columns: label = 1 when any of its
events has one of the label's event types.

Output (per bucket): labelled impressions as a RecordBatch with the impression columns of
`columnar.parse.impression_schema` (file, line, record, impression_id, timestamp,
features) followed by one int64 0/1 column per configured label; dead letters as
`transforms.label` makes them; the number of attributed events (for the accounting).
"""

from typing import Any, Dict, Iterable, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from configs import config as config_lib
from transforms import dead_letter as dl
from transforms import label as label_lib
from transforms import packing
from transforms.columnar import parse as cparse

RECORDS = label_lib.RECORDS
ATTRIBUTED = label_lib.ATTRIBUTED
DEFAULT_BUCKETS = 64
_ROW = "__row"
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


def _rows(table: pa.Table, indices: np.ndarray) -> List[Dict[str, Any]]:
  return table.take(pa.array(indices, pa.int64())).to_pylist() if len(indices) else []


def _impression_dict(row: Dict[str, Any], feature_names: Sequence[str]) -> Dict[str, Any]:
  """A parsed impression row in `transforms.parse`'s layout (features without nulls)."""
  return {"impression_id": row["impression_id"], "timestamp": row["timestamp"],
          "features": {k: row[k] for k in feature_names if row[k] is not None},
          "file": row["file"], "line": row["line"], "record": row["record"], _ROW: row[_ROW]}


def _with_row_index(table: pa.Table) -> pa.Table:
  return table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))


class BucketLabeler:
  """Joins and labels one bucket's impressions and events (module docstring).

  Args:
    data_config: labels, attribution window and orphan policy.
    impression_schema: `columnar.parse.impression_schema(spec)`.
  """

  def __init__(self, data_config: config_lib.DataConfig, impression_schema: pa.Schema):
    self.labeler = label_lib.EventLabeler(data_config)
    self.impression_schema = impression_schema
    meta = {"file", "line", "record", "impression_id", "timestamp"}
    self.feature_names = [name for name in impression_schema.names if name not in meta]
    self.output_schema = pa.schema(list(impression_schema) + [
        pa.field(name, pa.int64()) for name in self.labeler.label_names])
    self._click_events = pa.array(sorted(self.labeler.click_events), pa.string())
    self._after_click_events = pa.array(sorted(
        event for event, (_, needs_click) in self.labeler.rules.items() if needs_click),
                                        pa.string())
    self._parquet = cparse.ParquetRows()
    self._label_events = [pa.array(sorted(e for e, (names, _) in self.labeler.rules.items()
                                          if name in names), pa.string())
                          for name in self.labeler.label_names]

  def _choose(self, impressions: pa.Table, dead: List[Dict[str, Any]]) -> pa.Table:
    """One impression per id: duplicates through `EventLabeler.choose_impression`."""
    impressions = _with_row_index(impressions)
    ids = impressions.column("impression_id")
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
      return impressions
    is_repeated = pc.is_in(ids, value_set=repeated).to_numpy()
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for row in self._parquet.fill_records(_rows(impressions, np.flatnonzero(is_repeated))):
      groups.setdefault(row["impression_id"], []).append(
          _impression_dict(row, self.feature_names))
    chosen = []
    for group in groups.values():
      kept, letters = self.labeler.choose_impression(group)
      dead.extend(letters)
      chosen.append(kept[_ROW])
    keep = np.flatnonzero(~is_repeated).tolist() + chosen
    return impressions.take(pa.array(sorted(keep), pa.int64()))

  def join_and_label(self, impressions: pa.Table, events: pa.Table
                     ) -> Tuple[pa.RecordBatch, List[Dict[str, Any]], int]:
    """One bucket -> (labelled impressions, dead letters, attributed events)."""
    dead: List[Dict[str, Any]] = []
    # One chunk per column, so .to_numpy() of a ChunkedArray is one copy-free array.
    impressions, events = impressions.combine_chunks(), events.combine_chunks()
    kept = self._choose(impressions, dead)
    n = kept.num_rows
    position = pc.index_in(events.column("impression_id"), value_set=kept.column(
        "impression_id")).to_numpy()
    position = np.where(np.isnan(position), -1, position).astype(np.int64) if (
        position.dtype.kind == "f") else position.astype(np.int64)
    orphans = np.flatnonzero(position < 0)
    for event in self._parquet.fill_records(_rows(events, orphans)):
      dead.append(dl.make_dead_letter(
          dl.EVENTS, event["file"], event["line"], dl.EVENT_WITHOUT_IMPRESSION,
          f"no impression with impression_id {event['impression_id']!r}", event["record"]))
    matched = np.flatnonzero(position >= 0)
    events = events.take(pa.array(matched, pa.int64()))
    position = position[matched]
    timestamp = events.column("timestamp").to_numpy()
    event_type = events.column("event")
    start = kept.column("timestamp").to_numpy()[position]
    window = self.labeler.window_s
    problem = (timestamp < start) | (timestamp > start + window)
    # Repeats of (impression, timestamp, type): flag every member of such a group (the
    # row code then decides which one is the repeat).
    type_code = pc.index_in(event_type, value_set=pc.unique(event_type)).to_numpy()
    type_code = type_code.astype(np.int64)
    key = np.stack([position, timestamp, type_code], axis=1)
    if len(key):
      _, inverse, group_sizes = np.unique(key, axis=0, return_inverse=True, return_counts=True)
      problem |= group_sizes[inverse.reshape(-1)] > 1
    # Orphans: an after-click event with no click at or before it.
    is_click = pc.is_in(event_type, value_set=self._click_events).to_numpy()
    first_click = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_click, position[is_click], timestamp[is_click])
    needs_click = pc.is_in(event_type, value_set=self._after_click_events).to_numpy()
    problem |= needs_click & (first_click[position] > timestamp)
    # Impressions with any problem event: the row code labels them.
    hard = np.zeros(n, dtype=bool)
    hard[position[problem]] = True
    labels = np.zeros((len(self.labeler.label_names), n), dtype=np.int64)
    easy_events = ~hard[position]
    attributed = int(easy_events.sum())
    for index, label_events in enumerate(self._label_events):
      sets = pc.is_in(event_type, value_set=label_events).to_numpy() & easy_events
      labels[index, position[sets]] = 1
    hard_positions = np.flatnonzero(hard)
    if len(hard_positions):
      event_rows = self._parquet.fill_records(_rows(events, np.flatnonzero(~easy_events)))
      by_position: Dict[int, List[Dict[str, Any]]] = {}
      for row, pos in zip(event_rows, position[~easy_events].tolist()):
        by_position.setdefault(pos, []).append(row)
      for pos, impression in zip(hard_positions.tolist(), _rows(kept, hard_positions)):
        found, attributed_events, letters = self.labeler.attribute(
            impression, by_position.get(pos, []))
        dead.extend(letters)
        attributed += len(attributed_events)
        for index, name in enumerate(self.labeler.label_names):
          labels[index, pos] = found[name]
    columns = [kept.column(name) for name in self.impression_schema.names]
    table = pa.Table.from_arrays(columns + [pa.array(row) for row in labels],
                                 schema=self.output_schema).combine_chunks()
    batches = table.to_batches()
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=self.output_schema)
    return batch, dead, attributed


class _KeyByBucketFn(beam.DoFn):

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
    self._labeler = BucketLabeler(self._data_config, self._impression_schema)

  def process(self, keyed):
    _, grouped = keyed
    impressions = pa.Table.from_batches(
        [packing.unpack_batch(packed) for packed in grouped["impressions"]],
        schema=self._impression_schema)
    events = pa.Table.from_batches(
        [packing.unpack_batch(packed) for packed in grouped["events"]],
        schema=cparse.event_schema())
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
        _KeyByBucketFn(self._num_buckets))
    keyed_events = events | "BucketEvents" >> beam.ParDo(_KeyByBucketFn(self._num_buckets))
    outputs = ({"impressions": keyed_impressions, "events": keyed_events}
               | "CoGroup" >> beam.CoGroupByKey()
               | "Label" >> beam.ParDo(_LabelBucketFn(
                   self._data_config, self._impression_schema)).with_outputs(
                       dl.DEAD_LETTER, ATTRIBUTED, main=RECORDS))
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER],
            ATTRIBUTED: outputs[ATTRIBUTED]}
