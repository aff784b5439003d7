"""Default split dates (issue 33): eval = the last day in the logs, validation the day before.

pipeline.preprocess --source log without data.eval_from / --eval_from splits on the last
UTC day present among the valid impressions and records it in OUTPUT/split.json;
train.validation_from "auto" (its default) is resolved by
training.data.resolve_validation_from to the day before that recorded day. The oracle is the hand-made log: per-day impression counts
chosen by the test, and calendar arithmetic.
"""

import json
import os

import pytest

from configs import config as config_lib
from pipeline import preprocess
from tests import beam_testing as testing
from training import data
from transforms import errors

MARCH_1 = 1772323200  # 2026-03-01T00:00:00Z
DAY_S = config_lib.DAY_S
PER_DAY = {"2026-03-01": 30, "2026-03-02": 40, "2026-03-03": 25}


def _write_march_logs(directory):
  """PER_DAY valid impressions on three March days, clicks on every third, plus an
  invalid impression (no impression_id, dead-lettered) on 2026-03-04: no valid one is
  that late, so the last day present is 2026-03-03."""
  os.makedirs(directory, exist_ok=True)
  impressions, events, index = [], [], 0
  for day, count in enumerate(PER_DAY.values()):
    for k in range(count):
      timestamp = MARCH_1 + day * DAY_S + 600 * k
      impressions.append(testing.impression(index, timestamp))
      if index % 3 == 0:
        events.append(testing.event(f"imp{index}", timestamp + 5, "click"))
      index += 1
  impressions.append(testing.impression(index, MARCH_1 + 3 * DAY_S + 60, impression_id=None))
  return (testing.write_jsonl(os.path.join(directory, "impressions.jsonl"), impressions),
          testing.write_jsonl(os.path.join(directory, "events.jsonl"), events))


@pytest.fixture(scope="module")
def march_logs(tmp_path_factory):
  root = tmp_path_factory.mktemp("march")
  impressions, events = _write_march_logs(str(root / "logs"))
  config = testing.write_experiment(str(root / "experiment"), eval_from=None)
  return {"root": root, "impressions": impressions, "events": events, "config": config}


def _preprocess(logs, name, *extra):
  output = str(logs["root"] / name)
  result = preprocess.run(["--impressions", logs["impressions"], "--events", logs["events"],
                           "--output", output, "--config", logs["config"], *extra])
  return output, result["counts"]


@pytest.mark.slow
def test_without_eval_from_the_last_day_present_is_eval(march_logs):
  assert config_lib.load_config(march_logs["config"]).data.eval_from is None
  output, counts = _preprocess(march_logs, "auto")
  written = counts["impressions"]["written"]
  assert written == {"train": PER_DAY["2026-03-01"] + PER_DAY["2026-03-02"],
                     "eval": PER_DAY["2026-03-03"]}
  assert counts["impressions"]["read"] == sum(PER_DAY.values()) + 1
  assert data.read_split_dates(output) == {
      "eval_from": "2026-03-03", "eval_from_timestamp": MARCH_1 + 2 * DAY_S,
      "chosen_by": "data"}
  default = config_lib.load_config(march_logs["config"]).train  # sets no validation_from
  assert data.resolve_validation_from(default, output).validation_from == "2026-03-02"


@pytest.mark.slow
def test_an_explicit_eval_from_wins(march_logs):
  output, counts = _preprocess(march_logs, "explicit", "--eval_from", "2026-03-02")
  assert counts["impressions"]["written"] == {
      "train": PER_DAY["2026-03-01"],
      "eval": PER_DAY["2026-03-02"] + PER_DAY["2026-03-03"]}
  assert data.read_split_dates(output)["eval_from"] == "2026-03-02"
  assert data.read_split_dates(output)["chosen_by"] == "config"
  default = config_lib.load_config(march_logs["config"]).train
  assert data.resolve_validation_from(default, output).validation_from == "2026-03-01"


def _data_dir_with_eval_from(directory, eval_from):
  with open(os.path.join(directory, config_lib.SPLIT_DATES_FILE), "w") as f:
    json.dump({"eval_from": eval_from, "chosen_by": "data"}, f)
  return str(directory)


@pytest.mark.parametrize("eval_from, validation_from", [
    ("2026-03-03", "2026-03-02"), ("2026-03-01", "2026-02-28"), ("2024-03-01", "2024-02-29"),
    ("2026-01-01", "2025-12-31")])
def test_auto_validation_is_the_day_before_the_recorded_eval_day(tmp_path, eval_from,
                                                                 validation_from):
  data_dir = _data_dir_with_eval_from(tmp_path, eval_from)
  auto = config_lib.TrainConfig(validation_from=config_lib.AUTO, early_stopping_patience=1)
  resolved = data.resolve_validation_from(auto, data_dir)
  assert resolved.validation_from == validation_from
  assert resolved.early_stopping_patience == 1
  assert config_lib.utc_day(resolved.validation_from_timestamp + DAY_S) == eval_from


def test_explicit_or_no_validation_is_left_alone(tmp_path):
  data_dir = _data_dir_with_eval_from(tmp_path, "2026-03-03")
  for train in (config_lib.TrainConfig(validation_from=None),
                config_lib.TrainConfig(validation_from="2026-03-01"),
                config_lib.TrainConfig(validation_fraction=0.2)):
    assert data.resolve_validation_from(train, data_dir) is train


def test_auto_without_a_recorded_eval_day_is_no_split(tmp_path):
  assert config_lib.TrainConfig().validation_from == config_lib.AUTO
  assert data.resolve_validation_from(config_lib.TrainConfig(),
                                      str(tmp_path)).validation_from is None
  with pytest.raises(config_lib.ConfigError, match="patience 1 .*split.json"):
    data.resolve_validation_from(config_lib.TrainConfig(early_stopping_patience=1),
                                 str(tmp_path))


def test_config_defaults_and_auto():
  config = config_lib.config_from_dict({
      "feature_spec": "unused.yaml",
      "train": {"validation_from": "auto", "early_stopping_patience": 1}})
  assert config.data.eval_from is None and config.data.eval_from_timestamp is None
  assert config.train.validation_from == config_lib.AUTO and config.train.has_validation
  with pytest.raises(ValueError, match="resolved against the data"):
    config.train.validation_from_timestamp  # pylint: disable=pointless-statement
  with pytest.raises(config_lib.ConfigError, match="YYYY-MM-DD, 'auto' or 'none'"):
    config_lib.config_from_dict({"feature_spec": "unused.yaml",
                                 "train": {"validation_from": "yesterday"}})
  simulated = config_lib.load_config("configs/esmm.yaml")
  assert (simulated.data.eval_from, simulated.train.validation_from) == (
      "2026-01-08", "2026-01-07")


@pytest.mark.slow
def test_one_day_of_logs_without_a_date_fails_naming_the_day(tmp_path):
  impressions = testing.write_jsonl(str(tmp_path / "impressions.jsonl"), [
      testing.impression(index, MARCH_1 + 3600 * index) for index in range(12)])
  events = testing.write_jsonl(str(tmp_path / "events.jsonl"), [])
  config = testing.write_experiment(str(tmp_path / "experiment"), eval_from=None)
  with pytest.raises(errors.PreprocessError,
                     match=r"train split is empty \(train 0, eval 12 .*before 2026-03-01, "
                           r"the last day present in the logs"):
    preprocess.run(["--impressions", impressions, "--events", events,
                    "--output", str(tmp_path / "out"), "--config", config])
