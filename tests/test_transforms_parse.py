"""transforms.parse: valid records are coerced; every malformed one is a dead letter.

Hand-written bad records check each dead letter's reason and the field its detail names;
files mixing valid, bad and unusual lines check that the columnar paths (pyarrow's
strict JSON reader, Parquet casts, checks in columns) keep and dead-letter exactly what
the line rules alone do (`parse_line_by_line`, the fallback every dead letter comes from).
"""

import gzip
import json
import math
import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import config as config_lib
from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import parse
from transforms import read
from tests import beam_testing as testing

EVENT_TYPES = ("click", "view_reviews", "cart", "favorite", "purchase")
T0 = testing.START


def _text_lines(path):
  """(1-based line, stripped text) of the non-blank lines, in plain Python."""
  with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
    data = f.read()
  texts = (line.decode("utf-8", errors="replace").strip() for line in data.split(b"\n"))
  return [(number, text) for number, text in enumerate(texts, start=1) if text]


def _columnar(path, parser, batch_rows):
  """(kept rows, dead letters) of a file through the job's batch paths."""
  batches, dead = [], []
  if read.is_parquet(path):
    row = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
      parsed, letters = parser.parse_parquet_batch(path, row, batch)
      row += batch.num_rows
      batches.append(parsed)
      dead += letters
  else:
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as handle:
      for lines, texts, _ in read.json_line_batches(handle, batch_rows):
        parsed, letters = parser.parse_json_lines(path, lines, texts)
        batches.append(parsed)
        dead += letters
  for batch in batches:
    assert batch.schema == parser.schema
  return pa.Table.from_batches(batches, schema=parser.schema).to_pylist(), dead


def _line_by_line(path, parser):
  """(kept rows, dead letters) of a file through the line rules alone."""
  if read.is_parquet(path):
    payloads = pq.read_table(path).to_pylist()
    numbers = list(range(1, len(payloads) + 1))
  else:
    numbers, payloads = zip(*_text_lines(path)) if _text_lines(path) else ((), ())
  batch, dead = parser.parse_line_by_line(path, list(numbers), list(payloads))
  return batch.to_pylist(), dead


def _key(letter):
  return (letter["file"], letter["line"])


def _letters(dead):
  """Dead letters in file order, as JSON lines (NaN payloads compare equal that way)."""
  return [dl.to_json_line(d) for d in sorted(dead, key=_key)]


BAD_IMPRESSIONS = [
    ("{not json", dl.UNPARSEABLE_JSON, "JSON"),
    ("[1, 2]", dl.NOT_AN_OBJECT, "list"),
    ({"timestamp": T0, "user_id": "u", "item_id": "i"}, dl.MISSING_FIELD, "impression_id"),
    ({"impression_id": "", "timestamp": T0, "user_id": "u", "item_id": "i"}, dl.BAD_VALUE,
     "impression_id"),
    ({"impression_id": 7, "timestamp": T0, "user_id": "u", "item_id": "i"}, dl.BAD_TYPE,
     "impression_id"),
    ({"impression_id": "a", "timestamp": "5", "user_id": "u", "item_id": "i"}, dl.BAD_TYPE,
     "timestamp"),
    ({"impression_id": "a", "timestamp": 5.0, "user_id": "u", "item_id": "i"}, dl.BAD_TYPE,
     "timestamp"),
    ({"impression_id": "a", "timestamp": T0, "item_id": "i"}, dl.MISSING_FIELD, "user_id"),
    ({"impression_id": "a", "timestamp": T0, "user_id": "u"}, dl.MISSING_FIELD, "item_id"),
    ({"impression_id": "a", "timestamp": T0, "user_id": "u", "item_id": "i",
      "user_age": "old"}, dl.BAD_TYPE, "user_age"),
]


@pytest.mark.parametrize("path", ["columnar", "line_by_line"])
def test_malformed_impressions_are_dead_letters_naming_the_field(path):
  texts = [p if isinstance(p, str) else json.dumps(p) for p, _, _ in BAD_IMPRESSIONS]
  numbers = list(range(1, len(texts) + 1))
  parser = parse.ImpressionParser(testing.small_spec())
  parse_lines = parser.parse_json_lines if path == "columnar" else parser.parse_line_by_line
  batch, dead = parse_lines("f.jsonl", numbers, texts)
  assert batch.num_rows == 0 and len(dead) == len(BAD_IMPRESSIONS)
  for letter in dead:
    _, reason, named = BAD_IMPRESSIONS[letter["line"] - 1]
    assert letter["source"] == "impressions" and letter["file"] == "f.jsonl"
    assert letter["reason"] == reason and named in letter["detail"]
    assert letter["record"] == texts[letter["line"] - 1]


def test_impressions_are_coerced_and_keep_their_raw_text():
  line = json.dumps(testing.impression(1, T0 + 100, user_id=12, item_price=3))
  batch, dead = parse.ImpressionParser(testing.small_spec()).parse_json_lines(
      "f.jsonl", [4], [line])
  [row] = batch.to_pylist()
  assert not dead
  assert (row["impression_id"], row["timestamp"], row["file"], row["line"]) == (
      "imp1", T0 + 100, "f.jsonl", 4)
  assert row["record"] == line
  assert row["user_id"] == "12" and row["item_price"] == 3.0
  assert row["tags__weight"] == [0.5, 1.5]


def test_events_check_type_and_event_field():
  event_types = testing.data_config().labels[0].events + ("purchase",)
  texts = [json.dumps(testing.event("a", T0 + 10, "click")),
           json.dumps(testing.event("a", T0 + 10, "teleport")),
           json.dumps(testing.event("a", T0 + 10, None)),
           json.dumps({"impression_id": "a", "timestamp": T0 + 10, "event": 3})]
  batch, dead = parse.EventParser(event_types).parse_json_lines("e", [1, 2, 3, 4], texts)
  assert [(r["impression_id"], r["timestamp"], r["event"], r["line"])
          for r in batch.to_pylist()] == [("a", T0 + 10, "click", 1)]
  assert sorted((d["line"], d["reason"]) for d in dead) == [
      (2, dl.UNKNOWN_EVENT_TYPE), (3, dl.MISSING_FIELD), (4, dl.BAD_TYPE)]
  assert all("'event'" in d["detail"] for d in dead)


def _valid(index):
  return testing.impression(index, testing.START + index)


BAD_IMPRESSION_LINES = [
    "{not json", "[1, 2]", '"x"', "5", "null",
    json.dumps({"timestamp": T0, "user_id": "u", "item_id": "i"}),
    json.dumps(_valid(1) | {"impression_id": ""}),
    json.dumps(_valid(2) | {"impression_id": 7}),
    json.dumps(_valid(3) | {"timestamp": "5"}),
    json.dumps(_valid(4) | {"timestamp": 5.0}),
    json.dumps(_valid(5) | {"timestamp": True}),
    json.dumps({k: v for k, v in _valid(7).items() if k != "user_id"}),
    json.dumps(_valid(8) | {"item_id": None}),
    json.dumps(_valid(9) | {"user_id": 3.5}),
    json.dumps(_valid(10) | {"user_age": 2.0}),
    json.dumps(_valid(11) | {"user_age": "3"}),
    json.dumps(_valid(12) | {"user_age": False}),
    json.dumps(_valid(13) | {"user_age": 2**64}),
    json.dumps(_valid(14) | {"item_price": "x"}),
    '{"impression_id": "nan1", "timestamp": 1767225600, "user_id": "u", "item_id": "i", '
    '"item_price": NaN}',
    '{"impression_id": "inf1", "timestamp": 1767225600, "user_id": "u", "item_id": "i", '
    '"item_price": Infinity}',
    '{"impression_id": "big1", "timestamp": 1767225600, "user_id": "u", "item_id": "i", '
    '"item_price": 1e400}',
    json.dumps(_valid(15) | {"tags": ["a", None], "tags__weight": [1.0, 2.0]}),
    json.dumps(_valid(16) | {"device": ["ios"]}),
    json.dumps(_valid(17) | {"tags__weight": [1.0]}),
    json.dumps(_valid(18) | {"tags": None}),
    json.dumps(_valid(19) | {"tags__weight": [1.0, None]}),
    json.dumps(_valid(20) | {"tags__weight": ["a", "b"]}),
    '{"impression_id": "nanw", "timestamp": 1767225600, "user_id": "u", "item_id": "i", '
    '"tags": ["a"], "tags__weight": [NaN]}',
    '{"impression_id": "dup", "impression_id": "dup2", "timestamp": 1767225600, "user_id": "u", '
    '"item_id": "i"}',
    json.dumps(_valid(21) | {"device": {"a": 1}}),
    json.dumps(_valid(22) | {"position": 1.5}),
]
# Valid but unusual: coerced by the row parser, so the strict reader must fall back.
ODD_VALID_LINES = [
    json.dumps(_valid(30) | {"user_id": 12345}),
    json.dumps(_valid(31) | {"tags": "solo", "tags__weight": 2.0}),
    json.dumps(_valid(32) | {"tags": "solo"}),
    json.dumps(_valid(33) | {"tags": [], "tags__weight": []}),
    json.dumps(_valid(34) | {"tags": []}),
    json.dumps(_valid(35) | {"item_price": 7}),
    json.dumps(_valid(36) | {"device": None, "extra": {"nested": [1, "x"]}}),
    json.dumps({k: v for k, v in _valid(37).items() if k not in ("tags", "tags__weight")}),
    json.dumps(_valid(38) | {"device": "t\u00e9l\u00e9"}, ensure_ascii=False),
    json.dumps(_valid(39)) + "\u00a0",
    json.dumps(_valid(40)) + "\r",
    json.dumps(_valid(41) | {"item_price": 0.1 + 0.2, "tags__weight": [1e-310, 3.3]}),
]


def _impression_lines():
  lines = []
  for index in range(400):
    lines.append(json.dumps(_valid(100 + index)))
    if index % 9 == 0:
      lines.append("")
    if index % 13 == 0:
      lines.append("   ")
  for offset, bad in enumerate(BAD_IMPRESSION_LINES + ODD_VALID_LINES):
    lines.insert(7 + offset * 11, bad)
  return lines


@pytest.mark.parametrize("batch_rows", [50, 8192])
@pytest.mark.parametrize("name", ["imps.jsonl", "imps.jsonl.gz"])
def test_json_impressions_in_columns_match_the_line_rules(tmp_path, name, batch_rows):
  path = str(tmp_path / name)
  testing.write_jsonl(path, _impression_lines())
  with open(path if not name.endswith(".gz") else os.devnull, "ab") as f:
    f.write(b'{"impression_id": "\xff\xfe bad utf8", "timestamp": 1}\n')
  parser = parse.ImpressionParser(testing.small_spec())
  rows, dead = _columnar(path, parser, batch_rows)
  line_rows, line_dead = _line_by_line(path, parser)
  assert len(line_dead) >= len(BAD_IMPRESSION_LINES) and len(line_rows) >= 400
  assert _letters(dead) == _letters(line_dead)
  assert rows == line_rows


def test_json_with_no_newline_at_end_and_blank_file(tmp_path):
  path = str(tmp_path / "a.jsonl")
  with open(path, "w") as f:
    f.write("\n\n" + json.dumps(_valid(1)) + "\n{bad\n" + json.dumps(_valid(2)))
  parser = parse.ImpressionParser(testing.small_spec())
  rows, dead = _columnar(path, parser, 8192)
  assert [r["line"] for r in rows] == [3, 5]
  assert [(d["line"], d["reason"]) for d in dead] == [(4, dl.UNPARSEABLE_JSON)]
  assert (rows, dead) == _line_by_line(path, parser)
  empty = str(tmp_path / "empty.jsonl")
  open(empty, "w").close()
  assert _columnar(empty, parser, 8192) == ([], [])


def _event_lines():
  lines = []
  for index in range(300):
    lines.append(json.dumps(testing.event(f"imp{index}", testing.START + index,
                                          EVENT_TYPES[index % len(EVENT_TYPES)])))
  bad = ["{", "[]", json.dumps({"timestamp": 1, "event": "click"}),
         json.dumps(testing.event("", 1, "click")), json.dumps(testing.event("a", 1, "")),
         json.dumps(testing.event("a", 1, "teleport")),
         json.dumps(testing.event("a", 1.0, "click")),
         json.dumps(testing.event("a", 1, 5)), json.dumps(testing.event(5, 1, "click")),
         json.dumps({"impression_id": "a", "timestamp": T0})]
  for offset, line in enumerate(bad):
    lines.insert(3 + offset * 17, line)
  return lines


@pytest.mark.parametrize("batch_rows", [40, 8192])
def test_json_events_in_columns_match_the_line_rules(tmp_path, batch_rows):
  path = testing.write_jsonl(str(tmp_path / "events.jsonl"), _event_lines())
  parser = parse.EventParser(EVENT_TYPES)
  rows, dead = _columnar(path, parser, batch_rows)
  line_rows, line_dead = _line_by_line(path, parser)
  assert len(dead) == 10 and len(rows) == 300
  assert _letters(dead) == _letters(line_dead)
  assert rows == line_rows


def test_parquet_impressions_in_columns_match_the_line_rules(tmp_path):
  records = [_valid(index) for index in range(300)]
  records[5]["item_price"] = float("nan")
  records[9]["impression_id"] = ""
  records[11].pop("user_id")
  records[20]["tags__weight"] = [1.0]
  records[21]["tags"] = ["x", None]
  records[22].pop("tags")
  records[23].pop("tags__weight")
  path = testing.write_parquet(str(tmp_path / "imps.parquet"), records)
  # An int column for a string feature and a float32 column: cast, or row by row.
  odd = [dict(r, user_id=index, item_price=None) for index, r in enumerate(records[:50])]
  odd_path = testing.write_parquet(str(tmp_path / "odd.parquet"), odd)
  parser = parse.ImpressionParser(testing.small_spec())
  for file, batch_rows in ((path, 64), (odd_path, 16)):
    rows, dead = _columnar(file, parser, batch_rows)
    line_rows, line_dead = _line_by_line(file, parser)
    assert _letters(dead) == _letters(line_dead)
    assert rows == line_rows and all(row["record"] is None for row in rows)
  rows, dead = _columnar(path, parser, 64)
  assert sorted((d["line"], d["reason"]) for d in dead) == [
      (6, dl.BAD_VALUE), (10, dl.BAD_VALUE), (12, dl.MISSING_FIELD), (21, dl.BAD_VALUE),
      (22, dl.BAD_TYPE), (23, dl.BAD_VALUE)]
  assert len(rows) == 294 and dead[0]["record"]["impression_id"] == "imp5"


def test_read_parse_transform_emits_batches_dead_letters_and_read_count(tmp_path):
  lines = [json.dumps(_valid(i)) for i in range(10)] + ["{bad", ""]
  testing.write_jsonl(str(tmp_path / "a.jsonl"), lines)
  testing.write_jsonl(str(tmp_path / "b.jsonl.gz"), lines[:3])
  with test_pipeline.TestPipeline() as p:
    out = p | parse.ReadParseImpressions(str(tmp_path / "*"), testing.small_spec())
    assert_that(out[parse.RECORDS] | beam.Map(lambda b: b.num_rows)
                | beam.CombineGlobally(sum), equal_to([13]), label="Rows")
    assert_that(out[dl.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"])),
                equal_to([(11, dl.UNPARSEABLE_JSON)]), label="Dead")
    assert_that(out[parse.READ], equal_to([14]), label="Read")


def test_timestamp_outside_int64_is_a_bad_value():
  text = json.dumps(_valid(6) | {"timestamp": 2**70})
  batch, dead = parse.ImpressionParser(testing.small_spec()).parse_json_lines("f", [4], [text])
  assert batch.num_rows == 0
  assert [(d["line"], d["reason"]) for d in dead] == [(4, dl.BAD_VALUE)]
  assert "'timestamp'" in dead[0]["detail"]


def test_a_lone_surrogate_is_a_bad_value():
  """Arrow strings must be valid utf-8."""
  text = json.dumps(_valid(7) | {"device": "\ud800x"})
  assert "\\ud800" in text
  batch, dead = parse.ImpressionParser(testing.small_spec()).parse_json_lines("f", [2], [text])
  assert batch.num_rows == 0
  assert [(d["line"], d["reason"]) for d in dead] == [(2, dl.BAD_VALUE)]
  assert "'device'" in dead[0]["detail"]


def test_floats_parse_like_python_json():
  """pyarrow's JSON number parsing gives the same doubles as json.loads."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  values = [rng.uniform(0, 1000) for _ in range(2000)] + [rng.lognormvariate(0, 3)
                                                          for _ in range(2000)]
  texts = [json.dumps(testing.impression(i, T0, item_price=round(v, rng.randint(0, 17))))
           for i, v in enumerate(values)]
  parser = parse.ImpressionParser(testing.small_spec())
  batch, dead = parser.parse_json_lines("f", list(range(1, len(texts) + 1)), texts)
  assert not dead
  expected = [json.loads(t)["item_price"] for t in texts]
  found = batch.column(batch.schema.get_field_index("item_price")).to_pylist()
  assert all(math.isfinite(v) for v in found)
  assert found == [float(v) for v in expected]


def _deep(depth):
  return "[" * depth + "]" * depth


LONG = 100_000  # features.spec.DEFAULT_MAX_STRING_CHARS
# Issue 33: no single line can stop a job. (line, reason, what the detail names) per case.
HOSTILE_IMPRESSIONS = [
    (_deep(100_000), dl.UNPARSEABLE_JSON, "nested"),
    (json.dumps(_valid(50))[:-1] + ', "extra": ' + _deep(100_000) + "}", dl.UNPARSEABLE_JSON,
     "nested"),
    (json.dumps(_valid(51) | {"timestamp": -5}), dl.BAD_VALUE, "'timestamp'"),
    (json.dumps(_valid(52) | {"timestamp": parse.MIN_TIMESTAMP - 1}), dl.BAD_VALUE,
     "before 2000-01-01"),
    (json.dumps(_valid(53) | {"tags": ["t"] * 10_001, "tags__weight": None}), dl.TOO_LONG,
     "'tags': 10001 elements"),
    (json.dumps(_valid(54) | {"device": "d" * (LONG + 1)}), dl.TOO_LONG, "'device'"),
    (json.dumps(_valid(55) | {"tags": ["t" * (LONG + 1)], "tags__weight": [1.0]}),
     dl.TOO_LONG, "'tags'"),
    (json.dumps(_valid(56) | {"impression_id": "i" * (LONG + 1)}), dl.TOO_LONG,
     "'impression_id'"),
    # The line rules raise MemoryError on this one (monkeypatched): a parser_error. Its
    # user_id is a number, which the strict reader refuses: it goes to the line rules.
    (json.dumps(_valid(57) | {"impression_id": "boom", "user_id": 7}), dl.PARSER_ERROR,
     "MemoryError"),
]
# At the limits: kept.
LIMIT_IMPRESSIONS = [
    json.dumps(_valid(60) | {"timestamp": parse.MIN_TIMESTAMP}),
    json.dumps(_valid(61) | {"tags": ["t"] * 10_000, "tags__weight": None}),
    json.dumps(_valid(62) | {"device": "d" * LONG}),
    json.dumps(_valid(63) | {"extra": _deep(200)}),
]


@pytest.mark.parametrize("path", ["columnar", "line_by_line"])
def test_no_single_line_stops_the_job(path, monkeypatch):
  parser = parse.ImpressionParser(testing.small_spec())
  validate = parser.validate

  def validate_or_run_out_of_memory(obj):
    if obj.get("impression_id") == "boom":
      raise MemoryError("out of memory")
    return validate(obj)

  monkeypatch.setattr(parser, "validate", validate_or_run_out_of_memory)
  texts = [json.dumps(_valid(i)) for i in range(3)] + [
      line for line, _, _ in HOSTILE_IMPRESSIONS] + LIMIT_IMPRESSIONS
  numbers = list(range(1, len(texts) + 1))
  if path == "columnar":  # Each line alone (the strict reader takes most) and all at once.
    runs = [[parser.parse_json_lines("f.jsonl", [n], [t]) for n, t in zip(numbers, texts)],
            [parser.parse_json_lines("f.jsonl", numbers, texts)]]
  else:
    runs = [[parser.parse_line_by_line("f.jsonl", numbers, texts)]]
  for results in runs:
    dead = [letter for _, letters in results for letter in letters]
    found = {letter["line"]: letter for letter in dead}
    assert sorted(found) == list(range(4, 4 + len(HOSTILE_IMPRESSIONS)))
    for line, (text, reason, named) in enumerate(HOSTILE_IMPRESSIONS, start=4):
      assert found[line]["reason"] == reason and named in found[line]["detail"], line
      assert found[line]["record"] == text
    kept = [row for batch, _ in results for row in batch.to_pylist()]
    assert [row["impression_id"] for row in kept] == [
        "imp0", "imp1", "imp2", "imp60", "imp61", "imp62", "imp63"]
    assert len(kept[4]["tags"]) == 10_000 and len(kept[5]["device"]) == LONG


@pytest.mark.parametrize("path", ["columnar", "line_by_line"])
def test_limits_are_the_parser_s_and_events_have_them_too(path):
  parser = parse.EventParser(EVENT_TYPES, limit=spec_lib.ValueLimit(max_chars=5))
  texts = [json.dumps(testing.event("imp1", T0, "click")),
           json.dumps(testing.event("imp1", parse.MIN_TIMESTAMP - 1, "click")),
           json.dumps(testing.event("imp123", T0, "click"))]
  if path == "columnar":  # The strict reader takes every line: the checks in columns.
    assert parser._read_json(texts).num_rows == 3  # pylint: disable=protected-access
  parse_lines = parser.parse_json_lines if path == "columnar" else parser.parse_line_by_line
  batch, dead = parse_lines("e.jsonl", [1, 2, 3], texts)
  assert [row["line"] for row in batch.to_pylist()] == [1]
  assert sorted((d["line"], d["reason"]) for d in dead) == [(2, dl.BAD_VALUE),
                                                           (3, dl.TOO_LONG)]


# Issue 33: per-feature limits from the spec. tags (a weighted list): at most 3 elements,
# each string at most 6 characters (the spec-wide max_string_chars), cut; device (a
# string): at most 4 characters, cut; user_id: at most 8 characters, dead-lettered.
LIMITED_SPEC = dict(testing.SMALL_SPEC, limits={"max_string_chars": 6}, features=[
    dict(entry, **{"user_id": {"max_length": 8},
                   "device": {"max_length": 4, "on_too_long": "cut"},
                   "tags": {"max_length": 3, "on_too_long": "cut"}}.get(entry["name"], {}))
    for entry in testing.SMALL_SPEC["features"]])

def _short(index):
  """A valid impression whose values keep LIMITED_SPEC's limits (device "android" would not)."""
  return _valid(index) | {"device": "web"}


# (record, what the kept row holds instead, or the dead letter's reason and named field).
LIMITED_CASES = [
    (_short(70), {}, None),
    (_short(71) | {"tags": list("abcde"), "tags__weight": [1.0, 2.0, 3.0, 4.0, 5.0]},
     {"tags": list("abc"), "tags__weight": [1.0, 2.0, 3.0]}, None),
    (_short(72) | {"tags": ["t1", "abcdefghij"], "tags__weight": None},
     {"tags": ["t1", "abcdef"], "tags__weight": [1.0, 1.0]}, None),
    (_short(73) | {"device": "abcdefg"}, {"device": "abcd"}, None),
    (_short(74) | {"user_id": "u" * 9}, None, (dl.TOO_LONG, "'user_id': a string of 9")),
    # At every limit: kept as it is.
    (_short(75) | {"tags": ["abcdef"] * 3, "tags__weight": None, "device": "abcd",
                   "user_id": "u" * 8}, {"tags__weight": [1.0] * 3}, None),
    # Over a cut limit and a dead_letter one: dead-lettered, nothing counted as cut.
    (_short(76) | {"tags": list("abcde"), "tags__weight": None, "user_id": "u" * 9}, None,
     (dl.TOO_LONG, "'user_id'")),
]


def _limited_runs(parser, path, texts):
  """The (batch, dead letters) results of `texts` through one path: the columnar one
  line by line and all at once, or the line rules alone."""
  numbers = list(range(1, len(texts) + 1))
  if path == "columnar":  # A generator: each run is parsed when the test reaches it.
    yield [parser.parse_json_lines("f.jsonl", [n], [t]) for n, t in zip(numbers, texts)]
    yield [parser.parse_json_lines("f.jsonl", numbers, texts)]
  else:
    yield [parser.parse_line_by_line("f.jsonl", numbers, texts)]


@pytest.mark.parametrize("path", ["columnar", "line_by_line"])
def test_spec_limits_cut_or_dead_letter_and_cuts_are_counted(path):
  parser = parse.ImpressionParser(spec_lib.feature_spec_from_dict(LIMITED_SPEC, "limited"))
  texts = [json.dumps({k: v for k, v in record.items() if v is not None})
           for record, _, _ in LIMITED_CASES]
  for results in _limited_runs(parser, path, texts):
    kept = {row["line"]: row for batch, _ in results for row in batch.to_pylist()}
    dead = {letter["line"]: letter for _, letters in results for letter in letters}
    assert parser.pop_cut_counts() == {"tags": 2, "device": 1}
    assert parser.pop_cut_counts() == {}
    for line, (record, changes, refused) in enumerate(LIMITED_CASES, start=1):
      if refused is not None:
        assert line not in kept and dead[line]["reason"] == refused[0], line
        assert refused[1] in dead[line]["detail"] and dead[line]["record"] == texts[line - 1]
        continue
      assert line not in dead, dead.get(line)
      expected = dict(record, **changes)
      assert {key: kept[line][key] for key in expected} == expected, line


def test_spec_limits_in_parquet_columns_match_the_line_rules(tmp_path):
  records = [{k: v for k, v in record.items() if v is not None}
             for record, _, _ in LIMITED_CASES] + [_short(i) for i in range(80, 120)]
  for record in records:
    record.setdefault("tags__weight", [1.0] * len(record["tags"]))
    record.setdefault("device", "web")
  path = testing.write_parquet(str(tmp_path / "imps.parquet"), records)
  parser = parse.ImpressionParser(spec_lib.feature_spec_from_dict(LIMITED_SPEC, "limited"))
  rows, dead = _columnar(path, parser, 16)
  cut = parser.pop_cut_counts()
  line_rows, line_dead = _line_by_line(path, parser)
  assert (rows, _letters(dead), cut) == (line_rows, _letters(line_dead),
                                         parser.pop_cut_counts())
  assert cut == {"tags": 2, "device": 1} and sorted(d["line"] for d in dead) == [5, 7]


AS_OF = T0 + 3600


@pytest.mark.parametrize("path", ["columnar", "line_by_line"])
def test_records_after_as_of_are_bad_values_naming_the_instant(path):
  impressions = [json.dumps(_valid(0) | {"timestamp": AS_OF}),  # at as_of: kept
                 json.dumps(_valid(1) | {"timestamp": AS_OF + 1}),
                 json.dumps(_valid(2) | {"timestamp": AS_OF - 1})]
  events = [json.dumps(testing.event("imp0", AS_OF, "click")),
            json.dumps(testing.event("imp0", AS_OF + 60, "purchase"))]
  for parser, texts in ((parse.ImpressionParser(testing.small_spec(), as_of=AS_OF),
                         impressions), (parse.EventParser(EVENT_TYPES, as_of=AS_OF), events)):
    for results in _limited_runs(parser, path, texts):
      kept = [row["line"] for batch, _ in results for row in batch.to_pylist()]
      dead = [letter for _, letters in results for letter in letters]
      assert kept == [line for line in (1, 3) if line <= len(texts)]
      [letter] = dead
      assert (letter["line"], letter["reason"]) == (2, dl.BAD_VALUE)
      stamp = json.loads(texts[1])["timestamp"]
      assert letter["detail"] == (
          f"field 'timestamp': {stamp} ({config_lib.utc_iso(stamp)}) is after as_of "
          f"2026-01-01T01:00:00Z ({AS_OF}), the logs' snapshot time")
  assert config_lib.utc_iso(AS_OF + 60) == "2026-01-01T01:01:00Z"


def test_without_as_of_a_late_timestamp_is_kept():
  text = json.dumps(_valid(1) | {"timestamp": AS_OF + 10**8})
  batch, dead = parse.ImpressionParser(testing.small_spec()).parse_json_lines("f", [1], [text])
  assert batch.num_rows == 1 and not dead


def test_read_parse_transform_emits_cut_counts_per_file(tmp_path):
  texts = [json.dumps({k: v for k, v in record.items() if v is not None})
           for record, _, _ in LIMITED_CASES]
  testing.write_jsonl(str(tmp_path / "a.jsonl"), texts)
  testing.write_jsonl(str(tmp_path / "b.jsonl"), texts[3:4])
  spec = spec_lib.feature_spec_from_dict(LIMITED_SPEC, "limited")
  with test_pipeline.TestPipeline() as p:
    out = p | parse.ReadParseImpressions(str(tmp_path / "*"), spec)
    assert_that(out[parse.CUT], equal_to([(("impressions", "cut", "tags"), 2),
                                          (("impressions", "cut", "device"), 1),
                                          (("impressions", "cut", "device"), 1)]), label="Cut")
    assert_that(out[parse.READ], equal_to([8]), label="Read")
