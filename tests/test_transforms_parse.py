"""transforms.parse: valid records are coerced; every malformed one is a dead letter."""

import json

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import dead_letter as dl
from transforms import parse
from transforms import testing


def _run(transform, raw_records, check_records, check_dead_letters):
  """Runs a parse transform; the checks get the lists of records and dead letters."""
  with test_pipeline.TestPipeline() as p:
    outputs = p | beam.Create(raw_records) | transform
    assert_that(outputs[parse.RECORDS], check_records, label="CheckRecords")
    assert_that(outputs[dl.DEAD_LETTER], check_dead_letters, label="CheckDeadLetters")


def _is_empty(actual):
  assert actual == []


BAD_IMPRESSIONS = [
    ("{not json", dl.UNPARSEABLE_JSON, "JSON"),
    ("[1, 2]", dl.NOT_AN_OBJECT, "list"),
    ({"timestamp": 5, "user_id": "u", "item_id": "i"}, dl.MISSING_FIELD, "impression_id"),
    ({"impression_id": "", "timestamp": 5, "user_id": "u", "item_id": "i"}, dl.BAD_VALUE,
     "impression_id"),
    ({"impression_id": 7, "timestamp": 5, "user_id": "u", "item_id": "i"}, dl.BAD_TYPE,
     "impression_id"),
    ({"impression_id": "a", "timestamp": "5", "user_id": "u", "item_id": "i"}, dl.BAD_TYPE,
     "timestamp"),
    ({"impression_id": "a", "timestamp": 5.0, "user_id": "u", "item_id": "i"}, dl.BAD_TYPE,
     "timestamp"),
    ({"impression_id": "a", "timestamp": 5, "item_id": "i"}, dl.MISSING_FIELD, "user_id"),
    ({"impression_id": "a", "timestamp": 5, "user_id": "u"}, dl.MISSING_FIELD, "item_id"),
    ({"impression_id": "a", "timestamp": 5, "user_id": "u", "item_id": "i",
      "user_age": "old"}, dl.BAD_TYPE, "user_age"),
]


def test_impressions_are_coerced_and_keep_their_raw_text():
  line = json.dumps(testing.impression(1, 100, user_id=12, item_price=3))

  def check(records):
    [record] = records
    assert (record["impression_id"], record["timestamp"], record["file"], record["line"]) == (
        "imp1", 100, "f.jsonl", 4)
    assert record["record"] == line
    assert record["features"]["user_id"] == "12"
    assert record["features"]["item_price"] == 3.0
    assert record["features"]["tags__weight"] == [0.5, 1.5]

  _run(parse.ParseImpressions(testing.small_spec()), [("f.jsonl", 4, line)], check, _is_empty)


def test_parquet_rows_parse_like_json():
  row = testing.impression(2, 200)

  def check(records):
    assert [r["record"] for r in records] == [row]

  _run(parse.ParseImpressions(testing.small_spec()), [("f.parquet", 1, row)], check, _is_empty)


def test_malformed_impressions_are_dead_letters():
  raw = [("f.jsonl", line, payload if isinstance(payload, str) else json.dumps(payload))
         for line, (payload, _, _) in enumerate(BAD_IMPRESSIONS, start=1)]

  def check(dead_letters):
    assert len(dead_letters) == len(BAD_IMPRESSIONS)
    for letter in dead_letters:
      _, reason, named = BAD_IMPRESSIONS[letter["line"] - 1]
      assert letter["source"] == "impressions" and letter["file"] == "f.jsonl"
      assert letter["reason"] == reason and named in letter["detail"]
      assert letter["record"] == raw[letter["line"] - 1][2]

  _run(parse.ParseImpressions(testing.small_spec()), raw, _is_empty, check)


def test_events_check_type_and_event_field():
  event_types = testing.data_config().labels[0].events + ("purchase",)
  raw = [("e", 1, json.dumps(testing.event("a", 10, "click"))),
         ("e", 2, json.dumps(testing.event("a", 10, "teleport"))),
         ("e", 3, json.dumps(testing.event("a", 10, None))),
         ("e", 4, json.dumps({"impression_id": "a", "timestamp": 10, "event": 3}))]

  def check_records(records):
    assert [(r["impression_id"], r["timestamp"], r["event"], r["line"]) for r in records] == [
        ("a", 10, "click", 1)]

  def check_dead_letters(dead):
    assert sorted((d["line"], d["reason"]) for d in dead) == [
        (2, dl.UNKNOWN_EVENT_TYPE), (3, dl.MISSING_FIELD), (4, dl.BAD_TYPE)]
    assert all("'event'" in d["detail"] for d in dead)

  _run(parse.ParseEvents(event_types), raw, check_records, check_dead_letters)


def test_parse_events_with_equal_to():
  raw = [("f", 1, json.dumps(testing.event("a", 1, "cart"))), ("f", 2, "oops")]
  with test_pipeline.TestPipeline() as p:
    outputs = p | beam.Create(raw) | parse.ParseEvents(["cart"])
    assert_that(outputs[parse.RECORDS] | beam.Map(lambda r: r["event"]), equal_to(["cart"]),
                label="records")
    assert_that(outputs[dl.DEAD_LETTER] | beam.Map(lambda d: d["reason"]),
                equal_to([dl.UNPARSEABLE_JSON]), label="dead")
