"""Tests of serving/raw_input.py: hostile JSON Lines become per-line errors, never a crash.

Each hostile line sits beside good lines; the good ones must come back parsed exactly as
json.loads reads them alone, with their own line numbers.
"""

import collections
import json

import pytest

from features import example_codec
from features import spec as spec_lib
from serving import raw_input

GOOD = {"impression_id": "imp-1", "user_id": "u1", "item_id": "i1", "user_age": 30,
        "user_recent_categories": ["books", "toys"], "item_price": 12.5}


def _write(tmp_path, lines, name="in.jsonl"):
  path = tmp_path / name
  path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode()
                              for line in lines) + b"\n")
  return str(path)


def _by_line(path):
  return {item.line: item for item in raw_input.read_jsonl(path)}


def test_good_lines_parse_as_alone_and_blank_lines_keep_numbering(tmp_path):
  second = dict(GOOD, impression_id="imp-2")
  path = _write(tmp_path, [json.dumps(GOOD), "", "   ", json.dumps(second) + "\r"])
  items = list(raw_input.read_jsonl(path))
  assert [item.line for item in items] == [1, 4]
  assert [item.record for item in items] == [GOOD, second]
  assert all(item.error is None for item in items)
  for item in items:
    raw_input.check_limits(item.record)  # good records pass


def test_a_last_line_without_a_line_break_and_a_bom_are_read(tmp_path):
  path = tmp_path / "in.jsonl"
  path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n" + b'{"a": 1}')
  items = list(raw_input.read_jsonl(str(path)))
  assert [(item.line, item.record) for item in items] == [(1, GOOD), (2, {"a": 1})]


def test_hostile_lines_are_refused_with_their_line_and_reason(tmp_path):
  good = json.dumps(GOOD)
  deep = "[" * 100_000 + "]" * 100_000
  hostile = {
      2: (deep, raw_input.TOO_DEEP),
      4: (b'{"user_id": "u\xff\xfe"}', raw_input.NOT_UTF8),
      6: ("{not json", raw_input.UNPARSEABLE_JSON),
      8: ('{"user_id": ' + "1" * 5000 + "}", raw_input.UNPARSEABLE_JSON),  # > 4300 digits
  }
  lines = []
  for number in range(1, 10):
    lines.append(hostile[number][0] if number in hostile else good)
  items = _by_line(_write(tmp_path, lines))
  assert sorted(items) == list(range(1, 10))
  for number, item in items.items():
    if number in hostile:
      assert item.error is not None and item.record is None, number
      assert item.error.reason == hostile[number][1], (number, item.error.detail)
      assert item.error.field == "<line>"
      assert len(item.text) <= raw_input.ECHO_CHARS + 3
    else:
      assert item.error is None and item.record == GOOD
  assert "0xff at offset" in items[4].error.detail


def test_a_line_over_the_byte_limit_is_skipped_without_holding_it(tmp_path, monkeypatch):
  monkeypatch.setattr(raw_input, "MAX_LINE_BYTES", 1000)
  monkeypatch.setattr(raw_input, "READ_CHUNK_BYTES", 64)  # the long line spans many chunks
  long_line = json.dumps(dict(GOOD, notes="x" * 5000))
  path = _write(tmp_path, [json.dumps(GOOD), long_line, json.dumps(GOOD)])
  items = _by_line(path)
  assert items[1].record == GOOD and items[3].record == GOOD
  assert items[2].error.reason == raw_input.LINE_TOO_LONG
  assert f"{len(long_line)} bytes" in items[2].error.detail
  assert items[2].text.startswith(long_line[:100])


@pytest.mark.parametrize("record, field, reason", [
    (dict(GOOD, item_category="c" * 5_000_000), "item_category", raw_input.TOO_LONG),
    (dict(GOOD, user_recent_categories=[1] * 2_000_000), "user_recent_categories",
     raw_input.TOO_LONG),
    (dict(GOOD, item_price=float("nan")), "item_price", raw_input.BAD_VALUE),
    (dict(GOOD, item_price=float("-inf")), "item_price", raw_input.BAD_VALUE),
    (dict(GOOD, extra={"deep": [[1e999]]}), "extra", raw_input.BAD_VALUE),
    (dict(GOOD, user_id="u\ud800"), "user_id", raw_input.BAD_VALUE),
    (dict(GOOD, **{"k" * 100_001: 1}), "k" * 100_001, raw_input.TOO_LONG),
    (dict(GOOD, extra=[[0] * 10_001]), "extra", raw_input.TOO_LONG),
    (dict(GOOD, extra=collections.OrderedDict(x=[float("inf")])), "extra", raw_input.BAD_VALUE),
])
def test_check_limits_names_the_field(record, field, reason):
  with pytest.raises(raw_input.LimitError) as raised:
    raw_input.check_limits(record)
  assert raised.value.field == field and raised.value.reason == reason


def test_check_limits_refuses_deep_nesting_without_recursion():
  nested = GOOD
  for _ in range(5_000):  # deeper than Python's recursion limit (1,000)
    nested = {"x": [nested]}
  with pytest.raises(raw_input.LimitError) as raised:
    raw_input.check_limits(nested)
  assert raised.value.reason == raw_input.TOO_DEEP and raised.value.field == "x"
  shallow = {"x": [[[[1]]]]}
  raw_input.check_limits(shallow)  # within MAX_DEPTH


def test_non_finite_numbers_and_surrogates_are_refused_naming_the_field(tmp_path):
  """Python's json accepts NaN / Infinity and reads 1e999 (or 220 digits e99) as inf."""
  record = json.dumps(GOOD)[:-1]
  lines = [record + ', "item_price": NaN}', record + ', "item_price": 1e999}',
           record + ', "item_rating": -Infinity}', record + ', "item_rating": ' + "9" * 220
           + "e99}", record + ', "extra": {"x": [1.5, NaN]}}', record + ', "user_id": "\\ud800"}',
           record + ', "emoji": "\\ud83d\\ude00"}']  # the last: a valid surrogate pair
  items = list(raw_input.read_jsonl(_write(tmp_path, lines)))
  assert [(item.error.field, item.error.reason) if item.error else None for item in items] == [
      ("item_price", raw_input.BAD_VALUE), ("item_price", raw_input.BAD_VALUE),
      ("item_rating", raw_input.BAD_VALUE), ("item_rating", raw_input.BAD_VALUE),
      ("extra", raw_input.BAD_VALUE), ("user_id", raw_input.BAD_VALUE), None]
  assert items[-1].record["emoji"] == "\U0001f600"


def test_typical_lines_skip_the_walk_and_suspect_ones_take_it(tmp_path, monkeypatch):
  walked = []
  real_check = raw_input.check_limits
  monkeypatch.setattr(raw_input, "check_limits", lambda record, limits: walked.append(record)
                      or real_check(record, limits))
  deep_list = 1
  for _ in range(raw_input.MAX_DEPTH):
    deep_list = [deep_list]
  nested = dict(GOOD, extra=deep_list)
  lines = [json.dumps(GOOD), json.dumps(dict(GOOD, note="[" * 40)), json.dumps(nested)]
  items = list(raw_input.read_jsonl(_write(tmp_path, lines)))
  assert walked == [json.loads(lines[1]), nested]  # brackets in a string cost only the walk
  assert items[0].error is None and items[1].error is None
  assert items[2].error.reason == raw_input.TOO_DEEP and items[2].error.field == "extra"


# Issue 33: the feature spec's limits, the ones the Beam job applies (features.spec).
LIMITED_SPEC = spec_lib.feature_spec_from_dict({"features": [
    {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 10,
     "max_length": 8},
    {"name": "item_id", "dtype": "string", "transform": "hash", "hash_buckets": 10},
    {"name": "user_recent_categories", "dtype": "string", "transform": "vocabulary",
     "max_tokens": 5, "multivalent": True, "weighted": True, "max_length": 3,
     "on_too_long": "cut"},
    {"name": "item_category", "dtype": "string", "transform": "vocabulary", "max_tokens": 5,
     "max_length": 5, "on_too_long": "cut"},
    {"name": "item_price", "dtype": "float", "transform": "normalize"},
], "limits": {"max_string_chars": 6}}, source="limited.yaml")
# (record, the error's (field, reason), or the input_notes "cut" and the features' changes).
LIMITED_CASES = [
    (GOOD, None, {}, {}),
    (dict(GOOD, user_id="u" * 9), ("user_id", raw_input.TOO_LONG), None, None),
    (dict(GOOD, user_recent_categories=list("abcde"),
          user_recent_categories__weight=[1, 2, 3, 4, 5]), None,
     {"user_recent_categories": 5},
     {"user_recent_categories": list("abc"), "user_recent_categories__weight": [1, 2, 3]}),
    (dict(GOOD, user_recent_categories=["books", "abcdefghij"]), None,
     {"user_recent_categories": 2}, {"user_recent_categories": ["books", "abcdef"]}),
    (dict(GOOD, item_category="electronics"), None, {"item_category": 11},
     {"item_category": "elect"}),
    (dict(GOOD, user_id="u" * 8, item_category="abcde", user_recent_categories=["abcdef"] * 3),
     None, {}, {}),  # at every limit
    (dict(GOOD, extra=[0] * 10_001), ("extra", raw_input.TOO_LONG), None, None),
    (dict(GOOD, item_category="c" * 200_000), None, {"item_category": 200_000},
     {"item_category": "ccccc"}),  # cut, not refused at the fixed limit
]


def _fitted(record):
  """(input_notes "cut", features) of a record as the predictor takes them."""
  features = example_codec.ExampleCodec(LIMITED_SPEC).coerce(record)
  return raw_input.fit_features(features, raw_input.RecordLimits(LIMITED_SPEC)), features


def test_spec_limits_refuse_or_cut_each_record_and_the_others_pass(tmp_path):
  path = _write(tmp_path, [json.dumps(record) for record, _, _, _ in LIMITED_CASES])
  items = list(raw_input.read_jsonl(path, LIMITED_SPEC))
  assert [item.line for item in items] == list(range(1, len(LIMITED_CASES) + 1))
  for item, (record, error, cut, changes) in zip(items, LIMITED_CASES):
    if error is not None:
      assert (item.error.field, item.error.reason) == error, item.line
      assert item.record is None
      continue
    assert item.error is None and item.record == record, (item.line, item.error)
    notes, features = _fitted(item.record)
    assert notes == cut, item.line
    expected = example_codec.ExampleCodec(LIMITED_SPEC).coerce(dict(record, **changes))
    assert features == expected, item.line
  # Without the spec only the fixed limits hold: the 9-character user_id passes.
  assert [item.error is None for item in raw_input.read_jsonl(path)] == [
      True, True, True, True, True, True, False, False]


def test_spec_limits_hold_for_records_given_directly():
  limits = raw_input.RecordLimits(LIMITED_SPEC)
  for record, error, _, _ in LIMITED_CASES:
    if error is None:
      raw_input.check_limits(record, limits)
      continue
    with pytest.raises(raw_input.LimitError) as raised:
      raw_input.check_limits(record, limits)
    assert (raised.value.field, raised.value.reason) == error
    assert "more than the limit of" in raised.value.detail
  features = {"user_id": "u" * 9}  # fit_features refuses what check_limits would
  with pytest.raises(raw_input.LimitError) as raised:
    raw_input.fit_features(features, limits)
  assert raised.value.detail == "field 'user_id': a string of 9 characters, more than the " \
      "limit of 8"


def test_scan_chars_is_the_smallest_refused_limit():
  assert raw_input.RecordLimits().scan_chars == 2 * spec_lib.DEFAULT_MAX_LIST_LENGTH
  assert raw_input.RecordLimits(LIMITED_SPEC).scan_chars == 6  # cut features do not count
  short = json.dumps({"user_id": "u" * 9})
  assert len(short) < 100 and raw_input.may_break_limits(short,
                                                         raw_input.RecordLimits(LIMITED_SPEC))
  assert not raw_input.may_break_limits(short)
