"""benchmarks.continuous: its pure parts (no training, no Beam: the suite's budget is full).

Oracles: the plan's days counted by hand for a 6-day world; resume bookkeeping against
result files written here; the summary against a float64 numpy mean of hand-made rows
(per seed over the last days, then over seeds); the goal checks on either side of their
limits; the preprocessing ratios from hand-made costs; the accounting against a
hand-made 3-day world (its files, counts and truth written here, then broken once per
kind of loss).
"""

import gzip
import json
import os

import numpy as np
import pytest

from benchmarks import continuous

DAYS = [f"2026-01-0{d}" for d in range(1, 7)]


def test_model_days_and_plan_order():
  # K = 2: day 2 is the first model (days 1-2), the last model is day 5 (scored on day 6).
  assert continuous.model_days(DAYS, 2) == DAYS[1:5]
  assert continuous.model_days(DAYS, 1) == DAYS[0:5]
  with pytest.raises(ValueError, match="cannot hold"):
    continuous.model_days(DAYS, 6)
  units = continuous.plan([1, 2], ["esmm", "naive"], list(continuous.ARMS), DAYS, 2)
  assert len(units) == 2 * 2 * 4 * 3
  # A warm model needs the day before's: every (seed, model)'s days come in order.
  first = [(u.day, u.arm) for u in units if u.seed == 1 and u.model == "esmm"]
  assert [d for d, _ in first] == sorted(d for d, _ in first)
  assert first[:3] == [(DAYS[1], "warm"), (DAYS[1], "window"), (DAYS[1], "stale")]


def test_pending_resumes_at_missing_results(tmp_path):
  units = continuous.plan([3], ["esmm"], ["warm", "stale"], DAYS, 3)
  assert continuous.pending(str(tmp_path), units) == units
  done = [units[0], units[3]]
  for unit in done:
    path = continuous.write_json(continuous.result_path(str(tmp_path), unit), {"x": 1})
    assert path.endswith(os.path.join("s3", "results", "esmm", unit.arm, f"{unit.day}.json"))
  # A temporary file a killed write left does not count as a result.
  open(continuous.result_path(str(tmp_path), units[1]) + ".tmp-abc", "w").close()
  assert continuous.pending(str(tmp_path), units) == [u for u in units if u not in done]
  assert not [name for name in os.listdir(os.path.dirname(continuous.result_path(
      str(tmp_path), units[0]))) if ".tmp-" in name and "abc" not in name]


def test_eta():
  assert continuous.eta_seconds(0, 10, 5.0) is None
  assert continuous.eta_seconds(2, 10, 30.0) == pytest.approx(120.0)
  assert continuous.eta_seconds(10, 10, 30.0) == 0.0


def _rows(rng):
  rows = []
  for seed in (1, 2):
    for arm in continuous.ARMS:
      for day_index in range(1, 6):
        row = {"seed": seed, "arm": arm, "model": "esmm", "day": DAYS[day_index - 1],
               "eval_day": DAYS[day_index]}
        for metric in continuous.SUMMARY_METRICS:
          row[metric] = float(rng.uniform(0, 1))
        rows.append(row)
  return rows


def test_summary_is_mean_over_last_days_then_seeds():
  rows = _rows(np.random.default_rng(0))
  rows[0]["ctr_auc_gap"] = None  # an unmeasured value is left out, not counted as 0
  summary = continuous.summarize(rows, last_days=3)
  assert summary["eval_days"] == DAYS[3:6]
  for arm in continuous.ARMS:
    for metric in continuous.SUMMARY_METRICS:
      per_seed = [np.mean(np.array([r[metric] for r in rows if r["arm"] == arm
                                    and r["seed"] == seed and r["eval_day"] in DAYS[3:6]],
                                   dtype=np.float64)) for seed in (1, 2)]
      cell = summary["arms"][f"{arm}/esmm"][metric]
      assert cell["seeds"] == pytest.approx({"1": per_seed[0], "2": per_seed[1]}, abs=1e-12)
      assert cell["mean"] == pytest.approx(np.mean(per_seed), abs=1e-12)
      assert (cell["min"], cell["max"]) == (min(per_seed), max(per_seed))


def _summary(warm_gap, window_gap, warm_cpu, window_cpu, stale_gap=0.05):
  def cell(gap, cpu):
    return {"ctcvr_auc_gap": {"seeds": {"1": gap}}, "ctr_auc_gap": {"seeds": {"1": gap}},
            "train_cpu_s": {"seeds": {"1": cpu}}}
  return {"arms": {"warm/esmm": cell(warm_gap, warm_cpu),
                   "window/esmm": cell(window_gap, window_cpu),
                   "stale/esmm": cell(stale_gap, 1.0)}}


def test_goal_checks_limits():
  def checks(*args):
    return {" ".join(c["goal"].split(" ")[:2]): c
            for c in continuous.goal_checks(_summary(*args), ["esmm"])}
  met = checks(0.0125, 0.010, 2.5, 10.0)  # gap difference 0.0025, CPU ratio 1/4
  assert met["warm CTCVR"]["met"] and met["warm training"]["met"]
  assert met["warm CTCVR"]["value"] == pytest.approx(0.0025)
  assert met["warm training"]["value"] == pytest.approx(0.25)
  missed = checks(0.0135, 0.010, 2.6, 10.0)
  assert missed["warm CTCVR"]["met"] is False and missed["warm training"]["met"] is False
  better = checks(0.005, 0.010, 1.0, 10.0)  # warm better than window: met
  assert better["warm CTCVR"]["met"] and better["warm CTCVR"]["value"] == pytest.approx(-0.005)
  stale = [c for c in continuous.goal_checks(_summary(0.01, 0.01, 1, 10, 0.04), ["esmm"])
           if c["goal"].startswith("stale CTCVR")][0]
  assert stale["value"] == pytest.approx(0.03) and stale["met"] is None


def test_preprocessing_flatness():
  def day(wall, rss):
    return {"job_wall_s": wall, "peak_rss_mb": rss}
  costs = {1: {DAYS[0]: day(50.0, 100.0), DAYS[1]: day(10.0, 600.0),
               DAYS[2]: day(11.0, 650.0), DAYS[5]: day(12.0, 700.0)}}
  flat = continuous.preprocessing_flatness(costs)
  # Day 2 is the reference, not day 1; the last day is the latest.
  assert flat["seeds"]["1"]["second_day"] == DAYS[1]
  assert flat["seeds"]["1"]["last_day"] == DAYS[5]
  assert flat["wall_ratio"] == pytest.approx(1.2)
  assert flat["rss_ratio"] == pytest.approx(700 / 600)
  assert flat["met"] is True
  costs[1][DAYS[5]] = day(12.5, 700.0)
  assert continuous.preprocessing_flatness(costs)["met"] is False
  assert continuous.preprocessing_flatness({1: {DAYS[0]: day(1, 1)}})["met"] is None


def test_page_states_goals(tmp_path):
  rows = _rows(np.random.default_rng(1))
  summary = continuous.summarize(rows, 3)
  costs = {1: {d: {"job_wall_s": 10.0, "job_cpu_s": 9.0, "child_wall_s": 11.0,
                   "peak_rss_mb": 600.0} for d in DAYS}}
  document = {"settings": {"days": 6, "impressions": 1000, "seeds": [1, 2],
                           "history_days": 2, "models": ["esmm"], "last_days": 3,
                           "seconds": 60.0, "units_run": 3, "units": 30, "cpu_s": 50.0,
                           "preprocess_cpu_s": 40.0, "load_before": "1", "load_after": "2", "parallel": 2,
                           "name": "continuous", "invocations": [
                               {"started": "2026-12-06 15:48 UTC", "seconds": 3600.0,
                                "cpu_s": 5000.0, "units_run": 30, "parallel": 2,
                                "load_before": "0.4", "load_after": "3.1"},
                               {"started": "2026-12-06 17:00 UTC", "seconds": 6.0,
                                "cpu_s": 1.0, "units_run": 0, "parallel": 2,
                                "load_before": "0.1", "load_after": "0.2"}]},
              "summary": summary, "goals": continuous.goal_checks(summary, ["esmm"]),
              "preprocessing": {"days": {"1": costs[1]},
                                "flatness": continuous.preprocessing_flatness(costs)},
              "accounting": {seed: {"checks": [
                  {"check": "impressions lines", "ours": 90, "truth": 90, "met": True},
                  {"check": "closed", "ours": 40, "truth": 41 + int(seed), "met": False}],
                  "met": False} for seed in ("1", "2")}}
  page = continuous.render_markdown(document)
  warm = summary["arms"]["warm/esmm"]["ctcvr_auc_gap"]
  assert f"{warm['mean']:.4f} [{warm['min']:.4f}, {warm['max']:.4f}]" in page
  # 2 goals + flatness + the 2 accounting checks (over both seeds)
  assert page.count("**met**") + page.count("**not met**") == 5
  assert "| closed | 40 / 42 | 40 / 43 | **not met** |" in page
  assert "2026-12-06 15:48 UTC: 60.0 min wall" in page and "0 of 30 rows" in page
  assert "Dead letters over the run: seed 1: none; seed 2: none." in page
  json.dumps(document, allow_nan=False)


def test_worker_groups_keep_run_order():
  units = continuous.plan([2, 1], ["naive", "esmm"], ["warm"], DAYS, 2)
  assert continuous.worker_groups(units) == [(2, "naive"), (2, "esmm"), (1, "naive"),
                                             (1, "esmm")]
  # Only the groups with something left: a resumed run restarts no finished group.
  assert continuous.worker_groups(units[-3:]) == [(1, "esmm")]


def _world(root, days, impressions, events):
  """A hand-made world and its day outputs: IMPRESSIONS[d] (id, timestamp), EVENTS[d]
  (id, timestamp, event) lines per day; the days' counts.json as a clean job writes them
  (window one day, snapshot at each day's end, every event a click or a purchase
  attributed); truth/outcomes.jsonl.gz from the same events."""
  window = 86400
  outcomes, opened = {}, []
  for index, day in enumerate(days):
    for kind, rows in (("impressions", impressions[index]), ("events", events[index])):
      os.makedirs(root / "raw" / kind / day)
      with gzip.open(root / "raw" / kind / day / "part-0.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"impression_id": r[0], "timestamp": r[1]}) + "\n"
                     for r in rows)
    for key, timestamp in impressions[index]:
      outcomes[key] = {"impression_id": key, "timestamp": timestamp, "click_timestamp": None,
                       "purchase_timestamp": None, "purchase_delay_s": None, "click": 0,
                       "action": 0, "purchase": 0}
    for key, _, event in events[index]:
      outcomes[key][event] = 1
  as_of = [1767225600 + 86400 * (i + 1) - 1 for i in range(len(days))]
  open_out = 0
  for index, day in enumerate(days):
    opened = opened + [key for key, _ in impressions[index]]
    closing = [k for k in opened if outcomes[k]["timestamp"] + window <= as_of[index]]
    opened = [k for k in opened if k not in closing]
    state = {"open_in": open_out, "new": len(impressions[index]), "closed": len(closing),
             "open_out": len(opened)}
    open_out = len(opened)
    counts = {"impressions": {"read": len(impressions[index]),
                              "written": {"train": len(impressions[index]), "eval": 0},
                              "dead_letter": {}},
              "events": {"read": len(events[index]), "attributed": len(events[index]),
                         "dead_letter": {}},
              "labels": {"closed": {name: sum(outcomes[k][name] for k in closing)
                                    for name in ("click", "purchase")}},
              "state": state}
    os.makedirs(root / "days" / day)
    (root / "days" / day / "counts.json").write_text(json.dumps(counts))
    (root / "days" / day / "day.json").write_text(json.dumps({"as_of": as_of[index]}))
  os.makedirs(root / "raw" / "truth")
  with gzip.open(root / "raw" / "truth" / "outcomes.jsonl.gz", "wt") as f:
    f.writelines(json.dumps(o) + "\n" for o in outcomes.values())
  return window


def test_accounting_finds_each_kind_of_loss(tmp_path):
  t0 = 1767225600
  days = DAYS[:3]
  impressions = [[("a", t0 + 10), ("b", t0 + 50000)], [("c", t0 + 90000)],
                 [("d", t0 + 180000)]]
  events = [[("a", t0 + 20, "click")], [("b", t0 + 90000, "click"),
                                        ("b", t0 + 90001, "purchase")], []]
  window = _world(tmp_path, days, impressions, events)

  def failed(root):
    result = continuous.accounting(str(root / "raw"), str(root / "days"), days, window)
    return [c["check"] for c in result["checks"] if not c["met"]]

  assert failed(tmp_path) == []
  counts_path = tmp_path / "days" / DAYS[2] / "counts.json"
  last = json.loads(counts_path.read_text())
  last["events"].update(read=1, dead_letter={"event_without_impression": 1})
  counts_path.write_text(json.dumps(last))
  with gzip.open(tmp_path / "raw" / "events" / DAYS[2] / "part-0.jsonl.gz", "wt") as f:
    f.write(json.dumps({"impression_id": "a", "timestamp": t0 + 200000}) + "\n")
  result = continuous.accounting(str(tmp_path / "raw"), str(tmp_path / "days"), days, window)
  assert result["met"] and result["dead_letters"] == {
      "impressions": {}, "events": {"event_without_impression": 1}}
  # b's purchase arrived on day 2 after a's window closed on day 2: 2 closed, 1 purchase.
  result = continuous.accounting(str(tmp_path / "raw"), str(tmp_path / "days"), days, window)
  assert {c["check"]: c["ours"] for c in result["checks"]}[
      "purchase final labels in closed/ (truth: outcomes)"] == 1
  counts_path = tmp_path / "days" / DAYS[1] / "counts.json"
  clean = counts_path.read_text()
  for change, expected in (
      (lambda c: c["events"].update(read=1, attributed=1), "events lines in RAW"),
      (lambda c: c["events"].update(attributed=1), "days whose events read"),
      (lambda c: c["state"].update(open_in=0, open_out=1), "days whose open_in !="),
      (lambda c: c["state"].update(closed=0), "days whose open_in + new"),
      (lambda c: c["labels"]["closed"].update(purchase=0), "purchase final labels")):
    counts = json.loads(clean)
    change(counts)
    counts_path.write_text(json.dumps(counts))
    assert any(check.startswith(expected) for check in failed(tmp_path)), expected
  counts_path.write_text(clean)
  assert failed(tmp_path) == []
