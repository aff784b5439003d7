"""Read derived CSV/text layouts: torch-rechub's and PaddleRec's Ali-CCP, AITM's AliExpress.

Flow: derived files -> **ReadDerived** (read + parse, per file) -> labelled records (the
shape `transforms.label.JoinAndLabel` emits, with a "split" key) -> SplitByFile ->
EncodeExamples -> ... (transforms/preprocess_job.py). Train and eval come from separate
files (`--train` / `--eval`); every row of a file goes to that file's split.

Layouts (`--source`):
  * rechub_csv: a CSV with a header: `click,purchase,<columns>`, e.g. torch-rechub's
    `ali_ccp_{train,val,test}_sample.csv` (23 label-encoded sparse fields 101 ... 150_14
    and 8 min-max scaled dense fields D109_14 ... D853) or PaddleRec's AITM
    `train.csv` (18 raw-id fields). A column feeds the spec feature named
    `aliccp.field_feature_name(column)` (`101` -> `f101`, `D508` -> `D508`); every spec
    feature must have a column (else the job fails, naming the file); other columns are
    ignored. An empty cell is a missing feature. The header is not a record.
  * paddle_esmm: PaddleRec's ESMM text: `id,click,ctcvr,field:feature_id,...`, one row
    per impression, a multi-valued field repeated once per value (weights 1.0). ctcvr
    is click AND purchase, so purchase <- ctcvr.
  * aliexpress: the AliExpress data set as AITM / MTReclib ship it (Tianchi dataId 74690;
    one directory per country with train.csv and test.csv): a CSV with the header
    `search_id,categorical_1,...,categorical_16,numerical_1,...,numerical_63,click,
    conversion`. Columns feed spec features of the same name (every spec feature must
    have a column, as for rechub_csv); purchase <- conversion. `search_id` (rows of one
    search share it) is not a model input: it is written into each Example as the
    bytes key `search_id`, beside `impression_id` (unless the spec names a feature
    `search_id`, which then reads the column like any other). An empty search_id is a
    malformed_line.

Every row's Example gets `impression_id` = "<file path>:<line>" (ids in these files
restart per file; an AliExpress search_id is shared by the rows of a search, so it is
not an impression id) and timestamp 0 (no time in these layouts). Labels: purchase=1
(AliExpress: conversion=1) with click=0 is a dead letter `purchase_without_click`
(data.orphan_event_policy: dead_letter; `infer_click` sets click = 1 instead). Other dead
letters: malformed_line (wrong column count, a missing id/label column, an empty
search_id), bad_label (not 0/1), malformed_item (paddle token
without `field:id`), repeated_single_valued_field, bad_type / bad_value (a cell the
feature's dtype cannot hold).

Note: torch-rechub's label encoding and min-max scaling were fit on all of its data
(train, val and test together) before we see it; that leak is in the files and cannot be
undone here. Our own statistics (vocabularies, mean/variance) use the train files only
(AliExpress's numerical fields arrive already scaled; they are standardised again).
"""

import math
from typing import Any, Dict, Iterable, Iterator, Optional, Sequence, Tuple, Union

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio

from features import example_codec
from features import spec as spec_lib
from transforms import aliccp
from transforms import dead_letter as dl
from transforms import parse as parse_lib
from transforms import read

RECHUB_CSV = "rechub_csv"
PADDLE_ESMM = "paddle_esmm"
ALIEXPRESS = "aliexpress"
LAYOUTS = (RECHUB_CSV, PADDLE_ESMM, ALIEXPRESS)
CSV_LAYOUTS = (RECHUB_CSV, ALIEXPRESS)  # A header line, then one row per line.
READ = "read"  # Output tag: rows read per file.
RECORDS = aliccp.RECORDS

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
    # Public for the columnar parser (columnar.derived_parse), which reads the same layout.
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
      raise parse_lib.FieldError(dl.MALFORMED_LINE, f"{len(cells)} cells, the header has "
                                 f"{len(self.columns)} columns")
    metadata = {}
    if self.id_column is not None:
      column, index = self.id_column
      metadata[column] = cells[index].strip()
      if not metadata[column]:
        raise parse_lib.FieldError(dl.MALFORMED_LINE, f"empty {column!r}")
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
      raise parse_lib.FieldError(dl.MALFORMED_LINE, f"{len(tokens)} columns, expected "
                                 "id,click,ctcvr,field:feature_id,...")
    labels = aliccp.source_labels(aliccp.parse_label(tokens[1], "click"),
                                  aliccp.parse_label(tokens[2], "ctcvr"), self._infer_click)
    items = []
    for index, token in enumerate(tokens[3:], start=3):
      field, colon, feature_id = token.strip().partition(":")
      if not colon or not field or not feature_id or ":" in feature_id:
        raise parse_lib.FieldError(dl.MALFORMED_ITEM, f"column {index} {token!r}: expected "
                                   "field:feature_id")
      items.append((field, feature_id, 1.0))
    features, _ = self._fields.from_items(items)
    return labels, features, {}


class _ReadDerivedFileFn(beam.DoFn):
  """One file -> labelled records (main), dead letters, and its row count (READ)."""

  def __init__(self, layout: str, spec: spec_lib.FeatureSpec, split: str, infer_click: bool):
    if layout not in LAYOUTS:
      raise ValueError(f"layout {layout!r} not in {LAYOUTS}")
    self._layout = layout
    self._spec = spec
    self._split = split
    self._infer_click = infer_click
    self._rejected = beam.metrics.Metrics.counter("derived", "dead_letter")

  def setup(self):
    self._fields = aliccp.FieldFeatures(self._spec)

  def csv_parser(self, header: str, path: str) -> CsvRowParser:
    """The row parser of a CSV file, from its header line."""
    if self._layout == ALIEXPRESS:
      return CsvRowParser(self._fields, self._spec, header, path, self._infer_click,
                             ALIEXPRESS_LABEL_COLUMNS, id_column=SEARCH_ID)
    return CsvRowParser(self._fields, self._spec, header, path, self._infer_click)

  def parse_lines(self, path: str, numbered_texts: Iterable[Tuple[int, str]]
                  ) -> Iterator[Tuple[str, Dict[str, Any]]]:
    """(line, text) of a file's non-blank lines -> (RECORDS, labelled record) or
    (DEAD_LETTER, dead letter) per data row (a CSV's first line is its header)."""
    parser = None if self._layout in CSV_LAYOUTS else self.paddle_parser()
    for line, text in numbered_texts:
      if parser is None:  # The first line of a CSV is its header, not a record.
        parser = self.csv_parser(text, path)
        continue
      yield self.parse_line(parser, path, line, text)

  def paddle_parser(self) -> "PaddleRowParser":
    return PaddleRowParser(self._fields, self._infer_click)

  def parse_line(self, parser: Union[CsvRowParser, "PaddleRowParser"], path: str, line: int,
                 text: str) -> Tuple[str, Dict[str, Any]]:
    """One data row -> (RECORDS, labelled record) or (DEAD_LETTER, dead letter)."""
    try:
      labels, features, metadata = parser.parse(text)
    except (parse_lib.FieldError, example_codec.RecordError) as e:
      self._rejected.inc()
      return dl.DEAD_LETTER, dl.make_dead_letter(
          dl.IMPRESSIONS, path, line, e.reason, f"{self._split} {self._layout}: {e.detail}",
          text)
    record = {"impression_id": f"{path}:{line}", "timestamp": aliccp.TIMESTAMP,
              "features": features, "labels": labels, "file": path, "line": line,
              "split": self._split}
    if metadata:
      record["metadata"] = metadata
    return RECORDS, record

  def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
    path = readable_file.metadata.path
    rows = 0
    for tag, value in self.parse_lines(path, ((line, text) for _, line, text
                                              in read.read_json_lines(readable_file))):
      rows += 1
      yield value if tag == RECORDS else beam.pvalue.TaggedOutput(tag, value)
    logging.info("Read %d %s rows from %s (%s)", rows, self._layout, path, self._split)
    yield beam.pvalue.TaggedOutput(READ, rows)


def metadata_keys(layout: str, spec: spec_lib.FeatureSpec) -> Tuple[str, ...]:
  """The Example metadata keys of a layout's records: AliExpress's search_id unless the
  spec reads it as a feature."""
  if layout == ALIEXPRESS and SEARCH_ID not in {feature.name for feature in spec}:
    return (SEARCH_ID,)
  return ()


class ReadDerived(beam.PTransform):
  """Files of one split in a derived layout -> {"records", "dead_letter", "read"}.

  Args:
    file_patterns: globs (local or gs://); one matching no file fails the job.
    layout: "rechub_csv", "paddle_esmm" or "aliexpress".
    spec: the feature spec.
    split: "train" or "eval", the split of every row of these files.
    infer_click: data.orphan_event_policy == "infer_click".

  "read" holds one element, the number of rows read (headers and blank lines excluded).
  """

  def __init__(self, file_patterns: Union[str, Sequence[str]], layout: str,
               spec: spec_lib.FeatureSpec, split: str, infer_click: bool = False):
    super().__init__()
    self._patterns = read.glob_list(file_patterns)
    self._fn = _ReadDerivedFileFn(layout, spec, split, infer_click)

  def expand(self, pbegin):
    outputs = (pbegin
               | "MatchFiles" >> read.MatchFiles(self._patterns)
               | "ReadFile" >> beam.ParDo(self._fn).with_outputs(
                   dl.DEAD_LETTER, READ, main=aliccp.RECORDS))
    return {aliccp.RECORDS: outputs[aliccp.RECORDS] | "Reshuffle" >> beam.Reshuffle(),
            dl.DEAD_LETTER: outputs[dl.DEAD_LETTER],
            READ: outputs[READ] | "SumRows" >> beam.CombineGlobally(sum)}
