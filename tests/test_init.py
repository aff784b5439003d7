"""pipeline.init / features.spec_inference: a starter config and spec from unfamiliar logs.

The logs here are written by the test and look nothing like the simulator's: March 2026,
ids `shopper-*` / `sku-*`, fields `shop`, `price_eur` (log-normal), `rating`, `slot`,
`reviews` (a heavy-tailed count), `tags` (a list), a boolean and a constant, events `view` / `clk` / `basket` / `order` /
`share`. Every expected choice is derived from what the test wrote (its distinct counts,
its distributions, its event sequences), not read back from the code.
"""

import collections
import datetime
import gzip
import json
import math
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from configs import config as config_lib
from features import spec as spec_lib
from features import spec_inference

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIRST_DAY = datetime.date(2026, 3, 10)
SHOPS = [f"shop_{name}" for name in ("berlin", "paris", "rome", "oslo", "lyon", "graz")]
TAGS = [f"tag{i:02d}" for i in range(30)]


def _midnight(day: datetime.date) -> int:
  return int(datetime.datetime(day.year, day.month, day.day,
                               tzinfo=datetime.timezone.utc).timestamp())


def make_log(impressions=4000, days=5, users=3000, items=1500, seed=0, last_day_rows=None):
  """Impression and event records of a shop unlike the simulator, and what was written.

  Returns:
    (impressions, events, truth): truth has the distinct users / items / tags, the days,
    the event counts by name.
  """
  rng = np.random.default_rng(seed)
  impression_records, event_records = [], []
  day_of_row = np.sort(rng.integers(0, days, impressions))
  if last_day_rows is not None:  # Only the last rows fall on the last day.
    day_of_row = np.minimum(day_of_row, days - 2)
    day_of_row[-last_day_rows:] = days - 1
  for index in range(impressions):
    day = FIRST_DAY + datetime.timedelta(days=int(day_of_row[index]))
    timestamp = _midnight(day) + int(rng.integers(0, 86400 - 7200))
    price = float(np.round(np.exp(rng.normal(3.0, 1.2)), 2))
    record = {
        "impression_id": f"imp-{index:06d}", "timestamp": timestamp,
        "user_id": f"shopper-{int(rng.integers(users)):05d}",
        "item_id": f"sku-{int(rng.integers(items)):05d}",
        "shop": SHOPS[int(rng.integers(len(SHOPS)))],
        "price_eur": price,
        "rating": float(np.round(np.clip(rng.normal(3.8, 0.6), 1.0, 5.0), 2)),
        "slot": int(rng.integers(1, 21)),
        "reviews": int(rng.pareto(1.2) * 10),
        "tags": [TAGS[i] for i in rng.choice(len(TAGS), int(rng.integers(0, 4)), replace=False)],
        "is_member": bool(rng.random() < 0.3),
        "channel": "web",
    }
    impression_records.append(record)
    event_records.append({"impression_id": record["impression_id"], "timestamp": timestamp,
                          "event": "view"})
    clicked = rng.random() < 0.12 + 0.1 * (record["shop"] == SHOPS[0])
    if clicked:
      click_time = timestamp + int(rng.integers(1, 60))
      event_records.append({"impression_id": record["impression_id"],
                            "timestamp": click_time, "event": "clk"})
      if rng.random() < 0.3:
        event_records.append({"impression_id": record["impression_id"],
                              "timestamp": click_time + 30, "event": "basket"})
      if rng.random() < 0.25 + 0.3 * (price < 15):
        event_records.append({"impression_id": record["impression_id"],
                              "timestamp": click_time + 600, "event": "order"})
      if rng.random() < 0.05:
        event_records.append({"impression_id": record["impression_id"],
                              "timestamp": click_time + 5, "event": "share"})
  names, counts = np.unique([e["event"] for e in event_records], return_counts=True)
  days_present = sorted({datetime.datetime.fromtimestamp(
      r["timestamp"], datetime.timezone.utc).date().isoformat() for r in impression_records})
  truth = {
      "users": len({r["user_id"] for r in impression_records}),
      "items": len({r["item_id"] for r in impression_records}),
      "tags": len({t for r in impression_records for t in r["tags"]}),
      "days": days_present,
      "event_counts": dict(zip(names.tolist(), counts.tolist())),
  }
  return impression_records, event_records, truth


def write_jsonl(records, path, files=2):
  """Round-robin over `files` gzipped JSON Lines files; returns the glob."""
  os.makedirs(path, exist_ok=True)
  handles = [gzip.open(os.path.join(path, f"part-{i}.jsonl.gz"), "wt") for i in range(files)]
  for index, record in enumerate(records):
    handles[index % files].write(json.dumps(record) + "\n")
  for handle in handles:
    handle.close()
  return os.path.join(path, "*.jsonl.gz")


def write_parquet(records, path):
  os.makedirs(path, exist_ok=True)
  pq.write_table(pa.Table.from_pylist(records), os.path.join(path, "part-0.parquet"))
  return os.path.join(path, "*.parquet")


@pytest.fixture(scope="module")
def shop_log(tmp_path_factory):
  root = tmp_path_factory.mktemp("shop")
  impressions, events, truth = make_log()
  return {"impressions": write_jsonl(impressions, str(root / "impressions")),
          "events": write_jsonl(events, str(root / "events")), "truth": truth,
          "records": impressions, "event_records": events, "root": root}


@pytest.fixture(scope="module")
def starter(shop_log):
  return spec_inference.infer_starter([shop_log["impressions"]], [shop_log["events"]])


def _entry(starter, name):
  spec = yaml.safe_load(starter.spec_yaml)
  entries = {entry["name"]: entry for entry in spec["features"]}
  return entries.get(name)


def test_the_ids_are_hashed_into_twice_their_distinct_values(shop_log, starter):
  truth = shop_log["truth"]
  assert truth["users"] > config_lib.DEFAULT_MAX_VOCABULARY  # the log is built so
  for name, distinct in (("user_id", truth["users"]), ("item_id", truth["items"])):
    entry = _entry(starter, name)
    expected_buckets = 2 ** math.ceil(math.log2(2 * distinct))
    assert entry["transform"] == "hash" and entry["dtype"] == "string"
    assert entry["hash_buckets"] == expected_buckets, (name, distinct)
  # The comment above the entry states the count that made the choice.
  assert (f"{truth['users']:,} distinct values in 4,000 sampled rows" in starter.spec_yaml)


def test_low_cardinality_fields_get_a_vocabulary(shop_log, starter):
  shop = _entry(starter, "shop")
  assert shop["transform"] == "vocabulary" and shop["dtype"] == "string"
  assert shop["max_tokens"] >= len(SHOPS)
  slot = _entry(starter, "slot")  # 20 int values: a category, not a number
  assert slot["transform"] == "vocabulary" and slot["dtype"] == "int"
  tags = _entry(starter, "tags")
  assert tags["multivalent"] is True and tags["transform"] == "vocabulary"
  assert tags["dtype"] == "string" and tags["max_tokens"] >= shop_log["truth"]["tags"]


def test_heavy_tailed_price_gets_log1p_and_the_rating_does_not(shop_log, starter):
  prices = np.array([r["price_eur"] for r in shop_log["records"]])
  ratings = np.array([r["rating"] for r in shop_log["records"]])

  def skew(x):  # float64 oracle: the third standardised moment
    return float(np.mean((x - x.mean()) ** 3) / x.std() ** 3)

  assert skew(prices) > 2 > abs(skew(np.log1p(prices)))  # what makes it heavy-tailed
  assert _entry(starter, "price_eur") == {"name": "price_eur", "dtype": "float",
                                          "transform": "normalize", "log1p": True}
  assert abs(skew(ratings)) < 2
  assert _entry(starter, "rating") == {"name": "rating", "dtype": "float",
                                       "transform": "normalize"}
  # A count: ints with many values, heavy-tailed; declared float so a later 12.5 is kept.
  reviews = np.array([r["reviews"] for r in shop_log["records"]], dtype=np.float64)
  assert len(set(reviews)) > spec_inference.MAX_INT_CATEGORIES
  assert skew(reviews) > 2 and abs(skew(np.log1p(reviews))) < skew(reviews)
  assert _entry(starter, "reviews") == {"name": "reviews", "dtype": "float",
                                        "transform": "normalize", "log1p": True}


def test_booleans_constants_and_the_contract_keys_are_not_features(starter):
  names = {entry["name"] for entry in yaml.safe_load(starter.spec_yaml)["features"]}
  assert names == {"user_id", "item_id", "shop", "price_eur", "rating", "slot", "reviews",
                   "tags"}
  skipped = {s.name: s.reason for s in starter.skipped}
  assert set(skipped) == {"impression_id", "timestamp", "is_member", "channel"}
  assert "booleans" in skipped["is_member"] and "one value" in skipped["channel"]
  assert "#   is_member: holds booleans" in starter.spec_yaml


def test_a_weights_list_beside_a_list_makes_it_weighted():
  records = [{"tags": ["a", "b"][:i % 3], "tags__weight": [0.5, 2.0][:i % 3],
              "brands": ["x", "y", "z"][:1 + i % 3], "brands__weight": "heavy"}
             for i in range(30)]
  chosen, skipped = spec_inference.infer_features(spec_inference.field_statistics(records),
                                                  spec_inference.InferenceOptions())
  entries = {c.entry["name"]: c.entry for c in chosen}
  assert set(entries) == {"tags", "brands"}
  assert entries["tags"]["weighted"] is True and "weighted" not in entries["brands"]
  assert [s.name for s in skipped] == ["brands__weight"]
  spec = spec_lib.feature_spec_from_dict({"features": list(entries.values())})
  assert spec.example_keys() == ["tags", "tags__weight", "brands"]


def test_events_map_to_labels_and_the_rest_are_listed(shop_log, starter):
  counts = shop_log["truth"]["event_counts"]
  config = yaml.safe_load(starter.config_yaml)
  labels = {label["name"]: label for label in config["data"]["labels"]}
  assert [label["name"] for label in config["data"]["labels"]] == ["click", "action",
                                                                    "purchase"]
  assert labels["click"] == {"name": "click", "events": ["clk"], "after_click": False}
  assert labels["action"]["events"] == ["basket"]
  assert labels["purchase"]["events"] == ["order"]
  assert starter.mapping.unmapped == ("view", "share")  # by count, most first
  for name in ("view", "share"):
    assert f"  #   {name}: {counts[name]:,} events\n" in starter.config_yaml
  assert f"clk ({counts['clk']:,} events)" in starter.config_yaml


@pytest.mark.parametrize("name,label", [
    ("click", "click"), ("clk", "click"), ("Clicks", "click"), ("cart", "action"),
    ("addToCart", "action"), ("add-to-cart", "action"), ("fav", "action"),
    ("buy", "purchase"), ("order", "purchase"), ("Purchase", "purchase"),
    ("conversion", "purchase"), ("view_reviews", "micro"),
    ("view", None), ("impression", None), ("refund", None), ("remove_from_cart", None)])
def test_map_event(name, label):
  assert spec_inference.map_event(name) == label


def test_the_dates_are_the_logs_last_day_and_the_day_before(shop_log, starter):
  days = shop_log["truth"]["days"]
  assert days[0].startswith("2026-03") and len(days) == 5
  config = yaml.safe_load(starter.config_yaml)
  assert config["data"]["eval_from"] == days[-1] == "2026-03-14"
  assert config["train"]["validation_from"] == days[-2] == "2026-03-13"
  assert "# the day before eval_from" in starter.config_yaml


def test_days_skip_timestamps_the_job_dead_letters():
  """A negative, zero or pre-2000 timestamp is a bad_value dead letter in the job: it
  names no day (one such line must not make 1969-12-31 the first day)."""
  counts = collections.Counter()
  first = int(datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc).timestamp())
  spec_inference.tally_days(pa.array([first, first + 86399, first + 86400, -5, 0,
                                      946684799, 946684800, None], pa.int64()), counts)
  assert counts == {"2026-03-01": 2, "2026-03-02": 1, "2000-01-01": 1}


def test_the_files_load_with_the_projects_loaders(shop_log, starter, tmp_path):
  (tmp_path / "features.yaml").write_text(starter.spec_yaml)
  (tmp_path / "config.yaml").write_text(starter.config_yaml)
  config = config_lib.load_config(str(tmp_path / "config.yaml"))
  spec = config.load_feature_spec()  # also checks no label is a feature
  assert config.feature_spec_path == str(tmp_path / "features.yaml")
  assert config.data.label_names == ["click", "action", "purchase"]
  assert config.data.eval_from == "2026-03-14"
  assert config.train.validation_from == "2026-03-13"
  assert spec["user_id"].hash_buckets == _entry(starter, "user_id")["hash_buckets"]
  assert spec["tags"].multivalent and spec["price_eur"].log1p
  assert spec_lib.load_feature_spec(str(tmp_path / "features.yaml")).names == spec.names


def test_a_small_sample_still_reads_every_day_and_event_name(tmp_path):
  """The last day has 3 of 4,000 impressions and `order` may be rare: with a 50-row sample
  the dates and the labels still come from every row; the sample is spread over files."""
  impressions, events, truth = make_log(last_day_rows=3, seed=1)
  starter = spec_inference.infer_starter(
      [write_jsonl(impressions, str(tmp_path / "imp"), files=4)],
      [write_jsonl(events, str(tmp_path / "ev"), files=3)], sample_rows=50)
  assert len(starter.impressions.sample) == 50 and starter.impressions.rows == 4000
  assert starter.dates.eval_from == truth["days"][-1] == "2026-03-14"
  assert starter.dates.days[-1] == ("2026-03-14", 3)
  assert dict(starter.mapping.counts) == truth["event_counts"]
  sampled_ids = [int(r["impression_id"][4:]) for r in starter.impressions.sample]
  assert len({i % 4 for i in sampled_ids}) == 4  # every file (round-robin) contributes
  assert np.mean(sampled_ids) == pytest.approx(2000, abs=600)  # not just the first rows
  # The sample is of the whole log: ids are estimated beyond the 50 rows seen.
  assert "Chao1 estimate" in starter.spec_yaml


def test_parquet_logs_give_the_same_spec(shop_log, starter, tmp_path):
  from_parquet = spec_inference.infer_starter(  # the records of the JSON Lines logs
      [write_parquet(shop_log["records"], str(tmp_path / "imp"))],
      [write_parquet(shop_log["event_records"], str(tmp_path / "ev"))])

  def body(text):  # without the header naming the files
    return [line for line in text.splitlines() if not line.startswith("#")]

  assert body(from_parquet.spec_yaml) == body(starter.spec_yaml)
  assert body(from_parquet.config_yaml) == body(starter.config_yaml)


def test_parquet_int32_timestamps_count_and_events_without_names_are_refused(tmp_path):
  """A Parquet writer may store the timestamp as int32: its days still count. Events with
  no `event` column cannot give labels: the error names the file and the contract."""
  impressions, events, truth = make_log(impressions=500)
  table = pa.Table.from_pylist(impressions)
  index = table.schema.get_field_index("timestamp")
  table = table.set_column(index, "timestamp", table.column(index).cast(pa.int32()))
  os.makedirs(tmp_path / "imp")
  pq.write_table(table, str(tmp_path / "imp" / "part-0.parquet"))
  imp_glob = str(tmp_path / "imp" / "*.parquet")
  starter = spec_inference.infer_starter([imp_glob], [write_parquet(events, str(tmp_path / "ev"))])
  assert [day for day, _ in starter.dates.days] == truth["days"]
  assert sum(count for _, count in starter.dates.days) == 500
  os.makedirs(tmp_path / "nameless")
  pq.write_table(pa.Table.from_pylist(events).drop(["event"]),
                 str(tmp_path / "nameless" / "part-0.parquet"))
  with pytest.raises(spec_inference.InferenceError,
                     match=r"nameless/part-0.parquet: no event has a string 'event' field"):
    spec_inference.infer_starter([imp_glob], [str(tmp_path / "nameless" / "*.parquet")])


def test_chao1_estimates_the_distinct_ids_of_the_whole_log():
  rng = np.random.default_rng(3)
  population = 5000
  sample = rng.integers(population, size=4000)
  counts = dict(zip(*np.unique(sample, return_counts=True)))
  import collections  # pylint: disable=g-import-not-at-top
  estimate = spec_inference.estimate_distinct(collections.Counter(counts), 0.04, 100000)
  assert len(counts) < 0.7 * population  # the sample alone undercounts
  assert estimate == pytest.approx(population, rel=0.1)
  assert spec_inference.estimate_distinct(collections.Counter(counts), 1.0, 4000) == len(counts)


def test_logs_without_user_id_are_refused_with_the_candidates(tmp_path):
  impressions, events, _ = make_log(impressions=300)
  for record in impressions:
    record["shopper"] = record.pop("user_id")
    record["sku"] = record.pop("item_id")
  with pytest.raises(spec_inference.InferenceError,
                     match=r"no user_id / item_id field .* rename .*shopper \(\d+ distinct\)"):
    spec_inference.infer_starter([write_jsonl(impressions, str(tmp_path / "imp"))],
                                 [write_jsonl(events, str(tmp_path / "ev"))])


def test_one_day_and_millisecond_timestamps_are_refused(tmp_path):
  impressions, events, _ = make_log(impressions=200, days=1)
  events_glob = write_jsonl(events, str(tmp_path / "ev"))
  with pytest.raises(spec_inference.InferenceError, match=r"span 1 day\(s\) .*2026-03-10"):
    spec_inference.infer_starter([write_jsonl(impressions, str(tmp_path / "a"))], [events_glob])
  for record in impressions:
    record["timestamp"] *= 1000
  with pytest.raises(spec_inference.InferenceError, match=r"b/part-0.jsonl.gz: .*milliseconds"):
    spec_inference.infer_starter([write_jsonl(impressions, str(tmp_path / "b"))], [events_glob])


def test_an_unreadable_click_name_is_an_error_until_mapped(tmp_path):
  impressions, events, _ = make_log(impressions=300)
  for event in events:
    event["event"] = {"clk": "hit"}.get(event["event"], event["event"])
  imp_glob = write_jsonl(impressions, str(tmp_path / "imp"))
  ev_glob = write_jsonl(events, str(tmp_path / "ev"))
  with pytest.raises(spec_inference.InferenceError, match=r"clearly a click .*hit \(\d+\)"
                     r".*--map_event NAME=click"):
    spec_inference.infer_starter([imp_glob], [ev_glob])
  mapped = spec_inference.infer_starter([imp_glob], [ev_glob], user_event_map={"hit": "click"})
  assert mapped.mapping.events_of["click"] == ("hit",)
  assert "your --map_event" in mapped.config_yaml


def _run_init(*args):
  return subprocess.run([sys.executable, "-m", "pipeline.init", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300)


@pytest.mark.slow  # a whole Beam job or CLI run: make test, not make test-fast
def test_the_command_writes_both_files_and_errors_in_one_line(shop_log, starter, tmp_path):
  out = tmp_path / "exp"
  done = _run_init(f"--impressions={shop_log['impressions']}",
                   f"--events={shop_log['events']}", f"--out={out}")
  assert done.returncode == 0, done.stderr
  assert (out / "features.yaml").read_text() == starter.spec_yaml
  assert (out / "config.yaml").read_text() == starter.config_yaml
  again = _run_init(f"--impressions={shop_log['impressions']}",
                    f"--events={shop_log['events']}", f"--out={out}")
  # The error is the last line of stderr (above it only google.auth's start-up warning,
  # which pipeline/cli.py does not filter yet), with no traceback.
  assert again.returncode == 2 and "Traceback" not in again.stderr
  assert again.stderr.strip().splitlines()[-1] == (f"error: {out}/config.yaml exists: pass "
                                                   f"--overwrite to replace it")
  bad = _run_init(f"--impressions={tmp_path}/nothing/*.jsonl", f"--events={shop_log['events']}",
                  f"--out={tmp_path / 'other'}")
  assert bad.returncode == 2 and "Traceback" not in bad.stderr
  assert bad.stderr.strip().splitlines()[-1] == (f"error: --impressions {tmp_path}/nothing/"
                                                 f"*.jsonl: no file matches")


@pytest.mark.slow
def test_init_preprocess_train_evaluate_predict(shop_log, starter, tmp_path):
  """The README's "Your own logs" steps, in order, on the shop's logs: each step
  succeeds, the labels of the eval day are the ones its events imply, and predict scores
  every record with probabilities.

  Each step runs what its entry point runs, in this process (TensorFlow and Beam are
  loaded once, not once per step): init's files are `starter`'s, which
  test_the_command_writes_both_files_and_errors_in_one_line checks pipeline.init writes
  byte for byte; the entry points' own runs are tested by test_entry_points,
  test_evaluate, test_predict_cli and the serving tests' pipeline.train."""
  # pylint: disable=g-import-not-at-top
  from evaluation import runner
  from pipeline import predict
  from pipeline import preprocess
  from training import trainer
  # pylint: enable=g-import-not-at-top
  exp, data, model = tmp_path / "exp", tmp_path / "data", tmp_path / "model"
  config = str(exp / "config.yaml")
  exp.mkdir()
  (exp / "features.yaml").write_text(starter.spec_yaml)
  (exp / "config.yaml").write_text(starter.config_yaml)
  preprocess.run([f"--config={config}", f"--impressions={shop_log['impressions']}",
                  f"--events={shop_log['events']}", f"--output={data}"])
  with open(data / "counts.json") as f:
    counts = json.load(f)
  # Oracle: the events the test wrote for the last day's impressions.
  last_day = _midnight(datetime.date(2026, 3, 14))
  eval_ids = {r["impression_id"] for r in shop_log["records"] if r["timestamp"] >= last_day}
  events = shop_log["event_records"]
  expected = {label: len({e["impression_id"] for e in events if e["event"] == name
                          and e["impression_id"] in eval_ids})
              for label, name in (("click", "clk"), ("action", "basket"),
                                  ("purchase", "order"))}
  assert counts["impressions"]["written"]["eval"] == len(eval_ids)
  assert counts["labels"]["eval"] == expected
  truth_counts = shop_log["truth"]["event_counts"]
  assert counts["events"]["dead_letter"] == {
      "unknown_event_type": truth_counts["view"] + truth_counts["share"]}

  trainer.train_and_export(  # pipeline.train --epochs=1 --batch_size=512
      config_lib.load_config(config, overrides={"train": {"epochs": 1, "batch_size": 512}}),
      str(data), str(model))
  evaluation = runner.evaluate(str(model), str(data))  # pipeline.evaluate --saved_model MODEL
  assert evaluation["examples"] == len(eval_ids)

  to_score = tmp_path / "to_score.jsonl"
  to_score.write_text("".join(json.dumps(r) + "\n" for r in shop_log["records"][:50]))
  scored_path = tmp_path / "scored.jsonl"
  predict.predict_file(str(model), str(to_score), str(scored_path), batch_size=512)
  scored = [json.loads(line) for line in scored_path.read_text().splitlines()]
  assert len(scored) == 50
  for line in scored:
    probabilities = line["predictions"]
    assert {"ctr", "cvr", "ctcvr"} <= set(probabilities)
    assert all(0.0 < p < 1.0 for p in probabilities.values())
    assert probabilities["ctcvr"] == pytest.approx(probabilities["ctr"] * probabilities["cvr"],
                                                   rel=1e-4)
