"""Tests of the world that changes (simulation.dynamics), its heavy-tailed purchase delays
(simulation.delays), the outcomes file and the daily raw layout (simulation.writer).

One small dense world (uniform popularity, so that every active user and item is exposed
nearly every day; high click and purchase rates, so that a few thousand impressions hold
about a thousand purchases) is written once in the flat and once in the daily layout.
The files are read back with plain gzip/json, and every property is checked against an
independent computation: ids parsed from the records, delays from the event files, the
log-normal CDF by math.erfc, labels derived from the event timestamps.
"""

import collections
import dataclasses
import datetime
import glob
import gzip
import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from simulation import behaviour as behaviour_lib
from simulation import delays as delays_lib
from simulation import truth as truth_lib
from simulation import world as world_lib
from simulation import world_config
from simulation import writer

DAYS = 8
USERS, ITEMS = 60, 80
WINDOW = 2 * 86400
DYNAMIC = dict(num_impressions=12_000, seed=7, days=DAYS, num_users=USERS,
               num_items=ITEMS, num_categories=8, user_zipf_exponent=0.0,
               item_zipf_exponent=0.0, new_users_per_day=0.1, new_items_per_day=0.1,
               user_churn_per_day=0.1, item_churn_per_day=0.1, delay_model="heavy_tailed",
               late_purchase_fraction=0.0, attribution_window_s=WINDOW,
               behaviour=world_config.BehaviourParams(target_ctr=0.3,
                                                      target_purchase_per_click=0.3,
                                                      target_action_per_click=0.4))


def day_of(timestamp, config):
  return (timestamp - config.start_timestamp) // 86400


def read_jsonl(path):
  """(records, malformed line count) of one gzip JSON Lines file."""
  records, malformed = [], 0
  with gzip.open(path, "rt") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        malformed += 1
  return records, malformed


def lines_under(root, pattern):
  lines = []
  for path in sorted(glob.glob(os.path.join(str(root), pattern))):
    with gzip.open(path, "rt") as f:
      lines.extend(f.read().splitlines())
  return lines


@pytest.fixture(scope="module")
def dynamic(tmp_path_factory):
  """The dynamic heavy-tailed world, written flat and daily (same seed), and its records."""
  root = tmp_path_factory.mktemp("dynamic")
  config = world_config.WorldConfig(**DYNAMIC)
  world = world_lib.build_world(config)
  behaviour = behaviour_lib.sample_behaviour(world)
  content = writer.write_simulation(world, behaviour, str(root / "flat"), shards=2,
                                    corrupt_fraction=0.02)
  writer.write_simulation(world, behaviour, str(root / "daily"), shards=2,
                          corrupt_fraction=0.02, layout="daily")
  impressions, _ = zip(*(read_jsonl(p) for p in glob.glob(str(root / "flat/impressions/*"))))
  events, _ = zip(*(read_jsonl(p) for p in sorted(glob.glob(str(root / "flat/events/*")))))
  # The clean impressions: bad records lack a required field; duplicates are exact copies.
  known = {r["impression_id"]: r for chunk in impressions for r in chunk
           if all(name in r for name in ("impression_id", "timestamp", "user_id", "item_id"))}
  by_impression = collections.defaultdict(dict)
  for event in (e for chunk in events for e in chunk):
    if event["impression_id"] in known:
      by_impression[event["impression_id"]][event["event"]] = event["timestamp"]
  return dict(root=root, world=world, behaviour=behaviour, content=content,
              impressions=list(known.values()), events=by_impression, config=config)


def first_seen_days(dynamic, key):
  """id number -> day of its first exposure, from the impression records."""
  first = {}
  for record in dynamic["impressions"]:
    number = int(record[key][1:])
    day = day_of(record["timestamp"], dynamic["config"])
    first[number] = min(first.get(number, DAYS), day)
  return first


def days_seen(dynamic, key):
  """id number -> set of days it is exposed on, from the impression records."""
  seen = collections.defaultdict(set)
  for record in dynamic["impressions"]:
    seen[int(record[key][1:])].add(int(day_of(record["timestamp"], dynamic["config"])))
  return seen


@pytest.mark.parametrize("key,initial,rate", [("user_id", USERS, 0.1),
                                              ("item_id", ITEMS, 0.1)])
def test_new_ids_appear_at_the_configured_rate(dynamic, key, initial, rate):
  first = first_seen_days(dynamic, key)
  assert all(first[number] == 0 for number in range(initial))   # dense: all seen day 0
  new = {number: day for number, day in first.items() if number >= initial}
  assert all(day >= 1 for day in new.values())
  # Fresh ids continue the numbering in arrival order.
  ordered = [new[number] for number in sorted(new)]
  assert ordered == sorted(ordered)
  expected = rate * initial * (DAYS - 1)     # Poisson total over days 1..DAYS-1
  assert abs(len(new) - expected) <= 3 * math.sqrt(expected), (len(new), expected)
  by_day = dynamic["content"]["population_by_day"]
  kind = key.split("_")[0] + "s"
  assert sum(by_day[f"new_{kind}"]) == len(new)  # every arrival was exposed
  assert by_day[f"first_seen_{kind}"][1:] == np.bincount(
      list(new.values()), minlength=DAYS)[1:].tolist()


@pytest.mark.parametrize("key,churn", [("user_id", 0.1), ("item_id", 0.1)])
def test_a_departed_entity_never_returns_and_departures_follow_the_churn(dynamic, key,
                                                                         churn):
  timeline = dynamic["world"].timeline
  arrival, departure = ((timeline.user_arrival, timeline.user_departure)
                        if key == "user_id" else
                        (timeline.item_arrival, timeline.item_departure))
  seen = days_seen(dynamic, key)
  for number, days in seen.items():
    assert arrival[number] <= min(days) and max(days) < departure[number], number
    # No gap: active entities are exposed every day (dense world), so a gap would be a
    # departure followed by a return.
    assert sorted(days) == list(range(min(days), max(days) + 1)), number
  # Exposed on day d and never again: the churn probability (pooled over d < DAYS - 1).
  at_risk = [(number, d) for number, days in seen.items() for d in days if d < DAYS - 1]
  left = sum(max(seen[number]) == d for number, d in at_risk)
  share, se = left / len(at_risk), math.sqrt(churn * (1 - churn) / len(at_risk))
  assert abs(share - churn) <= 3 * se, (share, churn, se)


def item_share_correlation(config, lag):
  """Mean correlation of the items' daily exposure shares `lag` days apart."""
  world = world_lib.build_world(config)
  day = day_of(world.exposures.timestamp, config)
  shares = np.stack([np.bincount(world.exposures.item[day == d],
                                 minlength=len(world.population.items.ids))
                     / np.sum(day == d) for d in range(config.days)])
  return np.mean([np.corrcoef(shares[d], shares[d + lag])[0, 1]
                  for d in range(config.days - lag)])


def test_popularity_drift_decorrelates_the_item_shares_over_days():
  base = world_config.WorldConfig(num_impressions=40_000, seed=3, days=DAYS,
                                  num_items=200, num_categories=8)
  drifting = dataclasses.replace(base, popularity_drift=0.4)
  still_next, still_far = (item_share_correlation(base, lag) for lag in (1, DAYS - 1))
  drift_next, drift_far = (item_share_correlation(drifting, lag) for lag in (1, DAYS - 1))
  assert still_far > 0.98 and abs(still_far - still_next) < 0.01   # only sampling noise
  assert drift_next < still_next - 0.02 and drift_far < drift_next - 0.2
  assert drift_far < 0.75 * still_far


def purchase_rows(dynamic):
  """(records of clicked+purchased impressions, their click ts, purchase ts) from files."""
  rows = [(r, dynamic["events"][r["impression_id"]]) for r in dynamic["impressions"]
          if {"click", "purchase"} <= set(dynamic["events"].get(r["impression_id"], {}))]
  return ([r for r, _ in rows], np.array([e["click"] for _, e in rows]),
          np.array([e["purchase"] for _, e in rows]))


def lognormal_tail(threshold_s, median_s, sigma):
  """P(D > threshold) for log D ~ N(log median, sigma^2), by math.erfc."""
  return np.array([0.5 * math.erfc((math.log(threshold_s) - math.log(m)) / (sigma * math.sqrt(2)))
                   for m in median_s])


def test_purchase_delays_follow_the_configured_log_normal(dynamic):
  records, click_ts, purchase_ts = purchase_rows(dynamic)
  delay = purchase_ts - click_ts
  population = dynamic["world"].population
  conversion = dynamic["config"].conversion_delay
  user = np.array([int(r["user_id"][1:]) for r in records])
  item = np.array([int(r["item_id"][1:]) for r in records])
  median = conversion.median_s * np.exp(conversion.price_weight * population.items.price_z[item]
                                        + conversion.intent_weight * population.users.intent[user])
  assert len(records) > 800
  for threshold in (3600, 86400):
    p = lognormal_tail(threshold, median, conversion.sigma)
    se = math.sqrt(np.sum(p * (1 - p))) / len(p)
    assert abs(np.mean(delay > threshold) - p.mean()) <= 3 * se, threshold
  assert np.mean(delay > 86400) > 0.05       # a tail of days
  # The truth's in-window probability: the realised share of purchases inside the window.
  truth = truth_lib.load_truth(str(dynamic["root"] / "flat"))
  in_window = dict(zip(truth["impression_id"], truth[truth_lib.IN_WINDOW_COLUMN]))
  p = np.array([in_window[r["impression_id"]] for r in records])
  realised = np.mean(purchase_ts - np.array([r["timestamp"] for r in records]) <= WINDOW)
  assert abs(realised - p.mean()) <= 3 * math.sqrt(np.sum(p * (1 - p))) / len(p)
  assert 0.8 < p.mean() < 0.97


def test_normal_cdf_matches_erfc():
  z = np.linspace(-9, 9, 721)
  expected = np.array([0.5 * math.erfc(-v / math.sqrt(2)) for v in z])
  np.testing.assert_allclose(delays_lib.normal_cdf(z), expected, rtol=2e-7, atol=0)


def test_final_labels_and_outcomes_agree_with_the_event_files(dynamic):
  outcomes = truth_lib.load_outcomes(str(dynamic["root"] / "flat"))
  assert list(outcomes) == list(truth_lib.OUTCOME_COLUMNS)
  impression_ts = {r["impression_id"]: r["timestamp"] for r in dynamic["impressions"]}
  assert sorted(outcomes["impression_id"]) == sorted(impression_ts)
  finals = collections.Counter()
  for k, impression_id in enumerate(outcomes["impression_id"]):
    events = dynamic["events"].get(impression_id, {})
    clicked = "click" in events
    bought = clicked and "purchase" in events   # an orphan purchase (no click) is bad data
    assert outcomes["timestamp"][k] == impression_ts[impression_id]
    assert outcomes["click"][k] == clicked
    assert outcomes["click_timestamp"][k] == (events["click"] if clicked else -1)
    assert outcomes["action"][k] == (clicked and bool({"cart", "favorite"} & set(events)))
    assert outcomes["purchase_timestamp"][k] == (events["purchase"] if bought else -1)
    assert outcomes["purchase_delay_s"][k] == (
        events["purchase"] - events["click"] if bought else -1)
    final = bought and events["purchase"] - impression_ts[impression_id] <= WINDOW
    assert outcomes["purchase"][k] == final
    finals[(bought, final)] += 1
  assert finals[(True, False)] > 20 and finals[(True, True)] > 500   # both kinds occur
  # world.json's late purchases are the dead-lettered ones.
  assert dynamic["content"]["late"]["purchases"] == finals[(True, False)]
  # The labels' truth uses the per-row in-window probability.
  truth = truth_lib.load_truth(str(dynamic["root"] / "flat"))
  labelled = truth_lib.load_label_truth(str(dynamic["root"] / "flat"))
  np.testing.assert_array_equal(labelled["p_ctcvr"],
                                truth["p_ctcvr"] * truth[truth_lib.IN_WINDOW_COLUMN])
  np.testing.assert_array_equal(labelled["p_ctavr"], truth["p_ctavr"])


def test_daily_layout_files_each_day_and_holds_the_flat_lines(dynamic):
  root, config = dynamic["root"], dynamic["config"]
  start = datetime.date.fromisoformat(config.start_date)
  last_event_day = 0
  for folder in ("impressions", "events"):
    day_dirs = sorted(glob.glob(str(root / "daily" / folder / "*")))
    names = [os.path.basename(d) for d in day_dirs]
    assert names[:DAYS] == [(start + datetime.timedelta(days=d)).isoformat()
                            for d in range(DAYS)]
    assert len(names) == DAYS if folder == "impressions" else len(names) >= DAYS
    for day_dir in day_dirs:
      day = (datetime.date.fromisoformat(os.path.basename(day_dir)) - start).days
      paths = sorted(glob.glob(os.path.join(day_dir, "*")))
      assert [os.path.basename(p) for p in paths] == [
          f"{folder}-{k:05d}-of-00002.jsonl.gz" for k in range(2)]
      for path in paths:
        records, _ = read_jsonl(path)
        for record in records:
          if "timestamp" in record:
            assert day_of(record["timestamp"], config) == day, (path, record)
            if folder == "events":
              last_event_day = max(last_event_day, day)
    flat = lines_under(root / "flat", f"{folder}/*")
    daily = lines_under(root / "daily", f"{folder}/*/*")
    assert collections.Counter(daily) == collections.Counter(flat)
  assert last_event_day >= DAYS   # late purchases arrive after the world's last day


def test_daily_parquet_and_prepare_output_cleans_or_refuses_an_earlier_daily_layout(
    tmp_path):
  small = dataclasses.replace(world_config.WorldConfig(**DYNAMIC), num_impressions=500)
  world = world_lib.build_world(small)
  behaviour = behaviour_lib.sample_behaviour(world)
  content = writer.write_simulation(world, behaviour, str(tmp_path), shards=1,
                                    layout="daily", file_format="parquet",
                                    corrupt_fraction=0.05)
  assert os.path.isfile(tmp_path / "truth" / truth_lib.OUTCOMES_FILE)
  start = datetime.date.fromisoformat(small.start_date)
  for folder in ("impressions", "events"):
    rows = 0
    for path in glob.glob(str(tmp_path / folder / "*" / "*.parquet")):
      day = (datetime.date.fromisoformat(os.path.basename(os.path.dirname(path)))
             - start).days
      timestamps = pq.read_table(path).column("timestamp").to_pylist()
      assert all(day_of(t, small) == day for t in timestamps if t is not None), path
      rows += len(timestamps)
    # Every clean and bad row in exactly one day folder.
    assert rows == content["output"]["lines"][folder] > len(behaviour.event_type) // 2
  with pytest.raises(FileExistsError, match="--overwrite"):
    writer.prepare_output(str(tmp_path), overwrite=False)
  writer.write_simulation(world, behaviour, str(tmp_path), shards=1, overwrite=True)
  for folder in ("impressions", "events"):
    assert os.listdir(tmp_path / folder) == [f"{folder}-00000-of-00001.jsonl.gz"]


def test_a_static_world_draws_no_new_stream_and_writes_no_added_output(tmp_path):
  # Appending stream names keeps the old streams: SeedSequence children go by index.
  old = np.random.SeedSequence(5).spawn(5)
  for k, name in enumerate(("population", "exposures", "behaviour", "corruption", "layout")):
    assert (world_config.rng_stream(5, name).random(3).tolist()
            == np.random.default_rng(old[k]).random(3).tolist())
  config = world_config.WorldConfig(num_impressions=500, seed=2)
  assert not config.is_dynamic and not config.heavy_tailed
  world = world_lib.build_world(config)
  content = writer.write_simulation(world, behaviour_lib.sample_behaviour(world),
                                    str(tmp_path))
  assert world.timeline is None and truth_lib.IN_WINDOW_COLUMN not in world.truth
  assert not os.path.exists(tmp_path / "truth" / truth_lib.OUTCOMES_FILE)
  assert not set(world_config.ADDED_FIELDS) & set(content["config"])
  assert "population_by_day" not in content and "purchase_delays" not in content
  # Heavy-tailed delays keep every draw before the purchase times (same clicks, buys).
  heavy = world_lib.build_world(dataclasses.replace(
      config, delay_model="heavy_tailed", late_purchase_fraction=0.0))
  legacy, tailed = (behaviour_lib.sample_behaviour(w) for w in (world, heavy))
  np.testing.assert_array_equal(legacy.purchase, tailed.purchase)
  np.testing.assert_array_equal(legacy.click_timestamp, tailed.click_timestamp)
  with pytest.raises(ValueError, match="late_purchase_fraction must be 0"):
    dataclasses.replace(config, delay_model="heavy_tailed").validate()
