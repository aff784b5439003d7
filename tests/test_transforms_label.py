"""transforms.label: labels and dead letters from hand-written event sequences."""

import json

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import dead_letter as dl
from transforms import label
from transforms import testing

T0 = testing.START
WINDOW = testing.DAY_S


def _impression(impression_id="a", timestamp=T0, line=1, **raw):
  record = {"impression_id": impression_id, "timestamp": timestamp, **raw}
  return {"impression_id": impression_id, "timestamp": timestamp, "features": {},
          "file": "imp.jsonl", "line": line, "record": json.dumps(record)}


def _events(*spec, impression_id="a"):
  """(seconds after T0, event type) pairs -> parsed events, numbered as lines."""
  return [{"impression_id": impression_id, "timestamp": T0 + offset, "event": event_type,
           "file": "ev.jsonl", "line": line, "record": f"line {line}"}
          for line, (offset, event_type) in enumerate(spec, start=1)]


def _attribute(events, **config):
  labeler = label.EventLabeler(testing.data_config(**config))
  labels, attributed, dead = labeler.attribute(_impression(), events)
  return labels, [(e["timestamp"] - T0, e["event"]) for e in attributed], sorted(
      (d["line"], d["reason"]) for d in dead)


def test_click_micro_cart_purchase_in_window():
  labels, attributed, dead = _attribute(_events(
      (10, "click"), (20, "view_reviews"), (30, "cart"), (WINDOW, "purchase")))
  assert labels == {"click": 1, "micro": 1, "action": 1, "purchase": 1}
  assert len(attributed) == 4 and dead == []


def test_no_events_gives_all_zero_labels():
  assert _attribute([]) == ({"click": 0, "micro": 0, "action": 0, "purchase": 0}, [], [])


def test_late_event_is_outside_the_window():
  labels, attributed, dead = _attribute(_events((10, "click"), (WINDOW + 1, "purchase")))
  assert labels["purchase"] == 0 and labels["click"] == 1
  assert attributed == [(10, "click")]
  assert dead == [(2, dl.OUTSIDE_ATTRIBUTION_WINDOW)]


def test_event_before_impression():
  labels, _, dead = _attribute(_events((-1, "click")))
  assert labels["click"] == 0 and dead == [(1, dl.EVENT_BEFORE_IMPRESSION)]


def test_purchase_without_click_dead_letter_policy():
  labels, attributed, dead = _attribute(_events((50, "purchase"), (60, "cart")))
  assert labels == {"click": 0, "micro": 0, "action": 0, "purchase": 0}
  assert attributed == []
  assert dead == [(1, dl.EVENT_WITHOUT_CLICK), (2, dl.EVENT_WITHOUT_CLICK)]


def test_purchase_without_click_infer_click_policy():
  labels, attributed, dead = _attribute(_events((50, "purchase")),
                                        orphan_event_policy="infer_click")
  assert labels == {"click": 1, "micro": 0, "action": 0, "purchase": 1}
  assert attributed == [(50, "purchase")] and dead == []


def test_purchase_before_its_click_is_an_orphan_but_same_time_is_not():
  _, _, dead = _attribute(_events((40, "purchase"), (50, "click")))
  assert dead == [(1, dl.EVENT_WITHOUT_CLICK)]
  labels, attributed, dead = _attribute(_events((50, "cart"), (50, "click")))
  assert labels["action"] == 1 and len(attributed) == 2 and dead == []


def test_a_late_click_does_not_validate_a_purchase():
  labels, _, dead = _attribute(_events((WINDOW + 5, "click"), (100, "purchase")))
  assert labels == {"click": 0, "micro": 0, "action": 0, "purchase": 0}
  assert dead == [(1, dl.OUTSIDE_ATTRIBUTION_WINDOW), (2, dl.EVENT_WITHOUT_CLICK)]


def test_exact_repeats_are_duplicates_but_repeated_types_count():
  labels, attributed, dead = _attribute(_events(
      (10, "click"), (10, "click"), (20, "cart"), (30, "cart")))
  assert labels["click"] == 1 and labels["action"] == 1
  assert attributed == [(10, "click"), (20, "cart"), (30, "cart")]
  assert dead == [(2, dl.DUPLICATE_EVENT)]


def test_earliest_duplicate_impression_is_kept_deterministically():
  labeler = label.EventLabeler(testing.data_config())
  late = _impression(timestamp=T0 + 5, line=1)
  tie_b = _impression(line=2, user_id="b")
  tie_a = _impression(line=3, user_id="a")
  for order in ([late, tie_b, tie_a], [tie_a, late, tie_b]):
    kept, dead = labeler.choose_impression(order)
    assert kept["line"] == 3  # Same timestamp: canonical JSON ("a" < "b") decides.
    assert sorted(d["line"] for d in dead) == [1, 2]
    assert {d["reason"] for d in dead} == {dl.DUPLICATE_IMPRESSION_ID}
    assert all(d["source"] == "impressions" and "imp.jsonl" in d["detail"] for d in dead)


def test_canonical_json_ignores_key_order_and_spacing():
  assert label.canonical_json('{"b": 1, "a": 2}') == label.canonical_json({"a": 2, "b": 1})


@pytest.mark.parametrize("policy", ["dead_letter", "infer_click"])
def test_join_and_label_pipeline(policy):
  impressions = [_impression("a"), _impression("b"), _impression("b", line=2, extra=1)]
  events = (_events((5, "click"), (9, "purchase"), impression_id="a")
            + _events((7, "purchase"), impression_id="b")
            + _events((1, "click"), impression_id="ghost"))
  expected_labels = {"a": {"click": 1, "micro": 0, "action": 0, "purchase": 1},
                     "b": {"click": int(policy == "infer_click"), "micro": 0, "action": 0,
                           "purchase": int(policy == "infer_click")}}
  expected_dead = [("impressions", dl.DUPLICATE_IMPRESSION_ID),
                   ("events", dl.EVENT_WITHOUT_IMPRESSION)]
  if policy == "dead_letter":
    expected_dead.append(("events", dl.EVENT_WITHOUT_CLICK))
  with test_pipeline.TestPipeline() as p:
    outputs = ((p | "Impressions" >> beam.Create(impressions),
                p | "Events" >> beam.Create(events))
               | label.JoinAndLabel(testing.data_config(orphan_event_policy=policy)))
    assert_that(outputs[label.RECORDS] | beam.Map(lambda r: (r["impression_id"], r["labels"])),
                equal_to(list(expected_labels.items())), label="CheckLabels")
    assert_that(outputs[dl.DEAD_LETTER] | beam.Map(lambda d: (d["source"], d["reason"])),
                equal_to(expected_dead), label="CheckDeadLetters")
    assert_that(outputs[label.ATTRIBUTED],
                equal_to(["click", "purchase"] + (["purchase"] if policy == "infer_click" else [])),
                label="CheckAttributed")
