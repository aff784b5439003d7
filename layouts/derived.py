"""Derived CSV/text layouts: torch-rechub's and PaddleRec's Ali-CCP, AITM's AliExpress.

Flow: derived files -> **ReadDerivedBatches** (per file: batches of read.BATCH_ROWS
lines; CSV rows parsed in columns where plain, `CsvLineParser`, every other row, and
every paddle_esmm row, by the line parsers `CsvRowParser` / `PaddleRowParser`, which
decide and word every dead letter) -> labelled RecordBatches of one split
(`records.labelled_schema`, with AliExpress's `search_id` as a metadata column) ->
job.write_outputs. Train and eval come from separate files (`--train` / `--eval`); a
file is read by one worker (the files are the unit of parallelism), and its batches are
redistributed after reading.

Layouts (`--source` rechub_csv, paddle_esmm, aliexpress), their labels, AliExpress's
`search_id` key and dead letters: docs/ALI_CCP.md. Every row's Example gets
`impression_id` = "<file path>:<line>" and timestamp 0.

A CSV row is parsed in columns only when it is plain, so that its columns are exactly
`CsvRowParser`'s values (tests/test_transforms_derived.py compares them row by row): as
many cells as the header has columns; labels "0" / "1" and not a purchase without a
click; an id column of printable ASCII without edge spaces; every feature cell empty (a
missing feature) or, by the feature's dtype, printable ASCII without edge spaces
(string), 1-18 digits with an optional minus (int), or a plain decimal with a finite
float64 (float). A file whose header feeds one feature from two columns goes line by line.
"""

import math
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import example_codec
from features import spec as spec_lib
# The layouts' names: layouts/__init__.py (no Beam there, for the command line's checks).
from layouts import ALIEXPRESS, LAYOUTS, PADDLE_ESMM, RECHUB_CSV
from layouts import aliccp
from transforms import dead_letter as dl
from transforms import parse
from transforms import progress
from transforms import read as read_lib
from transforms import records as records_lib

CSV_LAYOUTS = (RECHUB_CSV, ALIEXPRESS)  # A header line, then one row per line.
READ = "read"  # Output tag: rows read per file.
RECORDS = parse.RECORDS

# Label -> its column, per CSV layout.
RECHUB_LABEL_COLUMNS = {aliccp.CLICK_LABEL: "click", aliccp.PURCHASE_LABEL: "purchase"}
ALIEXPRESS_LABEL_COLUMNS = {aliccp.CLICK_LABEL: "click", aliccp.PURCHASE_LABEL: "conversion"}
SEARCH_ID = "search_id"  # AliExpress: the search a row belongs to; Example metadata.

Parsed = Tuple[Dict[str, int], Dict[str, Any], Dict[str, str]]  # labels, features, metadata


class CsvRowParser:
  """One CSV file's rows (rechub_csv, aliexpress) -> (labels, features, metadata).

  Built from the file's header line.

  Args:
    label_columns: label -> its column (RECHUB_LABEL_COLUMNS, ALIEXPRESS_LABEL_COLUMNS).
    id_column: a column kept as Example metadata (not a feature) unless the spec names
      it; a row with it empty is a malformed_line. None: no such column.
  """

  def __init__(self, fields: aliccp.FieldFeatures, spec: spec_lib.FeatureSpec,
               header: str, file: str, infer_click: bool,
               label_columns: Optional[Dict[str, str]] = None,
               id_column: Optional[str] = None):
    label_columns = dict(label_columns or RECHUB_LABEL_COLUMNS)
    self.columns = [column.strip() for column in header.split(",")]
    for column in list(label_columns.values()) + ([id_column] if id_column else []):
      if column not in self.columns:
        raise ValueError(f"{file}: header has no {column!r} column: {header!r}")
    leaks = [column for column in label_columns.values() if fields.feature_of(column)]
    if leaks:
      raise ValueError(f"{file}: label columns {leaks} would feed spec features (a label "
                       "leak); remove those features from the spec")
    covered = {aliccp.field_feature_name(column) for column in self.columns}
    missing = [feature.name for feature in spec if feature.name not in covered]
    if missing:
      raise ValueError(f"{file}: no column for spec features {missing} (header {header!r}; "
                       "a feature named f<field> reads column <field>)")
    self._fields = fields
    # Public for the columnar parser (CsvLineParser), which reads the same layout.
    self.infer_click = infer_click
    self.label_columns = [(label, column, self.columns.index(column))
                          for label, column in label_columns.items()]
    self.id_column = None  # (column, index) of a metadata id column.
    if id_column and fields.feature_of(id_column) is None:
      self.id_column = (id_column, self.columns.index(id_column))
    self.feature_columns = [(index, column, fields.feature_of(column))
                            for index, column in enumerate(self.columns)
                            if fields.feature_of(column) is not None]
    ignored = [c for c in self.columns if fields.feature_of(c) is None
               and c not in label_columns.values() and c != id_column]
    if ignored:
      logging.info("%s: columns %s are not in the feature spec and are ignored", file, ignored)

  def parse(self, text: str) -> Parsed:
    cells = text.split(",")
    if len(cells) != len(self.columns):
      raise parse.FieldError(dl.MALFORMED_LINE, f"{len(cells)} cells, the header has "
                                 f"{len(self.columns)} columns")
    metadata = {}
    if self.id_column is not None:
      column, index = self.id_column
      metadata[column] = cells[index].strip()
      if not metadata[column]:
        raise parse.FieldError(dl.MALFORMED_LINE, f"empty {column!r}")
    values = {label: aliccp.parse_label(cells[index], column)
              for label, column, index in self.label_columns}
    labels = aliccp.source_labels(values[aliccp.CLICK_LABEL], values[aliccp.PURCHASE_LABEL],
                                  self.infer_click)
    items = []
    for index, column, feature in self.feature_columns:
      cell = cells[index].strip()
      if not cell:
        continue
      value = 1.0
      if feature.dtype == "float":
        try:
          value = float(cell)
        except ValueError:
          raise example_codec.RecordError(feature.name, dl.BAD_TYPE, f"column {column!r}: "
                                          f"{cell!r} is not a number") from None
        if not math.isfinite(value):
          raise example_codec.RecordError(feature.name, dl.BAD_VALUE, f"column {column!r}: "
                                          f"{cell!r} is not a finite number")
      items.append((column, cell, value))
    features, _ = self._fields.from_items(items)
    return labels, features, metadata


class PaddleRowParser:
  """PaddleRec ESMM rows `id,click,ctcvr,field:feature_id,...` -> (labels, features)."""

  def __init__(self, fields: aliccp.FieldFeatures, infer_click: bool):
    self._fields = fields
    self._infer_click = infer_click

  def parse(self, text: str) -> Parsed:
    tokens = text.split(",")
    if len(tokens) < 3 or not tokens[0].strip():
      raise parse.FieldError(dl.MALFORMED_LINE, f"{len(tokens)} columns, expected "
                                 "id,click,ctcvr,field:feature_id,...")
    labels = aliccp.source_labels(aliccp.parse_label(tokens[1], "click"),
                                  aliccp.parse_label(tokens[2], "ctcvr"), self._infer_click)
    items = []
    for index, token in enumerate(tokens[3:], start=3):
      field, colon, feature_id = token.strip().partition(":")
      if not colon or not field or not feature_id or ":" in feature_id:
        raise parse.FieldError(dl.MALFORMED_ITEM, f"column {index} {token!r}: expected "
                                   "field:feature_id")
      items.append((field, feature_id, 1.0))
    features, _ = self._fields.from_items(items)
    return labels, features, {}


_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
_CELL_PATTERNS = {"string": "^" + aliccp.TEXT + "$", "int": aliccp.INT_ID,
                  "float": "^" + aliccp.NUMBER + "$"}


class CsvLineParser:
  """A CSV file's data lines -> columns of the plain rows + the other rows' indices.

  Args:
    row_parser: the file's `CsvRowParser` (header, labels, id column).
    spec: the feature spec.
  """

  def __init__(self, row_parser: CsvRowParser, spec: spec_lib.FeatureSpec):
    self._row = row_parser
    self._spec = spec
    by_feature = {}
    for index, column, feature in row_parser.feature_columns:
      by_feature.setdefault(feature.name, []).append(index)
    self._columnar = all(len(indices) == 1 for indices in by_feature.values())
    self._column_of = {name: indices[0] for name, indices in by_feature.items()}

  def parse(self, texts: Sequence[str]) -> Tuple[pa.Table, np.ndarray, np.ndarray]:
    """-> (columns of the plain rows, their indices in texts, the other rows' indices).

    Columns: the spec's features in `parse.impression_schema` order (weights
    after their feature: 1.0, or the value for a float feature), click, purchase, then
    the id column (if the file has one) under its name.
    """
    n = len(texts)
    if not self._columnar or n == 0:
      return pa.table({}), np.zeros(0, dtype=np.int64), np.arange(n, dtype=np.int64)
    columns = len(self._row.columns)
    cells = pc.split_pattern(pa.array(texts, pa.string()), ",")
    keep = np.flatnonzero(pc.equal(pc.list_value_length(cells), columns).to_numpy(
        zero_copy_only=False))
    cells = cells.take(pa.array(keep, pa.int64()))
    cell = lambda index: pc.list_element(cells, index)
    ok = np.ones(len(keep), dtype=bool)
    labels = {}
    for label, _, index in self._row.label_columns:
      labels[label] = cell(index)
      ok &= parse.as_bool(pc.match_substring_regex(labels[label], "^[01]$"))
    ok &= ~(parse.as_bool(pc.equal(labels[aliccp.PURCHASE_LABEL], "1"))
            & parse.as_bool(pc.equal(labels[aliccp.CLICK_LABEL], "0")))
    metadata = None
    if self._row.id_column is not None:
      metadata = cell(self._row.id_column[1])
      ok &= parse.as_bool(pc.match_substring_regex(metadata, "^" + aliccp.TEXT + "$"))
    typed_values = {}
    for feature in self._spec:
      raw = cell(self._column_of[feature.name])
      matched = parse.as_bool(pc.match_substring_regex(raw, _CELL_PATTERNS[feature.dtype]))
      ok &= matched | parse.as_bool(pc.equal(raw, ""))
      # Only matched cells are cast (the others cannot fail it: they are null).
      typed = pc.cast(pc.if_else(pa.array(matched), raw, pa.scalar(None, pa.string())),
                      _ARROW_TYPES[feature.dtype])
      if feature.dtype == "float":
        ok &= ~(matched & ~np.isfinite(pc.fill_null(typed, 0.0).to_numpy(
            zero_copy_only=False)))
      typed_values[feature.name] = (typed, matched)
    select = pa.array(ok)
    arrays, names = [], []
    for feature in self._spec:
      typed, matched = typed_values[feature.name]
      typed, present = typed.filter(select), matched[ok]
      if feature.multivalent:
        offsets = np.r_[0, np.cumsum(present)].astype(np.int32)
        mask = np.r_[~present, False] if (~present).any() else None
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32(), mask=mask),
                                               typed.filter(pa.array(present))))
        names.append(feature.name)
        if feature.weighted:
          weights = (typed if feature.dtype == "float"
                     else pa.array(np.ones(len(present)), pa.float64()))
          arrays.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32(), mask=mask),
                                                 weights.filter(pa.array(present))))
          names.append(feature.weight_key)
      else:
        arrays.append(typed)
        names.append(feature.name)
    for label in aliccp.SOURCE_LABELS:
      arrays.append(pc.cast(labels[label].filter(select), pa.int64()))
      names.append(label)
    if metadata is not None:
      arrays.append(metadata.filter(select))
      names.append(self._row.id_column[0])
    plain = keep[ok]
    odd = np.setdiff1d(np.arange(n, dtype=np.int64), plain, assume_unique=True)
    return pa.Table.from_arrays(arrays, names=names), plain, odd


def metadata_keys(layout: str, spec: spec_lib.FeatureSpec) -> Tuple[str, ...]:
  """The Example metadata keys of a layout's records: AliExpress's search_id unless the
  spec reads it as a feature."""
  if layout == ALIEXPRESS and SEARCH_ID not in {feature.name for feature in spec}:
    return (SEARCH_ID,)
  return ()


class _ReadDerivedFileFn(beam.DoFn):
  """One file -> labelled RecordBatches (main), dead letters, and its row count (READ)."""

  def __init__(self, layout: str, spec: spec_lib.FeatureSpec, split: str, infer_click: bool,
               label_names: Sequence[str]):
    if layout not in LAYOUTS:
      raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    self._layout = layout
    self._spec = spec
    self._split = split
    self._infer_click = infer_click
    self._label_names = tuple(label_names)
    self._rejected = beam.metrics.Metrics.counter("derived", "dead_letter")

  def setup(self):
    self._fields = aliccp.FieldFeatures(self._spec)
    self._batcher = records_lib.RecordBatcher(self._spec, self._label_names,
                                          metadata_keys(self._layout, self._spec))

  def csv_parser(self, header: str, path: str) -> CsvRowParser:
    """The line parser of a CSV file, from its header line."""
    if self._layout == ALIEXPRESS:
      return CsvRowParser(self._fields, self._spec, header, path, self._infer_click,
                             ALIEXPRESS_LABEL_COLUMNS, id_column=SEARCH_ID)
    return CsvRowParser(self._fields, self._spec, header, path, self._infer_click)

  def paddle_parser(self) -> "PaddleRowParser":
    return PaddleRowParser(self._fields, self._infer_click)

  def parse_line(self, parser: Union[CsvRowParser, "PaddleRowParser"], path: str, line: int,
                 text: str) -> Tuple[str, Dict[str, Any]]:
    """One data row -> (RECORDS, labelled record) or (DEAD_LETTER, dead letter)."""
    try:
      labels, features, metadata = parser.parse(text)
    except Exception as e:  # pylint: disable=broad-except  (no single line stops the job)
      self._rejected.inc()
      error = parse.line_error(e)
      return dl.DEAD_LETTER, dl.make_dead_letter(
          dl.IMPRESSIONS, path, line, error.reason,
          f"{self._split} {self._layout}: {error.detail}", text)
    record = {"impression_id": f"{path}:{line}", "timestamp": aliccp.TIMESTAMP,
              "features": features, "labels": labels, "file": path, "line": line,
              "split": self._split}
    if metadata:
      record["metadata"] = metadata
    return RECORDS, record

  def _batch(self, path: str, columns: Optional[pa.Table], lines: np.ndarray,
             records: List[Dict[str, Any]]) -> Iterator[Any]:
    """The columnar rows (their lines) and the line parser's records as batches."""
    named = {} if columns is None else {name: columns.column(name)
                                        for name in columns.column_names}
    named[spec_lib.IMPRESSION_ID_KEY] = pa.array(
        [f"{path}:{line}" for line in lines.tolist()], pa.string())
    batches, dead = self._batcher.with_records(path, lines, named, records, aliccp.TIMESTAMP)
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    yield from batches

  def _rows(self, parser, path: str, lines: Sequence[int], texts: Sequence[str],
            records: List[Dict[str, Any]]) -> Iterator[Any]:
    """Lines through the line parser: records appended, dead letters yielded."""
    for line, text in zip(lines, texts):
      tag, value = self.parse_line(parser, path, int(line), text)
      if tag == RECORDS:
        records.append(value)
      else:
        yield beam.pvalue.TaggedOutput(tag, value)

  def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
    path = readable_file.metadata.path
    rows = 0
    parser = None if self._layout in CSV_LAYOUTS else self.paddle_parser()
    columnar = None
    with read_lib.open_text(readable_file) as handle:
      for lines, texts, _ in read_lib.json_line_batches(handle):
        if parser is None:  # The first line of a CSV is its header, not a record.
          parser = self.csv_parser(texts[0], path)
          columnar = CsvLineParser(parser, self._spec)
          lines, texts = lines[1:], texts[1:]
        rows += len(texts)
        records: List[Dict[str, Any]] = []
        if columnar is None:  # paddle_esmm: every line through the line parser.
          yield from self._rows(parser, path, lines, texts, records)
          yield from self._batch(path, None, np.zeros(0, dtype=np.int64), records)
          continue
        columns, plain, odd = columnar.parse(texts)
        numbers = np.asarray(lines, dtype=np.int64)
        yield from self._rows(parser, path, numbers[odd].tolist(),
                              [texts[i] for i in odd.tolist()], records)
        yield from self._batch(path, columns, numbers[plain], records)
    logging.info("Read %d %s rows from %s (%s)", rows, self._layout, path, self._split)
    yield beam.pvalue.TaggedOutput(READ, rows)


class ReadDerivedBatches(beam.PTransform):
  """Files of one split in a derived layout -> {"records": labelled RecordBatches,
  "dead_letter", "read": rows read per file}.

  Args:
    file_patterns: globs (local or gs://); one matching no file fails the job.
    layout: "rechub_csv", "paddle_esmm" or "aliexpress".
    spec, label_names: the feature spec and the labels (click, purchase).
    split: "train" or "eval", the split of every row of these files.
    infer_click: data.orphan_event_policy == "infer_click".
    progress_interval_s: seconds between a worker's "<split>_parsed" progress lines.
  """

  def __init__(self, file_patterns: Union[str, Sequence[str]], layout: str,
               spec: spec_lib.FeatureSpec, label_names: Sequence[str], split: str,
               infer_click: bool = False,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__()
    self._patterns = read_lib.glob_list(file_patterns)
    self._fn = _ReadDerivedFileFn(layout, spec, split, infer_click, label_names)
    self._stage = f"{split}_parsed"
    self._progress_interval_s = progress_interval_s

  def expand(self, pbegin):
    outputs = (pbegin
               | "MatchFiles" >> read_lib.MatchFiles(self._patterns)
               | "ReadParse" >> beam.ParDo(self._fn).with_outputs(
                   dl.DEAD_LETTER, READ, main=RECORDS))
    records = outputs[RECORDS] | "Progress" >> progress.LogProgress(
        self._stage, self._progress_interval_s)
    return {RECORDS: records | "Reshuffle" >> beam.Reshuffle(),
            dl.DEAD_LETTER: outputs[dl.DEAD_LETTER], READ: outputs[READ]}
