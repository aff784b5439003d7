"""transforms.daily and pipeline.preprocess --day: the incremental job, day by day.

Two oracles: a hand-written two-day event stream whose outputs (new, updated, closed,
still open, dead letters, counts) are known record by record (`DayLabeler`, no Beam);
and the one-pass job over the same logs: the labels each impression has at the last
snapshot, the accounting totals and (window covering the train days) the transform
artifacts must be the same whether the days are processed one at a time or at once.
"""

import gzip
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from features import success_marker
from pipeline import preprocess
from transforms import daily
from transforms import dead_letter as dl
from transforms import label
from transforms import outputs as outputs_lib
from transforms import parse
from tests import beam_testing as testing

T0 = testing.START  # 2026-01-01T00:00:00Z
DAY = testing.DAY_S
HOUR = 3600


def _impressions(spec, rows, prior):
  records = [{"file": "imp.jsonl", "line": line, "record": json.dumps(
      testing.impression(index, timestamp)), "impression_id": f"imp{index}",
              "timestamp": timestamp} for line, (index, timestamp) in enumerate(rows, 1)]
  table = pa.Table.from_pylist(records, schema=parse.impression_schema(spec))
  return daily.with_prior(table, prior)


def _events(rows, prior, first_line=1):
  records = [{"file": "ev.jsonl", "line": line, "record": f"line {line}",
              "impression_id": f"imp{index}", "timestamp": timestamp, "event": event}
             for line, (index, timestamp, event) in enumerate(rows, first_line)]
  return daily.with_prior(pa.Table.from_pylist(records, schema=parse.event_schema()), prior)


def _by_id(table, *columns):
  rows = table.to_pylist()
  return {row["impression_id"]: tuple(row[c] for c in columns) for row in rows}


def test_two_days_of_a_hand_written_stream():
  """Day 1: imp1 (clicked, bought), imp2 (clicked late in the day), imp3 (nothing).
  Day 2: imp2's purchase arrives (an update), imp1's click again (a duplicate event),
  an event of an unknown impression, a second imp3 (a duplicate id, earlier timestamp:
  the prior one is kept), imp3's purchase after its window, and a new imp4. Every
  impression of day 1 closes by day 2's snapshot (window one day)."""
  spec = testing.small_spec()
  config = testing.data_config()
  day1 = daily.DayLabeler(config, spec, as_of=T0 + DAY - 1)
  first = day1.label(
      _impressions(spec, [(1, T0 + 10 * HOUR), (2, T0 + 23 * HOUR), (3, T0 + HOUR)], False),
      _events([(1, T0 + 10 * HOUR + 5, "click"), (1, T0 + 11 * HOUR, "purchase"),
               (2, T0 + 23 * HOUR + 7, "click")], False))
  assert _by_id(first["train"], "click", "purchase", "click_timestamp",
                "purchase_timestamp") == {
      "imp1": (1, 1, T0 + 10 * HOUR + 5, T0 + 11 * HOUR),
      "imp2": (1, 0, T0 + 23 * HOUR + 7, label.NO_TIME),
      "imp3": (0, 0, label.NO_TIME, label.NO_TIME)}
  assert set(first["train"].column("snapshot_timestamp").to_pylist()) == {T0 + DAY - 1}
  assert first["updates"].num_rows == first["closed"].num_rows == 0
  assert first["counts"] == {"open_in": 0, "new": 3, "updated": 0, "closed": 0, "open_out": 3}
  assert first["attributed"] == 3 and first["dead_letter"] == []

  day2 = daily.DayLabeler(config, spec, as_of=T0 + 2 * DAY - 1)
  prior_impressions = daily.with_prior(first["impressions"], True)
  prior_events = daily.with_prior(first["events"], True)
  new_impressions = _impressions(spec, [(3, T0 + 30), (4, T0 + DAY + 12 * HOUR)], False)
  new_events = _events([(2, T0 + DAY + HOUR, "purchase"), (1, T0 + 10 * HOUR + 5, "click"),
                        (9, T0 + DAY + 2 * HOUR, "click"), (3, T0 + DAY + HOUR + 1, "purchase"),
                        (4, T0 + DAY + 12 * HOUR + 3, "click")], False, first_line=10)
  second = day2.label(pa.concat_tables([prior_impressions, new_impressions]),
                      pa.concat_tables([prior_events, new_events]))
  assert _by_id(second["train"], "click", "purchase") == {"imp4": (1, 0)}
  assert _by_id(second["updates"], "purchase", "purchase_timestamp") == {
      "imp2": (1, T0 + DAY + HOUR)}
  assert _by_id(second["closed"], "click", "purchase", "timestamp") == {
      "imp1": (1, 1, T0 + 10 * HOUR), "imp2": (1, 1, T0 + 23 * HOUR),
      "imp3": (0, 0, T0 + HOUR)}
  assert second["impressions"].column("impression_id").to_pylist() == ["imp4"]
  assert second["events"].column("impression_id").to_pylist() == ["imp4"]
  assert sorted((d["source"], d["reason"], d["line"]) for d in second["dead_letter"]) == [
      (dl.EVENTS, dl.DUPLICATE_EVENT, 11), (dl.EVENTS, dl.EVENT_WITHOUT_IMPRESSION, 12),
      (dl.EVENTS, dl.OUTSIDE_ATTRIBUTION_WINDOW, 13),
      (dl.IMPRESSIONS, dl.DUPLICATE_IMPRESSION_ID, 1)]
  assert second["attributed"] == 2  # imp2's purchase, imp4's click: new events only
  assert second["counts"] == {"open_in": 3, "new": 1, "updated": 1, "closed": 3,
                              "open_out": 1}


def _write_lines(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with gzip.open(path, "wt") as f:
    f.writelines(json.dumps(record) + "\n" for record in records)


def _stream(rng, days):
  """Impressions spread over `days` days, clicks and purchases with delays of minutes to
  a day and a half (some past the one-day window), a few duplicates and strays."""
  impressions, events = [], []
  for index in range(90 * days):
    timestamp = T0 + int(rng.integers(0, days * DAY))
    impressions.append(testing.impression(index, timestamp))
    if rng.random() < 0.4:
      click = timestamp + int(rng.integers(1, 600))
      events.append({"impression_id": f"imp{index}", "timestamp": click, "event": "click"})
      if rng.random() < 0.5:
        events.append({"impression_id": f"imp{index}",
                       "timestamp": click + int(rng.integers(60, 36 * HOUR)),
                       "event": "purchase"})
  events += [dict(events[k]) for k in range(0, len(events), 17)]   # duplicate events
  events.append({"impression_id": "stray", "timestamp": T0 + HOUR, "event": "click"})
  impressions.append(dict(impressions[5]))                          # a duplicate id
  return impressions, events


def _day_of(timestamp):
  return f"2026-01-0{1 + (timestamp - T0) // DAY}"


def _final_labels(work, days):
  """impression_id -> (click, purchase) as of the last snapshot, from the daily outputs:
  each impression's latest record (closed, else updated, else new)."""
  latest = {}
  for day in days:
    for output in ("train", "updates", "closed"):
      pattern = outputs_lib.OutputPaths(os.path.join(work, day)).examples_pattern(output)
      for path in sorted(tf.io.gfile.glob(pattern)):
        for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
          example = tf.train.Example.FromString(record.numpy())
          feature = example.features.feature
          key = feature["impression_id"].bytes_list.value[0].decode()
          latest[key] = (feature["click"].int64_list.value[0],
                         feature["purchase"].int64_list.value[0])
  return latest


def _one_pass_labels(output):
  labels = {}
  for split in outputs_lib.SPLITS:
    for path in tf.io.gfile.glob(outputs_lib.OutputPaths(output).examples_pattern(split)):
      for record in tf.data.TFRecordDataset(path, compression_type="GZIP"):
        feature = tf.train.Example.FromString(record.numpy()).features.feature
        labels[feature["impression_id"].bytes_list.value[0].decode()] = (
            feature["click"].int64_list.value[0], feature["purchase"].int64_list.value[0])
  return labels


@pytest.mark.slow
def test_days_one_at_a_time_equal_the_one_pass_job(tmp_path):
  """Three days through `pipeline.preprocess --day` (in-process, the previous day's
  state chained) against one pass over all the logs with the last day's snapshot."""
  days = ["2026-01-01", "2026-01-02", "2026-01-03"]
  impressions, events = _stream(np.random.default_rng(3), len(days))
  raw = tmp_path / "raw"
  for day in days:
    _write_lines(str(raw / "impressions" / day / "part.jsonl.gz"),
                 [r for r in impressions if _day_of(r["timestamp"]) == day])
    _write_lines(str(raw / "events" / day / "part.jsonl.gz"),
                 [r for r in events if _day_of(r["timestamp"]) == day])
  config = testing.write_experiment(str(tmp_path / "experiment"), eval_from=None)
  work = tmp_path / "work"
  previous, results = [], []
  for day in days:
    results.append(preprocess.run([
        "--day", day, "--impressions", str(raw / "impressions" / "{day}" / "*"),
        "--events", str(raw / "events" / "{day}" / "*"), "--output", str(work / day),
        "--config", config, "--vocabulary_window_days", "2", *previous]))
    previous = ["--previous", str(work / day)]
    success_marker.check_success_marker(str(work / day))
  one_pass = str(tmp_path / "one_pass")
  reference = preprocess.run([
      "--impressions", str(raw / "impressions" / "*" / "*"),
      "--events", str(raw / "events" / "*" / "*"), "--output", one_pass, "--config", config,
      "--eval_from", days[-1], "--as_of", str(testing.START + 3 * DAY - 1)])

  assert _final_labels(str(work), days) == _one_pass_labels(one_pass)
  counts = [result["counts"] for result in results]
  for source, outcome in ((dl.IMPRESSIONS, "read"), (dl.EVENTS, "read"),
                          (dl.EVENTS, "attributed")):
    assert sum(c[source][outcome] for c in counts) == reference["counts"][source][outcome]
  assert sum(c["impressions"]["written"]["train"] for c in counts) == sum(
      reference["counts"]["impressions"]["written"].values())
  state = [c[daily.STATE] for c in counts]
  assert sum(s["updated"] for s in state) > 0 and sum(s["closed"] for s in state) > 0
  for before, after in zip(state, state[1:]):
    assert after["open_in"] == before["open_out"]
  # Window 2: day 2's artifacts are those of the one-pass train split (days 1 and 2).
  for name in ["transform.json"] + [f"vocab/{f}.txt" for f in ("device", "tags", "position")]:
    with open(os.path.join(work / days[1], "transform", name)) as f, open(
        os.path.join(one_pass, "transform", name)) as g:
      assert f.read() == g.read(), name
  with open(work / days[2] / "day.json") as f:
    assert [os.path.basename(os.path.dirname(os.path.dirname(path)))
            for path in json.load(f)["analyzer_states"]] == days[1:]


def test_a_rerun_removes_the_killed_runs_temporaries(tmp_path):
  """A killed writer leaves `<shard>.tmp-<uuid>` files; the rerun's start removes them
  (and the job's shards and state files), and nothing else."""
  paths = outputs_lib.OutputPaths(str(tmp_path))
  ours = ["train/train-00000-of-00004.tfrecord.gz.tmp-3f2a",
          "train/train-00001-of-00004.tfrecord.gz", "closed/closed-00000-of-00004.tfrecord.gz",
          "state/events-00002-of-00004.parquet.tmp-9c", "state/impressions-00000-of-00004.parquet",
          "dead_letter/dead_letter-00000-of-00001.jsonl"]
  others = ["train/notes.txt", "counts.json", "state/README"]
  for name in ours + others:
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_text("x")
  removed = preprocess.remove_previous_shards(paths)
  assert sorted(os.path.relpath(p, tmp_path) for p in removed) == sorted(ours)
  assert all((tmp_path / name).exists() for name in others)


@pytest.mark.parametrize("argv, message", [
    (["--previous", "x"], "--previous go with --day"),
    (["--day", "2026-01-02", "--eval_from", "2026-01-02"], "--eval_from splits a one-pass"),
    (["--day", "2026-13-01"], "--day '2026-13-01': must be YYYY-MM-DD"),
    (["--day", "2026-01-02", "--source", "rechub_csv", "--train", "a", "--eval", "b"],
     "--day is for --source log"),
])
def test_day_flags_are_checked_before_beam(argv, message):
  args, _ = preprocess.parse_flags(["--impressions", "i", "--events", "e", "--output", "o",
                                    *argv])
  if args.source != preprocess.LOG:
    args.impressions = args.events = None
  with pytest.raises(preprocess.errors.PreprocessError, match=message):
    preprocess.check_source_flags(args)


def test_the_days_are_linked_by_their_open_impressions():
  from pipeline import preprocess_day  # pylint: disable=g-import-not-at-top
  counts = {"state": {"open_in": 972, "new": 1002, "closed": 972, "open_out": 1002}}
  preprocess_day.check_carried_state(counts, {"state": {"open_out": 972}})
  with pytest.raises(preprocess.errors.PreprocessError, match="read 972 open impressions"):
    preprocess_day.check_carried_state(counts, {"state": {"open_out": 971}})
  with pytest.raises(preprocess.errors.PreprocessError, match="holds 0"):
    preprocess_day.check_carried_state(counts, None)
