"""Parse and validate raw log records into RecordBatches, against the raw log contract.

Flow: raw logs -> read.py -> **ReadParseImpressions / ReadParseEvents** -> join.py -> ...
(DESIGN.md section 2). Valid records leave as RecordBatches of up to read.BATCH_ROWS
records; anything else goes to the `dead_letter` output with a reason and a detail
naming the field (`dead_letter.make_dead_letter`).

The line rules are plain functions over one record (`ImpressionParser.validate`,
`EventParser.validate`, with `load_object` and `required_*`; feature values coerced and
validated by `features.example_codec`): they decide and word every dead letter. A batch
is parsed in columns only where that gives the same result:
  * JSON Lines: the non-blank stripped lines go to pyarrow's C++ JSON reader with an
    explicit, strict schema (a string field given a number, an int given 2.0, a list
    given a scalar... fail the read). A failing batch is retried in pieces of
    FALLBACK_PIECE lines; a piece that still fails goes line by line through the line
    rules. Rows the reader accepts are then checked in columns for what the reader does
    not enforce (nulls, empty ids, non-finite floats, null list elements, weights,
    unknown event types); a row failing a check also goes through the line rules.
  * Parquet: a batch whose columns all have types the line rules would accept unchanged
    (strings as strings, integers as int64, floats as float64, lists thereof) is cast in
    columns and checked as above; any other batch goes row by row through the line
    rules, with `batch.to_pylist()` payloads.
  * Implausible timestamps: before MIN_TIMESTAMP (2000-01-01), outside int64, or, with a
    snapshot time (`as_of`, unix seconds: data.as_of / --as_of), after it: `bad_value`.
    A lone surrogate is a `bad_value` too.
  * Value limits (features.spec.ValueLimit): a spec feature's list or string over its
    `max_length` (default: the spec's `limits`) is, per its `on_too_long`, a `too_long`
    dead letter or cut to the limit and counted (`pop_cut_counts`, counts.json
    `<source>.cut.<feature>`); impression_id and event have features.spec.FIXED_LIMIT
    (too_long). Rows over a limit are found in columns and go through the line rules,
    which decide (`features.spec.fit_lengths`), so both paths keep and cut the same.
  * No single line stops the job: any other failure of the line rules is a
    `parser_error` (`line_error`), and a line with more than MAX_JSON_BRACKETS brackets
    goes through the line rules (`unparseable_json` when nested deeper than Python's
    recursion limit).

Output schemas (one row per kept record, in file order within a batch):
  impressions: file: string, line: int64, record: string (the JSON line's text; null
    for Parquet rows, read back by `read.ParquetRows` when a join dead letter needs
    them), impression_id: string, timestamp: int64, then one column per spec feature in
    spec order (string / int64 / float64, or list<...> when multivalent; null = missing)
    and list<float64> `<name>__weight` after each weighted feature (filled with 1.0
    when the raw record has no weights).
  events: file, line, record, impression_id: string, timestamp: int64, event: string.
"""

import collections
import io
import json
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from configs import config as config_lib
from features import example_codec
from features import spec as spec_lib
from transforms import accounting
from transforms import dead_letter as dl
from transforms import read as read_lib

FALLBACK_PIECE = 32  # Lines per retry when a batch fails the strict JSON reader.
RECORDS = "records"  # Main output tag of the readers / parsers.
READ = "read"  # Tag of the per-file count of records read (non-blank lines, rows).
# Tag of the per-file counts of values cut, ((source, "cut", feature), n): counts.json's key.
CUT = accounting.CUT
EVENT_KEY = "event"
USER_ID_KEY = spec_lib.USER_ID_KEY
ITEM_ID_KEY = spec_lib.ITEM_ID_KEY
MIN_TIMESTAMP = 946684800  # 2000-01-01T00:00:00Z: an earlier (or negative) one is a bad_value.
# A JSON line with more opening brackets than this goes through the line rules, whose
# json.loads rejects nesting deeper than Python's recursion limit (unparseable_json).
MAX_JSON_BRACKETS = 256

_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
_META_FIELDS = [pa.field("file", pa.string()), pa.field("line", pa.int64()),
                pa.field("record", pa.string())]


def _feature_fields(spec: spec_lib.FeatureSpec) -> List[pa.Field]:
  fields = []
  for feature in spec:
    arrow_type = _ARROW_TYPES[feature.dtype]
    fields.append(pa.field(feature.name, pa.list_(arrow_type) if feature.multivalent
                           else arrow_type))
    if feature.weighted:
      fields.append(pa.field(feature.weight_key, pa.list_(pa.float64())))
  return fields


def impression_schema(spec: spec_lib.FeatureSpec) -> pa.Schema:
  """The schema of parsed impression batches (module docstring)."""
  return pa.schema(_META_FIELDS + [pa.field(spec_lib.IMPRESSION_ID_KEY, pa.string()),
                                   pa.field(spec_lib.TIMESTAMP_KEY, pa.int64())]
                   + _feature_fields(spec))


def event_schema() -> pa.Schema:
  """The schema of parsed event batches (module docstring)."""
  return pa.schema(_META_FIELDS + [pa.field(spec_lib.IMPRESSION_ID_KEY, pa.string()),
                                   pa.field(spec_lib.TIMESTAMP_KEY, pa.int64()),
                                   pa.field(EVENT_KEY, pa.string())])


def _list_rows_with(list_array: pa.Array, element_mask: np.ndarray, n: int) -> np.ndarray:
  """Bool [n]: rows of a list array holding at least one element where element_mask."""
  rows = np.zeros(n, dtype=bool)
  if element_mask.any():
    parents = pc.list_parent_indices(list_array).to_numpy(zero_copy_only=False)
    rows[parents[element_mask]] = True
  return rows


def _null_mask(array: pa.Array) -> np.ndarray:
  return array.is_null().to_numpy(zero_copy_only=False)


def as_bool(array) -> np.ndarray:
  """A boolean array (or ChunkedArray) as numpy, null as False."""
  return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


def _not_finite(array: pa.Array) -> np.ndarray:
  """bool: inf or NaN floats (null: False)."""
  return as_bool(pc.invert(pc.is_finite(array)))


def _null_or_empty(strings: pa.Array) -> np.ndarray:
  return _null_mask(strings) | (pc.binary_length(strings).fill_null(0).to_numpy(
      zero_copy_only=False) == 0)


class FieldError(ValueError):
  """A required field is missing or malformed: (reason, detail)."""

  def __init__(self, reason: str, detail: str):
    super().__init__(detail)
    self.reason = reason
    self.detail = detail


def load_object(payload: Any) -> Dict[str, Any]:
  """The payload as a dict: JSON text is parsed, a Parquet row is already one.

  Raises:
    FieldError: unparseable_json or not_an_object.
  """
  if isinstance(payload, (str, bytes)):
    try:
      payload = json.loads(payload)
    except ValueError as e:
      raise FieldError(dl.UNPARSEABLE_JSON, f"not valid JSON: {e}") from None
    except RecursionError:
      raise FieldError(dl.UNPARSEABLE_JSON, "not valid JSON: nested deeper than the "
                       "parser's recursion limit") from None
  if not isinstance(payload, dict):
    raise FieldError(dl.NOT_AN_OBJECT,
                     f"expected a JSON object, got {type(payload).__name__}")
  return payload


def required_string(record: Dict[str, Any], key: str) -> str:
  value = record.get(key)
  if value is None:
    raise FieldError(dl.MISSING_FIELD, f"field {key!r} is missing")
  if not isinstance(value, str):
    raise FieldError(dl.BAD_TYPE, f"field {key!r}: expected a string, got "
                     f"{type(value).__name__}")
  if not value:
    raise FieldError(dl.BAD_VALUE, f"field {key!r} is empty")
  return value


def required_int(record: Dict[str, Any], key: str) -> int:
  value = record.get(key)
  if value is None:
    raise FieldError(dl.MISSING_FIELD, f"field {key!r} is missing")
  if not isinstance(value, int) or isinstance(value, bool):
    raise FieldError(dl.BAD_TYPE, f"field {key!r}: expected an int, got {type(value).__name__}")
  return value


def required_timestamp(record: Dict[str, Any], as_of: Optional[int] = None) -> int:
  """The record's unix-seconds timestamp: an int64 from 2000-01-01 (MIN_TIMESTAMP) on and,
  with a snapshot time `as_of` (unix seconds), not after it (at as_of is kept)."""
  timestamp = required_int(record, spec_lib.TIMESTAMP_KEY)
  if not timestamp <= example_codec.INT64_MAX:
    raise FieldError(dl.BAD_VALUE, f"field 'timestamp': {timestamp} does not fit in int64")
  if timestamp < MIN_TIMESTAMP:
    raise FieldError(dl.BAD_VALUE, f"field 'timestamp': {timestamp} is before 2000-01-01 "
                     f"({MIN_TIMESTAMP})")
  if as_of is not None and timestamp > as_of:
    raise FieldError(dl.BAD_VALUE,
                     f"field 'timestamp': {timestamp} ({config_lib.utc_iso(timestamp)}) is "
                     f"after as_of {config_lib.utc_iso(as_of)} ({as_of}), the logs' snapshot "
                     f"time")
  return timestamp


def check_encodable(values: Dict[str, Any]) -> None:
  """Raises FieldError bad_value, naming the field, for a string (or list element) that
  is not valid utf-8 (a lone surrogate, "\\ud800" in JSON: no Arrow string holds it)."""
  for key, value in values.items():
    for item in value if isinstance(value, list) else (value,):
      if isinstance(item, str) and not item.isascii():
        try:
          item.encode("utf-8")
        except UnicodeEncodeError:
          raise FieldError(dl.BAD_VALUE, f"field {key!r}: not encodable as utf-8 (a lone "
                           "surrogate)") from None


def line_error(error: Exception) -> Any:
  """What a line's failure is dead-lettered with (a `.reason` and a `.detail`): a
  FieldError or RecordError as it is, a features.spec.TooLongError as too_long; any other
  exception (MemoryError, a bug) as a parser_error naming it, so that no single line can
  stop the job."""
  if isinstance(error, (FieldError, example_codec.RecordError)):
    return error
  if isinstance(error, spec_lib.TooLongError):
    return FieldError(dl.TOO_LONG, error.detail)
  return FieldError(dl.PARSER_ERROR,
                    f"the line rules failed: {type(error).__name__}: {error}"[:1000])


def required_present(record: Dict[str, Any], key: str) -> None:
  if record.get(key) is None:
    raise FieldError(dl.MISSING_FIELD, f"field {key!r} is missing")


class _Parser:
  """Shared batch logic: strict columnar parse, checks, row-parser fallback.

  Args:
    schema: the output schema (`impression_schema`, `event_schema`).
    limits: value column -> its features.spec.ValueLimit (a column not in it has
      features.spec.FIXED_LIMIT).
    as_of: the snapshot time (unix seconds): a later timestamp is a bad_value; None = none.

  Attributes:
    cut_counts: feature -> records whose value of it was cut (on_too_long: cut), since
      the last `pop_cut_counts`.
  """

  source = ""

  def __init__(self, schema: pa.Schema, limits: Dict[str, spec_lib.ValueLimit],
               as_of: Optional[int]):
    self.schema = schema
    self.as_of = as_of
    self.cut_counts: collections.Counter = collections.Counter()
    self._value_schema = pa.schema(list(schema)[len(_META_FIELDS):])
    self._limits = {name: limits.get(name, spec_lib.FIXED_LIMIT)
                    for name in self._value_schema.names}
    self._json_options = pa_json.ParseOptions(explicit_schema=self._value_schema,
                                              unexpected_field_behavior="ignore")

  # Subclasses: the line rules of one record (a dict -> its parsed values, or raises
  # FieldError / example_codec.RecordError), columnar checks (bool [rows], True = let
  # `validate` decide), weights filled in, and the column values of one parsed record.
  def validate(self, obj: Dict[str, Any]) -> Dict[str, Any]:
    raise NotImplementedError

  def suspicious_rows(self, table: pa.RecordBatch) -> np.ndarray:
    raise NotImplementedError

  def fill_missing(self, table: pa.Table) -> pa.Table:
    return table

  def row_values(self, parsed: Dict[str, Any]) -> Dict[str, Any]:
    raise NotImplementedError

  def pop_cut_counts(self) -> Dict[str, int]:
    """feature -> records cut since the last call (then starts again from 0)."""
    counts, self.cut_counts = dict(self.cut_counts), collections.Counter()
    return counts

  # Row-parser fallback.
  def _row_parse(self, file: str, lines: Sequence[int], payloads: Sequence[Any],
                 dead: List[Dict[str, Any]]) -> pa.Table:
    """Records through the line rules one by one: the kept rows as a table of
    self.schema; each failing record's dead letter appended to `dead`."""
    rows: List[Dict[str, Any]] = []
    for line, payload in zip(lines, payloads):
      try:
        values = self.row_values(self.validate(load_object(payload)))
        check_encodable(values)
        cut = spec_lib.fit_lengths(values, self._limits)
      except Exception as e:  # pylint: disable=broad-except  (no single line stops the job)
        error = line_error(e)
        dead.append(dl.make_dead_letter(self.source, file, line, error.reason, error.detail,
                                        payload))
        continue
      self.cut_counts.update(cut.keys())
      values["line"] = line
      values["record"] = payload if isinstance(payload, str) else None
      rows.append(values)
    return self._rows_table(file, rows)

  def parse_line_by_line(self, file: str, lines: Sequence[int], payloads: Sequence[Any]
                         ) -> Tuple[pa.RecordBatch, List[Dict[str, Any]]]:
    """Records of one file through the line rules alone, one by one (the columnar paths'
    fallback): (kept rows as one batch, dead letters)."""
    dead: List[Dict[str, Any]] = []
    return _one_batch([self._row_parse(file, lines, payloads, dead)], self.schema), dead

  def _rows_table(self, file: str, rows: List[Dict[str, Any]]) -> pa.Table:
    columns = {name: [row.get(name) for row in rows] for name in self.schema.names}
    columns["file"] = [file] * len(rows)
    return pa.Table.from_pydict(columns, schema=self.schema)

  def _over_limits(self, batch: pa.RecordBatch, texts: Optional[Sequence[Any]]) -> np.ndarray:
    """bool [rows]: rows the line rules must decide whatever the spec's checks say: a
    timestamp before MIN_TIMESTAMP or after as_of, a list or string over its column's
    limit (to dead-letter or cut), a JSON line with more than MAX_JSON_BRACKETS opening
    brackets."""
    n = batch.num_rows
    timestamps = batch.column(batch.schema.get_field_index(spec_lib.TIMESTAMP_KEY))
    bad = as_bool(pc.less(timestamps, MIN_TIMESTAMP))
    if self.as_of is not None:
      bad |= as_bool(pc.greater(timestamps, self.as_of))
    for name, column in zip(batch.schema.names, batch.columns):
      limit = self._limits[name]
      strings = column
      if pa.types.is_list(column.type):
        bad |= as_bool(pc.greater(pc.list_value_length(column), limit.max_elements))
        strings = pc.list_flatten(column)
      if pa.types.is_string(strings.type):
        long = as_bool(pc.greater(pc.utf8_length(strings), limit.max_chars))
        bad |= _list_rows_with(column, long, n) if strings is not column else long
    if texts is not None:
      texts = pa.array(texts, pa.string())
      brackets = pc.add(pc.count_substring(texts, "["), pc.count_substring(texts, "{"))
      bad |= as_bool(pc.greater(brackets, MAX_JSON_BRACKETS))
    return bad

  def _checked(self, file: str, lines: np.ndarray, records: Optional[Sequence[Any]],
               payloads: Callable[[np.ndarray], Sequence[Any]], values: pa.Table,
               dead: List[Dict[str, Any]]) -> pa.Table:
    """Columnar-read rows -> kept rows; suspicious ones re-parsed line by line."""
    batches = values.combine_chunks().to_batches()
    suspicious = (self.suspicious_rows(batches[0]) | self._over_limits(batches[0], records)
                  if batches else np.zeros(values.num_rows, dtype=bool))
    values = self.fill_missing(values)
    n = values.num_rows
    table = pa.Table.from_arrays(
        [pa.array([file] * n, pa.string()) if n else pa.array([], pa.string()),
         pa.array(lines, pa.int64()),
         pa.array(records, pa.string()) if records is not None else pa.nulls(n, pa.string())]
        + values.columns, schema=self.schema)
    if not suspicious.any():
      return table
    bad = np.flatnonzero(suspicious)
    reparsed = self._row_parse(file, lines[bad].tolist(), payloads(bad), dead)
    return pa.concat_tables([table.filter(pa.array(~suspicious)), reparsed])

  # JSON Lines.
  def _read_json(self, texts: Sequence[str]) -> Optional[pa.Table]:
    data = "\n".join(texts).encode("utf-8")
    try:
      return pa_json.read_json(io.BytesIO(data), read_options=pa_json.ReadOptions(
          use_threads=False, block_size=max(len(data) + 1, 1 << 16)),
                               parse_options=self._json_options)
    except Exception:  # pylint: disable=broad-except  (the pieces, then the line rules)
      return None

  def parse_json_lines(self, file: str, lines: Sequence[int], texts: Sequence[str]
                       ) -> Tuple[pa.RecordBatch, List[Dict[str, Any]]]:
    """Non-blank stripped lines of one file -> (kept rows as one batch, dead letters)."""
    dead: List[Dict[str, Any]] = []
    tables = []
    pieces = [(0, len(texts))]
    values = self._read_json(texts)
    if values is None or values.num_rows != len(texts):
      pieces = [(start, min(start + FALLBACK_PIECE, len(texts)))
                for start in range(0, len(texts), FALLBACK_PIECE)]
    for start, stop in pieces:
      piece_texts = texts[start:stop]
      piece_lines = np.asarray(lines[start:stop], dtype=np.int64)
      if len(pieces) > 1:
        values = self._read_json(piece_texts)
      if values is not None and values.num_rows == len(piece_texts):
        tables.append(self._checked(file, piece_lines, piece_texts,
                                    lambda rows, t=piece_texts: [t[i] for i in rows],
                                    values, dead))
      else:
        tables.append(self._row_parse(file, piece_lines.tolist(), piece_texts, dead))
    return _one_batch(tables, self.schema), dead

  # Parquet.
  def _cast_parquet(self, batch: pa.RecordBatch) -> Optional[pa.Table]:
    """The value columns cast from a Parquet batch, or None when a column's type is one
    the line rules might treat differently (then the batch goes row by row)."""
    arrays = []
    for field in self._value_schema:
      index = batch.schema.get_field_index(field.name)
      if index < 0:
        arrays.append(pa.nulls(batch.num_rows, field.type))
        continue
      column = batch.column(index)
      if not _same_python_values(column.type, field.type):
        return None
      arrays.append(column.cast(field.type) if column.type != field.type else column)
    return pa.Table.from_arrays(arrays, schema=self._value_schema)

  def parse_parquet_batch(self, file: str, first_row: int, batch: pa.RecordBatch
                          ) -> Tuple[pa.RecordBatch, List[Dict[str, Any]]]:
    """One Parquet batch whose first row is row `first_row` (1-based) of the file."""
    dead: List[Dict[str, Any]] = []
    lines = np.arange(first_row, first_row + batch.num_rows, dtype=np.int64)
    values = self._cast_parquet(batch)
    if values is None:
      return self.parse_line_by_line(file, lines.tolist(), batch.to_pylist())
    table = self._checked(file, lines, None,
                          lambda rows: batch.take(pa.array(rows)).to_pylist(), values, dead)
    return _one_batch([table], self.schema), dead


def _same_python_values(source: pa.DataType, target: pa.DataType) -> bool:
  """Whether `to_pylist` of a `source` column gives values the line rules map to what a
  cast to `target` gives (and accepts exactly when the cast's values are valid)."""
  if pa.types.is_list(target):
    return ((pa.types.is_list(source) or pa.types.is_large_list(source))
            and _same_python_values(source.value_type, target.value_type))
  if pa.types.is_string(target):
    return pa.types.is_string(source) or pa.types.is_large_string(source)
  if pa.types.is_int64(target):
    return pa.types.is_signed_integer(source) or source in (pa.uint8(), pa.uint16(),
                                                            pa.uint32())
  if pa.types.is_float64(target):
    return pa.types.is_floating(source) and source != pa.float16()
  return False


def _one_batch(tables: List[pa.Table], schema: pa.Schema) -> pa.RecordBatch:
  table = pa.concat_tables(tables) if tables else schema.empty_table()
  table = table.sort_by([("line", "ascending")]).combine_chunks()
  batches = table.to_batches()
  return batches[0] if batches else pa.RecordBatch.from_pylist([], schema=schema)


class ImpressionParser(_Parser):
  """Impression batches for one feature spec.

  Args:
    spec: the feature spec whose features are validated, coerced and held to their
      value limits (`FeatureSpec.value_limits`).
    as_of: the snapshot time (unix seconds) or None (`_Parser`).
  """

  source = dl.IMPRESSIONS

  def __init__(self, spec: spec_lib.FeatureSpec, as_of: Optional[int] = None):
    super().__init__(impression_schema(spec), spec.value_limits(), as_of)
    self._spec = spec
    self._codec = example_codec.ExampleCodec(spec)
    names = {f.name for f in spec}
    # Presence-only fields outside the spec would need a type for the strict reader.
    self._columnar = {USER_ID_KEY, ITEM_ID_KEY} <= names

  def validate(self, obj):
    impression_id = required_string(obj, spec_lib.IMPRESSION_ID_KEY)
    timestamp = required_timestamp(obj, self.as_of)
    required_present(obj, USER_ID_KEY)
    required_present(obj, ITEM_ID_KEY)
    return {"impression_id": impression_id, "timestamp": timestamp,
            "features": self._codec.coerce(obj)}

  def _read_json(self, texts):
    return super()._read_json(texts) if self._columnar else None

  def _cast_parquet(self, batch):
    return super()._cast_parquet(batch) if self._columnar else None

  def suspicious_rows(self, table: pa.RecordBatch) -> np.ndarray:
    n = table.num_rows
    ids = table.column(spec_lib.IMPRESSION_ID_KEY)
    bad = _null_or_empty(ids)
    for key in (spec_lib.TIMESTAMP_KEY, USER_ID_KEY, ITEM_ID_KEY):
      bad |= _null_mask(table.column(key))
    for feature in self._spec:
      column = table.column(feature.name)
      if feature.multivalent:
        elements = pc.list_flatten(column)
        element_bad = _null_mask(elements)
        if feature.dtype == "float":
          element_bad |= _not_finite(elements)
        bad |= _list_rows_with(column, element_bad, n)
        if feature.weighted:
          weights = table.column(feature.weight_key)
          weight_elements = pc.list_flatten(weights)
          weight_bad = _null_mask(weight_elements) | _not_finite(weight_elements)
          bad |= _list_rows_with(weights, weight_bad, n)
          has_values, has_weights = ~_null_mask(column), ~_null_mask(weights)
          bad |= has_weights & ~has_values
          both = has_values & has_weights
          lengths = pc.list_value_length(column).fill_null(0).to_numpy(zero_copy_only=False)
          weight_lengths = pc.list_value_length(weights).fill_null(0).to_numpy(
              zero_copy_only=False)
          bad |= both & (lengths != weight_lengths)
      elif feature.dtype == "float":
        bad |= _not_finite(column)
    return bad

  def fill_missing(self, table: pa.Table) -> pa.Table:
    """Weights of weighted features given without weights: 1.0 per value."""
    for feature in self._spec:
      if not feature.weighted:
        continue
      values = table.column(feature.name).combine_chunks()
      weights = table.column(feature.weight_key).combine_chunks()
      missing = pc.and_(weights.is_null(), values.is_valid())
      if not pc.any(missing).as_py():
        continue
      # Rows where `missing` is false keep their weights, so the ones of null rows are moot.
      ones = pa.ListArray.from_arrays(values.offsets, pa.array(
          np.ones(int(values.offsets[-1].as_py()), np.float64)))
      filled = pc.if_else(missing, ones, weights)
      table = table.set_column(table.schema.get_field_index(feature.weight_key),
                               feature.weight_key, filled)
    return table

  def row_values(self, parsed):
    values = dict(parsed["features"])
    values[spec_lib.IMPRESSION_ID_KEY] = parsed["impression_id"]
    values[spec_lib.TIMESTAMP_KEY] = parsed["timestamp"]
    return values


class EventParser(_Parser):
  """Event batches of the configured event types (others are unknown_event_type).

  Args:
    event_types: the event types the configured labels use.
    as_of: the snapshot time (unix seconds) or None (`_Parser`).
    limit: the limit of the string fields impression_id and event (too_long).
  """

  source = dl.EVENTS

  def __init__(self, event_types: Sequence[str], as_of: Optional[int] = None,
               limit: spec_lib.ValueLimit = spec_lib.FIXED_LIMIT):
    super().__init__(event_schema(), {spec_lib.IMPRESSION_ID_KEY: limit, EVENT_KEY: limit},
                     as_of)
    self._event_type_set = frozenset(event_types)
    self._event_types = pa.array(sorted(self._event_type_set), pa.string())

  def validate(self, obj):
    impression_id = required_string(obj, spec_lib.IMPRESSION_ID_KEY)
    timestamp = required_timestamp(obj, self.as_of)
    event = required_string(obj, EVENT_KEY)
    if event not in self._event_type_set:
      raise FieldError(dl.UNKNOWN_EVENT_TYPE, f"field 'event': {event!r} is not one of the "
                       f"configured event types {sorted(self._event_type_set)}")
    return {"impression_id": impression_id, "timestamp": timestamp, "event": event}

  def suspicious_rows(self, table: pa.RecordBatch) -> np.ndarray:
    bad = _null_mask(table.column(spec_lib.TIMESTAMP_KEY))
    for key in (spec_lib.IMPRESSION_ID_KEY, EVENT_KEY):
      column = table.column(key)
      bad |= _null_or_empty(column)
    known = pc.is_in(table.column(EVENT_KEY), value_set=self._event_types)
    bad |= ~as_bool(known)
    return bad

  def row_values(self, parsed):
    return {key: parsed[key] for key in (spec_lib.IMPRESSION_ID_KEY, spec_lib.TIMESTAMP_KEY,
                                         EVENT_KEY)}


class _ReadParseFileFn(beam.DoFn):
  """One matched file -> parsed RecordBatches, dead letters (tagged), its read count and
  its counts of values cut per feature."""

  def __init__(self, make_parser: Callable[[], _Parser], source: str):
    self._make_parser = make_parser
    self._source = source

  def setup(self):
    self._parser = self._make_parser()

  def process(self, readable_file: fileio.ReadableFile):
    path = readable_file.metadata.path
    read = 0
    if read_lib.is_parquet(path):
      for batch in read_lib.parquet_batches(readable_file):
        parsed, dead = self._parser.parse_parquet_batch(path, read + 1, batch)
        read += batch.num_rows
        yield from self._emit(parsed, dead)
    else:
      with read_lib.open_text(readable_file) as handle:
        for lines, texts, _ in read_lib.json_line_batches(handle):
          parsed, dead = self._parser.parse_json_lines(path, lines, texts)
          read += len(texts)
          yield from self._emit(parsed, dead)
    logging.info("Read %d %s records from %s (columnar)", read, self._source, path)
    yield beam.pvalue.TaggedOutput(READ, read)
    for feature, n in sorted(self._parser.pop_cut_counts().items()):
      logging.info("Cut %d %s values of %r to its max_length in %s", n, self._source, feature,
                   path)
      yield beam.pvalue.TaggedOutput(CUT, ((self._source, CUT, feature), n))

  @staticmethod
  def _emit(parsed, dead):
    if parsed.num_rows:
      yield parsed
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)


class _ReadParse(beam.PTransform):

  def __init__(self, file_patterns, make_parser, source: str):
    super().__init__()
    self._patterns = read_lib.glob_list(file_patterns)
    self._make_parser = make_parser
    self._source = source

  def expand(self, pbegin):
    outputs = (pbegin
               | "MatchFiles" >> read_lib.MatchFiles(self._patterns)
               | "ReadParse" >> beam.ParDo(_ReadParseFileFn(
                   self._make_parser, self._source)).with_outputs(dl.DEAD_LETTER, READ, CUT,
                                                                  main=RECORDS))
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER],
            READ: outputs[READ] | "SumRead" >> beam.CombineGlobally(sum),
            CUT: outputs[CUT]}


class ReadParseImpressions(_ReadParse):
  """Globs -> {"records": impression RecordBatches (`impression_schema`), "dead_letter":
  dead letters, "read": one int, records read, "cut": ((source, "cut", feature), n) per
  file and feature with values cut}.

  Args:
    file_patterns: globs (or a list of them) of JSON Lines / Parquet files.
    spec: the feature spec.
    as_of: the snapshot time (unix seconds; data.as_of) or None.
  """

  def __init__(self, file_patterns, spec: spec_lib.FeatureSpec, as_of: Optional[int] = None):
    super().__init__(file_patterns, lambda: ImpressionParser(spec, as_of), dl.IMPRESSIONS)


class ReadParseEvents(_ReadParse):
  """Globs -> {"records": event RecordBatches (`event_schema`), "dead_letter", "read",
  "cut" (never any)}; `as_of` as for ReadParseImpressions."""

  def __init__(self, file_patterns, event_types: Sequence[str], as_of: Optional[int] = None):
    event_types = tuple(event_types)
    super().__init__(file_patterns, lambda: EventParser(event_types, as_of), dl.EVENTS)
