"""Tests of evaluation/curves.py, evaluation/slices.py and evaluation/html_report.py.

`synthetic_results` builds two models' evaluation results on a world whose truth is known
(no TensorFlow): "good" predicts the true probabilities, "naive" over-predicts cvr on
unclicked exposures by 1.4x, as a click-space CVR model does. Their HTML report is written
once per session (`written_report`, ~7 CPU s of matplotlib) and read by the report tests
here and in tests/test_report_browser.py.
"""

import json
import math
import os
import re

import numpy as np
import pytest

from evaluation import curves
from evaluation import html_report
from evaluation import report
from evaluation import slices
from tests.conftest import build_once

SLICE_FEATURES = ("item_category", "device")


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def synthetic_results(num_rows: int = 20000, seed: int = 0):
  """Two models' results (as runner.evaluate returns them) and the world's arrays."""
  rng = np.random.default_rng(seed)
  category = rng.choice(["shoes", "phones", "books", "toys", "rare"], num_rows,
                        p=[0.4, 0.3, 0.2, 0.097, 0.003])
  device = rng.choice(["ios", "android", "web"], num_rows, p=[0.45, 0.45, 0.1])
  p_click = sigmoid(rng.normal(-2.5, 0.8, num_rows))
  p_cvr = sigmoid(rng.normal(-2.0, 0.9, num_rows) - 0.5 * (category == "books"))
  click = (rng.random(num_rows) < p_click).astype(np.float64)
  purchase = click * (rng.random(num_rows) < p_cvr)
  labels = {"click": click, "purchase": purchase}
  truth = {"p_click": p_click, "p_purchase_given_click": p_cvr, "p_ctcvr": p_click * p_cvr}
  users = np.array([f"u{i}" for i in rng.integers(0, 500, num_rows)], dtype=object)
  models = {
      "esmm": {"ctr": p_click, "cvr": p_cvr},
      "naive": {"ctr": np.clip(p_click * np.exp(rng.normal(0, 0.3, num_rows)), 1e-6, 1),
                "cvr": np.where(click == 1, p_cvr, np.clip(1.4 * p_cvr, 0, 1))},
  }
  results = []
  for name, predictions in models.items():
    predictions = models[name] = dict(predictions, ctcvr=predictions["ctr"] * predictions["cvr"])
    results.append({
        "name": name, "saved_model": f"/models/{name}/export/1", "data": "/data",
        "file_pattern": "/data/eval/eval-*.tfrecord.gz", "examples": num_rows,
        "truth": {"path": "/raw/truth/truth.jsonl.gz", "rows": num_rows, "matched": num_rows},
        "tasks": report.task_table(labels, predictions, user_ids=users, truth=truth),
        "curves": curves.task_curves(labels, predictions, truth=truth, bins=10),
        "slices": slices.slice_metrics(labels, predictions,
                                       {"item_category": category, "device": device}),
    })
  world = {"labels": labels, "truth": truth, "category": category, "predictions": models}
  return results, world


def test_reliability_bins_are_equal_mass_and_sum_to_the_rows():
  rng = np.random.default_rng(1)
  scores = rng.random(1003)
  target = (rng.random(1003) < scores).astype(float)
  bins = curves.reliability_bins(target, scores, truth=scores, bins=10)
  assert sum(bins["n"]) == 1003 and max(bins["n"]) - min(bins["n"]) <= 1
  assert sum(bins["positives"]) == target.sum()
  assert bins["low"] == sorted(bins["low"]) and all(
      lo <= mean <= hi for lo, mean, hi in zip(bins["low"], bins["mean_prediction"], bins["high"]))
  np.testing.assert_allclose(bins["mean_truth"], bins["mean_prediction"])  # truth = scores


def test_entire_space_curve_shows_the_naive_over_prediction_on_unclicked():
  results, _ = synthetic_results()
  esmm, naive = ({r["name"]: r for r in results}[n]["curves"]["cvr"]["entire_space"]
                 for n in ("esmm", "naive"))
  for group in ("clicked", "unclicked"):
    np.testing.assert_allclose(esmm[group]["mean_prediction"], esmm[group]["observed"])
  ratio = np.array(naive["unclicked"]["mean_prediction"]) / np.array(naive["unclicked"]["observed"])
  np.testing.assert_allclose(ratio, 1.4, rtol=0.02)


def test_slices_match_the_metrics_on_the_slice_rows_and_mark_small_ones():
  results, world = synthetic_results()
  labels, category = world["labels"], world["category"]
  entry = results[0]["slices"]["item_category"]
  assert entry["values"][0] == "shoes" and entry["values"][-1] == "rare"  # by exposures
  ctr_rows = {row["value"]: row for row in entry["tasks"]["ctr"]}
  cvr_rows = {row["value"]: row for row in entry["tasks"]["cvr"]}
  shoes = category == "shoes"
  assert ctr_rows["shoes"]["n"] == shoes.sum()
  assert ctr_rows["shoes"]["positives"] == labels["click"][shoes].sum()
  rows = shoes & (labels["click"] == 1)
  expected = report.task_metrics(labels["purchase"][rows],
                                 world["predictions"]["esmm"]["cvr"][rows])
  assert cvr_rows["shoes"]["auc"] == pytest.approx(expected["auc"], abs=1e-12)
  assert cvr_rows["shoes"]["calibration"] == pytest.approx(expected["calibration"], abs=1e-12)
  assert ctr_rows["rare"]["small"] and cvr_rows["rare"]["small"]  # ~60 rows: kept, marked
  assert not ctr_rows["shoes"]["small"]
  assert sum(row["n"] for row in entry["tasks"]["cvr"]) == labels["click"].sum()


def test_new_user_values():
  values = slices.new_user_values(np.array(["a", "b", 3], dtype=object), np.array(["b", "3"]))
  assert values.tolist() == ["new", "returning", "returning"]
  assert slices.slice_values(np.array([1.0, 2.0])).tolist() == ["1", "2"]
  labels = {"click": np.array([1.0, 0, 1, 0, 1])}
  by_position = slices.slice_metrics(labels, {"ctr": np.full(5, 0.5)},
                                     {"position": np.array([10, 2, 2, 1, 10])})
  assert by_position["position"]["values"] == ["1", "2", "10"]  # numeric order


def written_report(tmp_path_factory) -> str:
  """The report directory of synthetic_results(), written once per session (shared with
  tests/test_report_browser.py; read-only: a test that changes it copies it first)."""
  return build_once(tmp_path_factory, "synthetic_report", lambda directory: {
      "index": html_report.write_html_report(synthetic_results()[0], directory)})["index"]


def test_html_report_has_every_section_and_only_local_images(tmp_path_factory):
  index = written_report(tmp_path_factory)
  text = open(index, encoding="utf-8").read()
  for section in ("overview", "comparison", "model-esmm", "model-naive", "slices"):
    assert f'<section id="{section}"' in text
  sources = re.findall(r'<img src="([^"]+)"', text)
  assert len(sources) == 2 * 3 + 1 + len(SLICE_FEATURES)  # per model 3, comparison, slices
  for source in sources:
    assert source.startswith("images/")
    assert os.path.getsize(os.path.join(os.path.dirname(index), source)) > 1000
  assert not re.search(r'(src|href)="(https?:)?//', text)  # nothing from the network
  assert "cvr/all" in text and text.count('<span class="badge">small</span>') >= 2
  assert 'class="bad">1.4' in text  # the naive cvr's unclicked calibration is flagged


def test_html_report_refuses_duplicate_names(tmp_path):
  results, _ = synthetic_results(num_rows=2000)
  with pytest.raises(ValueError, match="distinct"):
    html_report.write_html_report([results[0], results[0]], str(tmp_path))
  assert math.isfinite(results[0]["tasks"]["ctr"]["auc"])


def test_html_report_of_a_json_without_curves_or_slices(tmp_path):
  """An evaluation JSON written before the report existed still renders (tables only)."""
  results, _ = synthetic_results(num_rows=2000)
  old = {key: value for key, value in results[0].items() if key not in ("curves", "slices")}
  old["truth"] = None
  text = open(html_report.write_html_report([json.loads(json.dumps(report.json_ready(old)))],
                                            str(tmp_path)), encoding="utf-8").read()
  assert '<section id="model-esmm"' in text and "<img" not in text
  assert 'id="slices"' not in text and "no simulator truth" in text


def test_html_report_from_json_round_trip(tmp_path):
  """--include reads strict JSON back (NaN -> null): the report draws from that too."""
  results, _ = synthetic_results(num_rows=3000)
  loaded = json.loads(json.dumps(report.json_ready(results), allow_nan=False))
  text = open(html_report.write_html_report(loaded, str(tmp_path)), encoding="utf-8").read()
  assert len(re.findall(r'<img src="images/', text)) == 9
