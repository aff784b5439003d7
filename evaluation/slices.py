"""Sliced metrics: per value of a feature, each task's count, positives, AUC, calibration.

Flow position: evaluation.scoring (labels, predictions and the slice features per
exposure) -> **slices** -> the metrics JSON ("slices") and the report's slice tables.
The metrics are the project's own exact ones (evaluation.metrics), on the rows each task
is defined on (evaluation.report.TASKS: cvr over clicked exposures, ...). Small slices
are kept and marked (`small: true`), never dropped: a slice is small when its positives
or negatives are fewer than `min_positives`, where the AUC's standard error is large
(with 30 positives it is ~0.05).

The JSON:
  {feature: {"min_positives": k,
             "values": [value, ...] (integers in order, others by exposures, descending),
             "tasks": {task: [{"value", "n", "positives", "positive_rate",
                               "mean_prediction", "auc", "calibration", "small"}, ...]}}}

Derived slice: `new_user` ("new" when the exposure's user_id is not in the train split,
else "returning"), computed by evaluation.runner from the train split's user ids.
"""

import math
import re
from typing import Any, Dict, Mapping, Sequence

import numpy as np

from evaluation import metrics
from evaluation import report

MIN_POSITIVES = 30
NEW_USER = "new_user"


def slice_values(values: np.ndarray) -> np.ndarray:
  """The slice keys as strings (ints print without a decimal point)."""
  values = np.asarray(values)
  if values.dtype.kind == "f" and np.all(np.mod(values, 1) == 0):
    values = values.astype(np.int64)
  return np.array([str(value) for value in values], dtype=object)


def _slice_row(value: str, target: np.ndarray, scores: np.ndarray,
               min_positives: int) -> Dict[str, Any]:
  positives = int(target.sum())
  negatives = int(len(target) - positives)
  return {
      "value": value,
      "n": int(len(target)),
      "positives": positives,
      "positive_rate": float(target.mean()) if len(target) else math.nan,
      "mean_prediction": float(scores.mean()) if len(scores) else math.nan,
      "auc": metrics.auc(target, scores),
      "calibration": metrics.calibration(target, scores),
      "small": positives < min_positives or negatives < min_positives,
  }


def slice_metrics(labels: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
                  features: Mapping[str, np.ndarray], tasks: Sequence[str] = ("ctr", "cvr", "ctcvr"),
                  min_positives: int = MIN_POSITIVES) -> Dict[str, Dict[str, Any]]:
  """Per feature value, the metrics of each task (module docstring for the layout).

  Args:
    labels: label name -> [n] 0/1.
    predictions: output name -> [n] probability.
    features: slice feature -> [n] values (any type; compared as strings).
    tasks: tasks to slice, those of report.TASKS the predictions and labels allow.
    min_positives: a slice with fewer positives (or negatives) is marked small.
  """
  result = {}
  for feature, raw_values in features.items():
    values = slice_values(raw_values)
    keys, counts = np.unique(values, return_counts=True)
    if all(re.fullmatch(r"-?\d+", str(key)) for key in keys):  # e.g. position: in order
      ordered = sorted((str(key) for key in keys), key=int)
    else:
      ordered = [str(key) for key, _ in sorted(zip(keys, counts), key=lambda kc: (-kc[1], kc[0]))]
    entry = {"min_positives": min_positives, "values": ordered, "tasks": {}}
    for task in report.TASKS:
      arrays = report.task_arrays(task, labels, predictions) if task.name in tasks else None
      if arrays is None:
        continue
      target, scores, rows = arrays
      entry["tasks"][task.name] = [
          _slice_row(value, target[rows & (values == value)],
                     scores[rows & (values == value)], min_positives)
          for value in ordered]
    result[feature] = entry
  return result


def new_user_values(user_ids: np.ndarray, train_user_ids: np.ndarray) -> np.ndarray:
  """"new" where a user_id is not among the train split's, else "returning"."""
  seen = np.isin(np.asarray(user_ids).astype(str), np.asarray(train_user_ids).astype(str))
  return np.where(seen, "returning", "new").astype(object)
