"""Read the raw Ali-CCP release and join it on md5 in hash buckets, on RecordBatches.

Flow: sample_skeleton_*.csv + common_features_*.csv -> **ReadParseRelease** (per file:
lines parsed by `layouts.aliccp`'s rules, kept rows gathered into RecordBatches and
cut by a hash bucket of md5) -> **BucketedJoinCommonFeatures** (CoGroupByKey on (split,
bucket); each bucket joined in columns) -> labelled RecordBatches per split ->
job.write_outputs. Rules, dead letters and counts (layouts/aliccp.py):
  * parsing: a batch of lines (read.BATCH_ROWS) is parsed in columns where the lines
    are plain (`aliccp.ReleaseLineParser`); the others go to the line functions
    `aliccp.parse_skeleton_line` / `parse_common_line`, which decide (and word) every
    dead letter; a dead-lettered common-features row with an md5 leaves a tombstone
    (md5, file, line, reason) in its bucket.
  * the join is a real shuffle: skeleton and common-features sub-batches (zstd-packed
    Arrow, `transforms.packing`) and tombstones are keyed by (split, bucket of md5), so
    no side input holds a source. Inside a bucket (`BucketJoiner`): the common rows of
    an md5 are ordered by (file, line), the first kept and the others duplicate_md5; a
    skeleton row whose md5 has no kept row is missing_common_features or
    common_features_rejected (`aliccp.unjoined_reason`); the others are merged in
    columns: a scalar feature is the side that has it, a list feature (and its weights)
    the skeleton's values then the common row's (`concat_lists`), as
    `aliccp.FieldFeatures.merge` does. A row with a scalar on both sides goes through
    `FieldFeatures.merge` itself, which words its dead letter.
  * counts (docs/ALI_CCP.md): every skeleton row is written or dead-lettered; every
    common-features row is used, unused or dead-lettered.
"""

from typing import Any, Dict, Iterator, List, Sequence, Tuple, Union

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import example_codec
from features import spec as spec_lib
from layouts import aliccp
from transforms import dead_letter as dl
from transforms import join
from transforms import packing
from transforms import parse
from transforms import progress
from transforms import read as read_lib
from transforms import records as records_lib

RECORDS = parse.RECORDS
READ = parse.READ
COUNTS = "counts"
MD5 = "md5"
SKELETON = aliccp.SKELETON
COMMON = aliccp.COMMON
REJECTED = "rejected"  # Tombstones of dead-lettered common-features rows.
JOIN_CHUNK_ROWS = read_lib.BATCH_ROWS  # Skeleton rows merged (and emitted) at a time.


def skeleton_schema(spec: spec_lib.FeatureSpec) -> pa.Schema:
  """Parsed skeleton rows: the labelled schema (record = the line) plus md5."""
  return records_lib.labelled_schema(spec, aliccp.SOURCE_LABELS, (MD5,))


def common_schema(spec: spec_lib.FeatureSpec) -> pa.Schema:
  """Parsed common-features rows: file, line, record, (unused) impression_id and
  timestamp, the features, md5."""
  return records_lib.labelled_schema(spec, (), (MD5,))


def concat_lists(first: pa.Array, second: pa.Array) -> pa.Array:
  """Row-wise concatenation of two list arrays of one type: first's values then
  second's; a null row counts as empty, and a row null in both stays null."""
  n = len(first)
  first_offsets = first.offsets.to_numpy().astype(np.int64)
  second_offsets = second.offsets.to_numpy().astype(np.int64)
  first_valid = first.is_valid().to_numpy(zero_copy_only=False)
  second_valid = second.is_valid().to_numpy(zero_copy_only=False)
  first_lengths = np.where(first_valid, np.diff(first_offsets), 0)
  second_lengths = np.where(second_valid, np.diff(second_offsets), 0)
  offsets = np.zeros(n + 1, dtype=np.int64)
  np.cumsum(first_lengths + second_lengths, out=offsets[1:])
  row = np.repeat(np.arange(n, dtype=np.int64), first_lengths + second_lengths)
  k = np.arange(int(offsets[-1]), dtype=np.int64) - offsets[row]
  from_first = k < first_lengths[row]
  source = np.where(from_first, first_offsets[row] + k,
                    len(first.values) + second_offsets[row] + k - first_lengths[row])
  values = pa.concat_arrays([first.values, second.values]).take(pa.array(source, pa.int64()))
  null = ~(first_valid | second_valid)
  return pa.ListArray.from_arrays(
      pa.array(offsets, pa.int32(), mask=np.r_[null, False] if null.any() else None), values)


def _first_of_runs(values: pa.Array) -> np.ndarray:
  """bool [n]: True where a sorted column's value differs from the previous row's."""
  if not len(values):
    return np.zeros(0, dtype=bool)
  head = np.ones(len(values), dtype=bool)
  head[1:] = ~pc.equal(values[1:], values[:-1]).to_numpy(zero_copy_only=False)
  return head


class BucketJoiner:
  """One (split, bucket) of skeleton rows, common rows and tombstones -> labelled rows.

  Args:
    spec: the feature spec.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._fields = aliccp.FieldFeatures(spec)
    self.output_schema = records_lib.labelled_schema(spec, aliccp.SOURCE_LABELS)
    self._features = [(f.name, f.multivalent) for f in spec]
    self._features += [(f.weight_key, True) for f in spec if f.weighted]
    self._feature_order = [name for name in skeleton_schema(spec).names
                           if name in dict(self._features)]

  def _row_features(self, row: Dict[str, Any]) -> Dict[str, Any]:
    return {name: row[name] for name in self._feature_order if row[name] is not None}

  def _kept_commons(self, split: str, common: pa.Table, dead: List[Dict[str, Any]]
                    ) -> pa.Table:
    """The first common row of each md5 by (file, line); the others are dead letters."""
    common = common.sort_by([(MD5, "ascending"), ("file", "ascending"), ("line", "ascending")])
    head = _first_of_runs(common.column(MD5).combine_chunks())
    if not head.all():
      kept_index = np.maximum.accumulate(np.where(head, np.arange(len(head)), 0))
      meta = common.select([MD5, "file", "line", "record"]).to_pylist()
      for index in np.flatnonzero(~head).tolist():
        kept = meta[kept_index[index]]
        dead.append(aliccp.duplicate_md5_letter(split, meta[index][MD5], kept, meta[index]))
    return common.filter(pa.array(head))

  def join(self, split: str, skeleton: pa.Table, common: pa.Table,
           rejected: Sequence[Tuple[str, str, int, str]]
           ) -> Tuple[List[pa.RecordBatch], List[Dict[str, Any]], int, int]:
    """-> (labelled rows in batches of up to JOIN_CHUNK_ROWS, dead letters, common rows
    used, common rows unused).

    The merge copies a user's common features into each of its skeleton rows, so it
    runs JOIN_CHUNK_ROWS skeleton rows at a time: a large bucket of a popular release
    never builds one array past Arrow's 2 GiB offsets.

    Args:
      rejected: (md5, file, line, reason) of the bucket's dead-lettered common rows.
    """
    dead: List[Dict[str, Any]] = []
    skeleton, common = skeleton.combine_chunks(), common.combine_chunks()
    kept = self._kept_commons(split, common, dead).combine_chunks()
    position = pc.index_in(skeleton.column(MD5).combine_chunks(),
                           value_set=kept.column(MD5).combine_chunks())
    matched = position.is_valid().to_numpy(zero_copy_only=False)
    unmatched = np.flatnonzero(~matched)
    if len(unmatched):
      tombstones: Dict[str, List[Tuple[str, int, str]]] = {}
      for md5, file, line, reason in rejected:
        tombstones.setdefault(md5, []).append((file, line, reason))
      for row in skeleton.take(pa.array(unmatched, pa.int64())).select(
          ["file", "line", "record", MD5]).to_pylist():
        reason, detail = aliccp.unjoined_reason(split, row[MD5], tombstones.get(row[MD5], []))
        dead.append(dl.make_dead_letter(dl.IMPRESSIONS, row["file"], row["line"], reason,
                                        detail, row["record"]))
    rows = np.flatnonzero(matched)
    position = pc.fill_null(position, 0).to_numpy(zero_copy_only=False)[rows].astype(np.int64)
    used = len(np.unique(position))
    batches = [self._merge(skeleton.take(pa.array(rows[start:start + JOIN_CHUNK_ROWS])),
                           kept.take(pa.array(position[start:start + JOIN_CHUNK_ROWS])), dead)
               for start in range(0, len(rows), JOIN_CHUNK_ROWS)]
    return [batch for batch in batches if batch.num_rows], dead, used, kept.num_rows - used

  def _merge(self, skeleton: pa.Table, common: pa.Table, dead: List[Dict[str, Any]]
             ) -> pa.RecordBatch:
    """Skeleton rows and their kept common rows (row for row) -> labelled rows; rows with
    a scalar on both sides are dead letters (worded by `FieldFeatures.merge`)."""
    n = skeleton.num_rows
    merged, conflict = {}, np.zeros(n, dtype=bool)
    for name, multivalent in self._features:
      own, shared = skeleton.column(name).combine_chunks(), common.column(name).combine_chunks()
      if multivalent:
        merged[name] = concat_lists(own, shared)
      else:
        conflict |= (own.is_valid().to_numpy(zero_copy_only=False)
                     & shared.is_valid().to_numpy(zero_copy_only=False))
        merged[name] = pc.coalesce(own, shared)
    if conflict.any():
      bad = np.flatnonzero(conflict)
      own_rows = skeleton.take(pa.array(bad, pa.int64())).to_pylist()
      shared_rows = common.take(pa.array(bad, pa.int64())).to_pylist()
      for row, shared in zip(own_rows, shared_rows):
        try:
          self._fields.merge(self._row_features(row), self._row_features(shared))
          raise AssertionError(f"{row['file']} line {row['line']}: no merge conflict")
        except example_codec.RecordError as e:
          dead.append(dl.make_dead_letter(dl.IMPRESSIONS, row["file"], row["line"],
                                          e.reason, e.detail, row["record"]))
    columns = []
    for field in self.output_schema:
      if field.name == "record":
        columns.append(pa.nulls(n, pa.string()))
      elif field.name in merged:
        columns.append(merged[field.name])
      else:
        columns.append(skeleton.column(field.name).combine_chunks())
    batch = pa.RecordBatch.from_arrays(columns, schema=self.output_schema)
    if conflict.any():
      batch = batch.filter(pa.array(~conflict))
    return batch


class _ReadReleaseFileFn(beam.DoFn):
  """One skeleton or common-features file -> ((split, bucket), packed sub-batch) (main),
  tombstones ((split, bucket), (md5, file, line, reason)) (REJECTED), dead letters,
  and its line count (READ)."""

  def __init__(self, kind: str, spec: spec_lib.FeatureSpec, split: str, infer_click: bool,
               num_buckets: int, progress_interval_s: float):
    self._kind = kind
    self._progress_interval_s = progress_interval_s
    self._source = dl.IMPRESSIONS if kind == SKELETON else dl.COMMON_FEATURES
    self._spec = spec
    self._split = split
    self._infer_click = infer_click
    self._num_buckets = num_buckets
    self._ignored = beam.metrics.Metrics.counter("aliccp", "ignored_items")
    self._rejected = beam.metrics.Metrics.counter("aliccp", f"{self._source}_dead_letter")

  def setup(self):
    self._fields = aliccp.FieldFeatures(self._spec)
    labels = aliccp.SOURCE_LABELS if self._kind == SKELETON else ()
    self._batcher = records_lib.RecordBatcher(self._spec, labels, (MD5,))
    self._parser = aliccp.ReleaseLineParser(self._spec, self._kind)

  def _record(self, path: str, line: int, text: str) -> Dict[str, Any]:
    if self._kind == SKELETON:
      sample_id, md5, labels, features, ignored = aliccp.parse_skeleton_line(
          text, self._fields, self._infer_click)
    else:
      md5, features, ignored = aliccp.parse_common_line(text, self._fields)
      sample_id, labels = "", {}
    if ignored:
      self._ignored.inc(ignored)
    return {"impression_id": sample_id, "timestamp": aliccp.TIMESTAMP, "features": features,
            "labels": labels, "file": path, "line": line, "record": text,
            "metadata": {MD5: md5}}

  def _tombstone(self, md5: str, letter: Dict[str, Any]):
    bucket = int(join.bucket_of(pa.array([md5]), self._num_buckets)[0])
    return beam.pvalue.TaggedOutput(REJECTED, ((self._split, bucket), (
        md5, letter["file"], letter["line"], letter["reason"])))

  def _parse_batch(self, path: str, lines: Sequence[int], texts: Sequence[str]
                   ) -> Iterator[Any]:
    """A batch of lines -> dead letters, tombstones and packed sub-batches per bucket:
    plain lines parsed in columns (`aliccp.ReleaseLineParser`), the others by the line
    functions."""
    table, plain, odd, ignored = self._parser.parse(texts)
    if ignored:
      self._ignored.inc(ignored)
    line_numbers = np.asarray(lines, dtype=np.int64)
    records = []
    for index in odd.tolist():
      line, text = int(line_numbers[index]), texts[index]
      try:
        records.append(self._record(path, line, text))
      except Exception as e:  # pylint: disable=broad-except  (no single line stops the job)
        self._rejected.inc()
        letter = aliccp.line_dead_letter(self._source, self._split, path, line,
                                         parse.line_error(e), text)
        yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
        if self._kind == COMMON and aliccp.common_md5(text):
          yield self._tombstone(aliccp.common_md5(text), letter)
    columns = {name: table.column(name) for name in table.column_names}
    columns["record"] = pa.array([texts[i] for i in plain.tolist()], pa.string())
    batches, dead = self._batcher.with_records(path, line_numbers[plain], columns, records,
                                               aliccp.TIMESTAMP, self._source)
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
      if self._kind == COMMON:
        md5 = next(r["metadata"][MD5] for r in records
                   if (r["file"], r["line"]) == (letter["file"], letter["line"]))
        yield self._tombstone(md5, letter)
    for batch in batches:
      for bucket, part in join.split_by_bucket(batch, self._num_buckets, key=MD5):
        yield (self._split, bucket), packing.pack_batch(part)

  def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
    path = readable_file.metadata.path
    read = 0
    with read_lib.open_text(readable_file) as handle:
      for lines, texts, _ in read_lib.json_line_batches(handle):
        read += len(texts)
        yield from self._parse_batch(path, lines, texts)
        progress.record_progress(f"{self._kind}_parsed", len(texts), self._progress_interval_s)
    logging.info("Read %d %s lines from %s (%s, columnar)", read, self._kind, path,
                 self._split)
    yield beam.pvalue.TaggedOutput(READ, ((self._source, "read"), read))


class ReadParseRelease(beam.PTransform):
  """Skeleton or common-features files of one split -> {"records": ((split, bucket),
  packed sub-batch), "rejected": tombstones, "dead_letter", "read": ((source, "read"),
  lines) per file}.

  Args:
    file_patterns: globs (local or gs://); one matching no file fails the job.
    kind: "skeleton" or "common".
    spec: the feature spec.
    split: "train" or "eval": the split of every row of these files.
    infer_click: data.orphan_event_policy == "infer_click".
    num_buckets: hash buckets of md5 (the join's shuffle keys, with the split).
    progress_interval_s: seconds between a worker's "<kind>_parsed" progress lines.
  """

  def __init__(self, file_patterns: Union[str, Sequence[str]], kind: str,
               spec: spec_lib.FeatureSpec, split: str, infer_click: bool = False,
               num_buckets: int = join.DEFAULT_BUCKETS,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__()
    if kind not in (SKELETON, COMMON):
      raise ValueError(f"kind {kind!r} not in {(SKELETON, COMMON)}")
    self._patterns = read_lib.glob_list(file_patterns)
    self._fn = _ReadReleaseFileFn(kind, spec, split, infer_click, num_buckets,
                                  progress_interval_s)

  def expand(self, pbegin):
    outputs = (pbegin
               | "MatchFiles" >> read_lib.MatchFiles(self._patterns)
               | "ReadParse" >> beam.ParDo(self._fn).with_outputs(
                   dl.DEAD_LETTER, REJECTED, READ, main=RECORDS))
    return {RECORDS: outputs[RECORDS], REJECTED: outputs[REJECTED],
            dl.DEAD_LETTER: outputs[dl.DEAD_LETTER], READ: outputs[READ]}


class _JoinBucketFn(beam.DoFn):
  """((split, bucket), {"skeleton", "common", "rejected"}) -> labelled batches tagged by
  split, dead letters, and ((common_features, used / unused), n) (COUNTS)."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._spec = spec
    self._joined = beam.metrics.Metrics.counter("aliccp", "joined")

  def setup(self):
    self._joiner = BucketJoiner(self._spec)
    self._schemas = {SKELETON: skeleton_schema(self._spec), COMMON: common_schema(self._spec)}

  def _table(self, kind: str, packed: Sequence[bytes]) -> pa.Table:
    return pa.Table.from_batches([packing.unpack_batch(data) for data in packed],
                                 schema=self._schemas[kind])

  def process(self, keyed):
    (split, _), grouped = keyed
    batches, dead, used, unused = self._joiner.join(
        split, self._table(SKELETON, grouped[SKELETON]), self._table(COMMON, grouped[COMMON]),
        list(grouped[REJECTED]))
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    yield beam.pvalue.TaggedOutput(COUNTS, ((dl.COMMON_FEATURES, "used"), used))
    yield beam.pvalue.TaggedOutput(COUNTS, ((dl.COMMON_FEATURES, "unused"), unused))
    for batch in batches:
      self._joined.inc(batch.num_rows)
      yield beam.pvalue.TaggedOutput(split, batch)


class BucketedJoinCommonFeatures(beam.PTransform):
  """{"skeleton", "common", "rejected"} keyed by (split, bucket) -> {"train", "eval":
  labelled batches, "dead_letter", "counts": ((common_features, used|unused), n)}."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec

  def expand(self, inputs):
    outputs = (inputs
               | "CoGroup" >> beam.CoGroupByKey()
               | "Join" >> beam.ParDo(_JoinBucketFn(self._spec)).with_outputs(
                   dl.DEAD_LETTER, COUNTS, "train", "eval"))
    return {"train": outputs["train"], "eval": outputs["eval"],
            dl.DEAD_LETTER: outputs[dl.DEAD_LETTER], COUNTS: outputs[COUNTS]}
