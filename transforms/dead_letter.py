"""Dead letters: input records the preprocessing job rejects, with why and where.

Flow: raw logs -> read -> parse -> join/label -> encode; each step sends what it rejects
to a tagged output (`DEAD_LETTER`) instead of dropping it, and the job writes them all
to `OUTPUT/dead_letter/*.jsonl`, one JSON object per rejected record:
`{"source", "file", "line", "reason", "detail", "record"}` (DESIGN.md section 3).
They are also counted per source and reason in `OUTPUT/counts.json`.
"""

import json
from typing import Any, Dict

import apache_beam as beam

DEAD_LETTER = "dead_letter"  # Tag of the dead-letter output of every DoFn here.

# Sources.
IMPRESSIONS = "impressions"  # Also the rows of the Ali-CCP skeleton and of derived layouts.
EVENTS = "events"
COMMON_FEATURES = "common_features"  # Ali-CCP common_features_*.csv rows.

# Reasons.
UNPARSEABLE_JSON = "unparseable_json"
NOT_AN_OBJECT = "not_an_object"
MISSING_FIELD = "missing_field"
BAD_TYPE = "bad_type"
BAD_VALUE = "bad_value"
UNKNOWN_EVENT_TYPE = "unknown_event_type"
DUPLICATE_IMPRESSION_ID = "duplicate_impression_id"
EVENT_WITHOUT_IMPRESSION = "event_without_impression"
EVENT_BEFORE_IMPRESSION = "event_before_impression"
OUTSIDE_ATTRIBUTION_WINDOW = "outside_attribution_window"
DUPLICATE_EVENT = "duplicate_event"
EVENT_WITHOUT_CLICK = "event_without_click"
TOO_LONG = "too_long"  # A list or string over its limit (features.spec.ValueLimit).
PARSER_ERROR = "parser_error"  # The line rules raised something else: a bug, or a hostile line.
# Reasons of the Ali-CCP readers (layouts/aliccp.py, aliccp_join.py, derived.py).
MALFORMED_LINE = "malformed_line"
BAD_LABEL = "bad_label"
MALFORMED_ITEM = "malformed_item"
FEATURE_COUNT_MISMATCH = "feature_count_mismatch"
REPEATED_SINGLE_VALUED_FIELD = "repeated_single_valued_field"
PURCHASE_WITHOUT_CLICK = "purchase_without_click"
MISSING_COMMON_FEATURES = "missing_common_features"
COMMON_FEATURES_REJECTED = "common_features_rejected"
DUPLICATE_MD5 = "duplicate_md5"


def make_dead_letter(source: str, file: str, line: int, reason: str, detail: str,
                     record: Any) -> Dict[str, Any]:
  """One dead letter; `record` is the payload as read: a JSON line's text or a Parquet row."""
  return {"source": source, "file": file, "line": line, "reason": reason,
          "detail": detail, "record": record}


def to_json_line(dead_letter: Dict[str, Any]) -> str:
  """A dead letter as one JSON line; values JSON cannot hold (Parquet dates, bytes) as str."""
  return json.dumps(dead_letter, sort_keys=True, default=str, ensure_ascii=False)


class WriteDeadLetters(beam.PTransform):
  """Writes dead letters as JSON lines to `<prefix>-SSSSS-of-NNNNN.jsonl`.

  One shard by default: dead letters should be few, and a fixed shard count means a
  re-run replaces the files of the previous one.
  """

  def __init__(self, file_path_prefix: str, num_shards: int = 1):
    super().__init__()
    self._file_path_prefix = file_path_prefix
    self._num_shards = num_shards

  def expand(self, dead_letters):
    return (dead_letters
            | "ToJson" >> beam.Map(to_json_line)
            | "Write" >> beam.io.WriteToText(self._file_path_prefix, file_name_suffix=".jsonl",
                                             num_shards=self._num_shards))
