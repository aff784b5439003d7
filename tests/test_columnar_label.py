"""transforms.columnar.label: the same labels, dead letters and attributed events as the row join.

Raw impressions and events with every labelling case (duplicates, events before the
impression, outside the window, repeated, orphans, events without impression) are parsed
once; the row join (`label._LabelFn.process` per impression id, the job's own code) and
the columnar bucketed join (any bucket count) must agree, under both orphan policies.
"""

import json

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import numpy as np
import pyarrow as pa
import pytest

from transforms import dead_letter as dl
from transforms import label
from transforms import testing
from transforms.columnar import label as clabel
from transforms.columnar import parse as cparse

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


def _row_join(config, impression_batch, event_batch, spec_keys):
  """The row job's join on the same parsed records (parse layout dicts)."""
  groups = {}
  for row in impression_batch.to_pylist():
    groups.setdefault(row["impression_id"], {"impressions": [], "events": []})[
        "impressions"].append({"impression_id": row["impression_id"],
                               "timestamp": row["timestamp"], "file": row["file"],
                               "line": row["line"], "record": row["record"],
                               "features": {k: row[k] for k in spec_keys
                                            if row[k] is not None}})
  for row in event_batch.to_pylist():
    groups.setdefault(row["impression_id"], {"impressions": [], "events": []})[
        "events"].append(row)
  fn = label._LabelFn(config)  # pylint: disable=protected-access
  fn.setup()
  records, dead, attributed = [], [], 0
  for key in sorted(groups):
    for out in fn.process((key, groups[key])):
      if isinstance(out, beam.pvalue.TaggedOutput):
        if out.tag == dl.DEAD_LETTER:
          dead.append(out.value)
        else:
          attributed += 1
      else:
        records.append(out)
  return records, dead, attributed


def parsed_world(config):
  """(impression batch, event batch, BucketLabeler, row join's (records, dead letters,
  attributed count)) of `_world` under config."""
  spec = testing.small_spec()
  impressions, events = _world()
  event_types = label.EventLabeler(config).event_types
  impression_batch = _parse(cparse.ImpressionParser(spec), impressions, "imps.jsonl")
  event_batch = _parse(cparse.EventParser(event_types), events, "events.jsonl")
  labeler = clabel.BucketLabeler(config, impression_batch.schema)
  return impression_batch, event_batch, labeler, _row_join(
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
def test_bucketed_join_matches_the_row_join(policy, num_buckets):
  config = testing.data_config(orphan_event_policy=policy)
  impression_batch, event_batch, labeler, (row_records, row_dead, row_attributed) = (
      parsed_world(config))

  imp_buckets = dict(clabel.split_by_bucket(impression_batch, num_buckets))
  event_buckets = dict(clabel.split_by_bucket(event_batch, num_buckets))
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
  reasons = {d["reason"] for d in row_dead}
  assert {dl.DUPLICATE_IMPRESSION_ID, dl.EVENT_BEFORE_IMPRESSION, dl.DUPLICATE_EVENT,
          dl.OUTSIDE_ATTRIBUTION_WINDOW, dl.EVENT_WITHOUT_IMPRESSION} <= reasons
  assert (dl.EVENT_WITHOUT_CLICK in reasons) == (policy == "dead_letter")
  assert sorted(records, key=lambda r: r["impression_id"]) == row_records
  assert _sorted_letters(dead) == _sorted_letters(row_dead)
  assert attributed == row_attributed


def test_bucket_hash_is_fixed_and_spread():
  ids = pa.array([f"imp{i:09d}" for i in range(5000)])
  buckets = clabel.bucket_of(ids, 8)
  assert buckets.min() >= 0 and buckets.max() < 8
  assert np.bincount(buckets).min() > 450
  # FNV-1a 64 of "a" is a published constant.
  assert int(clabel.string_hash(pa.array(["a"]))[0]) == 0xaf63dc4c8601ec8c
  assert clabel.bucket_of(ids.slice(10, 5), 8).tolist() == buckets[10:15].tolist()


def test_bucketed_join_transform_in_a_pipeline():
  config = testing.data_config()
  impression_batch, event_batch, _, (row_records, row_dead, row_attributed) = (
      parsed_world(config))
  halves = [impression_batch.slice(0, 50), impression_batch.slice(50)]
  with test_pipeline.TestPipeline() as p:
    out = ((p | "Imps" >> beam.Create(halves), p | "Events" >> beam.Create([event_batch]))
           | clabel.BucketedJoinAndLabel(config, impression_batch.schema, num_buckets=5))
    assert_that(out[clabel.RECORDS] | beam.FlatMap(lambda b: [
        (r["impression_id"], r["click"], r["purchase"]) for r in b.to_pylist()]),
                equal_to([(r["impression_id"], r["labels"]["click"], r["labels"]["purchase"])
                          for r in row_records]), label="Labels")
    assert_that(out[dl.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"])),
                equal_to([(d["line"], d["reason"]) for d in row_dead]), label="Dead")
    assert_that(out[clabel.ATTRIBUTED] | beam.CombineGlobally(sum), equal_to([row_attributed]),
                label="Attributed")
