"""Choices made on the validation day: the settings picked by code from the day before
the eval day; the truth benchmark's eval day is reported beside them, never used.

  python -m benchmarks.choices [--work_dir /tmp/cvr_bench] [--seeds 3] [--screen_seeds 1]
      [--finalists 3] [--parallel 2]

Flow position: beside the truth benchmark (benchmarks.models), on its world. Two choices:

1. The factors-only oracle's training schedule (configs/esmm_oracle_factors.yaml). Every
   candidate of SCHEDULE_CANDIDATES (overrides of that config, uncalibrated) is trained
   with benchmarks.models.run_all on the 1M world (WORK_DIR/full; made there when
   absent) with --screen_seeds seeds, the --finalists best on the validation day then
   with --seeds seeds (runs: WORK_DIR/full/runs_choices/<candidate>/seed<k>/; a
   successive halving that spends the seeds where the validation day cannot yet
   separate the candidates). Each run's export scores the validation day (the train
   split from its validation_from, the rows its early stopping read) and the eval day
   (benchmarks.calibration.score_days), and each day's expected CTCVR AUC against the
   true P(click & buy | x) (metrics.expected_auc, free of the few purchases' label
   noise) is cached in RUN/choice_scores.json. shortlist and choose read the
   validation day's mean over seeds only.
2. The output calibration every simulated config exports (configs/base_simulated.yaml,
   train.calibration): re-read from benchmarks/results/calibration.json (the runs of
   `benchmarks.calibration`) with benchmarks.calibration.choose_method, which reads the
   validation-day calibrations only.

Writes benchmarks/results/NAME.md and NAME.json (--name, default choices): per
candidate the validation day's criterion and the eval day's value (reported only), the
chosen candidate, the command, date, machine and load average (AUCs are deterministic
given the seed; only the times depend on the load). Every step is cached: a rerun only
aggregates.
"""

import argparse
import concurrent.futures
import functools
import json
import math
import multiprocessing
import os
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from benchmarks import calibration as calibration_bench  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
from benchmarks import models as models_bench  # pylint: disable=g-import-not-at-top,wrong-import-position

TITLE = "Choices made on the validation day"
ORACLE_CONFIG = "esmm_oracle_factors.yaml"
# candidate -> config overrides of ORACLE_CONFIG (the 8 schedules first compared on the
# eval day, docs/MODELS.md "The machinery is not the gap"); every run uncalibrated, its
# epochs the most it trains (early stopping on the validation loss, patience 1, unless
# set). The config's own choice is "cosine_3_epochs" (the truth benchmark's 3 epochs).
SCHEDULE_CANDIDATES = {
    "constant": {"train": {"lr_schedule": "constant"}},
    "constant_stop_on_ctcvr_logloss": {
        "train": {"lr_schedule": "constant", "early_stopping_monitor": "ctcvr_logloss"}},
    "constant_lr_0.001_6_epochs": {
        "train": {"lr_schedule": "constant", "learning_rate": 0.001, "epochs": 6}},
    "constant_towers_32_16": {"train": {"lr_schedule": "constant"},
                              "model": {"tower_units": [32, 16]}},
    "constant_patience_2_6_epochs": {
        "train": {"lr_schedule": "constant", "early_stopping_patience": 2, "epochs": 6}},
    "cosine_3_epochs": {"train": {"lr_schedule": "cosine"}},
    "cosine_4_epochs": {"train": {"lr_schedule": "cosine", "epochs": 4}},
    "cosine_6_epochs": {"train": {"lr_schedule": "cosine", "epochs": 6}},
}
CONFIGURED_SCHEDULE = "cosine_3_epochs"  # what configs/esmm_oracle_factors.yaml trains
RUNS_DIR = "runs_choices"
CACHE = "choice_scores.json"
DAYS = ("validation", "eval")
SELECTION_DAY = "validation"
CRITERION = "ctcvr_expected_auc"
# metric -> (truth column, output): expected AUCs of an output against the truth
METRICS = {"ctcvr_expected_auc": ("p_ctcvr", "ctcvr"),
           "cvr_all_expected_auc": ("p_purchase_given_click", "cvr"),
           "ctr_expected_auc": ("p_click", "ctr")}
BAYES = "bayes_ctcvr_expected_auc"


def candidate_overrides(candidates: Mapping[str, Mapping[str, Any]]
                        ) -> Dict[str, Dict[str, Any]]:
  """candidate -> its overrides with train.calibration none (the expected AUCs of the
  model as trained; a calibration fitted on the validation day would score its own day)."""
  overrides = json.loads(json.dumps(dict(candidates)))  # a deep copy
  for override in overrides.values():
    override.setdefault("train", {})["calibration"] = "none"
  return overrides


def score_run(run_dir: str, data_dir: str, truth_dir: str) -> Dict[str, Dict[str, float]]:
  """day -> METRICS of one run's export on that day, and BAYES (the truth's own expected
  CTCVR AUC on the day's rows) (the body of a worker process)."""
  from evaluation import metrics  # pylint: disable=g-import-not-at-top
  days = calibration_bench.score_days(run_dir, data_dir, truth_dir)
  rows = {"validation": (days["validation"], days["validation_truth"]),
          "eval": (days["evaluation"], days["truth"])}
  return {day: {**{name: float(metrics.expected_auc(truth[column], scored[output]))
                   for name, (column, output) in METRICS.items()},
                BAYES: float(metrics.expected_auc(truth["p_ctcvr"], truth["p_ctcvr"]))}
          for day, (scored, truth) in rows.items()}


def _worker(run_dir: str, data_dir: str, truth_dir: str) -> str:
  return calibration_bench.cache_json(os.path.join(run_dir, CACHE), os.path.exists,
                                      lambda: score_run(run_dir, data_dir, truth_dir))


def train_and_score(mode_dir: str, world: Mapping[str, str], candidates: Sequence[str],
                    seeds: int, parallel: int = 2
                    ) -> Tuple[Dict[str, List[Dict[str, Any]]],
                               Dict[str, List[Dict[str, Dict[str, float]]]]]:
  """Trains (models_bench.run_all: a run already there is reused) and scores (cached in
  RUN/CACHE) seeds 1..seeds of every candidate; returns (candidate -> run_all's
  reports, candidate -> [score_run's result per seed])."""
  reports = models_bench.run_all(
      mode_dir, world, candidates, seeds, models_bench.MODES["full"]["epochs"],
      models_bench.MODES["full"]["batch_size"], parallel=parallel,
      overrides=candidate_overrides({c: SCHEDULE_CANDIDATES[c] for c in candidates}),
      configs={c: ORACLE_CONFIG for c in candidates}, runs_dir=RUNS_DIR)
  run_dirs = {c: [os.path.join(mode_dir, RUNS_DIR, c, f"seed{seed}")
                  for seed in range(1, seeds + 1)] for c in candidates}
  context = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(parallel, mp_context=context,
                                              max_tasks_per_child=1) as pool:
    for future in [pool.submit(_worker, run, world["data"], world["raw"])
                   for runs in run_dirs.values() for run in runs]:
      future.result()
  scores = {}
  for candidate, runs in run_dirs.items():
    scores[candidate] = []
    for run in runs:
      with open(os.path.join(run, CACHE)) as f:
        scores[candidate].append(json.load(f))
  return reports, scores


def aggregate(scores: Mapping[str, Sequence[Mapping[str, Mapping[str, float]]]]
              ) -> Dict[str, Dict[str, Dict[str, Dict[str, float]]]]:
  """candidate -> day -> metric -> {mean, std, n} over its runs (scores: candidate ->
  [one run's day -> metric -> value])."""
  stat = models_bench._stat  # pylint: disable=protected-access
  return {candidate: {day: {metric: stat([run[day][metric] for run in runs])
                            for metric in METRICS}
                      for day in DAYS}
          for candidate, runs in scores.items()}


def choose(table: Mapping[str, Mapping[str, Any]], value: Callable[[Any], float],
           day: str = SELECTION_DAY) -> str:
  """The candidate whose `day` entry scores highest (table: candidate -> day -> entry;
  value: entry -> the criterion, higher is better); ties to the first in table order.
  Only table[candidate][day] is read."""
  if not table:
    raise ValueError("no candidates to choose from")
  best, best_value = None, -math.inf
  for candidate, days in table.items():
    candidate_value = value(days[day])
    if math.isnan(candidate_value):
      raise ValueError(f"candidate {candidate!r}: its {day} criterion is NaN")
    if candidate_value > best_value:
      best, best_value = candidate, candidate_value
  return best


def shortlist(table: Mapping[str, Mapping[str, Any]], value: Callable[[Any], float],
              count: int, day: str = SELECTION_DAY) -> List[str]:
  """The `count` candidates whose `day` entry scores highest, best first (ties in table
  order); only table[candidate][day] is read."""
  order = {candidate: i for i, candidate in enumerate(table)}
  return sorted(table, key=lambda c: (-value(table[c][day]), order[c]))[:max(1, count)]


def _criterion(entry: Mapping[str, Mapping[str, float]]) -> float:
  return entry[CRITERION]["mean"]


def render_schedule(summary: Mapping[str, Mapping[str, Any]], chosen: str,
                    bayes: Mapping[str, float],
                    finalists: Optional[Sequence[str]] = None) -> List[str]:
  """The schedule section: per candidate the seeds it got, the validation day's
  criterion and the eval day's value, the finalists and the chosen one marked
  (finalists: the candidates chosen among, default every one)."""
  cell = models_bench._cell  # pylint: disable=protected-access
  finalists = list(finalists or summary)
  rows = []
  for candidate, days in summary.items():
    marks = [mark for mark, holds in (("finalist", len(finalists) < len(summary)
                                       and candidate in finalists),
                                      ("chosen", candidate == chosen),
                                      ("configured", candidate == CONFIGURED_SCHEDULE))
             if holds]
    rows.append([candidate + "".join(f" ({mark})" for mark in marks),
                 f"`{json.dumps(SCHEDULE_CANDIDATES.get(candidate, {}))}`",
                 days["validation"][CRITERION]["n"],
                 cell(days["validation"][CRITERION]), cell(days["eval"][CRITERION]),
                 cell(days["validation"]["cvr_all_expected_auc"]),
                 cell(days["eval"]["cvr_all_expected_auc"])])
  ranked = shortlist({c: summary[c] for c in finalists}, _criterion, len(finalists))
  margin = ""
  if len(ranked) > 1:
    runner_up = ranked[1]
    gap = (_criterion(summary[chosen]["validation"])
           - _criterion(summary[runner_up]["validation"]))
    margin = (f" It leads the next, {runner_up}, by {gap:.4f} on the validation day "
              f"(seed std of the two: {summary[chosen]['validation'][CRITERION]['std']:.4f}"
              f" / {summary[runner_up]['validation'][CRITERION]['std']:.4f}).")
  verdict = ("the schedule configs/esmm_oracle_factors.yaml trains"
             if chosen == CONFIGURED_SCHEDULE else
             f"not the configured {CONFIGURED_SCHEDULE}: the config must change")
  screen = ""
  if len(finalists) < len(summary):
    screen = (f" Every candidate was first trained with the fewer seeds of its row; the "
              f"{len(finalists)} best on the validation day ({', '.join(finalists)}) "
              f"then with every seed, and the choice is among them.")
  return [
      "## The factors-only oracle's training schedule",
      "",
      f"Candidates: overrides of configs/{ORACLE_CONFIG}, uncalibrated. Criterion: the "
      f"expected CTCVR AUC against the true P(click & buy | x) on the validation day "
      f"(mean over seeds; Bayes there {bayes.get('validation', math.nan):.4f}); the eval "
      f"day's (Bayes {bayes.get('eval', math.nan):.4f}) is reported only. The entire-space "
      f"CVR expected AUC of both days is shown beside it (not a criterion).{screen} The "
      f"validation day picks {chosen}, {verdict}.{margin}",
      "",
      common.markdown_table(
          ["candidate", "overrides", "seeds", "CTCVR expected AUC, validation day (criterion)",
           "CTCVR expected AUC, eval day (reported only)",
           "CVR AUC (entire space), validation day", "CVR AUC (entire space), eval day"],
          rows),
  ]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--work_dir", default="/tmp/cvr_bench",
                      help="benchmarks.models' work directory: the world is WORK_DIR/full.")
  parser.add_argument("--results_dir", default=models_bench.RESULTS_DIR)
  parser.add_argument("--name", default="choices",
                      help="Results base name: RESULTS_DIR/NAME.md and NAME.json.")
  parser.add_argument("--seeds", type=int, default=models_bench.MODES["full"]["seeds"])
  parser.add_argument("--candidates", default=",".join(SCHEDULE_CANDIDATES),
                      help=f"Comma-separated subset of {list(SCHEDULE_CANDIDATES)}.")
  parser.add_argument("--screen_seeds", type=int, default=1,
                      help="Seeds every candidate is trained with first; the --finalists "
                      "best on the validation day then get all --seeds (>= --seeds: "
                      "every candidate gets every seed).")
  parser.add_argument("--finalists", type=int, default=3)
  parser.add_argument("--parallel", type=int, default=2)
  parser.add_argument("--calibration_results", default="calibration",
                      help="The benchmarks.calibration results (RESULTS_DIR/NAME.json) "
                      "the calibration choice is re-read from.")
  args = parser.parse_args(argv)
  candidates = [c for c in args.candidates.split(",") if c]
  unknown = sorted(set(candidates) - set(SCHEDULE_CANDIDATES))
  if unknown:
    parser.error(f"unknown candidate(s) {unknown}; known: {list(SCHEDULE_CANDIDATES)}")
  start = time.time()
  settings = {"command": " ".join(["python -m benchmarks.choices"]
                                  + list(sys.argv[1:] if argv is None else argv)),
              "load_before": common.load_average(), "seeds": args.seeds,
              "screen_seeds": min(args.screen_seeds, args.seeds)}
  mode = models_bench.MODES["full"]
  mode_dir = os.path.join(args.work_dir, "full")
  world = models_bench.make_world(mode_dir, mode["impressions"])
  trained = functools.partial(train_and_score, mode_dir, world, parallel=args.parallel)
  # every candidate on the screen's seeds; the best on the validation day on all seeds
  reports, scores = trained(candidates, settings["screen_seeds"])
  finalists = candidates
  if settings["screen_seeds"] < args.seeds:
    finalists = shortlist(aggregate(scores), _criterion, args.finalists)
    final_reports, final_scores = trained(finalists, args.seeds)
    for candidate in finalists:  # the screen's runs keep their own report (reused or not)
      final_reports[candidate][:settings["screen_seeds"]] = reports[candidate]
    reports.update(final_reports)
    scores.update(final_scores)
  summary = aggregate(scores)
  chosen = choose({c: summary[c] for c in finalists}, _criterion)
  first = next(iter(scores.values()))[0]  # every run scores the same rows
  bayes = {day: first[day][BAYES] for day in DAYS}
  calibration_results = calibration_bench.load_results(args.results_dir,
                                                       args.calibration_results)
  calibration_choice = calibration_bench.choose_method(calibration_results["summary"])
  settings.update(
      seconds=time.time() - start, load_after=common.load_average(),
      date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
      reused_runs=models_bench.reused_runs(reports),
      train_seconds=sum(r.get("train_seconds") or 0.0
                        for runs in reports.values() for r in runs),
      best_epochs={c: [r.get("training", {}).get("best_epoch") for r in runs]
                   for c, runs in reports.items()})
  results = {"settings": settings, "schedule": {"summary": summary, "chosen": chosen,
                                                "finalists": finalists, "bayes": bayes,
                                                "runs": scores},
             "calibration": {"results": f"{args.calibration_results}.json",
                             **calibration_choice}}
  os.makedirs(args.results_dir, exist_ok=True)
  with open(os.path.join(args.results_dir, f"{args.name}.json"), "w") as f:
    json.dump(results, f, indent=1)
  body = render(results, calibration_results["summary"], world)
  common.write_result(args.name, TITLE, body, results_dir=args.results_dir,
                      command=settings["command"])
  print(body)


def render(results: Mapping[str, Any], calibration_summary: Mapping[str, Any],
           world: Mapping[str, str]) -> str:
  """The page body below the machine table."""
  settings, schedule = results["settings"], results["schedule"]
  reused = settings.get("reused_runs") or {}
  lines = [
      f"Generated on {settings['date']}. World: benchmarks.models' full mode "
      f"({models_bench.MODES['full']['impressions']} impressions, seed "
      f"{models_bench.WORLD_SEED}; `{world['data']}`); {settings['screen_seeds']} seed(s) "
      f"per candidate, {settings['seeds']} for the finalists, at most "
      f"{models_bench.MODES['full']['epochs']} epochs unless a candidate sets them. Wall "
      f"time {settings['seconds'] / 60:.1f} min, the training of every run summed "
      f"{settings['train_seconds'] / 60:.1f} min; load average (1/5/15 min) "
      f"{settings['load_before']} before and {settings['load_after']} after (2 cores "
      f"shared with other jobs: the times are not benchmarks; the AUCs do not depend on "
      f"the load, though TensorFlow's threading can make a re-run differ slightly)."
      + (f" Runs reused from an earlier invocation: {sum(map(len, reused.values()))}."
         if reused else ""),
      "",
      "The eval day (the truth benchmark's last day) is for reporting only: every "
      "choice below is computed by code from the validation day (the last training day, "
      "the one early stopping reads), and the eval-day columns play no part in it.",
      "",
  ]
  lines += render_schedule(schedule["summary"], schedule["chosen"], schedule["bayes"],
                           schedule.get("finalists"))
  best_epochs = settings.get("best_epochs") or {}
  if best_epochs:
    lines += ["", "Best epoch per seed (early stopping on the validation loss unless the "
              "candidate says otherwise): " + "; ".join(
                  f"{c} {', '.join(str(e) for e in epochs)}"
                  for c, epochs in best_epochs.items()) + "."]
  lines += calibration_bench.render_choice(
      calibration_summary, heading=f"## The output calibration (re-read from "
      f"`benchmarks/results/{results['calibration']['results']}`)")
  return "\n".join(lines) + "\n"


if __name__ == "__main__":
  main()
