r"""Delayed-feedback methods on the entire space, scored against the final labels (issue 31).

  python -m benchmarks.delayed_feedback [--quick] [--seeds 1,2,3] [--models esmm,naive]
      [--methods oracle,vanilla,...] [--sigmas 1.5,2.5] [--workdir DIR] [--results_dir DIR]

The protocol, per seed:
  1. the world of benchmarks.continuous (daily layout, heavy-tailed purchase delays with
     a 7-day attribution window, arriving and churning users and items), each day
     preprocessed once (`pipeline.preprocess --day`, chained; shared by every method);
  2. for each (model, method): a model trained from scratch on the method's streams of
     the first `pretrain_days` days (training/feedback_training.train_on_streams, the
     config configs/<model>_feedback.yaml with feedback.method = the method), then, for
     each later day D but the last, warm-started from D-1's model on D's stream (what
     `pipeline.daily` does with the method in its config);
  3. D's model scored on day D+1's new impressions (the freshest period): AUC, PR-AUC
     (average precision) and NLL of ctcvr against the FINAL labels (the simulator's
     outcomes: each impression's purchase label once its window has closed, which the
     data on D+1 does not know yet), the CVR AUC over the clicked impressions with
     their final labels, and the calibration of ctcvr against the truth (sum predicted
     / sum of the true in-window probabilities).
Full sizes: 9 days of 30,000 impressions, the first model on days 1-4, then days 5-8 warm
(5 trainings and scorings per model and method), 3 seeds x 2 models x 8 methods, and the
tail sweep's 2 worlds x 8 methods; each (world, model) in its own process, 2 at a time
(`--parallel`). Measured cost with the configs' 1 epoch a day (2026-12-07 05:58 UTC,
idle VM at a fast hour of the host: a fixed Python loop 1.17 s, against 1.8-3.5 s on
other days): 45.3 min wall and 71.6 CPU min in all; the 45 day jobs 6.7 min, the 8
(world, model) workers 7-10 min each (ESMM / naive, all 8 methods), the last one alone
on a core for its final 7 min; a training 10.8 CPU s on average. The same command with
2 epochs a day at a slow hour (the loop 3.3 s) took about 103 min, so expect 45-90 min
by the hour.
RI-AUC and RI-NLL = (method - vanilla) / (oracle - vanilla), per seed, on the means over
the evaluated days (NLL: lower is better, so the signs are such that 1 = the oracle's).
The tail sweep (`--sigmas`) repeats the protocol on seed 1 for ESMM with other log-space
sigmas of the purchase delay (`pipeline.simulate --purchase_delay_sigma`: more
conversions after a day the larger it is).

Resumable: every (world, model, method, day) row is a JSON file under WORKDIR; a rerun
skips the finished rows (whatever the configs were when they were written: a run with
other configs, e.g. the 1 epoch a day chosen after the 2026-12-07 run, needs a new
WORKDIR; each row records its epochs, learning rate and window c, and the page states
them from the rows), and a method's next day warm-starts from the model its last
finished day kept. Choices (the method's window c = 1 h, the configs) are the configs'
and were not tuned on these worlds. Writes benchmarks/results/<name>.md/.json and
<name>_nll.png (per-day NLL of every method, ESMM, seed mean).
"""

import argparse
import dataclasses
import os
import shutil
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from benchmarks import common
from benchmarks import continuous
from simulation import world_config

MODELS = ("esmm", "naive")
METHODS = ("oracle", "vanilla", "waiting", "fnw", "fnc", "esdfm", "defer", "dfm")
# window_days: the attribution window W of these worlds and configs. ES-DFM's and DEFER's
# classifier learns from impressions whose window has closed, so the first model's days
# must reach past W (pretrain_days > window_days).
MODES = {
    "full": {"days": 9, "impressions": 270_000, "seeds": (1, 2, 3), "pretrain_days": 4,
             "window_days": 3, "sigmas": (1.0, 2.5)},
    "quick": {"days": 5, "impressions": 10_000, "seeds": (1,), "pretrain_days": 2,
              "window_days": 1, "sigmas": ()},
}
SWEEP_SEED = 1
DEFAULT_SIGMA = world_config.ConversionDelay.sigma  # the main worlds' purchase delay
METRICS = ("ctcvr_auc", "ctcvr_pr_auc", "ctcvr_nll", "cvr_auc", "ctcvr_calibration_vs_truth",
           "ctcvr_calibration")
HIGHER_IS_BETTER = {"ctcvr_auc": True, "ctcvr_nll": False}


def config_path(workdir: str, model: str) -> str:
  """WORK/configs/<model>.yaml: configs/<model>_feedback.yaml with the worlds' W
  (`write_configs`)."""
  return os.path.join(workdir, "configs", f"{model}.yaml")


def write_configs(workdir: str, window_days: int) -> None:
  for model in MODELS:
    path = config_path(workdir, model)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
      f.write(f"base: {os.path.join(common.REPO_ROOT, 'configs', f'{model}_feedback.yaml')}\n"
              f"data: {{attribution_window_s: {window_days * 86400}}}\n")


@dataclasses.dataclass(frozen=True)
class Unit:
  """One (world, model, method): trained over the days, a row per evaluated day."""

  world: str  # "s<seed>" or "s<seed>-sigma<value>"
  seed: int
  model: str
  method: str
  sigma: Optional[float] = None


def plan(seeds: Sequence[int], models: Sequence[str], methods: Sequence[str],
         sigmas: Sequence[float]) -> List[Unit]:
  """The main grid, then the tail sweep (seed SWEEP_SEED, ESMM)."""
  units = [Unit(f"s{seed}", seed, model, method) for seed in seeds for model in models
           for method in methods]
  units += [Unit(f"s{SWEEP_SEED}-sigma{sigma:g}", SWEEP_SEED, "esmm", method, sigma)
            for sigma in sigmas for method in methods]
  return units


def row_path(workdir: str, unit: Unit, day: str) -> str:
  return os.path.join(workdir, unit.world, "rows", unit.model, unit.method, f"{day}.json")


def relative_improvement(method: float, vanilla: float, oracle: float) -> Optional[float]:
  """(method - vanilla) / (oracle - vanilla): 0 = vanilla, 1 = the oracle (None when the
  oracle does not differ from vanilla)."""
  if oracle == vanilla:
    return None
  return (method - vanilla) / (oracle - vanilla)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
  """PR-AUC as average precision: the mean, over the positives, of the precision among
  the rows scored at least as high (ties counted as one block)."""
  labels = np.asarray(labels, np.float64)
  if labels.sum() == 0:
    return float("nan")
  order = np.argsort(-np.asarray(scores, np.float64), kind="stable")
  sorted_scores, sorted_labels = np.asarray(scores)[order], labels[order]
  ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(sorted_scores) - 1]
  true_positives = np.cumsum(sorted_labels)[ends]
  precision = true_positives / (ends + 1)
  new_positives = np.diff(np.r_[0.0, true_positives])
  return float(np.sum(precision * new_positives) / labels.sum())


# ---- the worlds ----


def world_flags(sigma: Optional[float], window_days: int) -> List[str]:
  flags = list(continuous.WORLD_FLAGS)
  flags[flags.index("--attribution_window_s") + 1] = str(window_days * 86400)
  if sigma is not None:
    flags += ["--purchase_delay_sigma", str(sigma)]
  return flags


def ensure_world(workdir: str, unit: Unit, days: int, impressions: int,
                 window_days: int) -> str:
  raw = os.path.join(workdir, unit.world, "raw")
  if not os.path.exists(os.path.join(raw, "world.json")):
    logging.info("%s: simulating %d days, %d impressions", unit.world, days, impressions)
    common.run_module("pipeline.simulate", [
        "--output", raw, "--impressions", str(impressions), "--days", str(days),
        "--seed", str(unit.seed), *world_flags(unit.sigma, window_days), "--overwrite"])
  return raw


# ---- one unit (this process: TensorFlow) ----


def final_labels(raw: str) -> Dict[str, int]:
  from training import feedback_inputs  # pylint: disable=g-import-not-at-top
  return feedback_inputs.final_labels_of(raw)


def evaluate(export_dir: str, day_dir: str, config, final: Dict[str, int],
             truth) -> Dict[str, Any]:
  """The model scored on DAY_DIR's new impressions against the final labels and the
  truth (module docstring): METRICS and the rows' counts."""
  # pylint: disable=g-import-not-at-top
  from evaluation import report
  from evaluation import scoring
  from transforms import outputs as outputs_lib
  # pylint: enable=g-import-not-at-top
  spec = config.load_feature_spec()
  click, conversion = config.data.click_label, config.data.conversion_label
  scores = scoring.score_saved_model(
      export_dir, outputs_lib.OutputPaths(day_dir).examples_pattern("train"), spec,
      [click, conversion])
  ids = scores[report.IMPRESSION_ID]
  clicked = np.asarray(scores[click]).astype(np.int64)
  purchase = np.array([final[i] for i in ids], np.int64) * clicked
  aligned, _ = report.align_truth(ids, truth)
  table = report.task_table({click: clicked, conversion: purchase},
                            {name: scores[name] for name in ("ctr", "cvr", "ctcvr")},
                            truth=aligned)
  ctcvr, cvr = table["ctcvr"], table["cvr"]
  return {"eval_rows": int(len(ids)), "eval_clicks": int(clicked.sum()),
          "eval_final_purchases": int(purchase.sum()),
          "eval_purchases_seen": int(np.asarray(scores[conversion]).sum()),
          "ctcvr_auc": ctcvr["auc"], "ctcvr_nll": ctcvr["log_loss"],
          "ctcvr_pr_auc": average_precision(clicked * purchase, scores["ctcvr"]),
          "ctcvr_calibration": ctcvr["calibration"],
          "ctcvr_calibration_vs_truth": (ctcvr.get("truth") or {}).get(
              "calibration_vs_truth"),
          "cvr_auc": cvr["auc"]}


def run_unit(workdir: str, unit: Unit, raw: str, days: Sequence[str], pretrain_days: int,
             final: Dict[str, int], truth) -> List[Dict[str, Any]]:
  """Trains and scores UNIT day by day (module docstring); returns its rows."""
  # pylint: disable=g-import-not-at-top
  import tf_keras
  from configs import config as config_lib
  from pipeline import daily_state
  from serving import versions
  from training import feedback_training
  # pylint: enable=g-import-not-at-top
  config = config_lib.load_config(config_path(workdir, unit.model),
                                  overrides={"feedback": {"method": unit.method}})
  layout = daily_state.Layout(os.path.join(workdir, unit.world))
  models = os.path.join(workdir, unit.world, "models", unit.model, unit.method)
  rows, earlier = [], None
  for index in range(pretrain_days - 1, len(days) - 1):
    day = days[index]
    path = row_path(workdir, unit, day)
    model_dir = os.path.join(models, day)
    if os.path.exists(path):
      rows.append(continuous.read_json(path))
      earlier = model_dir
      continue
    trained_on = days[:pretrain_days] if earlier is None else [day]
    shutil.rmtree(model_dir, ignore_errors=True)  # a killed day is redone
    tf_keras.backend.clear_session()
    start, cpu = time.perf_counter(), time.process_time()
    result = feedback_training.train_on_streams(
        config, [layout.day_dir(d) for d in trained_on], model_dir,
        warm_start_from=earlier, final_labels=final if unit.method == "oracle" else None)
    train_wall, train_cpu = time.perf_counter() - start, time.process_time() - cpu
    export_dir = versions.newest_complete_version(os.path.join(model_dir, "export"))
    row = {"world": unit.world, "seed": unit.seed, "sigma": unit.sigma,
           "model": unit.model, "method": unit.method, "day": day,
           "eval_day": days[index + 1], "trained_on": trained_on,
           "train_samples": result.metrics["train_examples"],
           **training_settings(config),
           "train_wall_s": round(train_wall, 2), "train_cpu_s": round(train_cpu, 2),
           **evaluate(export_dir, layout.day_dir(days[index + 1]), config, final, truth)}
    continuous.write_json(path, row)
    rows.append(row)
    if earlier is not None:
      shutil.rmtree(earlier, ignore_errors=True)  # only the newest model is needed
    earlier = model_dir
    logging.info("%s %s %s %s: ctcvr AUC %.4f NLL %.5f (final labels), calibration vs "
                 "truth %s", unit.world, unit.model, unit.method, day, row["ctcvr_auc"],
                 row["ctcvr_nll"], row["ctcvr_calibration_vs_truth"])
  return rows


# ---- the summary (pure) ----


def _mean(values) -> Optional[float]:
  values = [v for v in values if v is not None and not np.isnan(v)]
  return float(np.mean(values)) if values else None


def _spread(values) -> Dict[str, Any]:
  values = [v for v in values if v is not None]
  return {"mean": float(np.mean(values)) if values else None,
          "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
          "per_seed": values}


def summarize(rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  """world group ("main" or "sigma<v>") -> model -> method -> metric -> spread over
  seeds of the per-seed mean over the evaluated days, with ri_auc and ri_nll."""
  groups: Dict[str, Dict[str, Dict[str, Dict[int, Dict[str, float]]]]] = {}
  for row in rows:
    group = "main" if row["sigma"] is None else f"sigma{row['sigma']:g}"
    cell = groups.setdefault(group, {}).setdefault(row["model"], {}).setdefault(
        row["method"], {})
    cell.setdefault(row["seed"], []).append(row)
  summary: Dict[str, Any] = {}
  for group, models in groups.items():
    for model, methods in models.items():
      per_seed = {method: {seed: {metric: _mean(r[metric] for r in seed_rows)
                                  for metric in METRICS}
                           for seed, seed_rows in seeds.items()}
                  for method, seeds in methods.items()}
      out = summary.setdefault(group, {}).setdefault(model, {})
      for method, seeds in per_seed.items():
        cell = {metric: _spread([seeds[s][metric] for s in sorted(seeds)])
                for metric in METRICS}
        if "vanilla" in per_seed and "oracle" in per_seed:
          for metric, name in (("ctcvr_auc", "ri_auc"), ("ctcvr_nll", "ri_nll")):
            cell[name] = _spread([relative_improvement(
                seeds[s][metric], per_seed["vanilla"][s][metric],
                per_seed["oracle"][s][metric]) for s in sorted(seeds)
                                  if s in per_seed["vanilla"] and s in per_seed["oracle"]])
            # The ratio of the seeds' means: steadier than the mean of per-seed ratios
            # when one seed's oracle - vanilla is small.
            cell[name + "_of_means"] = relative_improvement(*(
                _mean(per_seed[m][s][metric] for s in sorted(per_seed[m]))
                for m in (method, "vanilla", "oracle")))
        out[method] = cell
  return summary


def still_to_come(rows: Sequence[Dict[str, Any]]) -> Optional[float]:
  """The share of the evaluated days' final purchases not yet seen at their day's
  snapshot (1 - seen / final, pooled): about what vanilla's calibration misses."""
  final = sum(r["eval_final_purchases"] for r in rows)
  return 1.0 - sum(r["eval_purchases_seen"] for r in rows) / final if final else None


GOAL_RI = 0.5
GOAL_CALIBRATION = 0.05


def goals(summary: Dict[str, Any], rows: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  """Issue 31's goals on the main worlds' ESMM: the best method by mean RI-NLL (oracle
  and vanilla aside) reaches RI-NLL and RI-AUC >= GOAL_RI, its calibration against the
  truth within 1 +- GOAL_CALIBRATION."""
  methods = summary.get("main", {}).get("esmm", {})
  candidates = {m: c for m, c in methods.items()
                if m not in ("oracle", "vanilla")
                and c.get("ri_nll", {}).get("mean") is not None}
  if not candidates:
    return {}
  best = max(candidates, key=lambda m: candidates[m]["ri_nll"]["mean"])
  cell = candidates[best]
  calibration = cell["ctcvr_calibration_vs_truth"]["mean"]
  return {"best": best, "ri_nll": cell["ri_nll"]["mean"], "ri_auc": cell["ri_auc"]["mean"],
          "calibration_vs_truth": calibration,
          "vanilla_calibration_vs_truth":
              methods["vanilla"]["ctcvr_calibration_vs_truth"]["mean"],
          "still_to_come": still_to_come([r for r in rows if r["sigma"] is None
                                          and r["model"] == "esmm"
                                          and r["method"] == "vanilla"]),
          "ri_nll_met": cell["ri_nll"]["mean"] >= GOAL_RI,
          "ri_auc_met": cell["ri_auc"]["mean"] >= GOAL_RI,
          "calibration_met": calibration is not None
                             and abs(calibration - 1.0) <= GOAL_CALIBRATION}


def _num(cell: Optional[Dict[str, Any]], form: str = "{:.4f}") -> str:
  if not cell or cell.get("mean") is None:
    return "-"
  text = form.format(cell["mean"])
  return text + (f" ± {form.format(cell['std'])}" if cell.get("std") is not None else "")


def _fmt(value: Optional[float], form: str) -> str:
  return "-" if value is None else form.format(value)


def _method_table(methods: Dict[str, Any]) -> str:
  header = ["method", "CTCVR AUC", "PR-AUC", "NLL", "CVR AUC", "cal. vs truth",
            "RI-AUC", "RI-NLL", "RI-AUC, RI-NLL of the seed means"]
  body = [[method, _num(cell["ctcvr_auc"]), _num(cell["ctcvr_pr_auc"]),
           _num(cell["ctcvr_nll"], "{:.5f}"), _num(cell["cvr_auc"]),
           _num(cell["ctcvr_calibration_vs_truth"], "{:.3f}"),
           _num(cell.get("ri_auc"), "{:.2f}"), _num(cell.get("ri_nll"), "{:.2f}"),
           f"{_fmt(cell.get('ri_auc_of_means'), '{:.2f}')}, "
           f"{_fmt(cell.get('ri_nll_of_means'), '{:.2f}')}"]
          for method, cell in methods.items()]
  return common.markdown_table(header, body)


def sweep_table(rows: Sequence[Dict[str, Any]], default_sigma: float) -> Optional[str]:
  """The tail sweep: seed SWEEP_SEED's ESMM worlds by purchase_delay_sigma (the main
  world's at DEFAULT_SIGMA), each method's RI-NLL / RI-AUC and calibration vs truth."""
  rows = [r for r in rows if r["seed"] == SWEEP_SEED and r["model"] == "esmm"]
  by_sigma: Dict[float, List[Dict[str, Any]]] = {}
  for row in rows:
    by_sigma.setdefault(default_sigma if row["sigma"] is None else row["sigma"],
                        []).append(dict(row, sigma=None))
  if len(by_sigma) < 2:
    return None
  sigmas = sorted(by_sigma)
  cells = {sigma: summarize(by_sigma[sigma])["main"]["esmm"] for sigma in sigmas}
  methods = [m for m in METHODS if all(m in cells[s] for s in sigmas)]
  header = ["sigma", "still to come at the snapshot",
            "oracle - vanilla: CTCVR AUC / NLL"] + [
      f"{m} RI-NLL / RI-AUC / cal." for m in methods if m not in ("oracle", "vanilla")] + [
      "vanilla cal.", "oracle cal."]
  body = []
  for sigma in sigmas:
    oracle, vanilla = cells[sigma]["oracle"], cells[sigma]["vanilla"]
    line = [f"{sigma:g}", _fmt(still_to_come([r for r in by_sigma[sigma]
                                              if r["method"] == "vanilla"]), "{:.1%}"),
            f"{oracle['ctcvr_auc']['mean'] - vanilla['ctcvr_auc']['mean']:+.4f} / "
            f"{oracle['ctcvr_nll']['mean'] - vanilla['ctcvr_nll']['mean']:+.5f}"]
    for method in methods:
      cell = cells[sigma][method]
      calibration = _fmt(cell["ctcvr_calibration_vs_truth"]["mean"], "{:.2f}")
      if method not in ("oracle", "vanilla"):
        line.append(f"{_fmt(cell['ri_nll']['mean'], '{:.2f}')} / "
                    f"{_fmt(cell['ri_auc']['mean'], '{:.2f}')} / {calibration}")
    line += [_fmt(cells[sigma][m]["ctcvr_calibration_vs_truth"]["mean"], "{:.2f}")
             for m in ("vanilla", "oracle")]
    body.append(line)
  return common.markdown_table(header, body)


def render_markdown(document: Dict[str, Any]) -> str:
  settings, summary, rows = document["settings"], document["summary"], document["rows"]
  runs = settings.get("invocations") or [settings]
  parts = [
      f"Worlds: `pipeline.simulate {' '.join(world_flags(None, settings['window_days']))}`"
      f", {settings['days']} days of {settings['impressions'] // settings['days']:,} "
      f"impressions each, seeds {settings['seeds']}; attribution window W = "
      f"{settings['window_days']} days. Configs: configs/<model>_feedback.yaml with W ("
      + "; ".join(f"{model}: {c['epochs']} epoch{'' if c['epochs'] == 1 else 's'} a day "
                  f"at learning rate "
                  f"{c['learning_rate']:g}, the method's window c = {c['window_s'] / 3600:g} h"
                  if c.get("epochs") is not None else
                  f"{model}: settings not recorded in its rows (written before they were, "
                  f"or by different configs)"
                  for model, c in settings.get("configs", {}).items()) +
      "; nothing tuned on these worlds). "
      f"The first model trains from scratch on the streams of days 1-"
      f"{settings['pretrain_days']}; each later day's model is warm-started from the day "
      f"before's on the day's stream; every model is scored on the next day's new "
      f"impressions against the final labels (the simulator's outcomes). Means over the "
      f"evaluated days per seed, then mean ± std over the seeds; RI = (method - vanilla) "
      f"/ (oracle - vanilla) per seed (1 = the oracle; for NLL, lower is better).", "",
      "Cost, per invocation on its WORK (a resumed run reuses the rows before): " +
      "; ".join(f"{run['started']}: {run['seconds'] / 60:.1f} min wall, "
                f"{run['cpu_s'] / 60:.1f} CPU min, load {run['load_before']} before, "
                f"{run['load_after']} after" for run in runs) +
      ". The worlds' day jobs (each day preprocessed once, before the first invocation "
      "that needed it): " + (
          f"{settings['preprocess']['day_jobs']} jobs, "
          f"{settings['preprocess']['wall_s'] / 60:.1f} min wall, "
          f"{settings['preprocess']['cpu_s'] / 60:.1f} CPU min" if "preprocess" in settings
          else "-") +
      f". Training: {np.mean([r['train_cpu_s'] for r in rows]):.1f} CPU s a model on "
      f"average over the {len(rows)} rows (each row a training and a scoring).", ""]
  outcome = goals(summary, rows)
  if outcome:
    parts += ["## Goals", "", common.markdown_table(["goal", "measured", "met"], [
        [f"best ESMM method by RI-NLL: RI-NLL >= {GOAL_RI}", f"{outcome['best']}: "
         f"{outcome['ri_nll']:.2f}", "yes" if outcome["ri_nll_met"] else "no"],
        [f"... and its RI-AUC >= {GOAL_RI}", f"{outcome['ri_auc']:.2f}",
         "yes" if outcome["ri_auc_met"] else "no"],
        [f"... its CTCVR calibration vs truth within 1 ± {GOAL_CALIBRATION}",
         _fmt(outcome["calibration_vs_truth"], "{:.3f}"),
         "yes" if outcome["calibration_met"] else "no"],
        ["vanilla's calibration vs truth, off by about the share still to come",
         f"{_fmt(outcome['vanilla_calibration_vs_truth'], '{:.3f}')} (still to come at "
         f"the snapshot: {_fmt(outcome['still_to_come'], '{:.1%}')})", "-"]]), ""]
  for group, models in summary.items():
    for model, methods in models.items():
      parts += [f"## {model}, {'the main worlds' if group == 'main' else group}", "",
                _method_table(methods), ""]
  table = sweep_table(rows, DEFAULT_SIGMA)
  if table:
    parts += ["## The tail sweep (ESMM, seed 1)", "", "Each cell: RI-NLL / RI-AUC / "
              "CTCVR calibration vs truth of one seed's world; the larger sigma, the "
              "more conversions arrive after a day. An RI divides by the oracle's gain "
              "over vanilla (third column): where that gain is about 0, as a single "
              "world's AUC gain can be, the RI is noise, not a finding.", "", table, ""]
  parts += [f"Per-day NLL of every method: [{settings['name']}_nll.png]"
            f"({settings['name']}_nll.png); every row: {settings['name']}.json.", ""]
  return "\n".join(parts)


def plot(rows: Sequence[Dict[str, Any]], path: str) -> Optional[str]:
  """Per evaluated day, each method's ESMM CTCVR NLL against the final labels (seed mean,
  main worlds)."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  main = [r for r in rows if r["sigma"] is None and r["model"] == "esmm"]
  if not main:
    return None
  figure, axes = plt.subplots(figsize=(8, 4.5))
  for method in METHODS:
    by_day: Dict[str, List[float]] = {}
    for row in main:
      if row["method"] == method:
        by_day.setdefault(row["eval_day"], []).append(row["ctcvr_nll"])
    if by_day:
      days = sorted(by_day)
      axes.plot(days, [np.mean(by_day[d]) for d in days], marker="o", label=method)
  axes.set_xlabel("evaluated day (the day after the model's)")
  axes.set_ylabel("CTCVR NLL vs final labels")
  axes.set_title("ESMM: delayed-feedback methods, per day (seed mean)")
  axes.legend(fontsize=8, ncol=2)
  figure.autofmt_xdate()
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  plt.close(figure)
  return path


# ---- the command ----


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = common.arg_parser(__doc__, "A smoke test: 1 seed, 5 days, 10,000 impressions, "
                             "ESMM (written as delayed_feedback_quick.*).")
  parser.set_defaults(workdir="/tmp/cvr_delayed_feedback")
  parser.add_argument("--days", type=int, help="Days of each world.")
  parser.add_argument("--impressions", type=int, help="Impressions over all the days.")
  parser.add_argument("--pretrain_days", type=int, help="Days the first model trains on.")
  parser.add_argument("--seeds", help="Comma-separated world seeds (default 1,2,3).")
  parser.add_argument("--models", help="Of esmm, naive (default both; --quick: esmm).")
  parser.add_argument("--methods", default=",".join(METHODS), help="Of " + ", ".join(METHODS))
  parser.add_argument("--sigmas", help="The tail sweep's purchase_delay_sigma values "
                      "(comma-separated; empty: none).")
  parser.add_argument("--name", help="Results base name (default delayed_feedback, "
                      "delayed_feedback_quick with --quick).")
  parser.add_argument("--parallel", type=int, default=2, help="(world, model) groups "
                      "trained at once, each in its own process (after the worlds' days "
                      "are preprocessed one at a time); 1: in this process.")
  parser.add_argument("--worker", help=argparse.SUPPRESS)  # WORLD:MODEL (run_workers)
  # The per-day child process (_ensure_days), not for users:
  parser.add_argument("--preprocess_child", help=argparse.SUPPRESS)
  parser.add_argument("--raw", help=argparse.SUPPRESS)
  parser.add_argument("--config", help=argparse.SUPPRESS)
  parser.add_argument("--cost", help=argparse.SUPPRESS)
  return parser.parse_args(list(argv))


def settings_of(args: argparse.Namespace) -> Dict[str, Any]:
  mode = "quick" if args.quick else "full"
  settings = dict(MODES[mode], mode=mode)
  for key in ("days", "impressions", "pretrain_days"):
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  if args.seeds:
    settings["seeds"] = tuple(int(v) for v in args.seeds.split(","))
  if args.sigmas is not None:
    settings["sigmas"] = tuple(float(v) for v in args.sigmas.split(",") if v)
  settings["seeds"], settings["sigmas"] = list(settings["seeds"]), list(settings["sigmas"])
  settings["models"] = ([m for m in args.models.split(",") if m] if args.models else
                        ["esmm"] if args.quick else list(MODELS))
  settings["methods"] = [m for m in args.methods.split(",") if m]
  common.refuse_unknown(settings, {"models": MODELS, "methods": METHODS})
  if "oracle" not in settings["methods"] or "vanilla" not in settings["methods"]:
    raise SystemExit("error: --methods needs oracle and vanilla (RI's ends)")
  if not settings["window_days"] < settings["pretrain_days"] <= settings["days"] - 2:
    raise SystemExit(f"error: --pretrain_days {settings['pretrain_days']} must exceed W "
                     f"({settings['window_days']} days: the classifier of delayed positives "
                     f"learns from closed windows) and leave a day to train on and one to "
                     f"score ({settings['days']} days)")
  settings["name"] = args.name or ("delayed_feedback_quick" if args.quick else
                                   "delayed_feedback")
  return settings


def main(argv: Optional[Sequence[str]] = None) -> None:
  logging.set_verbosity(logging.INFO)
  argv = sys.argv[1:] if argv is None else list(argv)
  args = parse_args(argv)
  if args.preprocess_child:
    preprocess_child(args.raw, args.workdir, args.config, args.preprocess_child, args.cost)
    return
  settings = settings_of(args)
  workdir = os.path.join(args.workdir, settings["mode"])
  write_configs(workdir, settings["window_days"])
  start, cpu_start = time.perf_counter(), continuous._cpu_s()  # pylint: disable=protected-access
  settings["started"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  settings["load_before"] = common.load_average()
  units = plan(settings["seeds"], settings["models"], settings["methods"],
               settings["sigmas"])
  worlds: Dict[str, Any] = {}
  for unit in units:  # every world and its days first, one preprocessing at a time
    if unit.world not in worlds:
      raw = ensure_world(workdir, unit, settings["days"], settings["impressions"],
                         settings["window_days"])
      _ensure_days(workdir, unit, raw)
      worlds[unit.world] = (raw, continuous.world_days(raw))
  scored = {unit: [days[i] for i in range(settings["pretrain_days"] - 1, len(days) - 1)]
            for unit in units for days in [worlds[unit.world][1]]}
  if args.worker:
    world, model = args.worker.split(":")
    run_units(workdir, [u for u in units if (u.world, u.model) == (world, model)], worlds,
              settings["pretrain_days"])
    return
  groups = []
  for unit in units:
    if (unit.world, unit.model) not in groups and any(
        not os.path.exists(row_path(workdir, unit, day)) for day in scored[unit]):
      groups.append((unit.world, unit.model))
  settings["groups_run"] = len(groups)
  if args.parallel > 1:
    common.run_workers("benchmarks.delayed_feedback", argv, [
        (f"{world}:{model}", os.path.join(workdir, world, f"{model}.log"))
        for world, model in groups], args.parallel)
  else:
    run_units(workdir, units, worlds, settings["pretrain_days"])
  rows = [continuous.read_json(row_path(workdir, unit, day))
          for unit in units for day in scored[unit]]
  settings["configs"] = configs_of(rows)
  settings["preprocess"] = preprocess_cost(workdir, sorted(worlds))
  settings.update(seconds=time.perf_counter() - start,
                  cpu_s=continuous._cpu_s() - cpu_start,  # pylint: disable=protected-access
                  load_after=common.load_average(), workdir=workdir)
  settings["invocations"] = continuous.record_invocation(workdir, {
      "started": settings["started"], "seconds": settings["seconds"],
      "cpu_s": settings["cpu_s"], "load_before": settings["load_before"],
      "load_after": settings["load_after"]})
  document = {"settings": settings, "summary": summarize(rows), "rows": rows}
  os.makedirs(args.results_dir, exist_ok=True)
  name = settings["name"]
  continuous.write_json(os.path.join(args.results_dir, f"{name}.json"), document)
  plot(rows, os.path.join(args.results_dir, f"{name}_nll.png"))
  command = "python -m benchmarks.delayed_feedback" + "".join(f" {a}" for a in argv)
  common.write_result(name, "Delayed-feedback methods on the entire space, against the "
                      "final labels (issue 31)", render_markdown(document),
                      results_dir=args.results_dir, command=command)


def run_units(workdir: str, units: Sequence[Unit], worlds: Dict[str, Any],
              pretrain_days: int) -> None:
  """Runs UNITS in this process (each world's final labels and truth read once)."""
  # pylint: disable=g-import-not-at-top
  from simulation import truth as truth_lib
  # pylint: enable=g-import-not-at-top
  loaded: Dict[str, Any] = {}
  start = time.perf_counter()
  for done, unit in enumerate(units):
    raw, days = worlds[unit.world]
    if unit.world not in loaded:
      loaded[unit.world] = (final_labels(raw), truth_lib.label_truth(
          truth_lib.load_truth(raw), truth_lib.late_purchase_fraction(raw)))
    run_unit(workdir, unit, raw, days, pretrain_days, *loaded[unit.world])
    logging.info("[%d/%d units] %s %s %s done; elapsed %.0f s", done + 1, len(units),
                 unit.world, unit.model, unit.method, time.perf_counter() - start)


TRAINING_SETTINGS = ("epochs", "learning_rate", "window_s")


def training_settings(config) -> Dict[str, Any]:
  """What a row records of the config that trained it (the page states it from the rows,
  not from today's configs, which may have changed since: a reused row keeps its own)."""
  return {"epochs": config.train.epochs, "learning_rate": config.train.learning_rate,
          "window_s": config.feedback.window_s}


def configs_of(rows: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
  """Per model, the training settings its rows record ({} for a model whose rows differ
  or predate the record: the page then says so)."""
  out = {}
  for model in sorted({row["model"] for row in rows}):
    found = {tuple(row.get(key) for key in TRAINING_SETTINGS)
             for row in rows if row["model"] == model}
    out[model] = dict(zip(TRAINING_SETTINGS, found.pop())) if len(found) == 1 else {}
  return out


def preprocess_cost(workdir: str, worlds: Sequence[str]) -> Dict[str, float]:
  """The day jobs' summed wall and CPU seconds (their preprocess/<day>.json)."""
  costs = [continuous.read_json(os.path.join(workdir, world, "preprocess", name))
           for world in worlds
           for name in sorted(os.listdir(os.path.join(workdir, world, "preprocess")))
           if name.endswith(".json")]
  return {"day_jobs": len(costs), "wall_s": sum(c["job_wall_s"] for c in costs),
          "cpu_s": sum(c["job_cpu_s"] for c in costs)}


def _ensure_days(workdir: str, unit: Unit, raw: str) -> None:
  """Every day of UNIT's world preprocessed once, one child process a day (in order)."""
  base = os.path.join(workdir, unit.world)
  for day in continuous.world_days(raw):
    cost_path = os.path.join(base, "preprocess", f"{day}.json")
    if not os.path.exists(cost_path):
      os.makedirs(os.path.dirname(cost_path), exist_ok=True)
      common.run_module("benchmarks.delayed_feedback", [
          "--preprocess_child", day, "--raw", raw, "--workdir", base, "--config",
          config_path(workdir, "esmm"), "--cost", cost_path],
          log_path=os.path.join(base, "preprocess", f"{day}.log"))
      logging.info("%s: preprocessed %s", unit.world, day)


def preprocess_child(raw: str, base: str, config: str, day: str, cost_path: str) -> None:
  """In a child process: pipeline.daily's preprocess stage for DAY (chained to the day
  before) into BASE/days/<day>, with CONFIG's attribution window; writes COST_PATH."""
  from pipeline import daily  # pylint: disable=g-import-not-at-top
  args = argparse.Namespace(raw=raw, workdir=base, config=config, start=day, end=day,
                            history_days=1, truth=raw, validation_fraction=None)
  loop = daily.check_settings(args, ["--local_workers", "1"])
  record = daily.run_stage(loop, day, "preprocess", lambda: daily.preprocess_day(loop, day))
  continuous.write_json(cost_path, {"job_wall_s": record["wall_s"],
                                    "job_cpu_s": record["cpu_s"]})


if __name__ == "__main__":
  main()
