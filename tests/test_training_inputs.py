"""The trainer's input checks on a real (small) pipeline.preprocess output.

The session's `small_world` (tests/conftest.py: 4k simulated impressions, 8 days ->
Beam) is DATA, read-only here (a test that breaks a shard copies DATA first); then
`training.trainer`:
  * plan_inputs counts the validation split (the last training day) and the train
    split, which partition the train shards; neither touches the eval split; the
    default validation day ("auto") is the day before DATA/split.json's eval day;
  * a corrupt train shard stops train_and_export before training, naming the shard;
    with skip_corrupt_records it trains and metrics.json counts what was skipped;
  * a DATA without the success marker is refused, saying how to rerun.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from configs import config as config_lib
from features import parsing
from features import success_marker
from tests import small_world as small_world_lib
from training import data
from training import shard_check
from training import trainer

pytestmark = pytest.mark.slow
DAY = 86400


@pytest.fixture(scope="module")
def inputs(small_world):
  return {"data": small_world["data"], "config": small_world["config"]}


def quick_config(inputs):
  return config_lib.load_config(inputs["config"], overrides={
      "train": {"epochs": 1, "steps_per_epoch": 5, "checkpoint_every_steps": 0}})


def copy_data(inputs, tmp_path):
  target = str(tmp_path / "data")
  shutil.copytree(inputs["data"], target)
  return target


def metadata_of(pattern):
  records = tf.data.TFRecordDataset(sorted(tf.io.gfile.glob(pattern)), compression_type="GZIP")
  parsed = [tf.io.parse_example(batch, parsing.metadata_parse_spec())
            for batch in records.batch(1024)]
  return {identifier.decode(): int(timestamp) for batch in parsed
          for identifier, timestamp in zip(batch["impression_id"].numpy(),
                                           batch["timestamp"].numpy())}


def test_validation_is_the_last_training_day_and_partitions_the_train_split(inputs):
  config = quick_config(inputs)
  plan = trainer.plan_inputs(inputs["data"], config.train)
  with open(os.path.join(inputs["data"], "counts.json")) as f:
    written = json.load(f)["impressions"]["written"]
  assert plan.train_examples + plan.validation_examples == written["train"]
  assert plan.eval_examples == written["eval"]
  train = metadata_of(data.split_pattern(inputs["data"], "train"))
  evaluation = metadata_of(data.split_pattern(inputs["data"], "eval"))
  start = config.train.validation_from_timestamp
  validation_ids = {i for i, timestamp in train.items() if timestamp >= start}
  assert len(validation_ids) == plan.validation_examples > 0
  assert all(start <= train[i] < start + DAY for i in validation_ids)  # one day
  assert not set(train) & set(evaluation)
  assert min(evaluation.values()) >= config.data.eval_from_timestamp > max(train.values())


def test_a_validation_day_before_the_data_is_a_config_error_naming_the_flag(inputs):
  """Every train example would be validation: one line naming the setting and its flag."""
  validation_from = "2025-12-01"
  config = config_lib.load_config(inputs["config"], overrides={
      "train": {"validation_from": validation_from}})
  with pytest.raises(config_lib.ConfigError) as raised:
    trainer.plan_inputs(inputs["data"], config.train)
  message = str(raised.value)
  assert f"train.validation_from (--validation_from) {validation_from}" in message
  assert data.split_pattern(inputs["data"], "train") in message


def test_the_default_validation_day_is_the_day_before_the_recorded_eval_day(inputs,
                                                                           tmp_path):
  """A config without train.validation_from ("auto") validates on the day before the eval
  day DATA/split.json records (the small world's 2026-01-08), which is the explicit
  2026-01-07's plan. Recorded one day after the first training day, "auto" would take
  every train example: one ConfigError naming the setting, 'auto' and 'none'."""
  explicit = trainer.plan_inputs(inputs["data"], quick_config(inputs).train)
  default = data.resolve_validation_from(config_lib.TrainConfig(), inputs["data"])
  assert default.validation_from == "2026-01-07"
  plan = trainer.plan_inputs(inputs["data"], default)
  assert (plan.train_examples, plan.validation_examples) == (
      explicit.train_examples, explicit.validation_examples)
  first_day = config_lib.utc_day(min(metadata_of(data.split_pattern(inputs["data"],
                                                                    "train")).values()))
  (tmp_path / config_lib.SPLIT_DATES_FILE).write_text(json.dumps(
      {"eval_from": config_lib.utc_day(config_lib.instant_timestamp(first_day) + DAY)}))
  one_day = data.resolve_validation_from(config_lib.TrainConfig(), str(tmp_path))
  assert one_day.validation_from == first_day
  with pytest.raises(config_lib.ConfigError) as raised:
    trainer.plan_inputs(inputs["data"], one_day)
  message = str(raised.value)
  assert (f"train.validation_from (--validation_from) {first_day} leaves 0 train and "
          f"{explicit.train_examples + explicit.validation_examples} validation") in message
  assert "the default, 'auto', is the day before it" in message and "'none'" in message


def test_corrupt_train_shard_fails_before_training_naming_the_shard(inputs, tmp_path):
  data_dir = copy_data(inputs, tmp_path)
  broken = sorted(tf.io.gfile.glob(data.split_pattern(data_dir, "train")))[1]
  with open(broken, "r+b") as f:  # flip a byte: same size, so the success marker passes
    payload = bytearray(f.read())
    payload[len(payload) // 2] ^= 0xFF
    f.seek(0)
    f.write(bytes(payload))
  model_dir = str(tmp_path / "model")
  with pytest.raises(shard_check.CorruptShardError, match=broken):
    trainer.train_and_export(quick_config(inputs), data_dir, model_dir, export=False)
  assert not os.path.exists(os.path.join(model_dir, "backup"))  # nothing trained

  result = trainer.train_and_export(quick_config(inputs), data_dir, model_dir, export=False,
                                    skip_corrupt_records=True)
  with open(os.path.join(model_dir, "metrics.json")) as f:
    metrics = json.load(f)
  [skipped] = metrics["input"]["train"]["corrupt_shards"]
  assert skipped["path"] == broken and metrics["input"]["skip_corrupt_records"]
  assert metrics["final_step"] == 5 and result.metrics["eval"]["loss"] > 0
  counted = metrics["train_examples"] + metrics["validation_examples"]
  assert counted == metrics["input"]["train"]["records"]
  with open(os.path.join(data_dir, "counts.json")) as f:
    assert counted < json.load(f)["impressions"]["written"]["train"]


def test_cli_names_a_truncated_shard_without_a_traceback(inputs, tmp_path):
  data_dir = copy_data(inputs, tmp_path)
  broken = sorted(tf.io.gfile.glob(data.split_pattern(data_dir, "eval")))[0]
  with open(broken, "r+b") as f:  # zero the second half: same size, stream cut short
    size = len(f.read())
    f.seek(size // 2)
    f.write(bytes(size - size // 2))
  run = subprocess.run(
      [sys.executable, "-m", "pipeline.train", f"--config={inputs['config']}",
       f"--data={data_dir}", f"--model_dir={tmp_path / 'model'}"],
      cwd=small_world_lib.REPO, env=small_world_lib.subprocess_env(), capture_output=True,
      text=True, timeout=600, check=False)
  assert run.returncode == 2  # pipeline.cli's exit status of a user error
  last_line = run.stderr.strip().splitlines()[-1]
  assert last_line.startswith(f"error: {broken}: corrupt TFRecord shard"), last_line
  assert "Traceback" not in run.stderr


def test_data_without_success_marker_is_refused(inputs, tmp_path):
  data_dir = copy_data(inputs, tmp_path)
  os.remove(success_marker.marker_path(data_dir))
  with pytest.raises(success_marker.IncompleteOutputError, match="pipeline.preprocess"):
    trainer.train_and_export(quick_config(inputs), data_dir, str(tmp_path / "model"),
                             export=False)
