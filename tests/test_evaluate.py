"""Tests of evaluation/scoring.py, evaluation/runner.py and the pipeline.evaluate CLI.

The CLI runs as a subprocess where its exit status and stderr are the point (one scoring
run with its logged table; user errors found before TensorFlow is imported; a report
from --include'd JSONs); the other runs call what its main calls,
`pipeline.evaluate.run(Settings(...))`, in this process (no TensorFlow start-up each).

The fixture writes a tiny preprocess output (GZIP TFRecords, feature_spec.yaml,
labels.json), a simulator truth file and a SavedModel of its own: a tf.Module whose
`serving_default` parses Examples with features.parsing and returns ctr, cvr, ctcvr and
ctavr as closed-form functions of the features (the real models are built elsewhere).
"""

import gzip
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import yaml

from evaluation import metrics
from evaluation import runner
from evaluation import scoring
from features import parsing
from features import spec as spec_lib
from features import success_marker
from pipeline import cli
from pipeline import evaluate as evaluate_cli
from simulation import truth as truth_lib
from tests.test_parsing import make_example

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LABELS = ["click", "action", "purchase"]
SPEC_ENTRIES = [
    {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 100},
    {"name": "item_price", "dtype": "float", "transform": "normalize"},
    {"name": "categories", "dtype": "string", "transform": "vocabulary", "max_tokens": 5,
     "multivalent": True},
]
SPEC = spec_lib.feature_spec_from_dict({"features": SPEC_ENTRIES})
NUM_ROWS = 600
VERSION = "17"


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


class TinyRanker(tf.Module):
  """serving_default(examples) -> {ctr, cvr, ctcvr, ctavr}, each float32 [batch]."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve(self, examples):
    features, _ = parsing.parse_examples(examples, SPEC, [])
    price = features["item_price"]
    num_categories = tf.cast(features["categories"].row_lengths(), tf.float32)
    ctr = tf.sigmoid(0.8 * price - 1.0 + 0.05 * num_categories)
    cvr = tf.sigmoid(0.3 - 0.8 * price)
    return {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr, "ctavr": ctr * 0.3}


def model_ctr(price, num_categories):
  return sigmoid(0.8 * price - 1.0 + 0.05 * num_categories)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
  """Paths and arrays of the tiny world: data dir, truth dir, model dir."""
  root = tmp_path_factory.mktemp("world")
  rng = np.random.default_rng(0)
  ids = np.array([f"imp-{i:04d}" for i in range(NUM_ROWS)], dtype=object)
  users = np.array([f"u{i}" for i in rng.integers(0, 20, NUM_ROWS)], dtype=object)
  price = rng.uniform(-2, 2, NUM_ROWS).astype(np.float32).astype(np.float64)
  num_categories = rng.integers(0, 3, NUM_ROWS)
  p_click, p_cvr = sigmoid(price - 0.5), sigmoid(0.5 - price)
  base = {"p_click": p_click, "p_micro_given_click": np.full(NUM_ROWS, 0.4),
          "p_macro_given_micro": np.full(NUM_ROWS, 0.5),
          "p_macro_given_no_micro": np.full(NUM_ROWS, 0.2),
          "p_purchase_given_macro": p_cvr, "p_purchase_given_no_macro": p_cvr}
  truth = truth_lib.compose_truth(base)
  click = rng.random(NUM_ROWS) < p_click
  labels = {"click": click, "action": click & (rng.random(NUM_ROWS) < 0.32),
            "purchase": click & (rng.random(NUM_ROWS) < p_cvr)}

  data_dir = root / "data"
  os.makedirs(data_dir / "eval")
  for shard, rows in enumerate(np.array_split(np.arange(NUM_ROWS), 2)):
    path = str(data_dir / "eval" / f"eval-{shard:05d}-of-00002.tfrecord.gz")
    with tf.io.TFRecordWriter(path, options="GZIP") as writer:
      for i in rows:
        features = {"user_id": users[i], "item_price": float(price[i]),
                    "categories": ["c"] * int(num_categories[i])}
        writer.write(make_example(features, {k: int(v[i]) for k, v in labels.items()},
                                  ids[i], 1_700_000_000 + int(i), spec=SPEC))
  # A train split holding users u0..u9 only: the others are "new" to the new_user slice.
  os.makedirs(data_dir / "train")
  with tf.io.TFRecordWriter(str(data_dir / "train" / "train-00000-of-00001.tfrecord.gz"),
                            options="GZIP") as writer:
    for i in range(NUM_ROWS):
      if int(users[i][1:]) < 10:
        writer.write(make_example({"user_id": users[i], "item_price": float(price[i])},
                                  {k: int(v[i]) for k, v in labels.items()}, ids[i],
                                  1_600_000_000 + int(i), spec=SPEC))
  with open(data_dir / "labels.json", "w") as f:
    json.dump(LABELS, f)
  with open(data_dir / "feature_spec.yaml", "w") as f:
    yaml.safe_dump({"features": SPEC_ENTRIES}, f)
  success_marker.write_success_marker(str(data_dir), {})  # last, as pipeline.preprocess

  raw_dir = root / "raw"
  os.makedirs(raw_dir / "truth")
  with gzip.open(raw_dir / "truth" / "truth.jsonl.gz", "wt") as f:
    for i in range(NUM_ROWS):
      row = {"impression_id": ids[i], "user_id": users[i]}
      row.update({name: float(truth[name][i]) for name in truth_lib.PROBABILITY_COLUMNS})
      f.write(json.dumps(row) + "\n")

  model_dir = root / "model"
  module = TinyRanker()
  export_dir = model_dir / "export" / VERSION
  tf.saved_model.save(module, str(export_dir), signatures={"serving_default": module.serve})
  os.makedirs(export_dir / "assets.extra")  # as training.export writes it: a complete version
  with open(export_dir / "assets.extra" / "feature_spec.yaml", "w") as f:
    yaml.safe_dump({"features": SPEC_ENTRIES}, f)
  return {"data": str(data_dir), "raw": str(raw_dir), "model": str(model_dir),
          "export": str(model_dir / "export" / VERSION), "ids": ids, "users": users,
          "price": price, "num_categories": num_categories, "truth": truth,
          "labels": {k: v.astype(np.float64) for k, v in labels.items()}}


def _evaluate_cli(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "pipeline.evaluate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=timeout, check=False)


def _error_line(result: subprocess.CompletedProcess) -> str:
  """The one line a user error prints (pipeline/cli.py), after at most absl's INFO /
  WARNING progress lines; fails on anything more (a traceback, a second message)."""
  lines = [line for line in result.stderr.strip().splitlines()
           if not re.match(r"[IW]\d{4} ", line)]
  assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
  return lines[0]


def _tree(directory: str):
  return sorted(os.path.relpath(os.path.join(root, name), directory)
                for root, dirs, files in os.walk(directory) for name in dirs + files)


def test_score_saved_model_returns_metadata_labels_and_every_output(world):
  pattern = os.path.join(world["data"], "eval", "eval-*.tfrecord.gz")
  scores = scoring.score_saved_model(world["export"], pattern, SPEC, LABELS, batch_size=128)
  assert sorted(scores) == sorted(["impression_id", "timestamp", "user_id", *LABELS,
                                   "ctr", "cvr", "ctcvr", "ctavr"])
  assert scores["impression_id"].tolist() == world["ids"].tolist()  # file order
  assert scores["user_id"].tolist() == world["users"].tolist()
  assert scores["timestamp"][:2].tolist() == [1_700_000_000, 1_700_000_001]
  for name in LABELS:
    assert scores[name].dtype == np.float32
    np.testing.assert_array_equal(scores[name], world["labels"][name])
  assert scores["ctr"].dtype == np.float32 and scores["ctr"].shape == (NUM_ROWS,)
  np.testing.assert_allclose(scores["ctr"], model_ctr(world["price"], world["num_categories"]),
                             rtol=1e-5)
  np.testing.assert_allclose(scores["ctcvr"], scores["ctr"] * scores["cvr"], rtol=1e-6)


def test_score_saved_model_names_a_missing_signature(world):
  pattern = os.path.join(world["data"], "eval", "eval-*.tfrecord.gz")
  with pytest.raises(ValueError, match="no signature 'predict_raw'"):
    scoring.score_saved_model(world["export"], pattern, SPEC, LABELS, signature="predict_raw")


def test_resolve_saved_model(world):
  for path in (world["export"], os.path.dirname(world["export"]), world["model"]):
    assert runner.resolve_saved_model(path) == world["export"]
  with pytest.raises(FileNotFoundError, match="saved_model.pb"):
    runner.resolve_saved_model(world["data"])
  with pytest.raises(FileNotFoundError, match="/no/such/model: no such directory"):
    runner.resolve_saved_model("/no/such/model")


def test_evaluate_with_truth_matches_metrics_on_the_same_arrays(world):
  result = runner.evaluate(world["model"], world["data"], truth_path=world["raw"],
                           batch_size=256)
  assert result["examples"] == NUM_ROWS and result["labels"] == LABELS
  assert sorted(result["outputs"]) == ["ctavr", "ctcvr", "ctr", "cvr"]
  assert result["user_ids"] == "feature"
  assert result["truth"]["matched"] == result["truth"]["rows"] == NUM_ROWS
  assert result["feature_spec"].endswith("feature_spec.yaml")
  tasks = result["tasks"]
  assert list(tasks) == ["ctr", "cvr", "ctcvr", "ctavr"]
  labels, truth = world["labels"], world["truth"]
  ctr = model_ctr(world["price"], world["num_categories"])
  assert tasks["ctr"]["auc"] == pytest.approx(metrics.auc(labels["click"], ctr), abs=1e-9)
  assert tasks["ctr"]["gauc"] == pytest.approx(
      metrics.gauc(labels["click"], ctr, world["users"]), abs=1e-9)
  assert tasks["ctr"]["truth"]["bayes_auc"] == metrics.auc(labels["click"], truth["p_click"])
  assert tasks["ctr"]["truth"]["calibration_vs_truth"] == pytest.approx(
      ctr.sum() / truth["p_click"].sum(), rel=1e-6)
  clicked = labels["click"] == 1
  assert tasks["cvr"]["n"] == clicked.sum()
  assert tasks["cvr"]["truth"]["bayes_auc"] == metrics.auc(
      labels["purchase"][clicked], truth["p_purchase_given_click"][clicked])
  assert tasks["cvr"]["entire_space"]["n"] == NUM_ROWS
  assert tasks["ctavr"]["positives"] == labels["action"].sum()
  assert tasks["ctavr"]["truth"]["column"] == "p_ctavr"


def test_evaluate_refuses_data_without_a_valid_success_marker(world, tmp_path):
  data_dir = tmp_path / "data"
  shutil.copytree(world["data"], data_dir)
  assert runner.evaluate(world["model"], str(data_dir))["examples"] == NUM_ROWS
  shard = data_dir / "eval" / "eval-00001-of-00002.tfrecord.gz"
  os.remove(shard)  # a shard lost after the job
  with pytest.raises(success_marker.IncompleteOutputError,
                     match=r"files changed since _SUCCESS.json.*missing eval/eval-00001"):
    runner.evaluate(world["model"], str(data_dir))
  shutil.copy(os.path.join(world["data"], "eval", shard.name), shard)
  os.remove(data_dir / success_marker.MARKER_FILE)  # the job failed or is still running
  with pytest.raises(success_marker.IncompleteOutputError,
                     match=rf"{data_dir} has no _SUCCESS.json.*pipeline.preprocess"):
    runner.evaluate(world["model"], str(data_dir))
  with pytest.raises(success_marker.IncompleteOutputError,
                     match=f"^{re.escape(str(data_dir))} has no"):
    evaluate_cli.run(evaluate_cli.Settings(saved_model=[world["model"]], data=str(data_dir),
                                           output=str(tmp_path / "out.json")))
  assert not os.path.exists(tmp_path / "out.json")  # refused before anything was scored


def test_spec_and_labels_fall_back_to_the_config(tmp_path, world):
  with open(tmp_path / "spec.yaml", "w") as f:
    yaml.safe_dump({"features": SPEC_ENTRIES}, f)
  with open(tmp_path / "config.yaml", "w") as f:
    yaml.safe_dump({"feature_spec": "spec.yaml", "data": {"labels": [
        {"name": "click", "events": ["click"], "after_click": False},
        {"name": "purchase", "events": ["purchase"]}]}}, f)
  spec, label_names = runner.load_spec_and_labels(str(tmp_path), str(tmp_path / "config.yaml"))
  assert spec.names == SPEC.names and label_names == ["click", "purchase"]
  spec, label_names = runner.load_spec_and_labels(world["data"], "does/not/exist.yaml")
  assert label_names == LABELS  # DATA/ files win; the config is not read


@pytest.mark.slow  # a whole Beam job or CLI run: make test, not make test-fast
def test_cli_writes_strict_json_beside_the_report_or_to_output_never_into_the_export(
    world, tmp_path):
  model_tree = _tree(world["model"])
  report_dir = tmp_path / "report"
  result = _evaluate_cli("--saved_model", world["model"], "--data", world["data"],
                         "--truth", world["raw"], "--batch_size", "200",
                         "--report", str(report_dir))
  assert result.returncode == 0, result.stderr
  with open(report_dir / "model.json") as f:  # MODEL_DIR's name, beside index.html
    report = json.load(f, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
  assert os.path.exists(report_dir / "index.html")
  assert report["split"] == "eval" and report["examples"] == NUM_ROWS
  assert set(report["tasks"]["cvr"]) >= {"auc", "gauc", "log_loss", "calibration", "ece",
                                         "truth", "entire_space"}
  assert "bayes_auc" in result.stderr and "cvr/all" in result.stderr  # the logged table

  named = tmp_path / "elsewhere" / "metrics.json"
  evaluate_cli.run(evaluate_cli.Settings(saved_model=[world["export"]], data=world["data"],
                                         output=str(named)))
  with open(named) as f:
    assert json.load(f)["tasks"]["ctr"]["n"] == NUM_ROWS

  nowhere = _evaluate_cli("--saved_model", world["model"], "--data", world["data"])
  assert nowhere.returncode == 2
  assert _error_line(nowhere).startswith("error: say where the metrics JSON goes: --output")
  assert _tree(world["model"]) == model_tree  # nothing was written into the export


def test_cli_user_errors_are_one_line(world, tmp_path):
  output = str(tmp_path / "out.json")
  result = _evaluate_cli("--saved_model", "/no/such/model", "--data", world["data"],
                         "--output", output)
  assert result.returncode == 2, result.stderr[-2000:]
  assert _error_line(result) == "error: --saved_model /no/such/model: no such directory"
  # The same one-line path (pipeline/cli.py) for the errors found with TensorFlow loaded:
  cases = [
      (evaluate_cli.Settings(saved_model=[world["model"]], data=world["data"],
                             slice_by=["colour"], output=output),
       "error: --slice_by colour: not a scalar feature of"),
      (evaluate_cli.Settings(saved_model=[world["model"], world["export"]],
                             data=world["data"], output_dir=str(tmp_path)),
       "error: several --saved_model are named ['model']"),
  ]
  for settings, expected in cases:
    with pytest.raises(cli.user_error_types()) as raised:
      evaluate_cli.run(settings)
    assert cli.error_line(raised.value).startswith(expected), cli.error_line(raised.value)
  assert not os.path.exists(output)


def test_evaluate_slices_and_curves(world):
  result = runner.evaluate(world["model"], world["data"], truth_path=world["raw"],
                           slice_by=["user_id", "new_user"], min_slice_positives=5,
                           curve_bins=8)
  assert result["name"] == "model"  # MODEL_DIR's name
  labels = world["labels"]
  cvr_rows = result["slices"]["new_user"]["tasks"]["cvr"]
  new = np.array([int(user[1:]) >= 10 for user in world["users"]])
  by_value = {row["value"]: row for row in cvr_rows}
  assert set(by_value) == {"new", "returning"}
  clicked = labels["click"] == 1
  assert by_value["new"]["n"] == (new & clicked).sum()
  assert by_value["new"]["positives"] == labels["purchase"][new & clicked].sum()
  users = result["slices"]["user_id"]
  assert sum(row["n"] for row in users["tasks"]["ctr"]) == NUM_ROWS
  assert any(row["small"] for row in users["tasks"]["cvr"])  # kept and marked
  reliability = result["curves"]["ctr"]["reliability"]
  assert len(reliability["n"]) == 8 and sum(reliability["n"]) == NUM_ROWS
  assert "mean_truth" in reliability
  assert set(result["curves"]["cvr"]["entire_space"]) == {"clicked", "unclicked"}


@pytest.mark.slow  # a whole Beam job or CLI run: make test, not make test-fast
def test_cli_compares_two_models_in_one_report_and_from_json(world, tmp_path):
  report_dir, metrics_dir = tmp_path / "report", tmp_path / "metrics"
  args = ["--saved_model", f"a={world['model']}", "--saved_model", f"b={world['export']}",
          "--data", world["data"], "--truth", world["raw"], "--slice_by", "new_user",
          "--output_dir", str(metrics_dir), "--report", str(report_dir)]
  evaluate_cli.run(evaluate_cli.Settings(
      saved_model=[f"a={world['model']}", f"b={world['export']}"], data=world["data"],
      truth=world["raw"], slice_by=["new_user"], output_dir=str(metrics_dir),
      report=str(report_dir)))
  for name in ("a", "b"):
    with open(metrics_dir / f"{name}.json") as f:
      report = json.load(f)
    assert report["name"] == name and report["slices"]["new_user"]["values"]
    assert report["tasks"]["ctr"]["n"] == NUM_ROWS  # the single-model contract holds
  text = open(report_dir / "index.html").read()
  for section in ("comparison", "model-a", "model-b", "slices"):
    assert f'<section id="{section}"' in text
  include = subprocess.run(
      [sys.executable, "-m", "pipeline.evaluate", "--include", str(metrics_dir / "a.json"),
       "--include", f"again={metrics_dir / 'b.json'}", "--report", str(tmp_path / "merged")],
      cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
  assert include.returncode == 0, include.stderr
  merged = open(tmp_path / "merged" / "index.html").read()
  assert 'id="model-a"' in merged and 'id="model-again"' in merged
  refused = _evaluate_cli(*args, "--output", str(tmp_path / "x.json"))
  assert refused.returncode != 0 and "--output_dir" in refused.stderr


def test_evaluate_names_a_corrupt_shard(world, tmp_path):
  """A byte flipped inside a shard keeps its size, so the marker still verifies; the
  evaluator must fail naming the shard (training.shard_check), not mid-scoring."""
  from training import shard_check  # pylint: disable=g-import-not-at-top
  data_dir = tmp_path / "data"
  shutil.copytree(world["data"], data_dir)
  shard = data_dir / "eval" / "eval-00001-of-00002.tfrecord.gz"
  raw = gzip.decompress(shard.read_bytes())
  flipped = bytearray(raw)
  flipped[len(raw) // 2] ^= 0xFF
  shard.write_bytes(gzip.compress(bytes(flipped)))
  success_marker.write_success_marker(str(data_dir), {})
  with pytest.raises(shard_check.CorruptShardError, match=str(shard)):
    runner.evaluate(world["model"], str(data_dir))
