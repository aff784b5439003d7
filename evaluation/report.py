"""The per-task evaluation table, with the simulator's truth when there is one.

Flow position: evaluation.scoring (labels and predictions per exposure) -> **task table**
-> pipeline.evaluate (metrics JSON + a readable log table). Conventions: papers.md,
"Evaluation conventions"; metric definitions: evaluation.metrics.

Tasks (each evaluated when the model has the output and the data has the labels):

  task     output   target (0/1)        rows (population)    truth column
  ctr      ctr      click               all exposures        p_click
  cvr      cvr      purchase            clicked (click == 1) p_purchase_given_click
  ctcvr    ctcvr    click * purchase    all exposures        p_ctcvr
  ctavr    ctavr    click * action      all exposures        p_ctavr
  ctmacro  ctmacro  click * action      all exposures        p_ctavr   (HM3's name)
  ctmicro  ctmicro  click * micro       all exposures        p_ctmicro

Per task: n, positives, positive_rate, mean_prediction, auc, gauc (by user; with
gauc_users = users with both classes and gauc_exposure_share = their share of rows),
log_loss, calibration (sum predicted / sum observed), ece (equal-mass bins).

With the truth (rows joined by impression_id), per task under "truth", on the task's
rows that have a truth row:
  bayes_auc    AUC of the true probability against the same observed labels: the best
               AUC any model can expect on these rows (up to sampling noise);
  model_auc    the model's AUC on the same rows; auc_gap = bayes_auc - model_auc;
  the same for gauc (bayes_gauc, model_gauc, gauc_gap) and log loss
  (log_loss_gap = model_log_loss - bayes_log_loss); bayes_calibration (sum truth / sum
  labels: the label noise of the observed rate); calibration_vs_truth (sum predicted /
  sum truth: the model's calibration without that noise); pearson / spearman:
  prediction vs true probability on those rows.
and for cvr also "entire_space", over ALL exposures with a truth row (clicked or not),
against the true P(buy | click, x) (the CVR the papers want on the entire space, which
observed labels cannot give since purchases are seen only after clicks):
  pearson, spearman   predicted cvr vs p_purchase_given_click;
  expected_auc        metrics.expected_auc(p_purchase_given_click, cvr): the AUC the
                      predicted cvr would have if every exposure were clicked and its
                      purchase drawn from the truth; bayes_expected_auc is the same for
                      the truth itself, expected_auc_gap their difference;
  calibration         sum cvr / sum p_purchase_given_click, also on the clicked and
                      unclicked exposures separately (a naive CVR model trained on
                      clicks is biased on the unclicked ones: sample selection bias).
Note: the truth counts the purchases that land after the attribution window, the labels
do not, so bayes calibration sits slightly above 1; rankings are unaffected.
"""

import dataclasses
import math
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from evaluation import metrics

IMPRESSION_ID = "impression_id"
USER_ID = "user_id"


@dataclasses.dataclass(frozen=True)
class Task:
  """One evaluated probability.

  Attributes:
    name: the model output (and task) name, e.g. "cvr".
    labels: labels whose product is the 0/1 target, e.g. ("click", "purchase").
    population: label selecting the rows (== 1), or None for all exposures.
    truth: the truth column holding the true probability of the target.
  """

  name: str
  labels: Tuple[str, ...]
  population: Optional[str]
  truth: str

  @property
  def target(self) -> str:
    return " * ".join(self.labels)

  @property
  def rows(self) -> str:
    return f"{self.population} == 1" if self.population else "all exposures"

  @property
  def needed_labels(self) -> Tuple[str, ...]:
    return self.labels + ((self.population,) if self.population else ())


TASKS = (
    Task("ctr", ("click",), None, "p_click"),
    Task("cvr", ("purchase",), "click", "p_purchase_given_click"),
    Task("ctcvr", ("click", "purchase"), None, "p_ctcvr"),
    Task("ctavr", ("click", "action"), None, "p_ctavr"),
    Task("ctmacro", ("click", "action"), None, "p_ctavr"),
    Task("ctmicro", ("click", "micro"), None, "p_ctmicro"),
)
CVR_TRUTH = "p_purchase_given_click"


def task_arrays(task: Task, labels: Mapping[str, np.ndarray],
                predictions: Mapping[str, np.ndarray]
                ) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
  """The arrays one task is evaluated on, over ALL rows (select with `rows`).

  Returns:
    (target [n] float64 0/1, scores [n] float64, rows [n] bool: the task's population),
    or None when the predictions lack the task's output or the labels one it needs.
  """
  if task.name not in predictions or any(name not in labels for name in task.needed_labels):
    return None
  target = np.prod([np.asarray(labels[name], np.float64) for name in task.labels], axis=0)
  scores = np.asarray(predictions[task.name], np.float64)
  rows = (np.asarray(labels[task.population]) == 1 if task.population
          else np.ones(len(scores), dtype=bool))
  return target, scores, rows


def align_truth(impression_ids: Sequence[str], truth: Mapping[str, np.ndarray]
                ) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
  """Joins truth columns to scored rows by impression_id.

  Args:
    impression_ids: [n] ids of the scored rows.
    truth: column -> [m] array, with "impression_id" (as `simulation.truth.load_truth`
      returns).

  Returns:
    (aligned, matched): aligned column -> [n] array in the scored rows' order
    (p_* float64 with NaN where unmatched; other columns object with None), and matched
    [n] bool.
  """
  if IMPRESSION_ID not in truth:
    raise KeyError(f"truth has no {IMPRESSION_ID!r} column; has {sorted(truth)}")
  ids = np.asarray(impression_ids, dtype=str)
  truth_ids = np.asarray(truth[IMPRESSION_ID], dtype=str)
  order = np.argsort(truth_ids, kind="mergesort")
  sorted_ids = truth_ids[order]
  position = np.clip(np.searchsorted(sorted_ids, ids), 0, max(len(sorted_ids) - 1, 0))
  matched = (sorted_ids[position] == ids) if len(sorted_ids) else np.zeros(len(ids), bool)
  rows = order[position] if len(sorted_ids) else np.zeros(len(ids), np.int64)
  aligned = {}
  for name, column in truth.items():
    if name == IMPRESSION_ID:
      continue
    column = np.asarray(column)
    if name.startswith("p_"):
      aligned[name] = np.where(matched, column[rows].astype(np.float64), np.nan)
    else:
      aligned[name] = np.where(matched, column[rows].astype(object), None)
  logging.info("Truth: %d of %d scored rows matched by impression_id", matched.sum(), len(ids))
  return aligned, matched


def _gauc_block(target, scores, groups) -> Dict[str, Any]:
  group_auc, exposures = metrics.grouped_auc(target, scores, groups)
  valid = ~np.isnan(group_auc)
  used = exposures[valid].sum()
  return {
      "gauc": float(np.sum(group_auc[valid] * exposures[valid]) / used) if used else math.nan,
      "gauc_users": int(valid.sum()),
      "gauc_exposure_share": float(used / max(exposures.sum(), 1)),
  }


def task_metrics(target: np.ndarray, scores: np.ndarray, groups: Optional[np.ndarray] = None,
                 ece_bins: int = 10) -> Dict[str, Any]:
  """Every metric of one task on its rows.

  Args:
    target: [n] 0/1 observed labels.
    scores: [n] predicted probabilities.
    groups: optional [n] user ids for GAUC.
    ece_bins: equal-mass bins of the ECE.
  """
  result = {
      "n": int(len(target)),
      "positives": int(np.sum(target)),
      "positive_rate": float(np.mean(target)) if len(target) else math.nan,
      "mean_prediction": float(np.mean(scores)) if len(scores) else math.nan,
      "auc": metrics.auc(target, scores),
  }
  if groups is not None:
    result.update(_gauc_block(target, scores, groups))
  result.update({
      "log_loss": metrics.log_loss(target, scores),
      "calibration": metrics.calibration(target, scores),
      "ece": metrics.expected_calibration_error(target, scores, bins=ece_bins),
  })
  return result


def _truth_block(task: Task, target, scores, truth_values, groups) -> Dict[str, Any]:
  block = {
      "column": task.truth,
      "n": int(len(target)),
      "bayes_auc": metrics.auc(target, truth_values),
      "model_auc": metrics.auc(target, scores),
  }
  block["auc_gap"] = block["bayes_auc"] - block["model_auc"]
  if groups is not None:
    block["bayes_gauc"] = metrics.gauc(target, truth_values, groups)
    block["model_gauc"] = metrics.gauc(target, scores, groups)
    block["gauc_gap"] = block["bayes_gauc"] - block["model_gauc"]
  block["bayes_log_loss"] = metrics.log_loss(target, truth_values)
  block["model_log_loss"] = metrics.log_loss(target, scores)
  block["log_loss_gap"] = block["model_log_loss"] - block["bayes_log_loss"]
  block["bayes_calibration"] = metrics.calibration(target, truth_values)
  # sum predicted / sum true probability over the same rows: calibration without the
  # label noise of the observed rate (which bayes_calibration shows: truth / observed).
  block["calibration_vs_truth"] = _ratio(float(np.sum(scores, dtype=np.float64)),
                                         float(np.sum(truth_values, dtype=np.float64)))
  block["pearson"] = metrics.pearson(scores, truth_values)
  block["spearman"] = metrics.spearman(scores, truth_values)
  return block


def _ratio(numerator: float, denominator: float) -> float:
  return float(numerator / denominator) if denominator > 0 else math.nan


def entire_space_cvr(cvr: np.ndarray, p_cvr: np.ndarray, clicked: np.ndarray) -> Dict[str, Any]:
  """Predicted cvr against the true P(buy | click, x) over all exposures.

  Args:
    cvr: [n] predicted cvr of every exposure (clicked or not).
    p_cvr: [n] true p_purchase_given_click.
    clicked: [n] bool, the observed click.
  """
  clicked = np.asarray(clicked, dtype=bool)
  result = {
      "truth_column": CVR_TRUTH,
      "n": int(len(cvr)),
      "pearson": metrics.pearson(cvr, p_cvr),
      "spearman": metrics.spearman(cvr, p_cvr),
      "expected_auc": metrics.expected_auc(p_cvr, cvr),
      "bayes_expected_auc": metrics.expected_auc(p_cvr, p_cvr),
  }
  result["expected_auc_gap"] = result["bayes_expected_auc"] - result["expected_auc"]
  result["calibration"] = _ratio(cvr.sum(), p_cvr.sum())
  result["calibration_clicked"] = _ratio(cvr[clicked].sum(), p_cvr[clicked].sum())
  result["calibration_unclicked"] = _ratio(cvr[~clicked].sum(), p_cvr[~clicked].sum())
  return result


def task_table(labels: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
               user_ids: Optional[np.ndarray] = None,
               truth: Optional[Mapping[str, np.ndarray]] = None,
               ece_bins: int = 10) -> Dict[str, Dict[str, Any]]:
  """Evaluates every task of TASKS the predictions and labels allow.

  Args:
    labels: label name -> [n] 0/1 (click, purchase, and optionally action, micro).
    predictions: output name -> [n] probability (ctr, cvr, ctcvr, optional ctavr, ...).
    user_ids: optional [n] user ids; adds GAUC by user.
    truth: optional truth column -> [n], aligned with the rows (see `align_truth`; NaN
      where a row has no truth).
    ece_bins: equal-mass bins of the ECE.

  Returns:
    task name -> metrics (see the module docstring), in TASKS order.
  """
  table = {}
  groups = None if user_ids is None else np.asarray(user_ids)
  for task in TASKS:
    if task.name not in predictions:
      continue
    missing = [name for name in task.needed_labels if name not in labels]
    if missing:
      logging.warning("Task %s skipped: the data has no label(s) %s", task.name, missing)
      continue
    target, scores, rows = task_arrays(task, labels, predictions)
    row_groups = None if groups is None else groups[rows]
    result = {"output": task.name, "target": task.target, "rows": task.rows}
    result.update(task_metrics(target[rows], scores[rows], row_groups, ece_bins))
    if truth is not None and task.truth in truth:
      truth_values = np.asarray(truth[task.truth], np.float64)
      known = rows & ~np.isnan(truth_values)
      known_groups = None if groups is None else groups[known]
      result["truth"] = _truth_block(task, target[known], scores[known], truth_values[known],
                                     known_groups)
      if task.name == "cvr" and "click" in labels:
        has_truth = ~np.isnan(truth_values)
        result["entire_space"] = entire_space_cvr(
            scores[has_truth], truth_values[has_truth],
            np.asarray(labels["click"])[has_truth] == 1)
    table[task.name] = result
  return table


def json_ready(value: Any) -> Any:
  """A copy with NaN/inf floats as None and numpy scalars as Python ones (strict JSON)."""
  if isinstance(value, Mapping):
    return {key: json_ready(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(item) for item in value]
  if isinstance(value, np.generic):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def _cell(value: Any, digits: int = 4) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  if isinstance(value, float):
    return f"{value:.{digits}f}"
  return str(value)


def format_table(table: Mapping[str, Mapping[str, Any]]) -> str:
  """A fixed-width text table of `task_table`'s result, one line per task.

  With the truth, a `cvr/all` line follows cvr: its auc column is the entire-space
  expected_auc, its bayes_auc column bayes_expected_auc, its calib column the entire-space
  calibration against p_purchase_given_click.
  """
  header = ("task", "rows", "n", "pos", "auc", "gauc", "logloss", "calib", "ece",
            "bayes_auc", "auc_gap")
  lines = [header]
  for name, result in table.items():
    truth = result.get("truth", {})
    lines.append((name, result["rows"], _cell(result["n"]), _cell(result["positives"]),
                  _cell(result["auc"]), _cell(result.get("gauc")), _cell(result["log_loss"]),
                  _cell(result["calibration"], 3), _cell(result["ece"]),
                  _cell(truth.get("bayes_auc")), _cell(truth.get("auc_gap"))))
    space = result.get("entire_space")
    if space:
      lines.append(("  cvr/all", "all exposures", _cell(space["n"]), "-",
                    _cell(space["expected_auc"]), "-", "-", _cell(space["calibration"], 3),
                    "-", _cell(space["bayes_expected_auc"]), _cell(space["expected_auc_gap"])))
  widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
  return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(line, widths))
                   .rstrip() for line in lines)
