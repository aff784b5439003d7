"""transforms.job: the whole chain on one TestPipeline; nothing is lost silently.

Malformed logs with every dead-letter reason of the log source run under both orphan
policies, and a Parquet log whose join dead letters must hold the row read back; counts,
labels, dead letters (lines, reasons, records) and transform.json are derived by hand
from the written lines.
"""

import glob
import json

import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline

from transforms import job
from transforms import outputs as outputs_lib
from tests import beam_testing as testing

DAY = testing.DAY_S
T0 = testing.START
POLICIES = ("dead_letter", "infer_click")


def _write_logs(directory):
  """3 train + 1 eval good impressions, 8 malformed lines, events of every kind."""
  impressions = testing.write_jsonl(str(directory / "impressions.jsonl"), [
      testing.impression(1, T0),
      testing.impression(2, T0 + 10),
      "{broken json",                                           # unparseable_json
      "[1, 2, 3]",                                              # not_an_object
      testing.impression(3, T0 + 20, user_age="old"),           # bad_type
      testing.impression(4, T0 + 30, user_id=None),             # missing_field
      "",                                                       # blank: not a record
      testing.impression(2, T0 + 99),                           # duplicate_impression_id
      testing.impression(5, T0 + DAY),
      testing.impression(6, T0 + 2 * DAY + 5),                  # eval
  ])
  events = testing.write_jsonl(str(directory / "events.jsonl.gz"), [
      testing.event("imp1", T0 + 5, "click"),
      testing.event("imp1", T0 + 6, "purchase"),
      testing.event("imp1", T0 + 6, "purchase"),                # duplicate_event
      testing.event("imp2", T0 + 11, "cart"),                   # event_without_click
      testing.event("imp5", T0 - 1, "click"),                   # event_before_impression
      testing.event("imp5", T0 + 3 * DAY, "click"),             # outside_attribution_window
      testing.event("imp6", T0 + 2 * DAY + 6, "click"),
      testing.event("nope", T0, "click"),                       # event_without_impression
      testing.event("imp6", T0 + 2 * DAY + 7, "teleport"),      # unknown_event_type
      "not json either",                                        # unparseable_json
  ])
  return impressions, events


def _write_parquet_logs(directory):
  """Parquet impressions with a same-timestamp duplicate, Parquet events dead-lettered
  at the join (before the impression, outside the window, without impression)."""
  impressions = testing.write_parquet(str(directory / "impressions.parquet"), [
      testing.impression(1, T0), testing.impression(2, T0 + 10),
      testing.impression(2, T0 + 10, device="android")])
  events = testing.write_parquet(str(directory / "events.parquet"), [
      testing.event("imp1", T0 + 5, "click"), testing.event("imp1", T0 - 5, "click"),
      testing.event("imp1", T0 + 2 * DAY, "click"), testing.event("nope", T0, "click")])
  return impressions, events


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """One pipeline: the malformed JSONL logs under each orphan policy and the Parquet
  logs. -> {name: (output dir, impressions path, events path)}."""
  directory = tmp_path_factory.mktemp("job")
  logs = {policy: _write_logs(directory) for policy in POLICIES}
  (directory / "parquet").mkdir()
  logs["parquet"] = _write_parquet_logs(directory / "parquet")
  spec = testing.small_spec()
  out = {}
  with test_pipeline.TestPipeline() as p:
    for name, (impressions, events) in logs.items():
      config = testing.data_config(
          orphan_event_policy=name if name in POLICIES else "dead_letter")
      out[name] = (str(directory / f"out_{name}"), impressions, events)
      # No TFDV statistics: their files are checked on pipeline.preprocess's runs
      # (tests/test_preprocess.py's end-to-end test, both splits).
      _ = p | f"Preprocess_{name}" >> job.Preprocess(
          impressions, events, out[name][0], config, spec, statistics=False, num_buckets=3)
  return out


def _letters(output):
  paths = outputs_lib.OutputPaths(output)
  return [json.loads(line) for path in glob.glob(paths.dead_letter_pattern)
          for line in open(path)]


@pytest.mark.slow  # a whole Beam job or CLI run: make test, not make test-fast
@pytest.mark.parametrize("policy", POLICIES)
def test_malformed_lines_are_all_accounted_for(runs, policy):
  output, impressions, events = runs[policy]
  paths = outputs_lib.OutputPaths(output)
  counts = job.check_run(paths, seconds=1.0)
  inferred = int(policy == "infer_click")  # imp2's cart then counts, with a click.
  assert counts["impressions"] == {
      "read": 9, "written": {"train": 3, "eval": 1},
      "dead_letter": {"bad_type": 1, "duplicate_impression_id": 1, "missing_field": 1,
                      "not_an_object": 1, "unparseable_json": 1}}
  event_letters = {"duplicate_event": 1, "event_before_impression": 1,
                   "event_without_click": 1, "event_without_impression": 1,
                   "outside_attribution_window": 1, "unknown_event_type": 1,
                   "unparseable_json": 1}
  if inferred:
    del event_letters["event_without_click"]
  assert counts["events"] == {"read": 10, "attributed": 3 + inferred,
                              "dead_letter": event_letters}
  assert counts["labels"]["train"] == {"click": 1 + inferred, "micro": 0, "action": inferred,
                                       "purchase": 1}
  assert counts["labels"]["eval"] == {"click": 1, "micro": 0, "action": 0, "purchase": 0}

  letters = _letters(output)
  assert len(letters) == 12 - inferred
  for letter in letters:
    assert set(letter) == {"source", "file", "line", "reason", "detail", "record"}
    assert letter["file"] in (impressions, events) and letter["line"] >= 1 and letter["detail"]
  lines = {(l["source"], l["reason"]): l["line"] for l in letters}
  assert lines[("impressions", "unparseable_json")] == 3
  assert lines[("impressions", "duplicate_impression_id")] == 8  # The later copy.
  assert lines[("events", "unparseable_json")] == 10
  records = {(l["source"], l["line"]): l["record"] for l in letters}
  assert records[("impressions", 3)] == "{broken json"
  assert json.loads(records[("events", 8)]) == testing.event("nope", T0, "click")

  artifacts = json.load(open(f"{paths.transform_dir}/transform.json"))
  assert artifacts["train_examples"] == 3


@pytest.mark.slow  # a whole Beam job or CLI run: make test, not make test-fast
def test_parquet_join_dead_letters_hold_the_row_read_back(runs):
  """Parquet rows carry no raw record through the job: a join dead letter reads its row
  back, and same-timestamp duplicates are ordered by it (canonical JSON: the "android"
  copy comes before the "web" one, so row 2 is the duplicate)."""
  output, impressions, events = runs["parquet"]
  counts = job.check_run(outputs_lib.OutputPaths(output), seconds=1.0)
  assert counts["impressions"]["written"] == {"train": 2, "eval": 0}
  assert counts["events"]["attributed"] == 1
  rows = {impressions: pq.read_table(impressions).to_pylist(),
          events: pq.read_table(events).to_pylist()}
  found = sorted((l["source"], l["line"], l["reason"]) for l in _letters(output))
  assert found == [("events", 2, "event_before_impression"),
                   ("events", 3, "outside_attribution_window"),
                   ("events", 4, "event_without_impression"),
                   ("impressions", 2, "duplicate_impression_id")]
  for letter in _letters(output):
    assert letter["record"] == json.loads(json.dumps(rows[letter["file"]][letter["line"] - 1]))
  assert "line 3" in next(l["detail"] for l in _letters(output) if l["source"] == "impressions")


def test_check_run_raises_on_a_broken_identity(tmp_path):
  paths = outputs_lib.OutputPaths(str(tmp_path))
  counts = {"impressions": {"read": 3, "written": {"train": 1, "eval": 1}, "dead_letter": {}},
            "events": {"read": 0, "attributed": 0, "dead_letter": {}},
            "labels": {"train": {}, "eval": {}}}
  with open(paths.counts, "w") as f:
    json.dump(counts, f)
  with pytest.raises(job.AccountingError, match="impressions: read 3"):
    job.check_run(paths, seconds=1.0)
