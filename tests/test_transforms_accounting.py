"""transforms.accounting: counts as data, the identities and their failure messages."""

import json

import apache_beam as beam
from apache_beam.testing import test_pipeline
import pyarrow as pa

from transforms import accounting
from tests import beam_testing as testing


def _counts(imp_read=10, train=6, eval_=2, imp_dead=None, ev_read=5, attributed=3,
            ev_dead=None):
  entries = [(("impressions", "read"), imp_read), (("impressions", "written", "train"), train),
             (("impressions", "written", "eval"), eval_), (("events", "read"), ev_read),
             (("events", "attributed"), attributed), (("labels", "train", "click"), 2)]
  for reason, n in (imp_dead or {"bad_type": 2}).items():
    entries.append((("impressions", "dead_letter", reason), n))
  for reason, n in (ev_dead or {"duplicate_event": 1, "event_without_click": 1}).items():
    entries.append((("events", "dead_letter", reason), n))
  return accounting.build_counts(entries, testing.LABEL_NAMES)


def test_build_counts_layout_with_zero_filled_labels():
  counts = _counts()
  assert counts["impressions"] == {"read": 10, "written": {"train": 6, "eval": 2},
                                   "dead_letter": {"bad_type": 2}}
  assert counts["events"]["dead_letter"] == {"duplicate_event": 1, "event_without_click": 1}
  assert counts["labels"]["train"] == {"click": 2, "micro": 0, "action": 0, "purchase": 0}
  assert counts["labels"]["eval"] == {"click": 0, "micro": 0, "action": 0, "purchase": 0}


def test_identities_hold_and_fail_loudly():
  assert accounting.check_counts(_counts()) == []
  problems = accounting.check_counts(_counts(imp_read=11, ev_read=4))
  assert len(problems) == 2
  assert "impressions: read 11" in problems[0] and "1 unaccounted" in problems[0]
  assert "events: read 4" in problems[1] and "-1 unaccounted" in problems[1]


def test_format_counts_has_rates():
  table = accounting.format_counts(_counts(), seconds=2.0)
  assert "impressions" in table and "bad_type: 2" in table
  assert "15 input records in 2.0 s: 8 records/s" in table


def test_counting_transforms_write_counts_json(tmp_path):
  path = str(tmp_path / "counts.json")
  letters = [{"source": "events", "reason": "duplicate_event"}] * 2 + [
      {"source": "impressions", "reason": "bad_type"}]
  labels = {"click": [1, 1, 0], "micro": [0, 0, 0], "action": [1, 0, 1], "purchase": [0] * 3}
  batches = [pa.RecordBatch.from_pydict({name: pa.array(values[:n], pa.int64())
                                         for name, values in labels.items()})
             for n in (3, 2)]  # Positives: click 2 + 2, action 2 + 1.
  with test_pipeline.TestPipeline() as p:
    counts = [
        p | "Reads" >> beam.Create([(("impressions", "read"), 3), (("impressions", "read"), 1)]),
        p | "Letters" >> beam.Create(letters) | accounting.CountDeadLetters(),
        p | "Batches" >> beam.Create(batches) | accounting.CountLabels("eval",
                                                                       testing.LABEL_NAMES)]
    _ = counts | beam.Flatten() | accounting.WriteCounts(path, testing.LABEL_NAMES)
  with open(path) as f:
    written = json.load(f)
  assert written["impressions"]["read"] == 4 and written["events"]["read"] == 0
  assert written["events"]["dead_letter"] == {"duplicate_event": 2}
  assert written["impressions"]["dead_letter"] == {"bad_type": 1}
  assert written["labels"]["eval"] == {"click": 4, "micro": 0, "action": 3, "purchase": 0}


def test_cut_values_are_a_sorted_note_outside_the_identities():
  entries = [(("impressions", "cut", "tags"), 2), (("impressions", "cut", "device"), 1),
             (("impressions", "cut", "tags"), 3)]
  counts = accounting.build_counts(entries, testing.LABEL_NAMES)
  assert list(counts["impressions"]["cut"].items()) == [("device", 1), ("tags", 5)]
  assert "cut" not in counts["events"] and "cut" not in _counts()["impressions"]
  counts["impressions"].update(read=8, written={"train": 8, "eval": 0})
  assert accounting.check_counts(counts) == []  # cut records are written ones
  table = accounting.format_counts(counts, seconds=1.0)
  assert "cut to max_length impressions/tags: 5" in table
  assert "cut to max_length impressions/device: 1" in table
