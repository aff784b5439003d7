"""Tests of the simulated world (simulation/): contract, graph, rates, bias, truth, files.

The files are read back here with plain json/gzip/pyarrow, not with the writer's code,
so each test checks what pipeline.preprocess and evaluation will actually see.
"""

import collections
import dataclasses
import glob
import gzip
import json
import math
import os

import numpy as np
import pyarrow.parquet as pq
import pytest

from configs import config as config_lib
from features import spec as spec_lib
from simulation import behaviour as behaviour_lib
from simulation import corruption as corruption_lib
from simulation import summary as summary_lib
from simulation import truth as truth_lib
from simulation import world as world_lib
from simulation import world_config
from simulation import writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BASE_CONFIG = os.path.join(REPO, "configs", "base_simulated.yaml")
FEATURE_SPEC = os.path.join(REPO, "configs", "features", "simulated.yaml")
N = 40_000
AFTER_CLICK_EVENTS = set(behaviour_lib.EVENT_TYPES) - {"click"}
DTYPES = {"string": str, "int": int, "float": float}


def simulate(output_dir, num_impressions=N, seed=11, **kwargs):
  """Builds, samples and writes a world; returns (world, behaviour, world.json)."""
  config_fields = {f.name for f in dataclasses.fields(world_config.WorldConfig)}
  config = world_config.WorldConfig(
      num_impressions=num_impressions, seed=seed,
      **{k: v for k, v in kwargs.items() if k in config_fields})
  world = world_lib.build_world(config)
  behaviour = behaviour_lib.sample_behaviour(world)
  content = writer.write_simulation(
      world, behaviour, str(output_dir),
      **{k: v for k, v in kwargs.items() if k not in config_fields})
  return world, behaviour, content


def read_lines(output_dir, folder):
  """All text lines of OUTPUT/folder/*.jsonl.gz, file by file in name order."""
  lines = []
  for path in sorted(glob.glob(os.path.join(str(output_dir), folder, "*.jsonl.gz"))):
    with gzip.open(path, "rt") as f:
      lines.extend(line.rstrip("\n") for line in f)
  return lines


def read_records(output_dir, folder):
  return [json.loads(line) for line in read_lines(output_dir, folder)]


def pairwise_auc(labels, scores):
  """AUC as P(score_pos > score_neg) + 0.5 P(tie), by sorting the negatives."""
  labels = np.asarray(labels, dtype=bool)
  negatives = np.sort(scores[~labels])
  positives = scores[labels]
  below = np.searchsorted(negatives, positives, side="left")
  ties = np.searchsorted(negatives, positives, side="right") - below
  return float((below + 0.5 * ties).sum() / (len(positives) * len(negatives)))


def labels_from_events(impressions, events):
  """impression_id -> set of event types of that impression (every event counts)."""
  seen = collections.defaultdict(set)
  for event in events:
    seen[event["impression_id"]].add(event["event"])
  return {record["impression_id"]: seen.get(record["impression_id"], set())
          for record in impressions}


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
  """A clean world of N impressions, written as JSONL, and its parsed files."""
  output_dir = tmp_path_factory.mktemp("clean")
  world, behaviour, content = simulate(output_dir)
  impressions = read_records(output_dir, "impressions")
  events = read_records(output_dir, "events")
  return dict(dir=output_dir, world=world, behaviour=behaviour, content=content,
              impressions=impressions, events=events)


@pytest.fixture(scope="module")
def arrays(clean):
  """Per impression (truth file order): true probabilities and labels from the files."""
  truth = truth_lib.load_truth(str(clean["dir"]))
  kinds = labels_from_events(clean["impressions"], clean["events"])
  ids = truth["impression_id"]

  def label(events):
    return np.array([bool(kinds[i] & events) for i in ids])

  return dict(truth=truth, click=label({"click"}), micro=label(set(behaviour_lib.MICRO_EVENTS)),
              action=label(set(behaviour_lib.MACRO_EVENTS)), purchase=label({"purchase"}))


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
  contents = {}
  for name, seed in (("a", 5), ("b", 5), ("c", 6)):
    simulate(tmp_path / name, num_impressions=5000, seed=seed, corrupt_fraction=0.05)
    root = tmp_path / name
    contents[name] = {os.path.relpath(path, root): open(path, "rb").read()
                      for path in sorted(glob.glob(str(root / "**" / "*.*"), recursive=True))}
  assert len(contents["a"]) == 4 + 4 + 1 + 1
  assert contents["a"] == contents["b"]
  for name in contents["a"]:
    assert contents["a"][name] != contents["c"][name], name


def test_impressions_hold_the_contract_fields_and_the_spec_features(clean):
  spec = spec_lib.load_feature_spec(FEATURE_SPEC)
  assert set(writer.FEATURE_FIELDS) == set(spec.names)
  ids = set()
  for record in clean["impressions"]:
    assert set(record) == {"impression_id", "timestamp"} | set(spec.names)
    assert isinstance(record["impression_id"], str) and record["impression_id"]
    assert isinstance(record["timestamp"], int)
    ids.add(record["impression_id"])
    for feature in spec:
      value = record[feature.name]
      if feature.multivalent:
        assert isinstance(value, list) and len(value) <= 5, feature.name
        assert all(type(v) is DTYPES[feature.dtype] for v in value), feature.name
        assert len(set(value)) == len(value), feature.name
      else:
        assert type(value) is DTYPES[feature.dtype], (feature.name, value)
  assert len(ids) == len(clean["impressions"]) == N
  records = clean["impressions"]
  assert all(r["item_price"] > 0 and 1.0 <= r["item_rating"] <= 5.0 for r in records)
  assert {r["hour_of_day"] for r in records} == set(range(24))
  assert 1 == min(r["position"] for r in records) and max(r["position"] for r in records) <= 30
  assert {r["device"] for r in records} == set(world_config.DEVICES)
  assert 30 <= len({r["item_category"] for r in records}) <= 60
  assert {len(r["user_recent_categories"]) for r in records} == set(range(6))


def test_fast_json_lines_equal_the_records(clean):
  records = writer.ImpressionRecords(clean["world"])
  lines = records.json_lines()
  for row in range(0, N, 97):
    assert lines[row] == json.dumps(records.record(row), separators=(",", ":"))
    assert json.loads(lines[row]) == records.record(row)


def test_events_follow_the_graph_and_the_impression(clean):
  impression_ts = {r["impression_id"]: r["timestamp"] for r in clean["impressions"]}
  window = clean["world"].config.attribution_window_s
  by_impression = collections.defaultdict(list)
  timestamps = []
  for event in clean["events"]:
    assert set(event) == {"impression_id", "timestamp", "event"}
    assert event["event"] in behaviour_lib.EVENT_TYPES
    assert event["impression_id"] in impression_ts
    by_impression[event["impression_id"]].append(event)
    timestamps.append(event["timestamp"])
  assert timestamps == sorted(timestamps)  # sorted in time, across the shards too
  for impression_id, events in by_impression.items():
    kinds = [e["event"] for e in events]
    clicks = [e["timestamp"] for e in events if e["event"] == "click"]
    assert len(clicks) == 1, kinds   # no event without a click, one click each
    click_ts = clicks[0]
    assert click_ts > impression_ts[impression_id]
    micro = [e["timestamp"] for e in events if e["event"] in behaviour_lib.MICRO_EVENTS]
    macro = [e["timestamp"] for e in events if e["event"] in behaviour_lib.MACRO_EVENTS]
    purchase = [e["timestamp"] for e in events if e["event"] == "purchase"]
    assert len(kinds) == len(set(kinds))
    assert all(t > click_ts for t in micro + macro + purchase)
    assert all(t > max(micro) for t in macro) if micro else True
    assert all(t >= max(macro) for t in purchase) if macro else True
    for e in events:
      if e["event"] != "purchase":
        assert e["timestamp"] - impression_ts[impression_id] <= window


def test_realised_rates_are_in_their_bands(clean, arrays):
  n = len(arrays["click"])
  ctr = arrays["click"].mean()
  assert 0.02 <= ctr <= 0.08
  assert 0.001 <= arrays["purchase"].sum() / n < 0.01
  assert not np.any(arrays["purchase"] & ~arrays["click"])
  rates = clean["content"]["rates"]
  assert rates["ctr"] == pytest.approx(ctr)
  assert rates["purchase_per_exposure"] == pytest.approx(arrays["purchase"].mean())
  assert 0.15 <= rates["micro_per_click"] <= 0.5
  assert 0.05 <= rates["action_per_click"] <= 0.25


def test_realised_click_rate_matches_the_true_click_probability(arrays):
  p_click = arrays["truth"]["p_click"]
  sampling_sd = math.sqrt(np.sum(p_click * (1 - p_click))) / len(p_click)
  assert abs(arrays["click"].mean() - p_click.mean()) < 4 * sampling_sd
  # Also inside bins of p_click (calibration of the truth).
  for low, high in ((0.0, 0.02), (0.02, 0.05), (0.05, 0.1), (0.1, 1.0)):
    rows = (p_click >= low) & (p_click < high)
    p = p_click[rows]
    sd = math.sqrt(np.sum(p * (1 - p))) / rows.sum()
    assert abs(arrays["click"][rows].mean() - p.mean()) < 4 * sd, (low, high)


def test_clicked_exposures_are_a_biased_sample_for_cvr(clean, arrays):
  p_cvr = arrays["truth"]["p_purchase_given_click"]
  over_clicked = p_cvr[arrays["click"]].mean()
  over_all = p_cvr.mean()
  assert abs(over_clicked - over_all) / over_all >= 0.2
  bias = clean["content"]["selection_bias"]
  assert bias["mean_p_purchase_given_click_over_clicked"] == pytest.approx(over_clicked)
  assert bias["relative_gap"] == pytest.approx((over_clicked - over_all) / over_all)


def test_micro_raises_macro_and_macro_raises_purchase(arrays):
  truth = arrays["truth"]
  assert np.all(truth["p_macro_given_micro"] > truth["p_macro_given_no_micro"])
  assert np.all(truth["p_purchase_given_macro"] > truth["p_purchase_given_no_macro"])
  assert (truth["p_purchase_given_macro"].mean()
          >= 5 * truth["p_purchase_given_no_macro"].mean())
  # Realised: purchases per clicked exposure with an action vs without.
  click, action, purchase = arrays["click"], arrays["action"], arrays["purchase"]
  assert purchase[action].mean() >= 3 * purchase[click & ~action].mean()
  micro = arrays["micro"]
  assert action[micro].mean() > action[click & ~micro].mean()


def test_truth_identities_hold(arrays):
  p = arrays["truth"]
  p_action = (p["p_micro_given_click"] * p["p_macro_given_micro"]
              + (1 - p["p_micro_given_click"]) * p["p_macro_given_no_micro"])
  p_cvr = (p_action * p["p_purchase_given_macro"]
           + (1 - p_action) * p["p_purchase_given_no_macro"])
  np.testing.assert_allclose(p["p_action_given_click"], p_action, rtol=1e-12)
  np.testing.assert_allclose(p["p_purchase_given_click"], p_cvr, rtol=1e-12)
  np.testing.assert_array_equal(p["p_purchase_given_click_action"], p["p_purchase_given_macro"])
  np.testing.assert_array_equal(p["p_purchase_given_click_no_action"],
                                p["p_purchase_given_no_macro"])
  np.testing.assert_allclose(p["p_ctmicro"], p["p_click"] * p["p_micro_given_click"],
                             rtol=1e-12)
  np.testing.assert_allclose(p["p_ctavr"], p["p_click"] * p_action, rtol=1e-12)
  np.testing.assert_allclose(p["p_ctcvr"], p["p_click"] * p_cvr, rtol=1e-12)
  for name in truth_lib.PROBABILITY_COLUMNS:
    assert np.all((p[name] > 0) & (p[name] < 1)), name


def test_bayes_aucs_show_learnable_signal(clean, arrays):
  truth, click, purchase = arrays["truth"], arrays["click"], arrays["purchase"]
  ctr_auc = pairwise_auc(click, truth["p_click"])
  ctcvr_auc = pairwise_auc(purchase, truth["p_ctcvr"])
  cvr_auc = pairwise_auc(purchase[click], truth["p_purchase_given_click"][click])
  assert 0.65 <= ctr_auc <= 0.9
  assert ctcvr_auc >= 0.65
  assert cvr_auc >= 0.6
  bayes = clean["content"]["bayes_auc"]
  assert bayes["ctr"] == pytest.approx(ctr_auc, abs=1e-9)
  assert bayes["ctcvr"] == pytest.approx(ctcvr_auc, abs=1e-9)
  assert bayes["cvr_over_clicked"] == pytest.approx(cvr_auc, abs=1e-9)


def test_rank_auc_matches_pairwise_counting_with_ties():
  rng = np.random.default_rng(0)
  scores = rng.integers(0, 20, 3000).astype(float)   # many ties
  labels = rng.random(3000) < 0.05 + 0.02 * scores / 20
  assert summary_lib.rank_auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores))
  assert math.isnan(summary_lib.rank_auc(np.zeros(5), np.arange(5.0)))


def test_observable_features_carry_the_hidden_signal(clean):
  world = clean["world"]
  users, items = world.population.users, world.population.items
  exposures, truth = world.exposures, world.truth
  assert np.corrcoef(items.rating, items.quality)[0, 1] > 0.5
  # Segment explains part of the users' purchase intent (between-segment variance).
  segment_means = np.array([users.intent[users.segment == s].mean()
                            for s in np.unique(users.segment)])
  assert segment_means.var() / users.intent.var() > 0.15
  # Recent categories mostly come from the preferred ones.
  overlap = [np.isin(recent, preferred).mean() for recent, preferred in
             zip(users.recent_categories, users.preferred_categories) if recent]
  assert np.mean(overlap) > 0.6
  # Higher price lowers purchase; lower position raises click.
  log_price = np.log(items.price[exposures.item])
  assert np.corrcoef(log_price, truth["p_purchase_given_macro"])[0, 1] < -0.1
  assert (truth["p_click"][exposures.position == 1].mean()
          > 1.5 * truth["p_click"][exposures.position == 30].mean())
  # Popularity skew: the top 5% of items and users take a large share of exposures.
  for counts in (np.bincount(exposures.item), np.bincount(exposures.user)):
    top = np.sort(counts)[::-1][:max(1, len(counts) // 20)]
    assert top.sum() / counts.sum() > 0.3


def test_time_span_puts_the_last_day_in_the_eval_split(clean):
  data_config = config_lib.load_config(BASE_CONFIG).data
  config = clean["world"].config
  timestamps = np.array([r["timestamp"] for r in clean["impressions"]])
  hours = np.array([r["hour_of_day"] for r in clean["impressions"]])
  assert timestamps.min() >= config.start_timestamp
  assert timestamps.max() < config.start_timestamp + config.days * 86400
  np.testing.assert_array_equal(hours, (timestamps % 86400) // 3600)
  eval_share = (timestamps >= data_config.eval_from_timestamp).mean()
  assert eval_share == pytest.approx(1 / config.days, abs=0.01)
  assert data_config.eval_from_timestamp == config.start_timestamp + 7 * 86400


def test_late_purchases_land_after_the_window_and_are_counted(tmp_path):
  _, behaviour, content = simulate(tmp_path, num_impressions=30_000,
                                   late_purchase_fraction=0.3)
  impression_ts = {r["impression_id"]: r["timestamp"]
                   for r in read_records(tmp_path, "impressions")}
  window = content["config"]["attribution_window_s"]
  delays = [e["timestamp"] - impression_ts[e["impression_id"]]
            for e in read_records(tmp_path, "events") if e["event"] == "purchase"]
  late = sum(delay > window for delay in delays)
  assert late == content["late"]["purchases"] == behaviour.late_purchase.sum()
  assert 0.15 <= late / len(delays) <= 0.45
  assert all(delay <= window + 2 * 86400 for delay in delays)


def test_corruption_counts_match_the_files(tmp_path):
  _, _, content = simulate(tmp_path / "bad", num_impressions=10_000, corrupt_fraction=0.1,
                           late_purchase_fraction=0.2)
  simulate(tmp_path / "good", num_impressions=10_000, late_purchase_fraction=0.2)
  counts = content["corruption"]
  required = corruption_lib.REQUIRED_FIELDS

  found = collections.Counter()
  impressions, seen_ids, missing_by_name = {}, collections.Counter(), collections.Counter()
  for line in read_lines(tmp_path / "bad", "impressions"):
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      found["unparseable_json"] += 1
      continue
    absent = [name for name in required if name not in record]
    if absent:
      found["missing_field"] += 1
      missing_by_name.update(absent)
      continue
    seen_ids[record["impression_id"]] += 1
    if seen_ids[record["impression_id"]] > 1:
      found["duplicate_impression_id"] += 1
      assert record == impressions[record["impression_id"]]   # an exact copy
    impressions[record["impression_id"]] = record
  assert dict(found) == {k: v for k, v in counts["impressions"].items() if v}
  assert dict(missing_by_name) == {k: v for k, v in counts["missing_field_by_name"].items() if v}

  found_events, orphans = collections.Counter(), collections.Counter()
  clicked = set()
  events = []
  for line in read_lines(tmp_path / "bad", "events"):
    try:
      events.append(json.loads(line))
    except json.JSONDecodeError:
      found_events["unparseable_json"] += 1
  for event in events:
    if event["impression_id"] in impressions and event["event"] == "click":
      clicked.add(event["impression_id"])
  for event in events:
    if event["impression_id"] not in impressions:
      found_events["event_without_impression"] += 1
    elif event["event"] in AFTER_CLICK_EVENTS and event["impression_id"] not in clicked:
      found_events["event_without_click"] += 1
      orphans[event["event"]] += 1
  assert dict(found_events) == {k: v for k, v in counts["events"].items() if v}
  # What the Beam job's counts.json should report (late purchases included).
  window = content["config"]["attribution_window_s"]
  late = sum(1 for e in events if e["event"] == "purchase" and e["impression_id"] in impressions
             and e["timestamp"] - impressions[e["impression_id"]]["timestamp"] > window)
  assert late == content["late"]["purchases"] > 0
  expected = content["expected_dead_letter"]
  assert expected["impressions"] == dict(found)
  assert expected["events"] == dict(found_events, outside_attribution_window=late)
  assert dict(orphans) == {k: v for k, v in counts["event_without_click_by_event"].items() if v}
  assert min(counts["impressions"].values()) > 0 and min(counts["events"].values()) > 0
  bad_lines = sum(counts["impressions"].values()) + sum(counts["events"].values())
  assert counts["total_bad_lines"] == bad_lines
  good_lines = len(read_lines(tmp_path / "good", "impressions")) + len(
      read_lines(tmp_path / "good", "events"))
  assert bad_lines == pytest.approx(0.1 * good_lines, rel=0.05)

  # Corruption only adds lines: the clean ones are those of the uncorrupted world.
  good_impressions = set(read_lines(tmp_path / "good", "impressions"))
  assert good_impressions <= set(read_lines(tmp_path / "bad", "impressions"))
  assert set(read_lines(tmp_path / "good", "events")) <= set(read_lines(tmp_path / "bad",
                                                                        "events"))
  assert (open(tmp_path / "good" / "truth" / "truth.jsonl.gz", "rb").read()
          == open(tmp_path / "bad" / "truth" / "truth.jsonl.gz", "rb").read())


def test_load_truth_round_trips_from_every_path(clean):
  output_dir = str(clean["dir"])
  world = clean["world"]
  loaded = [truth_lib.load_truth(path) for path in (
      output_dir, os.path.join(output_dir, "truth"),
      os.path.join(output_dir, "truth", "truth.jsonl.gz"))]
  for truth in loaded:
    assert list(truth) == list(truth_lib.TRUTH_COLUMNS)
    assert truth["impression_id"].dtype == object
    assert isinstance(truth["impression_id"][0], str)
    np.testing.assert_array_equal(truth["impression_id"], world.exposures.impression_id)
    np.testing.assert_array_equal(truth["user_id"],
                                  world.population.users.ids[world.exposures.user])
    for name in truth_lib.PROBABILITY_COLUMNS:
      assert truth[name].dtype == np.float64
      np.testing.assert_array_equal(truth[name], world.truth[name])   # exact
  assert set(loaded[0]["impression_id"]) == {r["impression_id"] for r in clean["impressions"]}
  with pytest.raises(FileNotFoundError):
    truth_lib.load_truth(os.path.join(output_dir, "impressions"))
  # The labels' truth: the world's late purchases (unlabelled) scale the purchase columns.
  fraction = world.config.late_purchase_fraction
  assert fraction > 0
  for path in (output_dir, os.path.join(output_dir, "truth", "truth.jsonl.gz")):
    assert truth_lib.late_purchase_fraction(path) == fraction
    labelled = truth_lib.load_label_truth(path)
    np.testing.assert_allclose(labelled["p_ctcvr"], world.truth["p_ctcvr"] * (1 - fraction))
    np.testing.assert_array_equal(labelled["p_ctavr"], world.truth["p_ctavr"])


def test_parquet_holds_the_same_records_as_jsonl(tmp_path):
  simulate(tmp_path / "jsonl", num_impressions=5000, corrupt_fraction=0.0)
  simulate(tmp_path / "parquet", num_impressions=5000, file_format="parquet", shards=3)
  for folder, fields in (("impressions", writer.IMPRESSION_FIELDS),
                         ("events", writer.EVENT_FIELDS)):
    paths = sorted(glob.glob(str(tmp_path / "parquet" / folder / "*.parquet")))
    assert [os.path.basename(p) for p in paths] == [
        f"{folder}-{k:05d}-of-00003.parquet" for k in range(3)]
    rows = [row for path in paths for row in pq.read_table(path).to_pylist()]
    assert all(list(row) == list(fields) for row in rows)
    expected = read_records(tmp_path / "jsonl", folder)
    key = lambda r: json.dumps(r, sort_keys=True)  # pylint: disable=unnecessary-lambda-assignment
    assert sorted(map(key, rows)) == sorted(map(key, expected))


def test_parquet_corruption_has_nulls_not_malformed_lines(tmp_path):
  _, _, content = simulate(tmp_path, num_impressions=5000, file_format="parquet",
                           corrupt_fraction=0.1)
  counts = content["corruption"]
  assert counts["impressions"]["unparseable_json"] == counts["events"]["unparseable_json"] == 0
  rows = [row for path in sorted(glob.glob(str(tmp_path / "impressions" / "*.parquet")))
          for row in pq.read_table(path).to_pylist()]
  with_null = sum(any(row[name] is None for name in corruption_lib.REQUIRED_FIELDS)
                  for row in rows)
  assert with_null == counts["impressions"]["missing_field"] > 0
  ids = collections.Counter(row["impression_id"] for row in rows if row["impression_id"])
  assert sum(c - 1 for c in ids.values()) == counts["impressions"]["duplicate_impression_id"]


def test_existing_output_is_refused_unless_overwrite(tmp_path):
  simulate(tmp_path, num_impressions=2000, shards=4)
  with pytest.raises(FileExistsError):
    simulate(tmp_path, num_impressions=2000, shards=2)
  simulate(tmp_path, num_impressions=2000, shards=2, overwrite=True)
  assert len(glob.glob(str(tmp_path / "impressions" / "*"))) == 2
  assert len(glob.glob(str(tmp_path / "events" / "*"))) == 2


def test_sizes_scale_with_impressions_and_config_is_validated():
  config = world_config.WorldConfig(num_impressions=1_000_000)
  assert (config.users, config.items, config.brands) == (25_000, 10_000, 1000)
  small = world_config.WorldConfig(num_impressions=1000)
  assert (small.users, small.items) == (200, 100)
  assert world_config.WorldConfig(num_impressions=1000, num_users=7).users == 7
  with pytest.raises(ValueError, match="start_date"):
    world_config.WorldConfig(start_date="2026-13-01").validate()
  with pytest.raises(ValueError, match="popularity_drift must be >= 0"):
    world_config.WorldConfig(popularity_drift=-0.1).validate()
  with pytest.raises(ValueError, match="churn_per_day must be < 1"):
    world_config.WorldConfig(item_churn_per_day=1.0).validate()
  with pytest.raises(ValueError, match="delay_model must be one of"):
    world_config.WorldConfig(delay_model="exponential").validate()
  with pytest.raises(ValueError, match="corrupt_fraction"):
    corruption_lib.plan_corruption(None, None, 0.9, True, None)


@pytest.mark.parametrize("file_format", ["jsonl", "parquet"])
def test_oracle_features_make_every_true_logit_a_function_of_the_inputs(tmp_path, file_format):
  """With --oracle_features each impression carries the hidden factors; the true click
  and purchase|macro logits are then exactly linear in them plus log(position), device
  and hour terms (the oracle run's premise), and the default output has none of them."""
  world, _, _ = simulate(tmp_path / "oracle", num_impressions=3000, seed=4,
                         file_format=file_format, oracle_features=True)
  if file_format == "jsonl":
    records = read_records(tmp_path / "oracle", "impressions")
  else:
    records = [row for path in sorted(glob.glob(str(tmp_path / "oracle" / "impressions" / "*")))
               for row in pq.read_table(path).to_pylist()]
  by_id = {r["impression_id"]: r for r in records}
  rows = [by_id[i] for i in world.exposures.impression_id]
  oracle = np.array([[r[name] for name in world_lib.ORACLE_FIELDS] for r in rows])
  np.testing.assert_array_equal(oracle[:, 0], world.exposures.match)
  hour = 2 * np.pi * np.array([r["hour_of_day"] for r in rows]) / 24
  device = np.array([r["device"] for r in rows])
  design = np.column_stack(
      [oracle, np.log([r["position"] for r in rows]), np.cos(hour), np.sin(hour)]
      + [(device == d).astype(float) for d in world_config.DEVICES])
  for column in ("p_click", "p_purchase_given_macro"):
    p = world.truth[column]
    target = np.log(p) - np.log1p(-p)
    coef, *_ = np.linalg.lstsq(design, target, rcond=None)
    assert np.max(np.abs(design @ coef - target)) < 1e-6, column
  simulate(tmp_path / "plain", num_impressions=200, seed=4, file_format="jsonl")
  plain = read_records(tmp_path / "plain", "impressions")
  assert not any(name in plain[0] for name in world_lib.ORACLE_FIELDS)
