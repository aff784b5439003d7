"""The config's dates: data.as_of (the logs' snapshot time) and the default
train.validation_from (issue 33).

Oracles: unix seconds computed here by calendar arithmetic from 2026-03-01T00:00:00Z
(1772323200, checked against datetime once), and DATA/split.json files the tests write.
"""

import datetime

import pytest

from configs import config as config_lib

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
