"""Smoke tests of the benchmark code paths at tiny sizes (no timing assertions).

Each benchmark runs end to end on the session's shared 5000-impression data and model
(see tests/test_serving.py) and must write its markdown table with the machine header.
"""

import os

import pytest

from benchmarks import beam_preprocess
from benchmarks import common
from benchmarks import input_pipeline
from benchmarks import serving_latency
from benchmarks import training_throughput
from tests import test_serving


def test_markdown_table_and_result_file(tmp_path):
  table = common.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]])
  assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | y |"]
  path = common.write_result("demo", "Demo", table, str(tmp_path), command="python -m x")
  text = open(path).read()
  assert text.startswith("# Demo\n")
  for key in ("cores (nproc)", "CPU", "memory", "tensorflow", "apache-beam", "date (UTC)"):
    assert f"| {key} |" in text
  assert str(os.cpu_count()) in text and table in text


def test_percentiles():
  seconds = [0.001] * 99 + [0.1]
  assert common.percentile_ms(seconds, 50) == pytest.approx(1.0)
  assert common.percentile_ms(seconds, 100) == pytest.approx(100.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return test_serving.shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(workdir):
  return common.ensure_data(workdir, test_serving.IMPRESSIONS)


@pytest.mark.slow
def test_training_throughput_runs_ours_and_deepctr(data_dir, tmp_path):
  results = training_throughput.run(data_dir, batch_size=256, results_dir=str(tmp_path),
                                    variants=("ours", "deepctr"), in_process=True)
  for variant in ("ours", "deepctr"):
    r = results[variant]
    assert r["steady_ex_per_s"] > 0 and 0.0 <= r["ctr_auc"] <= 1.0
    assert r["eval_examples"] > 0
  # Same embedding size and towers: the parameter counts differ only by DeepCTR's
  # padding row of the list feature, its bias-free logits and its output biases.
  assert abs(results["ours"]["params"] - results["deepctr"]["params"]) < 100
  assert "ours / DeepCTR" in open(tmp_path / "training_throughput.md").read()


@pytest.mark.slow
def test_input_pipeline_reports_three_rates(data_dir, tmp_path):
  results = input_pipeline.run(data_dir, batch_size=256, results_dir=str(tmp_path))
  assert len(results) == 3 and all(r["ex_per_s"] > 0 for r in results.values())
  assert os.path.exists(tmp_path / "input_pipeline.md")


@pytest.mark.slow
def test_serving_latency_covers_both_signatures(workdir, data_dir, tmp_path):
  saved_model = common.ensure_model(workdir, data_dir)
  rows = serving_latency.run(saved_model, data_dir, calls=20, results_dir=str(tmp_path),
                             batch_sizes=(1, 8))
  assert {(r["signature"].split()[0], r["batch"]) for r in rows} == {
      (path, batch) for path in ("serving_default", "predict_raw", "Predictor")
      for batch in (1, 8)}
  assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_beam_preprocess_counts_every_record(workdir, tmp_path):
  rows = beam_preprocess.run(1000, workers=(1,), workdir=workdir, results_dir=str(tmp_path))
  (row,) = rows
  assert row["impressions"] == 1000 and row["records"] == 1000 + row["events"]
  assert row["peak_rss_gib"] > 0.05  # a Python process with TF and Beam loaded
  assert "records/s" in open(tmp_path / "beam_preprocess.md").read()
