"""The truth benchmark: every model on one simulated world, scored against the truth.

  python -m benchmarks.models [--quick] [--work_dir /tmp/cvr_bench] [--seeds 3]

Flow: pipeline.simulate (once) -> pipeline.preprocess (Beam, once) -> for each model and
seed, in a fresh subprocess (TF memory does not grow across models): training.trainer
(train + export) -> evaluation.runner.evaluate on the held-out time split with the
simulator's truth -> WORK_DIR/<mode>/runs/<model>/seed<k>/evaluation.json. The runs are
then aggregated (mean +- std over seeds) into benchmarks/results/models.md, models.png
and models.json (--quick: models_quick.*).

Per model and task (ctr, cvr, ctcvr, ctavr, ctmicro): AUC, GAUC by user, log loss,
calibration (sum predicted / sum observed), ECE, the Bayes-optimal AUC (AUC of the true
probability on the same rows) and the gap; for cvr also the entire-space block (the
expected AUC of the predicted cvr against the true P(buy | click, x) over all exposures,
and the truth's own expected AUC). Every step is skipped when its output exists, so a
killed run resumes.

Modes: full (default: 1M impressions, 3 seeds, at most 3 epochs) and --quick (100k
impressions, 1 seed, at most 4 epochs); in both every model trains at its own config's
batch size (MODES sets none; --batch_size overrides them all): 2048 for the tuned configs
(configs/tuned/, and esmm_adam_eps, whose base is tuned ESMM), 1024 (base_simulated.yaml)
for esmm_oracle, esmm_oracle_factors and every model under --untuned. Each run stops
early on its validation loss (train.validation_from, the last training day) and keeps the
best epoch. `esmm_oracle` also gets the simulator's hidden factors (pipeline.simulate
--oracle_features): its gap to Bayes measures the training and evaluation machinery.
The results header records the machine's load average before and after the run:
benchmarks belong on an otherwise idle machine.
"""

import argparse
import concurrent.futures
import glob
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from configs import config as config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(PROJECT_ROOT, "benchmarks", "results")
# Benchmark name -> experiment config (configs/<file>).
MODELS = {
    "naive": "naive.yaml",
    "shared_bottom": "shared_bottom.yaml",
    "esmm": "esmm.yaml",
    "esm2": "esm2.yaml",
    "esmc": "esmc.yaml",
    "esms": "esms.yaml",
    "esmg": "esmg.yaml",
    "hm3": "hm3.yaml",
    "esmm_mmoe": "esmm_mmoe.yaml",
    "esmm_ple": "esmm_ple.yaml",
    "esmm_lazy_adam": "esmm_lazy_adam.yaml",
    "esmm_adam_eps": "esmm_adam_eps.yaml",  # tuned ESMM with adam_epsilon 5e-5
    "aitm": "aitm.yaml",
    "aitm_action": "aitm_action.yaml",
    "escm2_ips": "escm2_ips.yaml",
    "escm2_dr": "escm2_dr.yaml",
    "esmm_oracle": "esmm_oracle.yaml",  # ids + the hidden factors
    # the hidden factors and the context only: tests the training/evaluation machinery
    "esmm_oracle_factors": "esmm_oracle_factors.yaml",
}
# A model tuned by benchmarks.tune (--write_config: configs/tuned/<model>.yaml, whose
# base is the model's own config) runs with its tuned config; --untuned runs DEFAULTS.
DEFAULTS = dict(MODELS)
TUNED_DIR = os.path.join(PROJECT_ROOT, "configs", "tuned")
MODELS.update({name: f"tuned/{name}.yaml" for name in MODELS
               if os.path.exists(os.path.join(TUNED_DIR, f"{name}.yaml"))})
# The world is simulated with --oracle_features and preprocessed with the oracle feature
# spec, so one data directory serves every model (each parses only its own features).
PREPROCESS_CONFIG = "esmm_oracle.yaml"
TASKS = ("ctr", "cvr", "ctcvr", "ctavr", "ctmicro")
# epochs is the most a run trains: each config's validation split (the last training
# day) and early stopping end it sooner and restore the best epoch's weights.
MODES = {
    "quick": {"impressions": 100_000, "seeds": 1, "epochs": 4, "batch_size": None},
    "full": {"impressions": 1_000_000, "seeds": 3, "epochs": 3, "batch_size": None},
}
WORLD_SEED = 7
REUSED = "reused"  # a report's key: True when run_all found the run already done


def _log(message: str) -> None:
  print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _python(*args: str, log_path: Optional[str] = None) -> None:
  """Runs `python <args>` from the project root; raises with the log tail on failure."""
  command = [sys.executable, *args]
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  with open(log_path or os.devnull, "w") as log:
    code = subprocess.call(command, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT,
                           env=env)
  if code:
    tail = ""
    if log_path:
      with open(log_path) as f:
        tail = "".join(f.readlines()[-30:])
    raise RuntimeError(f"{' '.join(command)} failed with exit code {code}\n{tail}")


def make_world(mode_dir: str, impressions: int, simulate_flags: Sequence[str] = ()
               ) -> Dict[str, str]:
  """Simulates (with `simulate_flags`, e.g. ("--target_ctr", "0.015")) and preprocesses
  the world once under mode_dir (skipped when already there); returns {raw, data}."""
  raw, data = os.path.join(mode_dir, "raw"), os.path.join(mode_dir, "data")
  os.makedirs(mode_dir, exist_ok=True)
  if not os.path.exists(os.path.join(raw, "world.json")) or not _has_oracle_features(raw):
    _log(f"simulating {impressions} impressions -> {raw}")
    _python("-m", "pipeline.simulate", "--output", raw, "--impressions", str(impressions),
            "--seed", str(WORLD_SEED), "--oracle_features", "--overwrite", *simulate_flags,
            log_path=os.path.join(mode_dir, "simulate.log"))
    if os.path.exists(data):
      shutil.rmtree(data)
  if not _complete(data):
    _log(f"preprocessing -> {data}")
    _python("-m", "pipeline.preprocess",
            "--impressions", os.path.join(raw, "impressions", "*.jsonl.gz"),
            "--events", os.path.join(raw, "events", "*.jsonl.gz"), "--output", data,
            "--config", os.path.join(PROJECT_ROOT, "configs", PREPROCESS_CONFIG),
            log_path=os.path.join(mode_dir, "preprocess.log"))
  common.checked_data_dir(data)
  return {"raw": raw, "data": data}


def _complete(data_dir: str) -> bool:
  """Whether data_dir holds a preprocess output whose success marker verifies."""
  from features import success_marker  # pylint: disable=g-import-not-at-top
  try:
    success_marker.check_success_marker(data_dir)
  except success_marker.IncompleteOutputError:
    return False
  return True


def _has_oracle_features(raw: str) -> bool:
  """Whether a simulated world's impressions carry the hidden factors (older ones don't)."""
  paths = sorted(glob.glob(os.path.join(raw, "impressions", "*.jsonl.gz")))
  if not paths:
    return False
  with gzip.open(paths[0], "rt") as f:
    return '"oracle_match"' in f.readline()


def run_one(config_path: str, data_dir: str, truth_dir: str, model_dir: str, seed: int,
            epochs: int, batch_size: Optional[int],
            overrides: Optional[Dict[str, Any]] = None) -> None:
  """Trains, exports and evaluates one model (the body of a worker subprocess).

  `overrides` are config overrides ({"model": {...}, "train": {...}}) on top of the
  seed, epochs and batch size (benchmarks.tune passes a trial's hyperparameters).
  """
  from evaluation import runner  # pylint: disable=g-import-not-at-top
  from training import trainer  # pylint: disable=g-import-not-at-top

  overrides = json.loads(json.dumps(overrides or {}))  # a deep copy
  # The mode's seed, epochs and batch size, unless the overrides set them.
  mode = dict(seed=seed, epochs=epochs)
  if batch_size:  # else the config's own (a tuned config's tuned batch size)
    mode["batch_size"] = batch_size
  overrides["train"] = dict(mode, **overrides.get("train", {}))
  config = config_lib.load_config(config_path, overrides=overrides)
  start = time.time()
  result = trainer.train_and_export(config, data_dir, model_dir)
  train_seconds = time.time() - start
  report = runner.evaluate(result.export_dir, data_dir, truth_path=truth_dir,
                           config_path=config_path)
  report["train_seconds"] = round(train_seconds, 1)
  report["train_metrics"] = result.metrics.get("last_epoch", {})
  report["training"] = {key: result.metrics[key] for key in
                        ("validation", "best_epoch", "stopped_epoch", "validation_history",
                         "final_step")
                        if key in result.metrics}
  report["overrides"] = overrides
  runner.write_report(report, os.path.join(model_dir, "evaluation.json"))


def run_all(mode_dir: str, world: Dict[str, str], models: Sequence[str], seeds: int,
            epochs: int, batch_size: Optional[int], parallel: int = 1,
            overrides: Optional[Dict[str, Dict[str, Any]]] = None,
            configs: Optional[Dict[str, str]] = None, runs_dir: str = "runs"
            ) -> Dict[str, List[Dict[str, Any]]]:
  """Every model x seed in its own subprocess, `parallel` at a time (much of a run is
  single-threaded graph tracing, so 2 workers fill 2 cores); returns model -> reports.

  `models` are run names: keys of `configs` (run name -> config file under configs/,
  default MODELS); `overrides` maps a run name to its config overrides; runs go to
  MODE_DIR/<runs_dir>/<name>/seed<k>/. A run whose evaluation.json exists is not trained
  again; its report says so (report[REUSED] = True).
  """
  configs = configs or MODELS
  overrides = overrides or {}

  def one(name: str, seed: int) -> Dict[str, Any]:
    model_dir = os.path.join(mode_dir, runs_dir, name, f"seed{seed}")
    path = os.path.join(model_dir, "evaluation.json")
    reused = os.path.exists(path)
    if not reused:
      _log(f"{name} seed {seed}: training and evaluating in {model_dir}")
      os.makedirs(model_dir, exist_ok=True)
      start = time.time()
      _python("-m", "benchmarks.models", "--worker",
              "--config", os.path.join(PROJECT_ROOT, "configs", configs[name]),
              "--data", world["data"], "--truth", world["raw"], "--model_dir", model_dir,
              "--seed", str(seed), "--epochs", str(epochs),
              "--batch_size", str(batch_size or 0),
              "--overrides", json.dumps(overrides.get(name, {})),
              log_path=os.path.join(model_dir, "run.log"))
      _log(f"{name} seed {seed}: done in {time.time() - start:.0f}s")
    with open(path) as f:
      report = json.load(f)
    report[REUSED] = reused
    return report

  jobs = [(name, seed) for seed in range(1, seeds + 1) for name in models]
  with concurrent.futures.ThreadPoolExecutor(max(1, parallel)) as pool:
    results = list(pool.map(lambda job: one(*job), jobs))
  reports = {name: [] for name in models}
  for (name, _), report in zip(jobs, results):
    reports[name].append(report)
  return reports


def calibration_override(models: Sequence[str], calibration: Optional[str]
                         ) -> Tuple[Optional[Dict[str, Dict[str, Any]]], str]:
  """(run_all overrides, runs/results name suffix) that give every model's config
  `train.calibration: calibration`; (None, "") without one (each config's own)."""
  return train_override(models, "calibration", calibration)


def train_override(models: Sequence[str], key: str, value: Optional[str],
                   overrides: Optional[Dict[str, Dict[str, Any]]] = None
                   ) -> Tuple[Optional[Dict[str, Dict[str, Any]]], str]:
  """(run_all overrides, runs/results name suffix "_<key>_<value>") that set every
  model's `train.<key>: value` on top of `overrides`; (overrides, "") without a value."""
  if not value:
    return overrides, ""
  merged = json.loads(json.dumps(overrides or {}))  # a deep copy
  for name in models:
    merged.setdefault(name, {}).setdefault("train", {})[key] = value
  return merged, f"_{key}_{value}"


def _load() -> str:
  """The load average (1, 5, 15 min) as "a/b/c"."""
  return "/".join(f"{value:.2f}" for value in os.getloadavg())


def _stat(values: Sequence[Optional[float]]) -> Dict[str, float]:
  values = [v for v in values if v is not None and not math.isnan(v)]
  if not values:
    return {"mean": math.nan, "std": math.nan, "n": 0}
  mean = sum(values) / len(values)
  std = (math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))
         if len(values) > 1 else 0.0)
  return {"mean": mean, "std": std, "n": len(values)}


# metric name -> path in a task's report block
METRICS = {
    "auc": ("auc",), "gauc": ("gauc",), "log_loss": ("log_loss",),
    "calibration": ("calibration",), "ece": ("ece",),
    "bayes_auc": ("truth", "bayes_auc"), "auc_gap": ("truth", "auc_gap"),
    "es_expected_auc": ("entire_space", "expected_auc"),
    "es_bayes_expected_auc": ("entire_space", "bayes_expected_auc"),
    "es_calibration": ("entire_space", "calibration"),
    "calibration_vs_truth": ("truth", "calibration_vs_truth"),
    "bayes_calibration": ("truth", "bayes_calibration"),
}


def _get(block: Dict[str, Any], path: Sequence[str]):
  for key in path:
    if not isinstance(block, dict) or key not in block:
      return None
    block = block[key]
  return block


def reused_runs(reports: Dict[str, List[Dict[str, Any]]]) -> Dict[str, List[int]]:
  """name -> the seeds (from 1) of its runs run_all reused rather than trained."""
  reused = {name: [seed for seed, report in enumerate(runs, 1) if report.get(REUSED)]
            for name, runs in reports.items()}
  return {name: seeds for name, seeds in reused.items() if seeds}


def aggregate(reports: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
  """model -> task -> metric -> {mean, std, n} over seeds."""
  summary = {}
  for name, runs in reports.items():
    summary[name] = {}
    for task in TASKS:
      blocks = [run["tasks"][task] for run in runs if task in run["tasks"]]
      if blocks:
        summary[name][task] = {metric: _stat([_get(b, path) for b in blocks])
                               for metric, path in METRICS.items()}
    summary[name]["train_seconds"] = _stat([run.get("train_seconds") for run in runs])
  return summary


def _cell(stat: Optional[Dict[str, float]], digits: int = 4) -> str:
  if not stat or stat["n"] == 0:
    return "-"
  if stat["n"] == 1:
    return f"{stat['mean']:.{digits}f}"
  return f"{stat['mean']:.{digits}f} ± {stat['std']:.{digits}f}"


def _reuse_sentence(settings: Dict[str, Any]) -> str:
  """Which runs an earlier invocation trained (their time is not in the wall time)."""
  reused = settings.get("reused_runs")
  if not reused:
    return ""
  if isinstance(reused, list):  # results written before 2026-11-27: ["name/seedK", ...]
    by_name: Dict[str, List[int]] = {}
    for run in reused:
      name, _, seed = str(run).rpartition("/seed")
      if not name or not seed.isdigit():
        raise ValueError(f"settings reused_runs: {run!r} is not NAME/seedK")
      by_name.setdefault(name, []).append(int(seed))
    reused = by_name
  named = "; ".join(f"{name} (seed {', '.join(map(str, seeds))})"
                    for name, seeds in reused.items())
  count = sum(len(seeds) for seeds in reused.values())
  return (f" {count} run(s) were reused from an earlier invocation's run directory, "
          f"not trained again, so the wall time above excludes them: "
          f"{named}. The training time of every run, summed: "
          f"{settings.get('train_seconds_all_runs', 0.0) / 60:.1f} min.")


def render_markdown(summary: Dict[str, Dict[str, Any]], settings: Dict[str, Any],
                    world: Dict[str, Any]) -> str:
  """The results page: headline table, then one table per task."""
  lines = [
      "# Truth benchmark: every model on one simulated world",
      "",
      f"Generated by `{settings.get('command', 'python -m benchmarks.models')}` on "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}.",
      f"World: {settings['impressions']} simulated impressions (seed {WORLD_SEED}), "
      f"train {world['train']} / eval {world['eval']} exposures (time split; eval = last "
      f"day); eval positives: {world['eval_labels']}.",
      f"Training: {settings['epochs']} epoch(s), batch "
      f"{settings['batch_size'] or 'from each config'}, "
      f"{settings['seeds']} seed(s) per model (mean ± std over seeds when > 1). "
      f"Total wall time {settings['seconds'] / 60:.1f} min ({settings['parallel']} runs at a "
      f"time, {settings.get('cpus', '?')} CPUs; load average (1/5/15 min) "
      f"{settings.get('load_before', '?')} before and {settings.get('load_after', '?')} after)."
      + _reuse_sentence(settings),
      "Configs (under configs/): " + ", ".join(
          f"{name} `{path}`" for name, path in settings.get("configs", {}).items()) + ".",
      f"Output calibration (train.calibration, fitted on the validation day and exported "
      f"with the model): {settings.get('calibration', 'none')}."
      + (f" Optimizer (train.optimizer): {settings['optimizer']}."
         if settings.get("optimizer") else ""),
      "",
      "CVR AUC (clicked) is over clicked eval exposures against observed purchases; "
      "CVR AUC (entire space) is the expected AUC of the predicted cvr against the true "
      "P(buy | click, x) over all eval exposures (what an entire-space model is for); "
      "Bayes = the same metric for the true probability.",
      "",
      "## Headline",
      "",
      "| model | CTR AUC | CVR AUC (clicked) | CVR AUC (entire space) | CVR calib. (entire space) "
      "| CTCVR AUC | CTCVR gap to Bayes | CTAVR AUC | train s |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for name, tasks in summary.items():
    get = lambda task, metric: tasks.get(task, {}).get(metric)  # pylint: disable=cell-var-from-loop
    lines.append(
        f"| {name} | {_cell(get('ctr', 'auc'))} | {_cell(get('cvr', 'auc'))} | "
        f"{_cell(get('cvr', 'es_expected_auc'))} | {_cell(get('cvr', 'es_calibration'), 3)} | "
        f"{_cell(get('ctcvr', 'auc'))} | {_cell(get('ctcvr', 'auc_gap'))} | "
        f"{_cell(get('ctavr', 'auc'))} | {_cell(tasks['train_seconds'], 0)} |")
  bayes = {task: next((tasks[task]["bayes_auc"] for tasks in summary.values()
                       if task in tasks), None) for task in TASKS}
  es_bayes = next((tasks["cvr"]["es_bayes_expected_auc"] for tasks in summary.values()
                   if "cvr" in tasks), None)
  lines += ["",
            f"Bayes-optimal AUC on these rows: CTR {_cell(bayes['ctr'])}, CVR (clicked) "
            f"{_cell(bayes['cvr'])}, CVR (entire space, expected) {_cell(es_bayes)}, "
            f"CTCVR {_cell(bayes['ctcvr'])}, CTAVR {_cell(bayes['ctavr'])}.", ""]
  lines += _calibration_table(summary)
  for task in TASKS:
    rows = [(name, tasks[task]) for name, tasks in summary.items() if task in tasks]
    if not rows:
      continue
    lines += [f"## {task}", "",
              "| model | AUC | GAUC | log loss | calib. | ECE | Bayes AUC | AUC gap |",
              "|---|---|---|---|---|---|---|---|"]
    for name, m in rows:
      lines.append(f"| {name} | {_cell(m['auc'])} | {_cell(m['gauc'])} | "
                   f"{_cell(m['log_loss'])} | {_cell(m['calibration'], 3)} | {_cell(m['ece'])} | "
                   f"{_cell(m['bayes_auc'])} | {_cell(m['auc_gap'])} |")
    if task == "cvr":
      lines += ["", "CVR over the entire space (all eval exposures, against the true "
                "P(buy | click, x)):", "",
                "| model | expected AUC | Bayes expected AUC | calib. vs truth |",
                "|---|---|---|---|"]
      for name, m in rows:
        lines.append(f"| {name} | {_cell(m['es_expected_auc'])} | "
                     f"{_cell(m['es_bayes_expected_auc'])} | {_cell(m['es_calibration'], 3)} |")
    lines.append("")
  return "\n".join(lines) + "\n"


def _calibration_table(summary: Dict[str, Dict[str, Any]]) -> List[str]:
  """Calibration against the truth (sum predicted / sum true probability, same rows):
  the issue's goal is 1.00 +- 0.05 for every entire-space model."""
  columns = [("ctr", "calibration_vs_truth", "ctr"),
             ("cvr", "calibration_vs_truth", "cvr over clicks"),
             ("cvr", "es_calibration", "cvr over all exposures"),
             ("ctcvr", "calibration_vs_truth", "ctcvr")]
  lines = ["## Calibration against the truth", "",
           "Sum of predictions / sum of the true probabilities on the same eval rows (1 = "
           "calibrated; free of the label noise of the observed rate, which the last row "
           "shows as truth / observed). The truth is the labels' (simulation.truth."
           "label_truth): the 2% of purchases that land after the attribution window are "
           "not labelled, so the purchase probabilities are 0.98 x the generative ones. "
           "Goal: 1.00 ± 0.05 for every entire-space model.", "",
           "| model | " + " | ".join(label for _, _, label in columns) + " |",
           "|---|" + "---|" * len(columns)]
  for name, tasks in summary.items():
    lines.append(f"| {name} | " + " | ".join(
        _cell(tasks.get(task, {}).get(metric), 3) for task, metric, _ in columns) + " |")

  def noise(task: str) -> str:  # the same rows for every model: one value
    stat = next((tasks[task]["bayes_calibration"] for tasks in summary.values()
                 if task in tasks), None)
    return "-" if not stat or not stat["n"] else f"{stat['mean']:.3f}"

  lines.append(f"| (truth / observed) | {noise('ctr')} | {noise('cvr')} | - | "
               f"{noise('ctcvr')} |")
  return lines + [""]


def plot(summary: Dict[str, Dict[str, Any]], path: str, title: str) -> None:
  """Grouped bars (mean ± std) of the main AUCs per model, Bayes levels as dashed lines."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  panels = [("ctr", "auc", "CTR AUC"), ("cvr", "auc", "CVR AUC (clicked)"),
            ("cvr", "es_expected_auc", "CVR AUC (entire space)"),
            ("ctcvr", "auc", "CTCVR AUC")]
  bayes_of = {("ctr", "auc"): "bayes_auc", ("cvr", "auc"): "bayes_auc",
              ("cvr", "es_expected_auc"): "es_bayes_expected_auc",
              ("ctcvr", "auc"): "bayes_auc"}
  names = list(summary)
  figure, axes = pyplot.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.2))
  for axis, (task, metric, label) in zip(axes, panels):
    means = [summary[n].get(task, {}).get(metric, {}).get("mean", math.nan) for n in names]
    stds = [summary[n].get(task, {}).get(metric, {}).get("std", 0.0) for n in names]
    axis.bar(range(len(names)), means, yerr=stds, color="tab:blue", capsize=3)
    bayes = [summary[n].get(task, {}).get(bayes_of[(task, metric)], {}).get("mean")
             for n in names]
    bayes = [b for b in bayes if b is not None and not math.isnan(b)]
    if bayes:
      axis.axhline(bayes[0], color="tab:red", linestyle="--", label="Bayes")
      axis.legend(loc="lower right")
    finite = [m for m in means if not math.isnan(m)] + bayes
    if finite:
      axis.set_ylim(max(0.0, min(finite) - 0.05), min(1.0, max(finite) + 0.02))
    axis.set_xticks(range(len(names)))
    axis.set_xticklabels(names, rotation=60, ha="right")
    axis.set_title(label)
  figure.suptitle(title)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  pyplot.close(figure)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="100k impressions, 1 seed, 2 epochs (a few minutes).")
  parser.add_argument("--work_dir", default="/tmp/cvr_bench",
                      help="Worlds, runs and logs go to WORK_DIR/<quick|full>/.")
  parser.add_argument("--results_dir", default=RESULTS_DIR,
                      help="Where models.md, models.png and models.json are written.")
  parser.add_argument("--models", default=",".join(MODELS),
                      help=f"Comma-separated subset of {list(MODELS)}.")
  parser.add_argument("--impressions", type=int, help="Override the mode's world size.")
  parser.add_argument("--seeds", type=int, help="Override the mode's seeds per model.")
  parser.add_argument("--epochs", type=int, help="Override the mode's epochs.")
  parser.add_argument("--batch_size", type=int,
                      help="Override every config's batch size (default: each config's).")
  parser.add_argument("--parallel", type=int, default=2,
                      help="Model runs at a time (each in its own subprocess).")
  parser.add_argument("--calibration", choices=config_lib.CALIBRATIONS,
                      help="Override every config's train.calibration (results: "
                      "models_calibration_<method>.*, runs: runs_calibration_<method>/; "
                      "`--calibration none` makes the runs benchmarks.calibration reads).")
  parser.add_argument("--optimizer", choices=("adam", "lazy_adam"),
                      help="Override every config's train.optimizer (results: "
                      "models_optimizer_<name>.*, runs: runs_optimizer_<name>/).")
  parser.add_argument("--untuned", action="store_true",
                      help="Run every model's own config, not its configs/tuned/ one "
                      "(results: models_untuned.*; esmm_adam_eps is tuned ESMM by definition).")
  # Worker mode: one model, one seed (run in a subprocess by run_all).
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--config", help=argparse.SUPPRESS)
  parser.add_argument("--data", help=argparse.SUPPRESS)
  parser.add_argument("--truth", help=argparse.SUPPRESS)
  parser.add_argument("--model_dir", help=argparse.SUPPRESS)
  parser.add_argument("--seed", type=int, help=argparse.SUPPRESS)
  parser.add_argument("--overrides", default="{}", help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    run_one(args.config, args.data, args.truth, args.model_dir, args.seed, args.epochs,
            args.batch_size, overrides=json.loads(args.overrides))
    return

  mode = "quick" if args.quick else "full"
  settings = dict(MODES[mode], mode=mode, parallel=args.parallel)
  for key in ("impressions", "seeds", "epochs", "batch_size"):
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  models = [m for m in args.models.split(",") if m]
  unknown = sorted(set(models) - set(MODELS))
  if unknown:
    parser.error(f"unknown model(s) {unknown}; known: {list(MODELS)}")
  start = time.time()
  settings.update(cpus=os.cpu_count(), load_before=_load())
  mode_dir = os.path.join(args.work_dir, mode)
  world = make_world(mode_dir, settings["impressions"])
  configs = DEFAULTS if args.untuned else MODELS
  settings["configs"] = {name: configs[name] for name in models}
  overrides, calibration_suffix = calibration_override(models, args.calibration)
  overrides, optimizer_suffix = train_override(models, "optimizer", args.optimizer,
                                               overrides)
  variant = ("_untuned" if args.untuned else "") + calibration_suffix + optimizer_suffix
  settings["calibration"] = args.calibration or "each config's"
  if args.optimizer:
    settings["optimizer"] = args.optimizer
  reports = run_all(mode_dir, world, models, settings["seeds"], settings["epochs"],
                    settings["batch_size"], parallel=args.parallel, configs=configs,
                    overrides=overrides, runs_dir="runs" + variant)
  settings["seconds"] = time.time() - start
  settings["load_after"] = _load()
  settings["reused_runs"] = reused_runs(reports)
  settings["train_seconds_all_runs"] = sum(report.get("train_seconds") or 0.0
                                           for runs in reports.values() for report in runs)
  with open(os.path.join(world["data"], "counts.json")) as f:
    counts = json.load(f)
  world_facts = {"train": counts["impressions"]["written"]["train"],
                 "eval": counts["impressions"]["written"]["eval"],
                 "eval_labels": counts["labels"]["eval"]}
  summary = aggregate(reports)
  # the full run's files are the headline; --quick and --untuned runs write their own
  suffix = ("_quick" if mode == "quick" else "") + variant
  settings["command"] = " ".join(["python -m benchmarks.models"]
                                 + list(sys.argv[1:] if argv is None else argv))
  os.makedirs(args.results_dir, exist_ok=True)
  with open(os.path.join(args.results_dir, f"models{suffix}.json"), "w") as f:
    json.dump({"settings": settings, "world": world_facts, "summary": summary}, f, indent=1)
  markdown = render_markdown(summary, settings, world_facts)
  with open(os.path.join(args.results_dir, f"models{suffix}.md"), "w") as f:
    f.write(markdown)
  plot(summary, os.path.join(args.results_dir, f"models{suffix}.png"),
       f"{settings['impressions']} impressions, {settings['seeds']} seed(s)")
  _log(f"wrote {args.results_dir}/models{suffix}.md and .png in {settings['seconds'] / 60:.1f} min")
  print(markdown)


if __name__ == "__main__":
  main()
