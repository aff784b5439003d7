"""Real Ali-CCP-derived samples (tests/data/real, vendored) through the Beam job, then ESMM trains.

torch-rechub's CSV (--source rechub_csv), PaddleRec's ESMM text (--source paddle_esmm) and
PaddleRec's AITM CSV (--source rechub_csv with configs/paddle_aitm.yaml) go through
`pipeline.preprocess.run` into TFRecords with exact counts; the raw Ali-CCP layout (files
written by tests/test_aliccp.py's helpers, preprocessed once per session there) does too. Each output started with a stale
success marker, which the job replaced by one that verifies (features/success_marker.py).
Then an ESMM built from each source's feature spec (hash tables shrunk to keep the test
small) trains a few steps and exports (not for paddle_aitm, whose spec is a subset of
rechub_aliccp's).

The rechub_csv and paddle_esmm runs are tests/test_file_sources_golden.py's worlds of the
same samples and flags (made once per session, `shared_world`), whose outputs that
module also pins by digest.
"""

import glob
import os

import pytest
import tensorflow as tf
import yaml

from configs import config as config_lib
from features import example_codec
from pipeline import preprocess
from tests import test_aliccp
from tests import test_file_sources_golden as file_sources_golden
from tests import test_success_marker
from training import trainer
from transforms import outputs as outputs_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REAL = os.path.join(REPO, "tests", "data", "real")  # vendored public samples (README)
LABELS = ["click", "purchase"]
pytestmark = pytest.mark.slow


def _real(name):
  return os.path.join(REAL, name)


def _decoded(output, split, config):
  spec = config.load_feature_spec()
  files = sorted(glob.glob(outputs_lib.OutputPaths(output).examples_pattern(split)))
  return [example_codec.example_to_dict(raw.numpy(), spec, LABELS)
          for raw in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def small_training_config(name, directory):
  """configs/<name>.yaml with its spec's hash tables shrunk and a few-step training run."""
  with open(os.path.join(REPO, "configs", f"{name}.yaml")) as f:
    experiment = yaml.safe_load(f)
  with open(os.path.join(REPO, "configs", experiment["feature_spec"])) as f:
    spec = yaml.safe_load(f)
  for feature in spec["features"]:
    if feature.get("hash_buckets"):
      feature["hash_buckets"] = min(feature["hash_buckets"], 97)
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "spec.yaml"), "w") as f:
    yaml.safe_dump(spec, f)
  experiment["feature_spec"] = "spec.yaml"
  experiment["model"].update({"embedding_dim": 4, "tower_units": [8]})
  experiment["train"].update({"batch_size": 8, "epochs": 1, "steps_per_epoch": 3,
                              "shuffle_buffer": 64, "checkpoint_every_steps": 0,
                              "eval_batch_size": 16})
  path = os.path.join(directory, "experiment.yaml")
  with open(path, "w") as f:
    yaml.safe_dump(experiment, f)
  config = config_lib.load_config(path)
  assert config.model.name == "esmm"
  return config


def _train(name, data_dir, tmp_path):
  config = small_training_config(name, str(tmp_path / f"{name}_config"))
  result = trainer.train_and_export(config, data_dir, str(tmp_path / f"{name}_model"))
  assert result.metrics["final_step"] == 3
  assert os.path.isdir(result.export_dir)
  loaded = tf.saved_model.load(result.export_dir)
  serialized = [raw.numpy() for raw in tf.data.TFRecordDataset(
      sorted(glob.glob(outputs_lib.OutputPaths(data_dir).examples_pattern("eval"))),
      compression_type="GZIP").take(4)]
  scores = loaded.signatures["serving_default"](examples=tf.constant(serialized))
  assert set(scores) == {"ctr", "cvr", "ctcvr"}
  ctcvr, ctr = scores["ctcvr"].numpy(), scores["ctr"].numpy()
  assert ((ctcvr > 0) & (ctcvr <= ctr) & (ctr < 1)).all()


def test_rechub_csv_sample_trains_esmm(tmp_path, tmp_path_factory):
  # --train rechub_aliccp_train.csv --eval rechub_aliccp_val.csv,rechub_aliccp_test.csv
  result = file_sources_golden.shared_world(tmp_path_factory, "rechub_csv")
  output = result["output"]
  test_success_marker.assert_marker_verifies(output, result["counts"])
  assert result["counts"] == {
      "impressions": {"read": 200, "written": {"train": 100, "eval": 100}, "dead_letter": {}},
      "labels": {"train": {"click": 7, "purchase": 1}, "eval": {"click": 5, "purchase": 2}}}
  config = config_lib.load_config(os.path.join(REPO, "configs", "rechub_aliccp.yaml"))
  train = _decoded(output, "train", config)
  by_line = {int(d["impression_id"].rsplit(":", 1)[1]): d for d in train}
  assert sorted(by_line) == list(range(2, 102))  # The header is line 1, not a record.
  first = by_line[2]
  assert first["impression_id"].endswith("rechub_aliccp_train.csv:2")
  assert first["f205"] == "0" and first["f109_14"] == "1"
  assert first["D508"] == pytest.approx(0.07556)
  assert len({d["impression_id"] for d in train}) == 100
  _train("rechub_aliccp", output, tmp_path)


def test_paddle_esmm_sample_keeps_repeated_fields_and_trains_esmm(tmp_path, tmp_path_factory):
  # --train paddle_esmm_train.txt --eval paddle_esmm_test.txt
  result = file_sources_golden.shared_world(tmp_path_factory, "paddle_esmm")
  output = result["output"]
  test_success_marker.assert_marker_verifies(output, result["counts"])
  assert result["counts"] == {
      "impressions": {"read": 20, "written": {"train": 10, "eval": 10}, "dead_letter": {}},
      "labels": {"train": {"click": 2, "purchase": 1}, "eval": {"click": 1, "purchase": 0}}}
  config = config_lib.load_config(os.path.join(REPO, "configs", "paddle_esmm.yaml"))
  by_id = {d["impression_id"].rsplit(":", 1)[1]: d for d in _decoded(output, "train", config)}
  with open(_real("paddle_esmm_train.txt")) as f:
    first_line = f.readline().strip().split(",")
  expected_150_14 = [t.split(":")[1] for t in first_line[3:] if t.startswith("150_14:")]
  assert len(expected_150_14) == 191
  assert by_id["1"]["f150_14"] == expected_150_14  # Every repeated value, in order.
  assert by_id["1"]["f210"] == ["1", "2", "3"]
  assert len(by_id["4"]["f853"]) == 3
  assert (by_id["1"]["click"], by_id["1"]["purchase"]) == (1, 1)
  _train("paddle_esmm", output, tmp_path)


def test_paddle_aitm_sample_dead_letters_purchases_without_click(tmp_path):
  with open(_real("paddle_aitm_train.csv")) as f:
    header, *rows = f.read().splitlines()
  # One file in the sample: its first 38 rows are train, the last 10 eval.
  for name, part in (("train.csv", rows[:38]), ("eval.csv", rows[38:])):
    with open(tmp_path / name, "w") as f:
      f.write("\n".join([header] + part) + "\n")
  output = str(tmp_path / "aitm")
  result = preprocess.run([
      "--source", "rechub_csv", "--config", os.path.join(REPO, "configs", "paddle_aitm.yaml"),
      "--output", output, "--train", str(tmp_path / "train.csv"),
      "--eval", str(tmp_path / "eval.csv")])
  orphans = sum(1 for row in rows if row.split(",")[:2] == ["0", "1"])
  assert orphans == 2
  counts = result["counts"]
  assert counts["impressions"]["read"] == len(rows) == 48
  assert counts["impressions"]["dead_letter"] == {"purchase_without_click": orphans}
  assert sum(counts["impressions"]["written"].values()) == len(rows) - orphans
  config = config_lib.load_config(os.path.join(REPO, "configs", "paddle_aitm.yaml"))
  for split in outputs_lib.SPLITS:
    assert all(d["purchase"] <= d["click"] for d in _decoded(output, split, config))
  # No training run here: configs/paddle_aitm.yaml is configs/rechub_aliccp.yaml with a
  # spec whose features are a subset of rechub_aliccp's (same names and transforms), so
  # test_rechub_csv_sample_trains_esmm's ESMM covers every feature column it builds.


def test_raw_aliccp_layout_through_the_cli_trains_esmm(tmp_path, tmp_path_factory):
  # tests/test_aliccp.py's release through --source ali_ccp --join_buckets 2 (shared).
  result = test_aliccp.preprocessed_release(tmp_path_factory)
  output = result["output"]
  test_success_marker.assert_marker_verifies(output, result["counts"])
  assert result["counts"]["impressions"]["written"] == {"train": 3, "eval": 1}
  assert result["counts"]["common_features"]["read"] == 7
  assert os.path.exists(result["schema"])
  _train("ali_ccp", output, tmp_path)
