"""End to end on 20k simulated impressions: simulate -> Beam -> train ESMM -> export -> serve.

One module-scoped run feeds every test here; together they check that the same raw record
gets the same numbers through every path (Beam+tf.data into the in-memory model, the
SavedModel's serving_default on the Beam-written Examples, predict_raw on dense tensors,
and the predict CLI's library on the raw JSON), that the served graph holds the
validation-fitted output calibration, and that the model learned something
real relative to the simulator's Bayes-optimal AUC.
"""

import gzip
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from configs import config as config_lib
from evaluation import runner
from features import example_codec
from features import parsing
from models import calibration
from pipeline import preprocess
from serving import predictor
from training import data
from training import trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow


def _run(module, *args):
  subprocess.run([sys.executable, "-m", module, *args], check=True, cwd=REPO,
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp("e2e")
  raw, data_dir, model_dir = root / "raw", root / "data", root / "model"
  _run("pipeline.simulate", f"--output={raw}", "--impressions=20000", "--seed=11")
  # What `python -m pipeline.preprocess` runs, in this process (TF and Beam are loaded:
  # a child would add ~5 CPU s of imports); the CLI's own runs are tests/test_entry_points'.
  preprocess.run([f"--impressions={raw}/impressions/*.jsonl.gz",
                  f"--events={raw}/events/*.jsonl.gz", f"--output={data_dir}"])
  config = config_lib.load_config(os.path.join(REPO, "configs", "esmm.yaml"),
                                  overrides={"train": {"epochs": 3, "batch_size": 512}})
  result = trainer.train_and_export(config, str(data_dir), str(model_dir))
  return {"raw": str(raw), "data": str(data_dir), "result": result, "config": config,
          "spec": config.load_feature_spec(),
          "loaded": tf.saved_model.load(result.export_dir)}  # the export, loaded once


def _eval_records(run, limit=512):
  files = sorted(tf.io.gfile.glob(data.split_pattern(run["data"], "eval")))
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(limit)
  return [record.numpy() for record in dataset]


def test_reloaded_savedmodel_matches_in_memory_model(run):
  serialized = _eval_records(run)
  features, _ = parsing.parse_examples(tf.constant(serialized), run["spec"], [])
  in_memory = run["result"].scorer(features, training=False)
  loaded = run["loaded"]
  served = loaded.signatures["serving_default"](examples=tf.constant(serialized))
  assert set(served) == {"ctr", "cvr", "ctcvr"}
  for name, values in served.items():
    np.testing.assert_allclose(values.numpy(), in_memory[name].numpy().reshape(-1),
                               rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(served["ctcvr"].numpy(),
                             served["ctr"].numpy() * served["cvr"].numpy(), rtol=1e-5)


def test_the_export_serves_the_validation_fitted_calibration(run):
  """The config's ips_ctr calibration, fitted on the validation day, is in the served
  graph: served = Calibration.apply(the uncalibrated scorer), and it is recorded."""
  assert run["config"].train.calibration == "ips_ctr"
  fitted = calibration.Calibration.from_dict(run["result"].metrics["calibration"])
  with open(os.path.join(run["result"].export_dir, "assets.extra",
                         "export_metadata.json")) as f:
    assert json.load(f)["calibration"] == fitted.to_dict()
  assert fitted.ctr.rows == run["result"].metrics["validation_examples"]
  assert fitted.ctr.method == "platt"
  cvr = fitted.rates["cvr"]  # the richest form its validation purchases allow
  assert cvr.method == next(form for form in ("ips_ctr", "platt", "bias", "none")
                            if form == "none" or min(cvr.positives, cvr.rows - cvr.positives)
                            >= calibration.MIN_POSITIVES[form])
  serialized = _eval_records(run)
  features, _ = parsing.parse_examples(tf.constant(serialized), run["spec"], [])
  raw = {k: v.numpy() for k, v in run["result"].model.scorer(features, training=False).items()}
  served = run["loaded"].signatures["serving_default"](
      examples=tf.constant(serialized))
  expected = fitted.apply(raw)
  for name, values in served.items():
    np.testing.assert_allclose(values.numpy(), expected[name], rtol=2e-4, atol=1e-7)
  assert not np.allclose(expected["ctr"], raw["ctr"].reshape(-1))  # it does something


def test_predict_raw_signature_matches_serving_default(run):
  serialized = _eval_records(run, 64)
  spec = run["spec"]
  features, _ = parsing.parse_examples(tf.constant(serialized), spec, [])
  dense = {}
  for feature in spec:
    value = features[feature.name]
    if feature.multivalent:
      value = value.to_tensor(default_value=feature.default_value)
    dense[feature.name] = value
  loaded = run["loaded"]
  raw_out = loaded.signatures["predict_raw"](**dense)
  ex_out = loaded.signatures["serving_default"](examples=tf.constant(serialized))
  for name in ex_out:
    np.testing.assert_allclose(raw_out[name].numpy(), ex_out[name].numpy(), rtol=1e-6)


def test_raw_json_scores_equal_beam_path_scores(run):
  """No training/serving skew: raw log JSON through the SavedModel == Beam's Examples."""
  serialized = _eval_records(run, 2000)
  codec = example_codec.ExampleCodec(run["spec"])
  by_id = {codec.to_dict(record)["impression_id"]: record for record in serialized}
  raw_records = []
  impressions_dir = os.path.join(run["raw"], "impressions")
  for name in sorted(os.listdir(impressions_dir)):
    with gzip.open(os.path.join(impressions_dir, name), "rt") as f:
      for line in f:
        record = json.loads(line)
        if record["impression_id"] in by_id:
          raw_records.append(record)
  assert len(raw_records) >= 100
  scored = list(predictor.Predictor(run["result"].export_dir).score(raw_records))
  assert all(result.error is None for result in scored)
  loaded = run["loaded"]
  beam_serialized = [by_id[record["impression_id"]] for record in raw_records]
  beam_out = loaded.signatures["serving_default"](examples=tf.constant(beam_serialized))
  for name, values in beam_out.items():
    from_raw = np.array([result.predictions[name] for result in scored])
    np.testing.assert_allclose(from_raw, values.numpy(), rtol=1e-6)


def test_beam_written_values_round_trip_from_raw_logs(run):
  serialized = _eval_records(run, 300)
  codec = example_codec.ExampleCodec(run["spec"], run["config"].data.label_names)
  written = {}
  for record in serialized:
    values = codec.to_dict(record)
    written[values["impression_id"]] = values
  impressions_dir = os.path.join(run["raw"], "impressions")
  checked = 0
  for name in sorted(os.listdir(impressions_dir)):
    with gzip.open(os.path.join(impressions_dir, name), "rt") as f:
      for line in f:
        record = json.loads(line)
        if record["impression_id"] not in written:
          continue
        expected = codec.coerce(record)
        got = written[record["impression_id"]]
        for key, value in expected.items():
          if isinstance(value, float):
            assert got[key] == pytest.approx(value, rel=1e-6), key
          else:
            assert got[key] == value, key
        checked += 1
  assert checked == len(written)


def test_ctr_auc_is_real_and_near_bayes(run):
  report = runner.evaluate(run["result"].export_dir, run["data"], truth_path=run["raw"])
  ctr = report["tasks"]["ctr"]
  assert ctr["auc"] > 0.62, ctr
  assert ctr["truth"]["bayes_auc"] - ctr["auc"] < 0.15, ctr
  assert 0.5 < ctr["calibration"] < 2.0, ctr
  ctcvr = report["tasks"]["ctcvr"]
  assert ctcvr["auc"] > 0.55, ctcvr
  # The Keras metric logged at training time agrees with the exact evaluation.
  assert run["result"].metrics["eval"]["ctr_auc"] == pytest.approx(ctr["auc"], abs=0.02)



def test_final_metrics_are_those_of_the_weights_it_ends_with(run):
  """metrics.json's eval and validation metrics are read from the History of the epoch
  whose weights the model ends with (no second pass over each split): evaluating the
  returned model on each split gives the same numbers."""
  result, spec, config = run["result"], run["spec"], run["config"]
  metrics = result.metrics
  assert metrics["best_epoch"] is not None and metrics["restored_best_weights"]
  labels = config.data.label_names
  validation = data.ValidationSplit(
      from_timestamp=config_lib.instant_timestamp(metrics["validation_from"]))
  splits = {"eval": data.make_dataset(data.split_pattern(run["data"], "eval"), spec, labels,
                                      512, shuffle=False),
            "validation": data.make_dataset(data.split_pattern(run["data"], "train"), spec,
                                            labels, 512, shuffle=False,
                                            keep=validation.is_validation)}
  for split, dataset in splits.items():
    fresh = result.model.evaluate(dataset, return_dict=True, verbose=0)
    assert set(fresh) == set(metrics[split]), split
    for name, value in metrics[split].items():
      assert fresh[name] == pytest.approx(value, rel=1e-5, abs=1e-7), (split, name)
