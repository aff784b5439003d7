"""The numbers behind the report's pictures: reliability bins and score histograms.

Flow position: evaluation.scoring (labels and predictions per exposure) -> evaluation.report
(task rows) -> **curves** -> the metrics JSON ("curves") -> evaluation.html_report draws
them. Kept as numbers in the JSON, so a report can be redrawn, or several models
compared, from evaluation JSONs written earlier, without scoring again.

Per task (rows and target as evaluation.report.TASKS):
  reliability  equal-mass bins of the prediction (rows sorted by score, cut into runs of
               equal size; ~15 positives per bin, 4 to `bins` bins): per bin n, positives, mean_prediction, observed (positives / n),
               low / high (the prediction range of the bin) and, with the truth,
               mean_truth (the mean true probability of the bin's rows: the curve a
               Bayes-optimal model would draw against the same bins).
  histogram    log10(prediction) counts of the positives and negatives over shared
               equal-width edges.
And for cvr with the truth, "entire_space": reliability of the predicted cvr against the
true p(purchase | click, x) over all exposures, for the clicked and the unclicked ones
apart (a CVR model fit on clicks only is biased on the unclicked: sample selection bias).
"""

import math
from typing import Any, Dict, Mapping, Optional

import numpy as np

from evaluation import report

POSITIVES_PER_BIN = 15  # fewer bins for rare targets: ~15 positives per bin on average
MIN_BINS = 4
LOG10_FLOOR = -7.0  # log10 of the smallest score a histogram shows (log loss clips at 1e-7)


def _mean(values: np.ndarray) -> float:
  return float(np.mean(values)) if len(values) else math.nan


def reliability_bins(target: np.ndarray, scores: np.ndarray, truth: Optional[np.ndarray] = None,
                     bins: int = 20) -> Dict[str, list]:
  """Equal-mass bins of `scores` with the observed (and true) rate of each.

  Args:
    target: [n] 0/1 observed labels, or None-free probabilities (the entire-space
      curve passes the true probability here, with `truth` None).
    scores: [n] predicted probabilities.
    truth: optional [n] true probabilities of the same rows (NaN where unknown).
    bins: number of bins (fewer when n < bins).

  Returns:
    column -> list over bins: n, positives, mean_prediction, observed, low, high, and
    mean_truth when `truth` is given.
  """
  target = np.asarray(target, np.float64)
  scores = np.asarray(scores, np.float64)
  n = len(scores)
  bins = max(1, min(bins, n))
  order = np.argsort(scores, kind="mergesort")
  edges = (np.arange(bins + 1) * n) // bins
  columns = {"n": [], "positives": [], "mean_prediction": [], "observed": [], "low": [],
             "high": []}
  if truth is not None:
    columns["mean_truth"] = []
    truth = np.asarray(truth, np.float64)
  for start, end in zip(edges[:-1], edges[1:]):
    if end <= start:
      continue
    rows = order[start:end]
    columns["n"].append(int(end - start))
    columns["positives"].append(float(target[rows].sum()))
    columns["mean_prediction"].append(_mean(scores[rows]))
    columns["observed"].append(_mean(target[rows]))
    columns["low"].append(float(scores[rows[0]]))
    columns["high"].append(float(scores[rows[-1]]))
    if truth is not None:
      known = truth[rows][~np.isnan(truth[rows])]
      columns["mean_truth"].append(_mean(known))
  return columns


def score_histogram(target: np.ndarray, scores: np.ndarray, bins: int = 40) -> Dict[str, list]:
  """Counts of log10(score) for positives and negatives over shared edges."""
  logs = np.log10(np.clip(np.asarray(scores, np.float64), 10 ** LOG10_FLOOR, 1.0))
  target = np.asarray(target) == 1
  low, high = (float(logs.min()), float(logs.max())) if len(logs) else (LOG10_FLOOR, 0.0)
  if high - low < 1e-6:
    low, high = low - 0.5, high + 0.5
  edges = np.linspace(low, high, bins + 1)
  return {"log10_edges": edges.tolist(),
          "positives": np.histogram(logs[target], edges)[0].tolist(),
          "negatives": np.histogram(logs[~target], edges)[0].tolist()}


def task_curves(labels: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
                truth: Optional[Mapping[str, np.ndarray]] = None,
                bins: int = 20) -> Dict[str, Dict[str, Any]]:
  """Reliability bins and histograms of every task `report.task_table` evaluates.

  Args:
    labels, predictions, truth: as report.task_table (truth aligned, NaN where unknown).
    bins: equal-mass bins of the reliability diagrams, at most: a task gets
      max(MIN_BINS, positives // POSITIVES_PER_BIN) when that is fewer, so a rare target
      (CTCVR, CVR on a small eval day) draws a few readable bins, not noise. The
      entire-space curves (against the truth, no label noise) keep `bins`.

  Returns:
    task -> {"reliability": ..., "histogram": ...[, "entire_space": {"clicked": ...,
    "unclicked": ...}]} (module docstring).
  """
  curves = {}
  for task in report.TASKS:
    arrays = report.task_arrays(task, labels, predictions)
    if arrays is None:
      continue
    target, scores, rows = arrays
    truth_values = (np.asarray(truth[task.truth], np.float64)
                    if truth is not None and task.truth in truth else None)
    task_bins = min(bins, max(MIN_BINS, int(target[rows].sum()) // POSITIVES_PER_BIN))
    entry = {
        "reliability": reliability_bins(
            target[rows], scores[rows], None if truth_values is None else truth_values[rows],
            task_bins),
        "histogram": score_histogram(target[rows], scores[rows]),
    }
    if task.name == "cvr" and truth_values is not None and "click" in labels:
      known = ~np.isnan(truth_values)
      clicked = np.asarray(labels["click"]) == 1
      entry["entire_space"] = {
          group: reliability_bins(truth_values[known & mask], scores[known & mask], bins=bins)
          for group, mask in (("clicked", clicked), ("unclicked", ~clicked))}
    curves[task.name] = entry
  return curves
