"""Parse and validate raw records against the raw log contract (DESIGN.md section 2).

Flow: ReadRecords -> **ParseImpressions / ParseEvents** -> JoinAndLabel -> ...
Input elements are `(file, line, payload)` from `transforms.read`. Valid records leave as
dicts; anything else goes to the `dead_letter` output with a reason and a detail naming
the field:

  impression: {"impression_id": str, "timestamp": int, "features": {coerced spec
               features}, "file": str, "line": int, "record": raw payload}
  event:      {"impression_id": str, "timestamp": int, "event": str,
               "file": str, "line": int, "record": raw payload}

The raw payload (a JSON line's text, a Parquet row's dict) travels with the record so a
later dead letter can show exactly what was read; text is also cheaper to shuffle than
the parsed object.

Feature values are coerced and validated by `features.example_codec`.
"""

import json
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple

from absl import logging
import apache_beam as beam

from features import example_codec
from features import spec as spec_lib
from transforms import dead_letter as dl

RECORDS = "records"  # Main output tag of the parse transforms.
EVENT_KEY = "event"
USER_ID_KEY = "user_id"
ITEM_ID_KEY = "item_id"


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


def required_present(record: Dict[str, Any], key: str) -> None:
  if record.get(key) is None:
    raise FieldError(dl.MISSING_FIELD, f"field {key!r} is missing")


class _ParseFn(beam.DoFn):
  """Shared shape of the two parsers: parse, validate, route, count, log per bundle."""

  source = ""

  def __init__(self):
    self._parsed = beam.metrics.Metrics.counter("parse", f"{self.source}_parsed")
    self._rejected = beam.metrics.Metrics.counter("parse", f"{self.source}_dead_letter")

  def start_bundle(self):
    self._bundle_parsed = 0
    self._bundle_rejected = 0

  def finish_bundle(self):
    if self._bundle_parsed or self._bundle_rejected:
      logging.info("Parsed %d %s (%d dead-lettered) in this bundle", self._bundle_parsed,
                   self.source, self._bundle_rejected)

  def validate(self, obj: Dict[str, Any]) -> Dict[str, Any]:
    raise NotImplementedError

  def process(self, raw: Tuple[str, int, Any]) -> Iterable[Any]:
    file, line, payload = raw
    try:
      parsed = self.validate(load_object(payload))
    except (FieldError, example_codec.RecordError) as e:
      yield self._reject(file, line, e.reason, e.detail, payload)
      return
    parsed["file"] = file
    parsed["line"] = line
    parsed["record"] = payload
    self._parsed.inc()
    self._bundle_parsed += 1
    yield parsed

  def _reject(self, file, line, reason, detail, record):
    self._rejected.inc()
    self._bundle_rejected += 1
    return beam.pvalue.TaggedOutput(
        dl.DEAD_LETTER, dl.make_dead_letter(self.source, file, line, reason, detail, record))


class _ParseImpressionFn(_ParseFn):
  source = dl.IMPRESSIONS

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec
    self._codec: Optional[example_codec.ExampleCodec] = None

  def setup(self):
    self._codec = example_codec.ExampleCodec(self._spec)

  def validate(self, obj):
    impression_id = required_string(obj, spec_lib.IMPRESSION_ID_KEY)
    timestamp = required_int(obj, spec_lib.TIMESTAMP_KEY)
    required_present(obj, USER_ID_KEY)
    required_present(obj, ITEM_ID_KEY)
    return {"impression_id": impression_id, "timestamp": timestamp,
            "features": self._codec.coerce(obj)}


class _ParseEventFn(_ParseFn):
  source = dl.EVENTS

  def __init__(self, event_types: Sequence[str]):
    super().__init__()
    self._event_types = frozenset(event_types)

  def validate(self, obj):
    impression_id = required_string(obj, spec_lib.IMPRESSION_ID_KEY)
    timestamp = required_int(obj, spec_lib.TIMESTAMP_KEY)
    event = required_string(obj, EVENT_KEY)
    if event not in self._event_types:
      raise FieldError(dl.UNKNOWN_EVENT_TYPE, f"field 'event': {event!r} is not one of the "
                       f"configured event types {sorted(self._event_types)}")
    return {"impression_id": impression_id, "timestamp": timestamp, "event": event}


class ParseImpressions(beam.PTransform):
  """(file, line, payload) -> {"records": impressions, "dead_letter": dead letters}.

  Args:
    spec: the feature spec whose features are validated and coerced.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec

  def expand(self, raw_records):
    outputs = raw_records | "Parse" >> beam.ParDo(_ParseImpressionFn(self._spec)).with_outputs(
        dl.DEAD_LETTER, main=RECORDS)
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER]}


class ParseEvents(beam.PTransform):
  """(file, line, payload) -> {"records": events, "dead_letter": dead letters}.

  Args:
    event_types: the event types the configured labels use; others are dead-lettered
      with reason `unknown_event_type`.
  """

  def __init__(self, event_types: Sequence[str]):
    super().__init__()
    self._event_types = tuple(event_types)

  def expand(self, raw_records):
    outputs = raw_records | "Parse" >> beam.ParDo(_ParseEventFn(self._event_types)).with_outputs(
        dl.DEAD_LETTER, main=RECORDS)
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER]}
