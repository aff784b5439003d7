"""Tests of training/schedules.py and of the train-section checks in configs/config.py."""

import dataclasses
import math
import os

import pytest
import tf_keras

from configs import config as config_lib
from training import schedules

LR = 0.01
STEPS_PER_EPOCH = 10
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL = 100


def rate_at(train_config, step):
  schedule = schedules.learning_rate(train_config, STEPS_PER_EPOCH, TOTAL)
  return float(schedule(step)) if callable(schedule) else schedule


def train_config(**kwargs):
  return dataclasses.replace(config_lib.TrainConfig(learning_rate=LR), **kwargs)


def test_constant_is_a_plain_float():
  assert schedules.learning_rate(train_config(), STEPS_PER_EPOCH, TOTAL) == LR


def test_cosine_decays_from_the_rate_to_its_floor():
  config = train_config(lr_schedule="cosine", lr_min_ratio=0.1)
  assert rate_at(config, 0) == pytest.approx(LR)
  assert rate_at(config, TOTAL // 2) == pytest.approx(LR * (0.1 + 0.9 * 0.5))
  assert rate_at(config, TOTAL) == pytest.approx(LR * 0.1)


def test_exponential_multiplies_by_the_decay_rate_every_epoch():
  config = train_config(lr_schedule="exponential", lr_decay_rate=0.5)
  assert rate_at(config, 0) == pytest.approx(LR)
  assert rate_at(config, STEPS_PER_EPOCH) == pytest.approx(LR / 2)
  assert rate_at(config, 3 * STEPS_PER_EPOCH) == pytest.approx(LR / 8)


def test_warmup_ramps_linearly_then_hands_over():
  config = train_config(lr_schedule="cosine", lr_warmup_steps=10)
  assert rate_at(config, 0) == pytest.approx(LR / 10)
  assert rate_at(config, 4) == pytest.approx(LR / 2)
  assert rate_at(config, 9) == pytest.approx(LR)
  assert rate_at(config, 10) == pytest.approx(LR)  # cosine's start
  assert rate_at(config, 10 + 45) == pytest.approx(LR * 0.5 * (1 + math.cos(math.pi / 2)))
  constant = train_config(lr_warmup_steps=4)
  assert [rate_at(constant, step) for step in (0, 3, 50)] == pytest.approx(
      [LR / 4, LR, LR])


def test_warmup_schedule_round_trips_through_its_config():
  schedule = schedules.learning_rate(train_config(lr_schedule="exponential",
                                                  lr_warmup_steps=3), STEPS_PER_EPOCH, TOTAL)
  copy = tf_keras.optimizers.schedules.deserialize(
      tf_keras.optimizers.schedules.serialize(schedule))
  assert [float(copy(step)) for step in (0, 2, 3, 13)] == pytest.approx(
      [float(schedule(step)) for step in (0, 2, 3, 13)])


BASE = {"feature_spec": "features/simulated.yaml", "data": {"eval_from": "2026-01-08"}}


@pytest.mark.parametrize("train, message", [
    ({"validation_from": "2026-01-08"}, "must be before data.eval_from"),
    ({"validation_from": "2026-13-01"}, "train.validation_from must be YYYY-MM-DD"),
    ({"validation_from": "2026-01-07", "validation_fraction": 0.1}, "at most one"),
    ({"validation_fraction": 1.5}, r"validation_fraction must be in \(0, 1\)"),
    ({"validation_from": None, "early_stopping_patience": 2}, "needs a validation split"),
    ({"lr_schedule": "step"}, "train.lr_schedule 'step'"),
    ({"lr_warmup_steps": -1}, "lr_warmup_steps must be >= 0"),
    ({"early_stopping_monitor": "auc"}, "train.early_stopping_monitor 'auc'"),
    ({"adam_epsilon": 0.0}, "train.adam_epsilon must be > 0"),
])
def test_train_section_errors_name_the_file_and_key(train, message):
  with pytest.raises(config_lib.ConfigError, match=message) as error:
    config_lib.config_from_dict({**BASE, "train": train}, source="exp.yaml")
  assert str(error.value).startswith("exp.yaml:")


@pytest.mark.parametrize("name", ["embedding_l2", "l2", "dropout"])
def test_negative_model_penalties_are_refused_at_load(name):
  with pytest.raises(config_lib.ConfigError, match=rf"exp.yaml: model.{name} must be >= 0"):
    config_lib.config_from_dict({**BASE, "model": {name: -0.1}}, source="exp.yaml")


def test_unquoted_yaml_dates_are_read_as_strings(tmp_path):
  path = tmp_path / "exp.yaml"
  path.write_text("feature_spec: spec.yaml\ndata: {eval_from: 2026-01-08}\n"
                  "train: {validation_from: 2026-01-07}\n")
  config = config_lib.load_config(str(path))
  assert (config.data.eval_from, config.train.validation_from) == ("2026-01-08", "2026-01-07")


def test_simulated_configs_validate_on_the_last_training_day():
  config = config_lib.load_config(os.path.join(REPO, "configs", "esmm.yaml"))
  assert config.train.validation_from == "2026-01-07" and config.data.eval_from == "2026-01-08"
  assert config.data.eval_from_timestamp - config.train.validation_from_timestamp == 86400
  assert config.train.early_stopping_patience >= 1
  assert config_lib.config_from_dict(BASE).train.validation_from == config_lib.AUTO  # the default
