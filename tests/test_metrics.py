"""Tests of evaluation/metrics.py and the task table of evaluation/report.py."""

import itertools
import json
import math

import numpy as np
import pytest

from evaluation import metrics
from evaluation import report


def brute_force_auc(labels, scores, weights=None):
  weights = np.ones(len(labels)) if weights is None else weights
  numerator = denominator = 0.0
  for i, j in itertools.product(range(len(labels)), repeat=2):
    if labels[i] == 1 and labels[j] == 0:
      pair = weights[i] * weights[j]
      denominator += pair
      numerator += pair * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0)
  return numerator / denominator


def test_auc_hand_computed_values_and_ties():
  assert metrics.auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
  assert metrics.auc([0, 1, 0, 1], [0.5, 0.5, 0.2, 0.9]) == 3.5 / 4
  assert metrics.auc([0, 1, 0, 1], [0.3, 0.3, 0.3, 0.3]) == 0.5  # all tied
  assert metrics.auc([1, 0], [0.7, 0.7]) == 0.5
  assert metrics.auc([0, 0, 1], [0.1, 0.2, 0.3]) == 1.0
  assert metrics.auc([0, 0, 1], [0.3, 0.2, 0.1]) == 0.0
  assert math.isnan(metrics.auc([1, 1], [0.2, 0.3]))
  assert math.isnan(metrics.auc([], []))
  with pytest.raises(ValueError, match="0 or 1"):
    metrics.auc([0, 2], [0.1, 0.2])


def test_auc_equals_brute_force_and_weights_equal_repeated_rows():
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, 60)
  scores = np.round(rng.random(60), 1)  # many ties
  assert metrics.auc(labels, scores) == pytest.approx(brute_force_auc(labels, scores), abs=1e-12)
  weights = rng.integers(1, 4, 60)
  repeated = np.repeat(np.arange(60), weights)
  assert metrics.auc(labels, scores, weights) == pytest.approx(
      metrics.auc(labels[repeated], scores[repeated]), abs=1e-12)


def test_gauc_weights_by_exposures_and_skips_single_class_users():
  labels = [1, 0, 0, 1, 0, 0, 0]
  scores = [0.9, 0.1, 0.95, 0.2, 0.1, 0.5, 0.6]
  users = ["a", "a", "a", "b", "b", "c", "c"]
  # a: 0.9 beats 0.1, loses to 0.95 -> 0.5 over 3 rows; b: 1.0 over 2 rows; c: one class.
  assert metrics.gauc(labels, scores, users) == pytest.approx((3 * 0.5 + 2 * 1.0) / 5)
  group_auc, exposures = metrics.grouped_auc(labels, scores, users)
  assert group_auc[:2].tolist() == [0.5, 1.0] and math.isnan(group_auc[2])
  assert exposures.tolist() == [3, 2, 2]
  assert math.isnan(metrics.gauc([0, 0], [0.1, 0.2], ["a", "b"]))


def test_grouped_auc_equals_a_loop_of_auc_per_group():
  rng = np.random.default_rng(1)
  users = rng.integers(0, 30, 2000)
  labels = rng.integers(0, 2, 2000)
  scores = np.round(rng.random(2000), 2)
  group_auc, exposures = metrics.grouped_auc(labels, scores, users)
  for user in range(30):
    rows = users == user
    expected = metrics.auc(labels[rows], scores[rows])
    assert exposures[user] == rows.sum()
    assert (math.isnan(group_auc[user]) and math.isnan(expected)) or (
        group_auc[user] == pytest.approx(expected, abs=1e-12))


def test_log_loss_and_calibration_by_hand():
  assert metrics.log_loss([1, 0], [0.8, 0.3]) == pytest.approx(
      -(math.log(0.8) + math.log(0.7)) / 2)
  assert metrics.log_loss([1], [0.0]) == pytest.approx(-math.log(metrics.LOG_LOSS_EPSILON))
  assert metrics.calibration([1, 0, 0, 1], [0.5, 0.25, 0.25, 0.5]) == 0.75
  assert math.isnan(metrics.calibration([0, 0], [0.1, 0.2]))


def test_ece_by_hand_and_near_zero_on_a_calibrated_set():
  # width bins of 0.5: [0.2, 0.4] vs labels [0, 1] -> |0.6 - 1|; [0.9] vs [1] -> |0.9 - 1|.
  assert metrics.expected_calibration_error(
      [0, 1, 1], [0.2, 0.4, 0.9], bins=2, binning="width") == pytest.approx(0.5 / 3)
  rng = np.random.default_rng(2)
  probabilities = rng.beta(1, 20, 200_000)
  labels = (rng.random(200_000) < probabilities).astype(float)
  for binning in ("mass", "width"):
    assert metrics.expected_calibration_error(labels, probabilities, binning=binning) < 0.002
    assert metrics.expected_calibration_error(labels, probabilities / 2, binning=binning) > 0.015


def test_expected_auc_brute_force_and_hard_labels():
  rng = np.random.default_rng(3)
  probabilities, scores = rng.random(12), np.round(rng.random(12), 1)
  numerator = denominator = 0.0
  for i, j in itertools.permutations(range(12), 2):
    pair = probabilities[i] * (1 - probabilities[j])
    denominator += pair
    numerator += pair * (1.0 if scores[i] > scores[j] else 0.5 if scores[i] == scores[j] else 0)
  assert metrics.expected_auc(probabilities, scores) == pytest.approx(numerator / denominator)
  hard = rng.integers(0, 2, 12).astype(float)
  assert metrics.expected_auc(hard, scores) == pytest.approx(metrics.auc(hard, scores))


def test_ranks_and_correlations():
  assert metrics.average_ranks([10, 20, 20, 30]).tolist() == [1, 2.5, 2.5, 4]
  x = np.linspace(0.01, 0.99, 50)
  assert metrics.spearman(x, x ** 3) == pytest.approx(1.0)
  assert metrics.pearson(x, 2 * x + 1) == pytest.approx(1.0)
  assert math.isnan(metrics.pearson([1, 1, 1], [1, 2, 3]))


def simulated(n=60_000, noise=0.6, seed=4):
  """A truth, labels drawn from it and a model that is the truth plus logit noise."""
  rng = np.random.default_rng(seed)
  logit = lambda p: np.log(p / (1 - p))
  sigmoid = lambda z: 1 / (1 + np.exp(-z))
  users = rng.integers(0, 300, n).astype(str)
  p_click = sigmoid(rng.normal(-2.0, 1.0, n))
  p_cvr = sigmoid(rng.normal(-1.5, 1.0, n))
  p_action = sigmoid(rng.normal(-1.0, 1.0, n))
  click = rng.random(n) < p_click
  labels = {"click": click.astype(float),
            "purchase": (click & (rng.random(n) < p_cvr)).astype(float),
            "action": (click & (rng.random(n) < p_action)).astype(float)}
  truth = {"p_click": p_click, "p_purchase_given_click": p_cvr, "p_ctcvr": p_click * p_cvr,
           "p_ctavr": p_click * p_action}
  ctr = sigmoid(logit(p_click) + rng.normal(0, noise, n))
  cvr = sigmoid(logit(p_cvr) + rng.normal(0, noise, n))
  predictions = {"ctr": ctr, "cvr": cvr, "ctcvr": ctr * cvr}
  return labels, predictions, users, truth


def test_task_table_populations_targets_and_skipped_tasks():
  labels = {"click": np.array([1, 1, 0, 0, 1.]), "purchase": np.array([1, 0, 0, 0, 1.])}
  predictions = {"ctr": np.array([.9, .8, .2, .1, .7]), "cvr": np.array([.6, .3, .9, .9, .2]),
                 "ctcvr": np.array([.5, .2, .1, .05, .1]), "ctmicro": np.full(5, .1)}
  table = report.task_table(labels, predictions)
  assert list(table) == ["ctr", "cvr", "ctcvr"]  # ctmicro: no micro label
  assert table["cvr"]["n"] == 3 and table["cvr"]["positives"] == 2
  assert table["cvr"]["rows"] == "click == 1"
  assert table["cvr"]["auc"] == metrics.auc([1, 0, 1], [.6, .3, .2])
  assert table["ctcvr"]["n"] == 5 and table["ctcvr"]["target"] == "click * purchase"
  assert table["ctr"]["calibration"] == pytest.approx(2.7 / 3)
  assert "gauc" not in table["ctr"] and "truth" not in table["ctr"]


def test_bayes_gap_is_positive_for_a_noisy_model_of_the_truth():
  labels, predictions, users, truth = simulated()
  table = report.task_table(labels, predictions, user_ids=users, truth=truth)
  assert list(table) == ["ctr", "cvr", "ctcvr"]
  for name in ("ctr", "cvr", "ctcvr"):
    block = table[name]["truth"]
    assert block["n"] == table[name]["n"]
    assert block["model_auc"] == table[name]["auc"]
    assert block["auc_gap"] > 0.005, name
    assert block["log_loss_gap"] > 0, name
    assert block["gauc_gap"] > 0, name
    assert 0.5 < block["pearson"] < 1
  space = table["cvr"]["entire_space"]
  assert space["n"] == len(users) and space["truth_column"] == "p_purchase_given_click"
  assert space["bayes_expected_auc"] > space["expected_auc"] > 0.5
  assert space["spearman"] < 1 and space["calibration"] == pytest.approx(1.0, abs=0.05)
  assert 0 < table["ctr"]["gauc_users"] <= 300


def test_align_truth_joins_by_impression_id_and_marks_unmatched_rows():
  truth = {"impression_id": np.array(["c", "a", "b"], dtype=object),
           "user_id": np.array(["uc", "ua", "ub"], dtype=object),
           "p_click": np.array([0.3, 0.1, 0.2])}
  aligned, matched = report.align_truth(["a", "x", "c"], truth)
  assert matched.tolist() == [True, False, True]
  assert aligned["p_click"][[0, 2]].tolist() == [0.1, 0.3] and math.isnan(aligned["p_click"][1])
  assert aligned["user_id"].tolist() == ["ua", None, "uc"]


def test_json_ready_and_format_table():
  labels, predictions, users, truth = simulated(n=3000)
  table = report.task_table(labels, predictions, user_ids=users, truth=truth)
  text = report.format_table(table)
  assert text.splitlines()[0].split()[:3] == ["task", "rows", "n"]
  assert "cvr/all" in text
  json.dumps(report.json_ready({"x": float("nan"), "y": np.float32(0.5), "z": [np.int64(2)]}),
             allow_nan=False)
  assert report.json_ready({"x": float("nan")}) == {"x": None}
