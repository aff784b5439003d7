"""One day of the incremental job: day D's logs + the open impressions of day D-1 -> day D.

Flow: pipeline.preprocess --day D (pipeline.daily runs it once a day) -> **PreprocessDay**
-> DAY_OUTPUT/ -> pipeline.train (warm-started on the day's new impressions), the
delayed-feedback streams (updates/, closed/). The job reads day D's files and the
previous day's compact state, never the raw history (the shape of TFX's spans and
tf.Transform's analyzer cache; shared/STYLE.md):

  impressions of day D --parse--+                  +--> train/    new impressions, labels as
  events arriving on day D --parse--+              |              of the snapshot (as_of)
  PREVIOUS/state/impressions-*.parquet --+-- join and label --+--> updates/  earlier impressions whose
  PREVIOUS/state/events-*.parquet -------+  (label.BucketLabeler,   |    labels changed today
                                            prior records kept)     +--> closed/   impressions whose window
                                                                    |    closed by as_of: final labels
                                                                    +--> state/    still open: the
                                                                         impressions and their
                                                                         attributed events, for D+1

The labelling rules are transforms/label.py's, the same as the one-pass job's: the
records carried over from the previous day enter them as `prior` records (kept over new
duplicates, never dead-lettered twice), so an impression's labels at a snapshot are what
the one-pass job gives for the records accepted by then. An impression is open while an
event could still be attributed to it: timestamp + data.attribution_window_s > as_of (no
later event can be earlier than as_of). An event for an impression that is neither new
today nor open is an `event_without_impression` dead letter (its impression closed, or
never came). Every Example carries, besides the features and labels, int64 keys
`<label>_timestamp` (the first event setting the label, -1 when none) and
`snapshot_timestamp` (as_of): the elapsed time of a click at the snapshot is
snapshot_timestamp - click_timestamp.

Accounting (counts.json): impressions read == written (train) + dead-lettered; events
read == attributed (new events only) + dead-lettered; and the "state" section's
open_in + new == open_out + closed, so over consecutive days every impression is
written once as new and once as closed (or is still open), and every event is attributed
or dead-lettered on the day it arrives: once.
"""

import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from configs import config as config_lib
from features import spec as spec_lib
from transforms import accounting
from transforms import analyzer_state
from transforms import dead_letter as dl
from transforms import join
from transforms import job
from transforms import label as label_lib
from transforms import outputs as outputs_lib
from transforms import packing
from transforms import parse
from transforms import progress
from transforms import read as read_lib
from transforms import records as records_lib

SNAPSHOT_KEY = "snapshot_timestamp"
STATE = accounting.STATE
_NEW, _UPDATES, _CLOSED = outputs_lib.DAILY_OUTPUTS
_OPEN_IMPRESSIONS, _OPEN_EVENTS = outputs_lib.STATE_KINDS
_COUNTS = "counts"


def metadata_keys(label_names: Sequence[str]) -> List[str]:
  """The daily Examples' int64 keys outside the spec: each label's first-event time,
  then the snapshot time."""
  return [label_lib.timestamp_column(name) for name in label_names] + [SNAPSHOT_KEY]


def with_prior(table: pa.Table, prior: bool) -> pa.Table:
  """The table with a bool PRIOR column (label.PRIOR) of `prior` appended."""
  return table.append_column(label_lib.PRIOR, pa.array(np.full(table.num_rows, prior)))


def state_shard(impression_ids: pa.Array, num_shards: int) -> np.ndarray:
  """int64 [n] state file of each impression id (the join's hash; stable across days)."""
  return join.bucket_of(impression_ids, num_shards)


class DayLabeler:
  """Labels one bucket of a day and sorts its impressions into the day's outputs.

  Args:
    data_config: labels, attribution window, orphan policy.
    spec: the feature spec.
    as_of: the day's snapshot time (unix seconds).
  """

  def __init__(self, data_config: config_lib.DataConfig, spec: spec_lib.FeatureSpec,
               as_of: int):
    self._impression_schema = parse.impression_schema(spec)
    self._labeler = label_lib.BucketLabeler(data_config, self._impression_schema)
    self.label_names = tuple(data_config.label_names)
    self._window_s = data_config.attribution_window_s
    self._as_of = as_of
    self.output_schema = records_lib.labelled_schema(spec, self.label_names,
                                                     metadata_keys(self.label_names))
    self.output_schema = pa.schema(
        [field.with_type(pa.int64()) if field.name in metadata_keys(self.label_names)
         else field for field in self.output_schema])

  def label(self, impressions: pa.Table, events: pa.Table) -> Dict[str, Any]:
    """One bucket's new and prior impressions and events (each with a PRIOR column) ->
    {"train" / "updates" / "closed": labelled batch, "impressions" / "events": the
    still-open state tables, "dead_letter": list, "attributed": int, "counts":
    {open_in, new, updated, closed, open_out}}."""
    bucket = self._labeler.label_bucket(impressions, events)
    kept = bucket.kept
    prior = label_lib.prior_mask(kept)
    closed = kept.column("timestamp").to_numpy() + self._window_s <= self._as_of
    changed = (bucket.labels != bucket.prior_labels).any(axis=0)
    columns = [kept.column(name) for name in self._impression_schema.names]
    columns += [pa.array(row) for row in bucket.labels]
    columns += [pa.array(row) for row in bucket.times]
    columns.append(pa.array(np.full(kept.num_rows, self._as_of, dtype=np.int64)))
    labelled = pa.Table.from_arrays(columns, schema=self.output_schema)
    open_rows = pa.array(~closed)
    state_impressions = pa.Table.from_arrays(columns[:len(self._impression_schema)],
                                             schema=self._impression_schema).filter(open_rows)
    open_ids = state_impressions.column(spec_lib.IMPRESSION_ID_KEY)
    events_out = bucket.events.select(parse.event_schema().names)
    state_events = events_out.filter(
        pc.is_in(events_out.column(spec_lib.IMPRESSION_ID_KEY), value_set=open_ids))
    return {
        _NEW: labelled.filter(pa.array(~prior)),
        _UPDATES: labelled.filter(pa.array(prior & changed)),
        _CLOSED: labelled.filter(pa.array(closed)),
        _OPEN_IMPRESSIONS: state_impressions,
        _OPEN_EVENTS: state_events,
        dl.DEAD_LETTER: bucket.dead,
        join.ATTRIBUTED: bucket.attributed,
        _COUNTS: {"open_in": int(prior.sum()), "new": int((~prior).sum()),
                  "updated": int((prior & changed).sum()), "closed": int(closed.sum()),
                  "open_out": int((~closed).sum())},
    }


def _batches(table: pa.Table) -> Iterator[pa.RecordBatch]:
  for batch in table.combine_chunks().to_batches():
    if batch.num_rows:
      yield batch


class _LabelDayBucketFn(beam.DoFn):
  """(bucket, {"impressions": [packed], "events": [packed]}) -> the day's labelled
  batches (main: train; tagged updates, closed), packed state tables keyed by state shard,
  dead letters, attributed counts and state counts."""

  def __init__(self, data_config, spec, as_of: int, num_state_shards: int):
    self._data_config = data_config
    self._spec = spec
    self._as_of = as_of
    self._num_state_shards = num_state_shards

  def setup(self):
    self._labeler = DayLabeler(self._data_config, self._spec, self._as_of)
    self._schemas = {"impressions": parse.impression_schema(self._spec).append(
        pa.field(label_lib.PRIOR, pa.bool_())),
                     "events": parse.event_schema().append(pa.field(label_lib.PRIOR,
                                                                    pa.bool_()))}

  def process(self, keyed):
    _, grouped = keyed
    tables = {kind: pa.Table.from_batches([packing.unpack_batch(packed)
                                           for packed in grouped[kind]],
                                          schema=self._schemas[kind])
              for kind in ("impressions", "events")}
    result = self._labeler.label(tables["impressions"], tables["events"])
    for batch in _batches(result[_NEW]):
      yield batch
    for output in (_UPDATES, _CLOSED):
      for batch in _batches(result[output]):
        yield beam.pvalue.TaggedOutput(output, batch)
    for kind in outputs_lib.STATE_KINDS:
      table = result[kind]
      if not table.num_rows:
        continue
      shards = state_shard(table.column(spec_lib.IMPRESSION_ID_KEY).combine_chunks(),
                           self._num_state_shards)
      for shard in np.unique(shards).tolist():
        part = table.filter(pa.array(shards == shard))
        for batch in _batches(part):
          yield beam.pvalue.TaggedOutput(kind, (shard, packing.pack_batch(batch)))
    for letter in result[dl.DEAD_LETTER]:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    yield beam.pvalue.TaggedOutput(join.ATTRIBUTED, result[join.ATTRIBUTED])
    for key, n in result[_COUNTS].items():
      yield beam.pvalue.TaggedOutput(_COUNTS, ((STATE, key), n))


def write_state_file(path: str, table: pa.Table) -> str:
  """Writes one state shard as Parquet under a temporary name, renamed when complete."""
  temporary = f"{path}.tmp-{uuid.uuid4().hex}"
  with FileSystems.create(temporary) as handle:
    pq.write_table(table, handle, compression="zstd")
  FileSystems.rename([temporary], [path])
  return path


def state_shard_path(prefix: str, shard: int, num_shards: int) -> str:
  return f"{prefix}-{shard:05d}-of-{num_shards:05d}{outputs_lib.PARQUET_SUFFIX}"


class _WriteStateShardFn(beam.DoFn):
  """(shard, [packed batches]) -> one Parquet file, rows sorted (deterministic bytes)."""

  def __init__(self, prefix: str, num_shards: int, schema: pa.Schema, sort_keys: List[str]):
    self._prefix = prefix
    self._num_shards = num_shards
    self._schema = schema
    self._sort_keys = sort_keys

  def process(self, keyed):
    shard, packed = keyed
    table = pa.Table.from_batches([packing.unpack_batch(p) for p in packed],
                                  schema=self._schema)
    table = table.sort_by([(key, "ascending") for key in self._sort_keys])
    write_state_file(state_shard_path(self._prefix, shard, self._num_shards), table)
    yield shard


def _write_empty_state_shards(written: List[int], prefix: str, num_shards: int,
                              schema: pa.Schema) -> None:
  for shard in sorted(set(range(num_shards)) - set(written)):
    write_state_file(state_shard_path(prefix, shard, num_shards), schema.empty_table())


class WriteState(beam.PTransform):
  """(shard, packed batch) of one state kind -> `num_shards` Parquet files
  `<prefix>-SSSSS-of-NNNNN.parquet` (empty ones too, so a day always has them all)."""

  def __init__(self, prefix: str, num_shards: int, schema: pa.Schema, sort_keys: List[str]):
    super().__init__()
    self._prefix = prefix
    self._num_shards = num_shards
    self._schema = schema
    self._sort_keys = sort_keys

  def expand(self, keyed):
    written = (keyed
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShard" >> beam.ParDo(_WriteStateShardFn(
                   self._prefix, self._num_shards, self._schema, self._sort_keys)))
    return (written
            | "CollectWritten" >> beam.combiners.ToList()
            | "WriteEmptyShards" >> beam.Map(_write_empty_state_shards, self._prefix,
                                             self._num_shards, self._schema))


class _ReadStateFn(beam.DoFn):
  """A matched state file -> its RecordBatches with PRIOR = True, in `schema`."""

  def __init__(self, schema: pa.Schema):
    self._schema = schema

  def process(self, readable_file):
    for batch in read_lib.parquet_batches(readable_file):
      table = pa.Table.from_batches([batch]).select(self._schema.names).cast(self._schema)
      yield from _batches(with_prior(table, True))


class ReadState(beam.PTransform):
  """Pipeline root -> the previous day's state batches of one kind, PRIOR = True."""

  def __init__(self, pattern: str, schema: pa.Schema):
    super().__init__()
    self._pattern = pattern
    self._schema = schema

  def expand(self, pbegin):
    return (pbegin
            | "Match" >> read_lib.MatchFiles(self._pattern)
            | "Read" >> beam.ParDo(_ReadStateFn(self._schema)))


def _new(batch: pa.RecordBatch) -> pa.RecordBatch:
  table = with_prior(pa.Table.from_batches([batch]), False).combine_chunks()
  return table.to_batches()[0]


class PreprocessDay(beam.PTransform):
  """Pipeline root -> one day's outputs (module docstring).

  Args:
    impressions, events: globs of the files that arrived on the day.
    previous_dir: the previous day's output (its state/ is read), or None on the first day.
    output_dir: the day's output directory.
    data_config, spec: the experiment's data section and feature spec.
    as_of: the snapshot time (unix seconds): records after it are bad_value dead letters,
      and impressions whose window ended by it are closed.
    statistics: TFDV statistics of the day's new impressions.
    num_buckets: hash buckets of the join's shuffle.
    progress_interval_s: seconds between progress lines.

  Returns (from expand): {"train": serialized Examples, "dead_letter", "state",
  "counts": counts.json path}; the analyzer state of the new impressions is written to
  OUTPUT/analyzer/ (transforms/analyzer_state.py).
  """

  def __init__(self, impressions, events, previous_dir: Optional[str], output_dir: str,
               data_config: config_lib.DataConfig, spec: spec_lib.FeatureSpec, as_of: int,
               statistics: bool = True, num_buckets: int = join.DEFAULT_BUCKETS,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__()
    self._impressions = impressions
    self._events = events
    self._previous = outputs_lib.OutputPaths(previous_dir) if previous_dir else None
    self._paths = outputs_lib.OutputPaths(output_dir)
    self._data_config = data_config
    self._spec = spec
    self._as_of = as_of
    self._statistics = statistics
    self._num_buckets = num_buckets
    self._progress_interval_s = progress_interval_s

  def expand(self, pbegin):
    config, spec, paths = self._data_config, self._spec, self._paths
    label_names = tuple(config.label_names)
    interval = self._progress_interval_s
    logs = job.read_logs(pbegin, self._impressions, self._events, config, spec, self._as_of,
                         interval)
    new_impressions = logs.impressions | "MarkNewImpressions" >> beam.Map(_new)
    new_events = logs.events | "MarkNewEvents" >> beam.Map(_new)
    all_impressions, all_events = [new_impressions], [new_events]
    if self._previous is not None:
      all_impressions.append(pbegin | "ReadStateImpressions" >> ReadState(
          self._previous.state_pattern(_OPEN_IMPRESSIONS), parse.impression_schema(spec)))
      all_events.append(pbegin | "ReadStateEvents" >> ReadState(
          self._previous.state_pattern(_OPEN_EVENTS), parse.event_schema()))
    keyed = {
        "impressions": (all_impressions | "FlattenImpressions" >> beam.Flatten()
                        | "BucketImpressions" >> beam.ParDo(
                            join.KeyByBucketFn(self._num_buckets))),
        "events": (all_events | "FlattenEvents" >> beam.Flatten()
                   | "BucketEvents" >> beam.ParDo(join.KeyByBucketFn(self._num_buckets))),
    }
    shards = config.train_shards
    labelled = (keyed
                | "CoGroup" >> beam.CoGroupByKey()
                | "Label" >> beam.ParDo(_LabelDayBucketFn(config, spec, self._as_of, shards))
                .with_outputs(_UPDATES, _CLOSED, _OPEN_IMPRESSIONS, _OPEN_EVENTS,
                              dl.DEAD_LETTER, join.ATTRIBUTED, _COUNTS, main=_NEW))
    new_batches = labelled[_NEW] | "ProgressLabelled" >> progress.LogProgress(
        "impressions_labelled", interval)
    for kind, schema, sort_keys in (
        (_OPEN_IMPRESSIONS, parse.impression_schema(spec), [spec_lib.IMPRESSION_ID_KEY]),
        (_OPEN_EVENTS, parse.event_schema(), [spec_lib.IMPRESSION_ID_KEY, "timestamp",
                                              parse.EVENT_KEY, "file", "line"])):
      _ = labelled[kind] | f"WriteState_{kind}" >> WriteState(
          paths.state_prefix(kind), shards, schema, sort_keys)

    dead_letters = logs.dead_letters + [labelled[dl.DEAD_LETTER]]
    counts = logs.counts + [
        job.attributed_count(labelled[join.ATTRIBUTED]),
        labelled[_COUNTS] | "SumStateCounts" >> beam.CombinePerKey(sum),
    ]
    keys = metadata_keys(label_names)
    outputs = {_NEW: new_batches, _UPDATES: labelled[_UPDATES], _CLOSED: labelled[_CLOSED]}
    examples = {}
    for name, batches in outputs.items():
      examples[name], dead, output_counts = job.write_split(
          batches, name, shards, paths, spec, label_names,
          self._statistics and name == _NEW, keys,
          written_path=None if name == _NEW else (STATE, f"{name}_written"))
      dead_letters.append(dead)
      counts.extend(output_counts)
    state = new_batches | "AnalyzerState" >> analyzer_state.AnalyzeBatchesToState(spec)
    _ = state | "WriteAnalyzerState" >> beam.Map(analyzer_state.write_state,
                                                 paths.analyzer_state)
    all_dead_letters = dead_letters | "FlattenDeadLetters" >> beam.Flatten()
    _ = all_dead_letters | "WriteDeadLetters" >> dl.WriteDeadLetters(paths.dead_letter_prefix)
    counts.append(all_dead_letters | "CountDeadLetters" >> accounting.CountDeadLetters())
    counts_path = (counts
                   | "FlattenCounts" >> beam.Flatten()
                   | "WriteCounts" >> accounting.WriteCounts(paths.counts, label_names))
    return {_NEW: examples[_NEW], dl.DEAD_LETTER: all_dead_letters, "counts": counts_path}

