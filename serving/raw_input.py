"""Reading raw JSON Lines records for scoring, with limits a hostile line cannot get past.

Flow position: impressions.jsonl -> **serving.raw_input** -> serving.predictor (codec,
SavedModel) -> scored.jsonl. `pipeline.predict` reads its `--input` here (`read_jsonl`
checks every line); serving.predictor.Predictor checks records given to it directly with
`check_limits`, and holds each record's coerced features to the spec with `fit_features`.

Every non-blank line becomes one `InputLine`: the parsed JSON value, or an error naming the
line and the reason, so one bad line never stops the others (blank lines are skipped but
counted in line numbers). Refused, each with its reason:

  line_too_long     a line of more than MAX_LINE_BYTES bytes (never held whole in memory:
                    the reader keeps at most MAX_LINE_BYTES + 1 bytes of a line)
  not_utf8          bytes that are not UTF-8
  unparseable_json  not JSON, or a number Python's JSON parser refuses (an integer of more
                    than 4300 digits)
  too_deep          arrays / objects nested more than MAX_DEPTH levels (json.loads of
                    100,000 levels would raise RecursionError)
  too_long          a value over its limit (`RecordLimits`): a feature of the spec over its
                    max_length when its on_too_long is dead_letter (features.spec, the
                    limits the Beam job applies); any other field (or key) with a string
                    of more than features.spec.DEFAULT_MAX_STRING_CHARS characters or an
                    array of more than DEFAULT_MAX_LIST_LENGTH elements, anywhere in it
  bad_value         a non-finite number (NaN, Infinity, or a literal like 1e999 that is
                    infinite as a float), or a string holding a lone UTF-16 surrogate
                    (`"\\ud800"`), which cannot be encoded as UTF-8

A feature whose on_too_long is cut is not refused for its length: `fit_features` cuts
its coerced value to max_length and returns {feature: original length}, which the
predictor reports in the record's `input_notes` ("cut"). Without a spec every field has
the fixed limits. The limits are far above what an impression record needs (13 scalar
features and a list of recent categories in the simulated world) and bound what one line
can cost.
"""

import dataclasses
import json
import math
import re
from typing import Any, Dict, Iterator, List, Optional, Tuple

import tensorflow as tf

from features import spec as spec_lib

MAX_LINE_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 32
ECHO_CHARS = 1000  # A refused line's text is echoed cut to this many characters.
READ_CHUNK_BYTES = 1024 * 1024

# Error reasons (the codec's own are features.example_codec.BAD_TYPE / BAD_VALUE).
LINE_TOO_LONG = "line_too_long"
NOT_UTF8 = "not_utf8"
UNPARSEABLE_JSON = "unparseable_json"
TOO_DEEP = "too_deep"
TOO_LONG = "too_long"
BAD_VALUE = "bad_value"

_LONE_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_UTF8_BOM = b"\xef\xbb\xbf"


class LimitError(ValueError):
  """A record breaks a limit: `field` is the top-level key holding the offending value
  ("<record>" for the record itself, "<line>" for the line), `reason` one of the reasons
  above, `detail` a sentence naming both."""

  def __init__(self, field: str, reason: str, detail: str):
    super().__init__(detail)
    self.field = field
    self.reason = reason
    self.detail = detail


@dataclasses.dataclass
class InputLine:
  """One non-blank input line.

  line: its 1-based number in the file (blank lines counted).
  record: the parsed JSON value (None when `error` is set).
  text: the line's text cut to ECHO_CHARS characters (what a refused record echoes).
  error: why the line was refused before or while parsing, or None.
  """

  line: int
  record: Any = None
  text: Optional[str] = None
  error: Optional[LimitError] = None


def cut(text: str, limit: int = ECHO_CHARS) -> str:
  """`text`, or its first `limit` characters followed by an ellipsis."""
  return text if len(text) <= limit else text[:limit] + "..."


# Length limits that never bind: a cut feature's value is held by `fit_features` instead.
_UNBOUNDED = spec_lib.ValueLimit(max_elements=2**62, max_chars=2**62)


class RecordLimits:
  """The length limit of each top-level field of a record (module docstring).

  Args:
    spec: the feature spec whose features' limits apply (features.spec.ValueLimit);
      None = every field has features.spec.FIXED_LIMIT.

  Attributes:
    features: example key -> its ValueLimit (empty without a spec), for `fit_features`.
    scan_chars: a JSON text of at most this many characters cannot break a refused
      limit (`may_break_limits`).
  """

  def __init__(self, spec: Optional[spec_lib.FeatureSpec] = None):
    self.features: Dict[str, spec_lib.ValueLimit] = spec.value_limits() if spec else {}
    self._checked = {key: _UNBOUNDED if limit.on_too_long == spec_lib.CUT else limit
                     for key, limit in self.features.items()}
    refused = [spec_lib.FIXED_LIMIT] + [limit for limit in self._checked.values()
                                        if limit is not _UNBOUNDED]
    # A string of n characters takes more than n characters of JSON, a list of n
    # elements at least 2n + 1.
    self.scan_chars = min(min(limit.max_chars for limit in refused),
                          2 * min(limit.max_elements for limit in refused))

  def of(self, field: str) -> spec_lib.ValueLimit:
    """The limit check_limits holds the top-level `field`'s value (anywhere inside) to."""
    return self._checked.get(field, spec_lib.FIXED_LIMIT)


_FIXED_LIMITS = RecordLimits()


def check_limits(record: Any, limits: RecordLimits = _FIXED_LIMITS) -> None:
  """Checks a parsed record against the limits above, without recursion.

  Scalars inside a container are checked in place (a flat impression record costs one
  pass over its keys); only nested containers go on the stack.

  Args:
    record: a parsed JSON value.
    limits: the limits of its top-level fields (`RecordLimits(spec)`); default: fixed.

  Raises:
    LimitError: naming the top-level key that holds the first offending value
      (`item_category`, `extra` for a value inside `extra`; `<record>` for the record
      itself) and the reason.
  """
  key_chars = spec_lib.FIXED_LIMIT.max_chars
  stack: List[Tuple[Any, int, str]] = [(record, 0, "<record>")]
  while stack:
    value, depth, field = stack.pop()
    limit = limits.of(field)
    if not isinstance(value, (dict, list, tuple)):
      _check_scalar(value, field, limit.max_chars)
      continue
    if depth >= MAX_DEPTH:
      raise LimitError(field, TOO_DEEP, f"field {field!r}: nested deeper than {MAX_DEPTH} "
                       f"levels")
    if isinstance(value, dict):
      items = value.items()
    else:
      if len(value) > limit.max_elements:
        raise LimitError(field, TOO_LONG, f"field {field!r}: {len(value)} elements, more "
                         f"than the limit of {limit.max_elements}")
      items = ((None, item) for item in value)
    for key, item in items:
      item_field, item_chars = field, limit.max_chars
      if key is not None:
        if not depth:
          item_field = str(key)
          item_chars = limits.of(item_field).max_chars
        if type(key) is not str or len(key) > key_chars or not key.isascii():
          _check_scalar(str(key), item_field, key_chars)
      kind = type(item)
      if kind is str:
        if len(item) > item_chars or not item.isascii():
          _check_scalar(item, item_field, item_chars)
      elif kind is float:
        _check_scalar(item, item_field, item_chars)
      elif kind is dict or kind is list or kind is tuple:
        stack.append((item, depth + 1, item_field))
      elif kind is not int and kind is not bool and item is not None:  # subclasses, numpy
        if isinstance(item, (dict, list, tuple)):
          stack.append((item, depth + 1, item_field))
        else:
          _check_scalar(item, item_field, item_chars)


def fit_features(features: Dict[str, Any], limits: RecordLimits) -> Dict[str, int]:
  """Holds a record's coerced features (features.example_codec.ExampleCodec.coerce) to
  the spec's limits, in place: a value over a `cut` limit is cut to it.

  Returns:
    {feature: its original length (elements of a list, characters of a string)} of the
    values cut: the record's `input_notes` "cut".

  Raises:
    LimitError: too_long, for a value over a dead_letter limit (check_limits refuses
      those first, on the raw record).
  """
  try:
    return spec_lib.fit_lengths(features, limits.features)
  except spec_lib.TooLongError as e:
    raise LimitError(e.field, TOO_LONG, e.detail) from None


def _check_scalar(value: Any, field: str, max_chars: int) -> None:
  if isinstance(value, str):
    if len(value) > max_chars:
      raise LimitError(field, TOO_LONG, f"field {field!r}: a string of {len(value)} "
                       f"characters, more than the limit of {max_chars}")
    if not value.isascii() and _LONE_SURROGATE.search(value):
      raise LimitError(field, BAD_VALUE, f"field {field!r}: holds a lone UTF-16 surrogate, "
                       f"which is not encodable as UTF-8")
  elif isinstance(value, float) and not math.isfinite(value):
    raise LimitError(field, BAD_VALUE, f"field {field!r}: {value} is not a finite number")


class _NonFinite(ValueError):
  """A float literal that is not finite (NaN, Infinity, 1e999); raised by the JSON hooks."""


def _finite_float(literal: str) -> float:
  value = float(literal)
  if not math.isfinite(value):
    raise _NonFinite(literal)
  return value


def _refuse_constant(name: str):
  raise _NonFinite(name)


# Refuses non-finite float literals while parsing; built once (json.loads with hooks would
# build a decoder per line).
_FINITE_DECODER = json.JSONDecoder(parse_float=_finite_float, parse_constant=_refuse_constant)


def parse_line(line_number: int, data: bytes, limits: RecordLimits = _FIXED_LIMITS
               ) -> InputLine:
  """One line's bytes (without its line break) -> an InputLine, checked against the limits
  (`limits`: those of a spec, `RecordLimits(spec)`; default: the fixed ones)."""
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    return InputLine(line_number, text=cut(data.decode("utf-8", errors="replace")),
                     error=LimitError("<line>", NOT_UTF8, f"not UTF-8: byte "
                                      f"0x{data[e.start]:02x} at offset {e.start}"))
  try:
    try:
      record = _FINITE_DECODER.decode(text)
      suspect = may_break_limits(text, limits)
    except _NonFinite:  # parsed again leniently, so check_limits can name the field
      record, suspect = json.loads(text), True
  except RecursionError:
    return InputLine(line_number, text=cut(text), error=LimitError(
        "<line>", TOO_DEEP, f"nested too deep to parse (a record may nest {MAX_DEPTH} "
        f"levels)"))
  except ValueError as e:  # JSONDecodeError, and int() of more than 4300 digits.
    return InputLine(line_number, text=cut(text), error=LimitError(
        "<line>", UNPARSEABLE_JSON, f"not valid JSON: {cut(str(e), 200)}"))
  if suspect:
    try:
      check_limits(record, limits)
    except LimitError as e:
      return InputLine(line_number, text=cut(text), error=e)
  return InputLine(line_number, record=record, text=cut(text))


def may_break_limits(text: str, limits: RecordLimits = _FIXED_LIMITS) -> bool:
  """False when the JSON text alone proves that its value keeps the size, depth and
  surrogate limits (non-finite numbers are refused by `parse_line`'s parser hooks).

  A text of at most `limits.scan_chars` characters holds no string or array over a
  refused limit (an element takes at least 2 characters); MAX_DEPTH brackets or fewer
  cannot nest deeper;
  a lone surrogate needs a \\uD800-\\uDFFF escape. Each test is a C-speed scan, so a
  typical impression line skips `check_limits`' walk (a bracket or an escape inside a
  string only costs the walk, which then decides).
  """
  return (len(text) > limits.scan_chars
          or text.count("[") + text.count("{") > MAX_DEPTH
          or _SURROGATE_ESCAPE.search(text) is not None)


def _read_lines(path: str) -> Iterator[Tuple[int, bytes, int]]:
  """(1-based line number, bytes without the line break, full length in bytes).

  A line longer than MAX_LINE_BYTES keeps only its first MAX_LINE_BYTES + 1 bytes (the
  rest is read and dropped chunk by chunk), so memory stays bounded by the limit.
  """
  line_number = 0
  pending = bytearray()
  length = 0  # of the current line, including bytes dropped.
  with tf.io.gfile.GFile(path, "rb") as f:
    while True:
      chunk = f.read(READ_CHUNK_BYTES)
      if not chunk:
        break
      start = 0
      while True:
        end = chunk.find(b"\n", start)
        piece = chunk[start:] if end < 0 else chunk[start:end]
        room = MAX_LINE_BYTES + 1 - len(pending)
        if room > 0:
          pending += piece[:room]
        length += len(piece)
        if end < 0:
          break
        line_number += 1
        yield line_number, bytes(pending), length
        pending, length, start = bytearray(), 0, end + 1
  if length:
    yield line_number + 1, bytes(pending), length


def read_jsonl(path: str, spec: Optional[spec_lib.FeatureSpec] = None) -> Iterator[InputLine]:
  """Yields one InputLine per non-blank line of a JSON Lines file (local or gs://),
  checked against the limits of `spec`'s features (None: the fixed limits)."""
  limits = RecordLimits(spec) if spec is not None else _FIXED_LIMITS
  for line_number, data, length in _read_lines(path):
    if line_number == 1 and data.startswith(_UTF8_BOM):
      data = data[len(_UTF8_BOM):]
    if data.endswith(b"\r"):
      data = data[:-1]
    if length > MAX_LINE_BYTES:
      shown = cut(data[:ECHO_CHARS * 4].decode("utf-8", errors="replace"))
      yield InputLine(line_number, text=shown, error=LimitError(
          "<line>", LINE_TOO_LONG, f"{length} bytes, more than the limit of {MAX_LINE_BYTES}"))
      continue
    if not data.strip():
      continue
    yield parse_line(line_number, data, limits)
