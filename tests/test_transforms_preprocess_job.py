"""transforms.preprocess_job: the whole chain on a TestPipeline; nothing is lost silently."""

import glob
import json

import pytest
from apache_beam.testing import test_pipeline

from transforms import outputs as outputs_lib
from transforms import preprocess_job
from transforms import testing

DAY = testing.DAY_S
T0 = testing.START


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


def test_malformed_lines_are_all_accounted_for(tmp_path):
  impressions, events = _write_logs(tmp_path)
  output = str(tmp_path / "out")
  with test_pipeline.TestPipeline() as p:
    _ = p | preprocess_job.Preprocess(impressions, events, output, testing.data_config(),
                                      testing.small_spec(), statistics=False)
  paths = outputs_lib.OutputPaths(output)
  counts = preprocess_job.check_run(paths, seconds=1.0)
  assert counts["impressions"] == {
      "read": 9, "written": {"train": 3, "eval": 1},
      "dead_letter": {"bad_type": 1, "duplicate_impression_id": 1, "missing_field": 1,
                      "not_an_object": 1, "unparseable_json": 1}}
  assert counts["events"] == {
      "read": 10, "attributed": 3,
      "dead_letter": {"duplicate_event": 1, "event_before_impression": 1,
                      "event_without_click": 1, "event_without_impression": 1,
                      "outside_attribution_window": 1, "unknown_event_type": 1,
                      "unparseable_json": 1}}
  assert counts["labels"]["train"] == {"click": 1, "micro": 0, "action": 0, "purchase": 1}
  assert counts["labels"]["eval"] == {"click": 1, "micro": 0, "action": 0, "purchase": 0}

  letters = [json.loads(line) for path in glob.glob(paths.dead_letter_pattern)
             for line in open(path)]
  assert len(letters) == 12
  for letter in letters:
    assert set(letter) == {"source", "file", "line", "reason", "detail", "record"}
    assert letter["file"] in (impressions, events) and letter["line"] >= 1 and letter["detail"]
  lines = {(l["source"], l["reason"]): l["line"] for l in letters}
  assert lines[("impressions", "unparseable_json")] == 3
  assert lines[("impressions", "duplicate_impression_id")] == 8  # The later copy.
  assert lines[("events", "unparseable_json")] == 10

  artifacts = json.load(open(f"{paths.transform_dir}/transform.json"))
  assert artifacts["train_examples"] == 3


def test_check_run_raises_on_a_broken_identity(tmp_path):
  paths = outputs_lib.OutputPaths(str(tmp_path))
  counts = {"impressions": {"read": 3, "written": {"train": 1, "eval": 1}, "dead_letter": {}},
            "events": {"read": 0, "attributed": 0, "dead_letter": {}},
            "labels": {"train": {}, "eval": {}}}
  with open(paths.counts, "w") as f:
    json.dump(counts, f)
  with pytest.raises(preprocess_job.AccountingError, match="impressions: read 3"):
    preprocess_job.check_run(paths, seconds=1.0)
