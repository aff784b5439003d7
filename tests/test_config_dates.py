"""The config's dates: data.as_of (the logs' snapshot time) and the default
train.validation_from (issue 33).

Oracles: unix seconds computed here by calendar arithmetic from 2026-03-01T00:00:00Z
(1772323200, checked against datetime once), and DATA/split.json files the tests write.
"""

import datetime
import json
import logging
import os
import re

import pytest

from configs import config as config_lib
from training import data

MARCH_1 = 1772323200  # 2026-03-01T00:00:00Z
HOUR_S = 3600
DAY_S = config_lib.DAY_S


def _config(data=None, train=None):
  return config_lib.config_from_dict({"feature_spec": "unused.yaml", "data": data or {},
                                      "train": train or {}}, source="exp.yaml")


def test_march_1_constant():
  assert datetime.datetime(2026, 3, 1, tzinfo=datetime.timezone.utc).timestamp() == MARCH_1


@pytest.mark.parametrize("as_of, seconds", [
    ("2026-03-02", MARCH_1 + DAY_S),
    ("2026-03-02T12:30:00Z", MARCH_1 + DAY_S + 12 * HOUR_S + 1800),
    ("2026-03-02T14:30:00+02:00", MARCH_1 + DAY_S + 12 * HOUR_S + 1800),
    ("2026-03-01T23:00:00-05:00", MARCH_1 + DAY_S + 4 * HOUR_S),
    (str(MARCH_1 + 7), MARCH_1 + 7),
    (MARCH_1 + 7, MARCH_1 + 7),
    ("2024-02-29", MARCH_1 - 731 * DAY_S),  # 2024-03-01 is 2 * 365 days before; +1
])
def test_as_of_forms(as_of, seconds):
  config = _config(data={"as_of": as_of})
  assert config.data.as_of_timestamp == seconds


def test_as_of_unset_is_none():
  assert _config().data.as_of is None and _config().data.as_of_timestamp is None


@pytest.mark.parametrize("yaml_value, seconds", [
    ("2026-03-02", MARCH_1 + DAY_S),                       # YAML date
    ("2026-03-02T01:00:00Z", MARCH_1 + DAY_S + HOUR_S),    # YAML timestamp, aware
    ("2026-03-02 03:00:00+02:00", MARCH_1 + DAY_S + HOUR_S),
    (str(MARCH_1), MARCH_1),                               # YAML int
    (f"'{MARCH_1}'", MARCH_1),                             # YAML string of digits
])
def test_unquoted_yaml_as_of(tmp_path, yaml_value, seconds):
  path = tmp_path / "exp.yaml"
  path.write_text(f"feature_spec: spec.yaml\ndata: {{as_of: {yaml_value}}}\n")
  assert config_lib.load_config(str(path)).data.as_of_timestamp == seconds


@pytest.mark.parametrize("as_of, message", [
    ("2026-03-02T12:00:00", "no time zone"),       # naive: which zone?
    ("yesterday", "is not YYYY-MM-DD"),
    ("2026-02-30", "day is out of range"),
    ("-5", "is not YYYY-MM-DD"),
    (-5, "must be >= 0"),
    (True, "is not a date"),
    ("1772323200.5", "is not YYYY-MM-DD"),
])
def test_malformed_as_of_names_the_setting_and_flag(as_of, message):
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    _config(data={"as_of": as_of})
  assert str(error.value).startswith("exp.yaml: data.as_of (--as_of)")


def test_yaml_datetime_without_zone_is_refused(tmp_path):
  path = tmp_path / "exp.yaml"
  path.write_text("feature_spec: spec.yaml\ndata: {as_of: 2026-03-02 12:00:00}\n")
  with pytest.raises(config_lib.ConfigError, match=r"data.as_of \(--as_of\).*no time zone"):
    config_lib.load_config(str(path))


@pytest.mark.parametrize("eval_from, as_of, ok", [
    ("2026-03-03", "2026-03-03T00:00:01Z", True),   # one second of eval day
    ("2026-03-03", "2026-03-03", False),            # eval would start at the cut
    ("2026-03-03", "2026-03-02T23:59:59Z", False),
    ("2026-03-03", str(MARCH_1 + 2 * DAY_S), False),
    ("2026-03-03", str(MARCH_1 + 2 * DAY_S + 1), True),
])
def test_eval_from_must_be_before_as_of(eval_from, as_of, ok):
  if ok:
    assert _config(data={"eval_from": eval_from, "as_of": as_of}).data.as_of == as_of
    return
  with pytest.raises(config_lib.ConfigError,
                     match=r"data.eval_from '2026-03-03' must be before data.as_of \(--as_of\)"):
    _config(data={"eval_from": eval_from, "as_of": as_of})


def test_as_of_override_over_a_file(tmp_path):
  path = tmp_path / "exp.yaml"
  path.write_text("feature_spec: spec.yaml\ndata: {eval_from: 2026-03-03}\n")
  config = config_lib.load_config(str(path), {"data": {"as_of": "2026-03-04T06:00:00Z"}})
  assert config.data.as_of_timestamp == MARCH_1 + 3 * DAY_S + 6 * HOUR_S
  assert config_lib.utc_iso(config.data.as_of_timestamp) == "2026-03-04T06:00:00Z"


# ---------------------------------------------------------------------------------------
# train.validation_from: "auto" by default, resolved against DATA/split.json.


def _data_dir(directory, eval_from=None):
  """A preprocess output as far as the dates go: DATA/split.json when eval_from is given
  (what --source log writes), none otherwise (what the file-split sources write)."""
  if eval_from is not None:
    (directory / config_lib.SPLIT_DATES_FILE).write_text(json.dumps(
        {"eval_from": eval_from, "eval_from_timestamp": config_lib.instant_timestamp(eval_from),
         "chosen_by": "data"}))
  return str(directory)


@pytest.mark.parametrize("eval_from, validation_from", [
    ("2026-03-03", "2026-03-02"), ("2026-03-01", "2026-02-28"), ("2025-01-01", "2024-12-31")])
def test_the_default_is_the_day_before_the_recorded_eval_day(tmp_path, eval_from,
                                                             validation_from):
  config = _config(train={"early_stopping_patience": 1, "calibration": "ips_ctr"})
  assert config.train.validation_from == config_lib.AUTO and config.train.has_validation
  resolved = data.resolve_validation_from(config.train, _data_dir(tmp_path, eval_from))
  assert resolved.validation_from == validation_from
  assert resolved.validation_from_timestamp + DAY_S == config_lib.instant_timestamp(eval_from)
  assert (resolved.early_stopping_patience, resolved.calibration) == (1, "ips_ctr")


def test_without_split_json_the_default_is_no_split_logged_once(tmp_path, caplog):
  data_dir = _data_dir(tmp_path)
  with caplog.at_level(logging.INFO):
    resolved = data.resolve_validation_from(_config().train, data_dir)
  assert resolved.validation_from is None and not resolved.has_validation
  lines = [r.getMessage() for r in caplog.records if "validation split" in r.getMessage()]
  assert len(lines) == 1, lines
  assert os.path.join(data_dir, "split.json") in lines[0]
  assert "train.validation_from: YYYY-MM-DD (--validation_from)" in lines[0]
  assert "train.validation_fraction" in lines[0]


@pytest.mark.parametrize("yaml_value", ["null", "~", "none", "None", "'none'"])
def test_none_and_null_are_no_split(tmp_path, yaml_value):
  path = tmp_path / "exp.yaml"
  path.write_text("feature_spec: spec.yaml\ndata: {eval_from: 2026-03-03}\n"
                  f"train: {{validation_from: {yaml_value}}}\n")
  train = config_lib.load_config(str(path)).train
  assert train.validation_from is None and not train.has_validation
  data_dir = _data_dir(tmp_path, "2026-03-03")
  assert data.resolve_validation_from(train, data_dir).validation_from is None


def test_none_on_the_command_line_over_a_dated_config():
  """pipeline.train --validation_from none = the override {"train": {"validation_from":
  "none"}}: esmm.yaml's early stopping and calibration then need --early_stopping_patience
  0 and --calibration none, and the error names both."""
  with pytest.raises(config_lib.ConfigError) as error:
    config_lib.load_config("configs/esmm.yaml", {"train": {"validation_from": "none"}})
  message = str(error.value)
  assert ("train.early_stopping_patience 1 (0 = never stop early) and train.calibration "
          "'ips_ctr'") in message
  assert "need a validation split, but train.validation_from is none" in message
  train = config_lib.load_config("configs/esmm.yaml", {"train": {
      "validation_from": "none", "early_stopping_patience": 0, "calibration": "none"}}).train
  assert train.validation_from is None and not train.has_validation


def test_a_fraction_gets_no_date_default(tmp_path):
  train = _config(train={"validation_fraction": 0.2, "early_stopping_patience": 1}).train
  assert (train.validation_from, train.validation_fraction) == (None, 0.2)
  assert data.resolve_validation_from(train, _data_dir(tmp_path, "2026-03-03")) == train
  assert config_lib.TrainConfig(validation_fraction=0.2).validation_from is None
  with pytest.raises(config_lib.ConfigError, match="at most one of train.validation_from "
                                                   "'auto' and train.validation_fraction"):
    _config(train={"validation_from": "auto", "validation_fraction": 0.2})


@pytest.mark.parametrize("train, named", [
    ({"early_stopping_patience": 2}, "train.early_stopping_patience 2 (0 = never stop early) "
                                     "needs"),
    ({"calibration": "platt"}, "train.calibration 'platt' (fitted on the validation split; "
                               "'none' = no calibration) needs"),
    ({"early_stopping_patience": 1, "calibration": "bias"},
     "train.early_stopping_patience 1 (0 = never stop early) and train.calibration 'bias'"),
])
def test_settings_needing_a_split_fail_once_after_auto_finds_none(tmp_path, train, named):
  config = _config(train=train)  # loads: "auto" may find a split
  with pytest.raises(config_lib.ConfigError) as error:
    data.resolve_validation_from(config.train, _data_dir(tmp_path), source="exp.yaml")
  message = str(error.value)
  assert message.startswith(f"exp.yaml: {named}")
  assert os.path.join(str(tmp_path), "split.json") in message
  assert "set train.validation_from (--validation_from YYYY-MM-DD)" in message
  with pytest.raises(config_lib.ConfigError, match=f"exp.yaml: {re.escape(named)}"):
    _config(train={**train, "validation_from": None})  # no split said at load: fails there


def test_explicit_dates_are_left_alone(tmp_path):
  config = config_lib.load_config("configs/esmm.yaml")
  data_dir = _data_dir(tmp_path, "2026-03-03")
  assert data.resolve_validation_from(config.train, data_dir) is config.train
  assert config.train.validation_from == "2026-01-07"


@pytest.mark.parametrize("name", ["ali_ccp", "aliexpress", "paddle_esmm", "paddle_aitm",
                                  "rechub_aliccp"])
def test_file_split_configs_have_no_validation_split(tmp_path, name):
  train = config_lib.load_config(f"configs/{name}.yaml").train
  assert train.validation_from is None and train.validation_fraction is None
  assert data.resolve_validation_from(train, _data_dir(tmp_path)) is train
