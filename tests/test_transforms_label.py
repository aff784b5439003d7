"""transforms.label and transforms.join: labels and dead letters from hand-written event
sequences (`EventLabeler`, the rules as plain functions), and the bucketed columnar join
(`BucketLabeler`, `BucketedJoinAndLabel`) against those rules applied per impression id,
for every labelling case (duplicates, events before the impression, outside the window,
repeated, orphans, events without impression), any bucket count, both orphan policies."""

import json

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import numpy as np
import pyarrow as pa
import pytest

from transforms import dead_letter as dl
from transforms import join
from transforms import label
from transforms import parse
from tests import beam_testing as testing

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


H = 3600


def _world():
  start = testing.START
  impressions, events = [], []
  for index in range(120):
    impressions.append(testing.impression(index, start + index * 60))
  # Duplicates: a later copy, an identical-timestamp copy with other content, a copy in
  # key order differing only by spacing.
  impressions.append(testing.impression(3, start + 3 * 60 + 5))
  impressions.append(testing.impression(4, start + 4 * 60, device="web", user_age=99))
  impressions.append(testing.impression(5, start + 5 * 60))
  for index in range(120):
    t = start + index * 60
    kind = index % 10
    if kind in (0, 1, 2):  # click then follow-ups
      events += [testing.event(f"imp{index}", t + 10, "click"),
                 testing.event(f"imp{index}", t + 20, "view_reviews"),
                 testing.event(f"imp{index}", t + 30 + index, "purchase")]
    elif kind == 3:  # purchase without click (orphan)
      events.append(testing.event(f"imp{index}", t + 50, "purchase"))
    elif kind == 4:  # purchase before the click (orphan), then the click
      events += [testing.event(f"imp{index}", t + 5, "cart"),
                 testing.event(f"imp{index}", t + 9, "click")]
    elif kind == 5:  # before the impression and outside the window
      events += [testing.event(f"imp{index}", t - 1, "click"),
                 testing.event(f"imp{index}", t + testing.DAY_S + 1, "click"),
                 testing.event(f"imp{index}", t + testing.DAY_S, "click")]
    elif kind == 6:  # repeated event
      events += [testing.event(f"imp{index}", t + 7, "click"),
                 testing.event(f"imp{index}", t + 7, "click"),
                 testing.event(f"imp{index}", t + 7, "favorite")]
    elif kind == 7:  # only micro events
      events.append(testing.event(f"imp{index}", t + H, "view_reviews"))
  events += [testing.event("nobody", start, "click"), testing.event("ghost", start, "cart")]
  return impressions, events


def _parse(parser, records, file):
  texts = [json.dumps(r) for r in records]
  batch, dead = parser.parse_json_lines(file, list(range(1, len(texts) + 1)), texts)
  assert not dead
  return batch


def _rules_join(config, impression_batch, event_batch, feature_names):
  """The labelling rules applied per impression id on dicts, without buckets or columns:
  `EventLabeler.choose_impression` then `attribute` (or every event dead-lettered when
  the id has no impression). -> (labelled records, dead letters, attributed events)."""
  labeler = label.EventLabeler(config)
  groups = {}
  for row in impression_batch.to_pylist():
    groups.setdefault(row["impression_id"], ([], []))[0].append(
        {"impression_id": row["impression_id"], "timestamp": row["timestamp"],
         "file": row["file"], "line": row["line"], "record": row["record"],
         "features": {k: row[k] for k in feature_names if row[k] is not None}})
  for row in event_batch.to_pylist():
    groups.setdefault(row["impression_id"], ([], []))[1].append(row)
  records, dead, attributed = [], [], 0
  for key in sorted(groups):
    impressions, events = groups[key]
    if not impressions:
      dead += [dl.make_dead_letter(dl.EVENTS, e["file"], e["line"], dl.EVENT_WITHOUT_IMPRESSION,
                                   f"no impression with impression_id {key!r}", e["record"])
               for e in events]
      continue
    kept, letters = labeler.choose_impression(impressions)
    labels, attributed_events, event_letters = labeler.attribute(kept, events)
    dead += letters + event_letters
    attributed += len(attributed_events)
    records.append({"impression_id": kept["impression_id"], "timestamp": kept["timestamp"],
                    "features": kept["features"], "labels": labels, "file": kept["file"],
                    "line": kept["line"]})
  return records, dead, attributed


def parsed_world(config):
  """(impression batch, event batch, BucketLabeler, `_rules_join`'s (records, dead
  letters, attributed count)) of `_world` under config."""
  spec = testing.small_spec()
  impressions, events = _world()
  event_types = label.EventLabeler(config).event_types
  impression_batch = _parse(parse.ImpressionParser(spec), impressions, "imps.jsonl")
  event_batch = _parse(parse.EventParser(event_types), events, "events.jsonl")
  labeler = label.BucketLabeler(config, impression_batch.schema)
  return impression_batch, event_batch, labeler, _rules_join(
      config, impression_batch, event_batch, labeler.feature_names)


def _as_records(batch, labeler):
  out = []
  for row in batch.to_pylist():
    out.append({"impression_id": row["impression_id"], "timestamp": row["timestamp"],
                "features": {k: row[k] for k in labeler.feature_names if row[k] is not None},
                "labels": {name: row[name] for name in labeler.labeler.label_names},
                "file": row["file"], "line": row["line"]})
  return out


def _sorted_letters(letters):
  return sorted(letters, key=lambda d: (d["source"], d["file"], d["line"], d["reason"]))


@pytest.mark.parametrize("policy", ["dead_letter", "infer_click"])
@pytest.mark.parametrize("num_buckets", [1, 3, 16])
def test_bucketed_join_matches_the_rules_join(policy, num_buckets):
  config = testing.data_config(orphan_event_policy=policy)
  impression_batch, event_batch, labeler, (rules_records, rules_dead, rules_attributed) = (
      parsed_world(config))

  imp_buckets = dict(join.split_by_bucket(impression_batch, num_buckets))
  event_buckets = dict(join.split_by_bucket(event_batch, num_buckets))
  records, dead, attributed = [], [], 0
  for bucket in sorted(set(imp_buckets) | set(event_buckets)):
    batch, letters, count = labeler.join_and_label(
        pa.Table.from_batches([imp_buckets[bucket]] if bucket in imp_buckets else [],
                              schema=impression_batch.schema),
        pa.Table.from_batches([event_buckets[bucket]] if bucket in event_buckets else [],
                              schema=event_batch.schema))
    records += _as_records(batch, labeler)
    dead += letters
    attributed += count
  reasons = {d["reason"] for d in rules_dead}
  assert {dl.DUPLICATE_IMPRESSION_ID, dl.EVENT_BEFORE_IMPRESSION, dl.DUPLICATE_EVENT,
          dl.OUTSIDE_ATTRIBUTION_WINDOW, dl.EVENT_WITHOUT_IMPRESSION} <= reasons
  assert (dl.EVENT_WITHOUT_CLICK in reasons) == (policy == "dead_letter")
  assert sorted(records, key=lambda r: r["impression_id"]) == rules_records
  assert _sorted_letters(dead) == _sorted_letters(rules_dead)
  assert attributed == rules_attributed


def test_bucket_hash_is_fixed_and_spread():
  ids = pa.array([f"imp{i:09d}" for i in range(5000)])
  buckets = join.bucket_of(ids, 8)
  assert buckets.min() >= 0 and buckets.max() < 8
  assert np.bincount(buckets).min() > 450
  # FNV-1a 64 of "a" is a published constant.
  assert int(join.string_hash(pa.array(["a"]))[0]) == 0xaf63dc4c8601ec8c
  assert join.bucket_of(ids.slice(10, 5), 8).tolist() == buckets[10:15].tolist()


def test_bucketed_join_and_label_in_a_pipeline():
  """One pipeline: a known sequence under both orphan policies (hand-derived labels and
  dead letters), and the labelling world (split in two batches) against the rules."""
  world_config = testing.data_config()
  world_impressions, world_events, _, (rules_records, rules_dead, rules_attributed) = (
      parsed_world(world_config))
  impressions = [testing.impression(0, T0), testing.impression(1, T0),
                 testing.impression(1, T0, device="web")]
  events = [testing.event("imp0", T0 + 5, "click"), testing.event("imp0", T0 + 9, "purchase"),
            testing.event("imp1", T0 + 7, "purchase"), testing.event("ghost", T0 + 1, "click")]
  impression_batch = _parse(parse.ImpressionParser(testing.small_spec()), impressions,
                            "imps.jsonl")
  event_batch = _parse(parse.EventParser(label.EventLabeler(world_config).event_types),
                       events, "events.jsonl")

  def labels_of(batches, name):
    return batches | f"Labels_{name}" >> beam.FlatMap(lambda b: [
        (r["impression_id"], r["click"], r["micro"], r["action"], r["purchase"])
        for r in b.to_pylist()])

  with test_pipeline.TestPipeline() as p:
    for policy in ("dead_letter", "infer_click"):
      config = testing.data_config(orphan_event_policy=policy)
      inferred = int(policy == "infer_click")
      expected_dead = [("impressions", dl.DUPLICATE_IMPRESSION_ID),
                       ("events", dl.EVENT_WITHOUT_IMPRESSION)]
      if policy == "dead_letter":
        expected_dead.append(("events", dl.EVENT_WITHOUT_CLICK))
      out = ((p | f"Imps_{policy}" >> beam.Create([impression_batch]),
              p | f"Events_{policy}" >> beam.Create([event_batch]))
             | f"Join_{policy}" >> join.BucketedJoinAndLabel(config, impression_batch.schema,
                                                             num_buckets=3))
      assert_that(labels_of(out[join.RECORDS], policy),
                  equal_to([("imp0", 1, 0, 0, 1), ("imp1", inferred, 0, 0, inferred)]),
                  label=f"CheckLabels_{policy}")
      assert_that(out[dl.DEAD_LETTER] | f"Reasons_{policy}" >> beam.Map(
          lambda d: (d["source"], d["reason"])), equal_to(expected_dead), label=f"Dead_{policy}")
      assert_that(out[join.ATTRIBUTED] | f"Sum_{policy}" >> beam.CombineGlobally(sum),
                  equal_to([2 + inferred]), label=f"Attributed_{policy}")

    halves = [world_impressions.slice(0, 50), world_impressions.slice(50)]
    out = ((p | "WorldImps" >> beam.Create(halves),
            p | "WorldEvents" >> beam.Create([world_events]))
           | "WorldJoin" >> join.BucketedJoinAndLabel(world_config, world_impressions.schema,
                                                      num_buckets=5))
    assert_that(labels_of(out[join.RECORDS], "world"), equal_to(
        [(r["impression_id"], *(r["labels"][name] for name in testing.LABEL_NAMES))
         for r in rules_records]), label="WorldLabels")
    assert_that(out[dl.DEAD_LETTER] | "WorldReasons" >> beam.Map(
        lambda d: (d["line"], d["reason"])),
                equal_to([(d["line"], d["reason"]) for d in rules_dead]), label="WorldDead")
    assert_that(out[join.ATTRIBUTED] | "WorldSum" >> beam.CombineGlobally(sum),
                equal_to([rules_attributed]), label="WorldAttributed")
