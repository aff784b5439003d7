"""Which output calibration: every method on every trained model of the truth benchmark.

  python -m benchmarks.calibration [--runs_dir /tmp/cvr_bench/full/runs_calibration_none]

Reads the runs of `python -m benchmarks.models --calibration none` (uncalibrated
exports; a calibrated export is refused). For each model and seed, in a subprocess
(2 at a time): score the validation split (metrics.json "validation_from") and the
eval split with the exported SavedModel (evaluation.scoring, the served graph), fit each
method of models.calibration on the validation rows, apply it to the eval rows and score
it against the simulator's truth: calibration (sum predicted / sum true probability) of
ctr, cvr over clicked and over all exposures, ctcvr; CTR and CTCVR AUC against the
labels; the expected AUC (metrics.expected_auc: free of the label noise of 412 eval
purchases) of ctcvr against the true P(click & buy | x) and of the entire-space cvr
against the true P(buy | click, x). The page also states the validation day's observed
labels over their true expectation (the level any fit to that one day inherits; also
weighted by 1 / the true click probability, as an entire-space fit weights them, with
the weights' effective number of purchases), the Bayes expected AUCs, and for the
exported method (ips_ctr) the cvr calibration on the validation rows it was fitted on
beside the eval day's, and what another validation day would give: the method refitted
on --redraws redraws of the validation day's labels from the truth (redraw_calibrations;
the same exposures, the labels' own noise), with the eval day's cvr calibration's mean,
spread and share of draws within 1.00 +- 0.05 over those draws; and, on the same draws,
the same fit with the world's true click probabilities as its propensities (capped as
exported and uncapped): what the method reaches on each model when only the
propensity is made right, beside the share of exposures clicked less often than 1 in
100 and their share of the entire-space cvr.
Per-run results are cached in RUN/calibration_methods.json (a rerun only aggregates).
Writes benchmarks/results/NAME.md and NAME.json (--name, default calibration; mean +- std
over seeds). Any runs of `benchmarks.models` or `benchmarks.sweep` with `--calibration
none` work: --work_dir is then the sweep's cell directory (data/, raw/,
runs_calibration_none/).
"""

import argparse
import concurrent.futures
import glob
import json
import math
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models as models_bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

METHODS = config_lib.CALIBRATIONS
CACHE = "calibration_methods.json"
CALIBRATIONS = ("ctr", "cvr_clicked", "cvr_all", "ctcvr")
AUCS = ("ctr_auc", "ctcvr_auc", "ctcvr_expected_auc", "cvr_all_expected_auc")
# The calibrations on the validation rows the method was fitted on (beside the eval
# day's): what the fit reaches on its own day, and what the next day adds. They are the
# criterion choose_method picks the exported method by (the eval day is reported only);
# runs scored before 2026-12-06 hold the two cvr ones only.
VALIDATION_CALIBRATIONS = tuple(f"{key}_validation" for key in CALIBRATIONS)
TITLE = "Output calibration: every method on a benchmark's uncalibrated runs"
EXPORTED_METHOD = "ips_ctr"  # configs/base_simulated.yaml's train.calibration
TOLERANCE = 0.05
REDRAWS = 200  # label redraws of the validation day per run (--redraws)
REDRAW_SEED = 0
# ips_ctr's cap on 1 / propensity (= models.calibration.MAX_PROPENSITY_WEIGHT, tested;
# kept here so that this module does not import TensorFlow outside its workers).
EXPORTED_MAX_WEIGHT = 100.0
# The redraws' diagnostic refits of ips_ctr with the true click propensities:
# key -> whether 1 / p is capped as exported.
TRUE_PROPENSITY = {"cvr_all_true_propensity": True, "cvr_all_true_propensity_uncapped": False}


def _within_goal(calibration):
  """Whether a calibration (a float, or elementwise an array) is within 1.00 +-
  TOLERANCE (a float guard on the edge)."""
  return np.abs(np.asarray(calibration) - 1.0) <= TOLERANCE + 1e-12


def redraw_keys(method: str) -> Tuple[str, ...]:
  """The lists redraw_calibrations returns for `method` (the true-propensity refits only
  for ips_ctr, the one method with a propensity)."""
  return ("cvr_clicked", "cvr_all", *(TRUE_PROPENSITY if method == "ips_ctr" else ()))


def score_days(run_dir: str, data_dir: str, truth_dir: str) -> Dict[str, Any]:
  """A run's uncalibrated export scored on the validation day and on the eval day.

  The validation rows are the train split's at or after the run's validation_from
  (metrics.json, what its early stopping read), scored with the served graph as the
  eval rows are (evaluation.scoring).

  Returns:
    {"outputs": the export's output names, "labels": the label names, "validation" /
    "evaluation": column -> [n] array (scoring.score_saved_model), "validation_truth" /
    "truth": the rows' aligned label truth (p_click, p_purchase_given_click, p_ctcvr,
    each [n])}.

  Raises:
    ValueError: the export is calibrated (a method fitted on the validation day would
      be scored on the day it was fitted on).
  """
  from evaluation import report  # pylint: disable=g-import-not-at-top
  from evaluation import runner  # pylint: disable=g-import-not-at-top
  from evaluation import scoring  # pylint: disable=g-import-not-at-top
  from simulation import truth as truth_lib  # pylint: disable=g-import-not-at-top
  from training import data  # pylint: disable=g-import-not-at-top
  from training import export  # pylint: disable=g-import-not-at-top
  from training import trainer  # pylint: disable=g-import-not-at-top

  export_dir = runner.resolve_saved_model(run_dir)
  with open(os.path.join(export_dir, "assets.extra", export.METADATA_FILE)) as f:
    metadata = json.load(f)
  if metadata.get("calibration", {"method": "none"})["method"] != "none":
    raise ValueError(f"{export_dir} is calibrated ({metadata['calibration']['method']}); "
                     f"this benchmark needs `benchmarks.models --calibration none` runs")
  with open(os.path.join(run_dir, "metrics.json")) as f:
    run_metrics = json.load(f)
  split = trainer.validation_split(config_lib.TrainConfig(
      validation_from=run_metrics["validation_from"],
      validation_fraction=run_metrics["validation_fraction"]))
  spec, labels = runner.load_spec_and_labels(data_dir, config_lib.DEFAULT_CONFIG)
  validation = scoring.score_saved_model(export_dir, data.split_pattern(data_dir, "train"),
                                         spec, labels, keep=split.is_validation)
  evaluation = scoring.score_saved_model(export_dir, data.split_pattern(data_dir, "eval"),
                                         spec, labels)
  label_truth = truth_lib.load_label_truth(truth_dir)
  return {"outputs": metadata["outputs"], "labels": labels,
          "validation": validation, "evaluation": evaluation,
          "validation_truth": report.align_truth(validation["impression_id"], label_truth)[0],
          "truth": report.align_truth(evaluation["impression_id"], label_truth)[0]}


def score_run(run_dir: str, data_dir: str, truth_dir: str,
              redraws: int = REDRAWS) -> Dict[str, Any]:
  """Every method's eval metrics for one run (the body of a worker process)."""
  from evaluation import metrics  # pylint: disable=g-import-not-at-top
  from models import calibration  # pylint: disable=g-import-not-at-top

  days = score_days(run_dir, data_dir, truth_dir)
  validation, evaluation = days["validation"], days["evaluation"]
  truth, validation_truth, labels = days["truth"], days["validation_truth"], days["labels"]
  outputs = days["outputs"]
  clicked = evaluation["click"] > 0
  bought = evaluation["click"] * evaluation["purchase"]
  p_cvr = truth["p_purchase_given_click"]
  result = {"validation_rows": int(len(validation["click"])),
            "validation_clicks": int(validation["click"].sum()),
            "validation_purchases": int(validation["purchase"].sum()),
            "validation_observed_vs_truth": observed_vs_truth(
                validation["click"], validation["purchase"], validation_truth,
                calibration.MAX_PROPENSITY_WEIGHT),
            "bayes": {"ctcvr_expected_auc": float(metrics.expected_auc(truth["p_ctcvr"],
                                                                       truth["p_ctcvr"])),
                      "cvr_all_expected_auc": float(metrics.expected_auc(p_cvr, p_cvr))},
            "methods": {}}
  validation_outputs = {k: validation[k] for k in outputs}
  evaluation_outputs = {k: evaluation[k] for k in outputs}
  for method in METHODS:
    fitted = calibration.fit_calibration(validation_outputs,
                                         {k: validation[k] for k in labels}, method)
    p = fitted.apply(evaluation_outputs)
    on_validation = calibrations(fitted.apply(validation_outputs), validation_truth,
                                 validation["click"] > 0)
    result["methods"][method] = {
        **{f"{key}_validation": value for key, value in on_validation.items()},
        **calibrations(p, truth, clicked),
        "ctr_auc": float(metrics.auc(evaluation["click"], p["ctr"])),
        "ctcvr_auc": float(metrics.auc(bought, p["ctcvr"])),
        "ctcvr_expected_auc": float(metrics.expected_auc(truth["p_ctcvr"], p["ctcvr"])),
        "cvr_all_expected_auc": float(metrics.expected_auc(p_cvr, p["cvr"])),
        "coefficients": fitted.to_dict(),
    }
  result["redraw_seed"], result["redraw_method"] = REDRAW_SEED, EXPORTED_METHOD
  result["redraws"] = redraw_calibrations(validation_outputs, validation_truth,
                                          evaluation_outputs, p_cvr, clicked, redraws)
  return result


def redraw_calibrations(validation_outputs: Dict[str, np.ndarray],
                        validation_truth: Dict[str, np.ndarray],
                        evaluation_outputs: Dict[str, np.ndarray], p_cvr: np.ndarray,
                        clicked: np.ndarray, draws: int, seed: int = REDRAW_SEED,
                        method: str = EXPORTED_METHOD) -> Dict[str, List[float]]:
  """The eval day's cvr calibrations of `method` fitted on redrawn validation labels.

  How much of a calibration is the one validation day's draw: each draw replaces the
  validation rows' labels by new ones from their truth (click ~ Bernoulli(p_click), then
  purchase ~ Bernoulli(p_purchase_given_click) on a click), refits the method on them
  and scores the eval rows as score_run does. The exposures and the model stay; a
  different day would also bring different exposures, whose spread adds to the one
  measured here. Deterministic given the seed.

  Args:
    validation_outputs: output name -> [n] probabilities of the validation rows.
    validation_truth: the rows' aligned label truth (p_click, p_purchase_given_click).
    evaluation_outputs: output name -> [m] probabilities of the eval rows.
    p_cvr: [m] the eval rows' true P(buy | click, x).
    clicked: [m] bool, the eval rows' observed clicks.
    draws: how many redraws.
    seed: of the draws' generator.
    method: the calibration method refitted (models.calibration.METHODS).

  Returns:
    {"cvr_clicked": [draws], "cvr_all": [draws]} as cvr_calibration computes them and,
    when the method is ips_ctr, the entire-space one of the same fit with the world's
    true click probabilities as its propensities (the model's outputs unchanged), with
    the exported cap on 1 / p ("cvr_all_true_propensity") and without it
    ("cvr_all_true_propensity_uncapped"): what the method reaches on this model when
    the propensity is right.
  """
  from models import calibration  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  p_click = np.asarray(validation_truth["p_click"], np.float64).reshape(-1)
  p_buy = np.asarray(validation_truth["p_purchase_given_click"], np.float64).reshape(-1)
  variants = {key: {"propensity": p_click,
                     "max_weight": calibration.MAX_PROPENSITY_WEIGHT
                                   if TRUE_PROPENSITY[key] else None}
              for key in redraw_keys(method) if key in TRUE_PROPENSITY}
  result: Dict[str, List[float]] = {key: [] for key in redraw_keys(method)}
  for _ in range(draws):
    click = (rng.random(len(p_click)) < p_click).astype(np.float64)
    purchase = click * (rng.random(len(p_buy)) < p_buy)
    labels = {"click": click, "purchase": purchase}
    fitted = calibration.fit_calibration(validation_outputs, labels, method)
    for key, value in cvr_calibration(fitted.apply(evaluation_outputs)["cvr"], p_cvr,
                                      clicked).items():
      result[key].append(value)
    for key, kwargs in variants.items():
      fitted = calibration.fit_calibration(validation_outputs, labels, method, **kwargs)
      result[key].append(cvr_calibration(fitted.apply(evaluation_outputs)["cvr"], p_cvr,
                                         clicked)["cvr_all"])
  return result


def redraw_summary(runs: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
  """One model's redraws over its seeds: per cvr calibration (cvr_clicked, cvr_all and,
  when every run has them, the true-propensity refits of TRUE_PROPENSITY) the
  mean over every draw, its Monte Carlo standard error (mean_error: of the seeds'
  average draw sequence, since the runs share their draws), the spread over a seed's
  draws (the std, averaged over seeds) and the share of draws within 1.00 +- TOLERANCE;
  {} when no run has redraws."""
  summary = {}
  runs = [r["redraws"] for r in runs if r.get("redraws", {}).get("cvr_all")]
  for key in redraw_keys(EXPORTED_METHOD):
    if not runs or not all(r.get(key) for r in runs):
      continue
    values = [np.asarray(r[key], np.float64) for r in runs]
    pooled = np.concatenate(values)
    # every run draws with the same seed on the same rows (common random numbers), so
    # the seeds' k-th draws are alike: the mean's Monte Carlo error is that of the
    # seeds' average draw sequence, not of all draws pooled (_cached gives every run of
    # an invocation the same number of draws)
    common = np.mean(values, axis=0)
    summary[key] = {"mean": float(pooled.mean()),
                    "mean_error": float(common.std(ddof=1) / math.sqrt(len(common)))
                                  if len(common) > 1 else math.nan,
                    "std": float(np.mean([v.std() for v in values])),
                    "within": float(np.mean(_within_goal(pooled))),
                    "draws": int(len(pooled))}
  return summary


def calibrations(outputs: Dict[str, np.ndarray], truth: Dict[str, np.ndarray],
                 clicked: np.ndarray) -> Dict[str, float]:
  """CALIBRATIONS of one day's outputs (ctr, cvr, ctcvr: [n] probabilities) against
  its rows' aligned truth (p_click, p_purchase_given_click, p_ctcvr: [n]): sum
  predicted / sum true, the cvr over the clicked rows (clicked: [n] bool) and over all."""
  return {"ctr": float(outputs["ctr"].sum() / truth["p_click"].sum()),
          **cvr_calibration(outputs["cvr"], truth["p_purchase_given_click"], clicked),
          "ctcvr": float(outputs["ctcvr"].sum() / truth["p_ctcvr"].sum())}


def cvr_calibration(cvr: np.ndarray, p_cvr: np.ndarray, clicked: np.ndarray
                    ) -> Dict[str, float]:
  """{"cvr_clicked", "cvr_all"}: sum of the predicted cvr / sum of the true
  P(buy | click, x) over the clicked rows and over all rows ([n] arrays; clicked bool)."""
  return {"cvr_clicked": float(cvr[clicked].sum() / p_cvr[clicked].sum()),
          "cvr_all": float(cvr.sum() / p_cvr.sum())}


def observed_vs_truth(click: np.ndarray, purchase: np.ndarray, truth: Dict[str, np.ndarray],
                      max_weight: float = EXPORTED_MAX_WEIGHT) -> Dict[str, float]:
  """Observed label counts / their true expectations on the same rows.

  What a calibration fitted to these rows' labels reaches when it is perfect: a ratio
  of 0.97 means the rows drew 3% fewer events than their probabilities say, and every
  method fitted on them is pulled 3% low (the same for every model and seed, since they
  share the rows).

  Args:
    click: [n] 0/1 labels.
    purchase: [n] 0/1 labels (counted on clicked rows, as the labels' truth is).
    truth: the rows' aligned label truth (report.align_truth): p_click,
      p_purchase_given_click, p_ctcvr, each [n].
    max_weight: ips_ctr's cap on 1 / propensity.

  An entire-space fit (ips_ctr) weights each clicked row by 1 / its click propensity,
  so the rows stand for every exposure; with the true propensities the weighted purchases
  estimate the sum of P(buy | click, x) over all rows without bias, but few purchases
  with large weights carry it: "cvr_all_ips" is that estimate over its truth, and
  "cvr_all_ips_ess" the weights' effective number of purchases, (sum w)^2 / sum w^2 (its
  relative standard error is about 1 / sqrt(ESS)).

  Returns:
    {"ctr": clicks / sum p_click, "cvr_clicked": purchases on clicked rows / sum of
    p_purchase_given_click over them, "ctcvr": clicked purchases / sum p_ctcvr,
    "cvr_all_ips": sum over clicked purchases of 1 / p_click / sum of
    p_purchase_given_click over all rows, "cvr_all_ips_ess": the effective number of
    purchases of those weights, "low_propensity_share": the share of rows whose
    p_click is below 1 / max_weight (ips_ctr's cap binds there), "low_propensity_cvr_share":
    their share of the sum of p_purchase_given_click, "low_propensity_cap": max_weight}.
  """
  clicked = click > 0
  bought = clicked & (purchase > 0)
  p_click = np.asarray(truth["p_click"], np.float64)
  p_buy = np.asarray(truth["p_purchase_given_click"], np.float64)
  weights = 1.0 / p_click[bought]
  low = p_click < 1.0 / max_weight
  return {"ctr": float(clicked.sum() / p_click.sum()),
          "cvr_clicked": float(bought.sum() / p_buy[clicked].sum()),
          "ctcvr": float(bought.sum() / np.asarray(truth["p_ctcvr"], np.float64).sum()),
          "cvr_all_ips": float(weights.sum() / p_buy.sum()),
          "cvr_all_ips_ess": float(weights.sum() ** 2 / (weights ** 2).sum())
                             if len(weights) else 0.0,
          "low_propensity_share": float(low.mean()),
          "low_propensity_cvr_share": float(p_buy[low].sum() / p_buy.sum()),
          "low_propensity_cap": float(max_weight)}


def _cached(cache: str, redraws: int) -> bool:
  """Whether a run's cache exists with `redraws` redraws of this seed and method (a
  cache without them predates those keys and used REDRAW_SEED and EXPORTED_METHOD)."""
  if not os.path.exists(cache):
    return False
  with open(cache) as f:
    result = json.load(f)
  drawn = result.get("redraws", {})
  return (all(len(drawn.get(key, ())) == redraws for key in redraw_keys(EXPORTED_METHOD))
          and "low_propensity_cap" in result.get("validation_observed_vs_truth", {})
          and result.get("redraw_seed", REDRAW_SEED) == REDRAW_SEED
          and result.get("redraw_method", EXPORTED_METHOD) == EXPORTED_METHOD)


def cache_json(cache: str, fresh: Callable[[str], bool],
               compute: Callable[[], Dict[str, Any]]) -> str:
  """Writes compute()'s result to `cache` as JSON unless fresh(cache); returns `cache`.
  The write goes through CACHE.tmp and a rename, so a killed worker leaves no partial
  cache (also benchmarks.choices' worker)."""
  if not fresh(cache):
    result = compute()
    with open(cache + ".tmp", "w") as f:
      json.dump(result, f, indent=1)
    os.replace(cache + ".tmp", cache)
  return cache


def _worker(run_dir: str, data_dir: str, truth_dir: str, redraws: int = REDRAWS) -> str:
  return cache_json(os.path.join(run_dir, CACHE), lambda cache: _cached(cache, redraws),
                    lambda: score_run(run_dir, data_dir, truth_dir, redraws))


def aggregate(runs: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
  """model -> method -> metric -> {mean, std, n}."""
  summary = {}
  for model, results in runs.items():
    summary[model] = {}
    for method in METHODS:
      summary[model][method] = {
          key: models_bench._stat([r["methods"][method].get(key) for r in results])  # pylint: disable=protected-access
          for key in CALIBRATIONS + AUCS + VALIDATION_CALIBRATIONS}
  return summary


def within_counts(summary: Dict[str, Dict[str, Any]], keys: Sequence[str]
                  ) -> Dict[str, int]:
  """method -> how many models have the mean of every one of `keys` within 1.00 +-
  TOLERANCE (summary: model -> method -> key -> {mean, std, n})."""
  return {method: sum(all(_within_goal(methods[method][key]["mean"]) for key in keys)
                      for methods in summary.values())
          for method in METHODS}


def validation_keys(summary: Dict[str, Dict[str, Any]]) -> List[str]:
  """The VALIDATION_CALIBRATIONS every model and method of `summary` holds."""
  return [key for key in VALIDATION_CALIBRATIONS
          if all(methods[method].get(key, {}).get("n") for methods in summary.values()
                 for method in METHODS)]


def choose_method(summary: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """The output calibration the validation day picks; the eval day plays no part.

  The criterion: the most models whose every validation-day calibration (the
  VALIDATION_CALIBRATIONS all runs hold: the fit's own rows against their truth, not
  their labels) is within 1.00 +- TOLERANCE; a tie goes to the smaller mean over
  models of the largest |calibration - 1|. Only the "*_validation" entries are read.

  Args:
    summary: model -> method -> key -> {mean, std, n} (aggregate's).

  Returns:
    {"method": the chosen one, "keys": the criterion's keys, "within": method -> count,
    "worst": method -> the mean largest deviation}.

  Raises:
    ValueError: no validation-day calibration is held by every model and method.
  """
  keys = validation_keys(summary)
  if not keys:
    raise ValueError(f"no validation-day calibration ({VALIDATION_CALIBRATIONS}) is held "
                     f"by every model and method: score the runs again")
  within = within_counts(summary, keys)
  worst = {method: float(np.mean([max(abs(methods[method][key]["mean"] - 1.0)
                                      for key in keys)
                                  for methods in summary.values()]))
           for method in METHODS}
  chosen = min(METHODS, key=lambda method: (-within[method], worst[method]))
  return {"method": chosen, "keys": keys, "within": within, "worst": worst}


def render_choice(summary: Dict[str, Dict[str, Any]],
                  heading: str = "## The choice, made on the validation day") -> List[str]:
  """The page's section (under `heading`) on the method the validation day picks,
  beside the eval day's count (reported, not used); [] when the runs hold no
  validation-day calibration."""
  if not validation_keys(summary):
    return []
  choice = choose_method(summary)
  on_eval = within_counts(summary, CALIBRATIONS)
  rows = [[method + (" (chosen)" if method == choice["method"] else ""),
           f"{choice['within'][method]}/{len(summary)}", f"{choice['worst'][method]:.3f}",
           f"{on_eval[method]}/{len(summary)}"] for method in METHODS]
  days = ", ".join(key.removesuffix("_validation") for key in choice["keys"])
  missing = [key.removesuffix("_validation") for key in VALIDATION_CALIBRATIONS
             if key not in choice["keys"]]
  if missing:
    days += f"; {', '.join(missing)} not kept when these runs were scored"
  exported = ("the method the simulated configs export (configs/base_simulated.yaml)"
              if choice["method"] == EXPORTED_METHOD else
              f"not the method the simulated configs export ({EXPORTED_METHOD})")
  return [
      "",
      heading,
      "",
      f"Each method fitted on the validation day and scored against that day's truth "
      f"({days}; the truth, not the labels it was fitted to, so a fit that follows the "
      f"day's label noise is not rewarded). Picked by code (benchmarks.calibration."
      f"choose_method): the most models with every one within 1.00 ± {TOLERANCE:.2f}, "
      f"ties to the smaller mean largest deviation. The eval-day count (ctr, cvr over "
      f"clicks and over all exposures, ctcvr on the eval day) is reported only. The validation day picks "
      f"`{choice['method']}`, {exported}.",
      "",
      common.markdown_table(
          ["method", f"models within ± {TOLERANCE:.2f}, validation day (criterion)",
           "mean largest deviation, validation day",
           f"models within ± {TOLERANCE:.2f}, eval day (reported only)"], rows),
  ]


def render(summary: Dict[str, Dict[str, Any]], settings: Dict[str, Any],
           redraws: Optional[Dict[str, Dict[str, Dict[str, float]]]] = None) -> str:
  cell = models_bench._cell  # pylint: disable=protected-access
  header = ["model", "method", "ctr calib.", "cvr calib. (clicked)",
            "cvr calib. (all exposures)", "ctcvr calib.", "CTR AUC", "CTCVR AUC",
            "CTCVR expected AUC", "CVR AUC (entire space)"]
  rows = [[model, method] + [cell(stats[k], 3) for k in CALIBRATIONS]
          + [cell(stats[k]) for k in AUCS]
          for model, methods in summary.items() for method, stats in methods.items()]
  within = within_counts(summary, CALIBRATIONS)
  lines = [
      f"Generated by `{settings['command']}` on "
      f"{settings.get('date') or time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
      f"Runs: `{settings['runs_dir']}` ({settings['runs']} runs of {len(summary)} models; "
      f"uncalibrated exports). Wall time {settings['seconds'] / 60:.1f} min; load average "
      f"(1/5/15 min) {settings['load_before']} before and {settings['load_after']} after.",
      "",
      "Each method (models.calibration) is fitted on the validation day's rows and applied "
      "to the eval day; calibration = sum predicted / sum of the true probability on the "
      "eval rows (1 = calibrated); AUCs against the labels as in models.md, expected AUCs "
      "against the true probabilities (no label noise). Mean ± std over seeds.",
      "",
      "Models with every calibration within 1.00 ± 0.05: " + ", ".join(
          f"{method} {count}/{len(summary)}" for method, count in within.items()) + ".",
      "",
  ]
  validation = settings.get("validation")
  if validation:
    purchases = validation["validation_purchases"]
    ratios = validation["validation_observed_vs_truth"]
    lines += [
        f"The validation day every method is fitted on ({validation['validation_rows']} "
        f"rows, {validation['validation_clicks']} clicks, {purchases} purchases; the same "
        f"rows for every run), observed / true: clicks {ratios['ctr']:.3f}, purchases over "
        f"clicks {ratios['cvr_clicked']:.3f}, purchases {ratios['ctcvr']:.3f}. A fit to its "
        f"labels inherits that draw (a count of {purchases} events is off its expectation "
        f"by about 1 / sqrt({purchases}) = {1 / math.sqrt(purchases):.3f} relative, one "
        f"standard deviation), the same for every model.",
        "",
    ]
    if "cvr_all_ips" in ratios:
      ess = ratios["cvr_all_ips_ess"]
      lines += [
          f"Weighted as an entire-space fit weights them (each purchase by 1 / its true "
          f"click probability), the day's purchases estimate the entire-space purchase "
          f"rate at {ratios['cvr_all_ips']:.3f} of its truth; the weights leave an "
          f"effective {ess:.0f} of the {purchases} purchases (1 / sqrt({ess:.0f}) = "
          f"{1 / math.sqrt(max(ess, 1.0)):.3f} relative). So an entire-space level fitted "
          f"to this one day is uncertain by about that much, shared by every model.",
          "",
      ]
  bayes = settings.get("bayes")
  if bayes:
    lines += [
        f"Bayes (the truth scored against itself) on the eval rows: CTCVR expected AUC "
        f"{bayes['ctcvr_expected_auc']:.4f}, CVR AUC (entire space) "
        f"{bayes['cvr_all_expected_auc']:.4f}.",
        "",
    ]
  lines += [
      common.markdown_table(header, rows),
  ]
  day_rows = []
  for model, methods in summary.items():
    stats = methods.get(EXPORTED_METHOD, {})
    if not stats.get("cvr_clicked_validation", {}).get("n"):
      continue
    day_rows.append([model, cell(stats["cvr_clicked_validation"], 3),
                     cell(stats["cvr_clicked"], 3), cell(stats["cvr_all_validation"], 3),
                     cell(stats["cvr_all"], 3)])
  if day_rows:
    lines += [
        "",
        f"## The fit's own day and the next: `{EXPORTED_METHOD}` (the exported method)",
        "",
        "The cvr calibration against the truth on the validation rows the method was "
        "fitted on, beside the eval day's. On its own day a fit matches that day's labels; "
        "what changes on the eval day is the next day's rows; the entire-space column "
        "shows what the clicked rows' labels could not pin.",
        "",
        common.markdown_table(["model", "cvr calib. (clicked), validation",
                               "cvr calib. (clicked), eval",
                               "cvr calib. (all exposures), validation",
                               "cvr calib. (all exposures), eval"], day_rows),
    ]
  lines += render_choice(summary)
  lines += render_redraws(summary, redraws or {}, settings.get("redraws"),
                          (validation or {}).get("validation_observed_vs_truth", {}))
  return "\n".join(lines) + "\n"


def render_redraws(summary: Dict[str, Dict[str, Any]],
                   redraws: Dict[str, Dict[str, Dict[str, float]]],
                   draws: Optional[int],
                   observed_vs_truth: Optional[Dict[str, float]] = None) -> List[str]:
  """The page's section on redrawn validation labels ([] when none were drawn); the
  true-propensity columns and paragraph when every model has those refits."""
  redraws = {model: stats for model, stats in redraws.items() if stats}
  if not redraws:
    return []
  true_keys = [key for key in TRUE_PROPENSITY
               if all(key in stats for stats in redraws.values())]
  rows = []
  for model, stats in redraws.items():
    observed = summary[model][EXPORTED_METHOD]
    rows.append([model, f"{observed['cvr_all']['mean']:.3f}",
                 f"{stats['cvr_all']['mean']:.3f} ± {stats['cvr_all']['mean_error']:.3f}",
                 f"{stats['cvr_all']['std']:.3f}",
                 f"{stats['cvr_all']['within']:.2f}"]
                + [f"{stats[key]['mean']:.3f}" for key in true_keys]
                + [f"{observed['cvr_clicked']['mean']:.3f}",
                   f"{stats['cvr_clicked']['mean']:.3f}", f"{stats['cvr_clicked']['std']:.3f}"])
  entire_space = [stats["cvr_all"] for stats in redraws.values()]
  spreads = [stats["std"] for stats in entire_space]
  centred = int(sum(_within_goal(stats["mean"]) for stats in entire_space))
  close = sum(abs(abs(stats["mean"] - 1.0) - TOLERANCE) <= 2 * stats["mean_error"]
              for stats in entire_space)
  pinned = (f"one day's labels cannot pin the entire-space level to ± {TOLERANCE:.2f}"
            if min(spreads) > TOLERANCE else
            f"one day's labels move the entire-space level by up to ± {max(spreads):.3f}")
  return [
      "",
      f"## Another validation day: `{EXPORTED_METHOD}` refitted on redrawn labels",
      "",
      f"Each run's validation rows get {draws} new sets of labels drawn from their truth "
      f"(clicks, then purchases on the clicks; the same exposures and model), the method "
      f"is refitted on each and scored on the eval day. The observed columns are the "
      f"table above (the day's actual labels, mean over seeds); the redraw mean is over "
      f"every draw of every seed (what the method gives this model in expectation over "
      f"the labels), the spread the std over a seed's draws (what one validation day's "
      f"labels alone move it by; a new day's exposures would add to it) and the share "
      f"the fraction of draws within 1.00 ± {TOLERANCE:.2f}. Every run draws with the "
      f"same seed on the same rows (common random numbers: models compared on the same "
      f"draws), so the redraw mean's Monte Carlo error (± after it) is that of one "
      f"sequence of {draws} draws and is shared by every model. The entire-space spread "
      f"is {min(spreads):.3f}-{max(spreads):.3f} for every model: {pinned}. "
      f"Entire-space redraw mean within 1.00 ± {TOLERANCE:.2f}: {centred} of {len(rows)} "
      f"models ({close} of them within two Monte Carlo errors of the edge).",
      *_true_propensity_paragraph(redraws, true_keys, observed_vs_truth or {}),
      "",
      common.markdown_table(
          ["model", "cvr calib. (all exposures), observed", "redraw mean", "redraw spread",
           f"share within ± {TOLERANCE:.2f}"]
          + [f"redraw mean, true propensity "
             f"({'capped' if TRUE_PROPENSITY[key] else 'uncapped'})" for key in true_keys]
          + ["cvr calib. (clicked), observed", "redraw mean", "redraw spread"], rows),
  ]


def _true_propensity_paragraph(redraws: Dict[str, Dict[str, Dict[str, float]]],
                               true_keys: List[str],
                               observed_vs_truth: Dict[str, float]) -> List[str]:
  """What the exported fit reaches with the right propensities ([] without those refits)."""
  if not true_keys:
    return []
  low_models = sum(stats["cvr_all"]["mean"] < 1.0 and not _within_goal(stats["cvr_all"]["mean"])
                   for stats in redraws.values())
  parts, every = [], False
  for key in true_keys:
    means = [stats[key]["mean"] for stats in redraws.values()]
    shifts = [stats[key]["mean"] - stats["cvr_all"]["mean"] for stats in redraws.values()]
    centred = int(sum(_within_goal(m) for m in means))
    if not TRUE_PROPENSITY[key]:  # the verdict rests on the uncapped refits
      every = centred == len(means)
    how = ("with the exported cap on 1 / p" if TRUE_PROPENSITY[key] else "uncapped")
    parts.append(f"{min(means):.3f}-{max(means):.3f} {how} ({centred} of {len(means)} "
                 f"within 1.00 ± {TOLERANCE:.2f}; {min(shifts):+.3f} to {max(shifts):+.3f} "
                 f"from the exported fit's on the same draws)")
  verdict = ""
  if every and low_models:  # a shortfall, and the right propensity alone removes it
    verdict = (f" What keeps the exported fit below 1.00 - {TOLERANCE:.2f} for the "
               f"{low_models} model(s) there is its propensity, the model's own ctr: it "
               f"cannot single out the exposures that are rarely clicked.")
  low = ""
  if all(key in observed_vs_truth for key in ("low_propensity_share",
                                              "low_propensity_cvr_share",
                                              "low_propensity_cap")):
    share, cvr_share = (observed_vs_truth["low_propensity_share"],
                        observed_vs_truth["low_propensity_cvr_share"])
    low = (f" Exposures clicked less often than 1 in "
           f"{observed_vs_truth['low_propensity_cap']:.0f} (where the cap binds) are "
           f"{share:.0%} of the validation rows and hold {cvr_share:.0%} of their summed "
           f"true cvr" + (": the rarely clicked exposures are the often bought ones, and the "
                          "entire-space level rests on them and on the few purchases their "
                          "rare clicks bring." if cvr_share > share else "."))
  return [
      "",
      "The same refits with the world's true click probabilities as the propensities "
      "(the model's outputs, its ctr in the rate's form and the labels unchanged: a "
      "diagnostic only a simulation can run) give entire-space redraw means of "
      + " and ".join(parts) + "." + verdict + low,
  ]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default="/tmp/cvr_bench/full",
                      help="The benchmarks.models mode directory (data/, raw/).")
  parser.add_argument("--runs_dir", help="Default: WORK_DIR/runs_calibration_none.")
  parser.add_argument("--results_dir", default=models_bench.RESULTS_DIR)
  parser.add_argument("--name", default="calibration",
                      help="Results base name: RESULTS_DIR/NAME.md and NAME.json.")
  parser.add_argument("--parallel", type=int, default=2)
  parser.add_argument("--redraws", type=int, default=REDRAWS,
                      help="Redraws of the validation day's labels per run (0: none).")
  parser.add_argument("--render_only", action="store_true",
                      help="Re-render RESULTS_DIR/NAME.md from NAME.json (no runs read).")
  args = parser.parse_args(argv)
  if args.render_only:
    write_page(args.results_dir, args.name, **load_results(args.results_dir, args.name))
    return
  runs_dir = args.runs_dir or os.path.join(args.work_dir, "runs_calibration_none")
  data_dir = os.path.join(args.work_dir, "data")
  truth_dir = os.path.join(args.work_dir, "raw")
  run_dirs = sorted(os.path.dirname(p) for p in glob.glob(os.path.join(runs_dir, "*", "seed*",
                                                                      "metrics.json")))
  if not run_dirs:
    parser.error(f"no runs (*/seed*/metrics.json) under {runs_dir}")
  start = time.time()
  settings = {"runs_dir": runs_dir, "runs": len(run_dirs), "load_before": common.load_average(),
              "command": " ".join(["python -m benchmarks.calibration"]
                                  + list(sys.argv[1:] if argv is None else argv))}
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(args.parallel, mp_context=context,
                                              max_tasks_per_child=1) as pool:
    futures = {pool.submit(_worker, run, data_dir, truth_dir, args.redraws): run
               for run in run_dirs}
    for done, future in enumerate(concurrent.futures.as_completed(futures), 1):
      future.result()
      print(f"[{time.strftime('%H:%M:%S')}] {done}/{len(run_dirs)} {futures[future]}",
            flush=True)
  runs: Dict[str, List[Dict[str, Any]]] = {}
  for run in run_dirs:
    with open(os.path.join(run, CACHE)) as f:
      runs.setdefault(os.path.basename(os.path.dirname(run)), []).append(json.load(f))
  settings.update(seconds=time.time() - start, load_after=common.load_average())
  first = next(iter(runs.values()))[0]
  if "validation_observed_vs_truth" in first:
    settings["validation"] = {key: first[key] for key in (
        "validation_rows", "validation_clicks", "validation_purchases",
        "validation_observed_vs_truth")}
    settings["bayes"] = first["bayes"]
  summary = aggregate(runs)
  redraws = {model: redraw_summary(results) for model, results in runs.items()}
  settings["redraws"] = args.redraws
  settings["date"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  os.makedirs(args.results_dir, exist_ok=True)
  with open(os.path.join(args.results_dir, f"{args.name}.json"), "w") as f:
    json.dump({"settings": settings, "summary": summary, "redraws": redraws, "runs": runs},
              f, indent=1)
  print(write_page(args.results_dir, args.name, summary, settings, redraws))


def load_results(results_dir: str, name: str) -> Dict[str, Any]:
  """{summary, settings, redraws} of RESULTS_DIR/NAME.json (main's output)."""
  with open(os.path.join(results_dir, f"{name}.json")) as f:
    results = json.load(f)
  return {key: results[key] for key in ("summary", "settings", "redraws")}


def write_page(results_dir: str, name: str, summary: Dict[str, Dict[str, Any]],
               settings: Dict[str, Any],
               redraws: Dict[str, Dict[str, Dict[str, float]]]) -> str:
  """Writes RESULTS_DIR/NAME.md; returns its text."""
  markdown = f"# {TITLE}\n\n" + render(summary, settings, redraws)
  with open(os.path.join(results_dir, f"{name}.md"), "w") as f:
    f.write(markdown)
  return markdown


if __name__ == "__main__":
  main()
