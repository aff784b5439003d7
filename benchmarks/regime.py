r"""The regime the seeds were written for: entire-space modelling on worlds shaped like Ali-CCP.

  python -m benchmarks.regime [--quick] [--axes sparsity,signal,size] [--seeds 3]
      [--work_dir /tmp/cvr_regime] [--parallel 2] [--name regime]

The centre is a world with Ali-CCP's published marginals (`pipeline.simulate --profile
aliccp`, simulation.profiles: CTR 4.05%, 0.53% of clicks buy, 210 impressions per user,
19.5 per item) at CENTRE size. Each axis moves one knob away from the centre, the others
held (one knob at a time, not the full grid):
  * sparsity: P(buy | click) over clicks (`--target_purchase_per_click`), from today's
    default world (0.07) down to Ali-CCP's (0.0053);
  * signal: the share of the click's item signal that the purchase shares
    (`--click_signal_share`: 0 = the click is clickbait only, 1 = match and quality only;
    0.091 is the default world's weights, and the centre's);
  * size: impressions, up to the largest that fits the budget.
Every (cell, model, seed) is one run of the truth benchmark's worker (benchmarks.models:
train with the config's validation split and early stopping, export, evaluate against
the truth), `--parallel` at a time; the world's seed is fixed (benchmarks.models
.WORLD_SEED), the seeds are the training seeds. Models: naive, shared_bottom, ESMM and
ESCM2-DR in every cell; ESMC, AITM and the oracle (ESMM with the hidden factors) at the
centre.

Settings per world size, chosen on the validation day (the last training day; the eval
day is never looked at): for each size, a grid of learning rate x embedding L2 is run for
ESMM (1 seed) on the centre world of that size, and the trial with the lowest validation
ctr + ctcvr log loss (benchmarks.tune.objective) sets both for every model of that size's
cells (the tuned configs' other settings, configs/tuned/, are kept). Every run's output
calibration is `--calibration` (default none: the models as trained, the ESMM paper's
setting; the Ali-CCP-shaped validation day holds a few dozen purchases).

Reported per cell: entire-space CVR AUC (expected AUC against the true P(buy | click, x)
over all eval exposures) and CTCVR AUC, each as the gap to Bayes on the same rows, with
the seeds' std; the calibration against the truth (cvr over the entire space, ctcvr);
the paired gain of each entire-space model over naive (per seed, same world) with a 95%
t interval, and beside them shared_bottom's (naive's click-space CVR on the CTR task's
embeddings; never the "best" model nor a crossover); per axis the crossover: the first knob value in the axis's order (sparsity:
the default world's 0.07 down to Ali-CCP's 0.0053; signal: the default world's 0.091 up
to 1; size: up) where the best entire-space model's paired gain is significant (its
interval above 0), or "none in range". Writes benchmarks/results/<name>.{md,json} and
<name>.png; every step is skipped when its output exists, so a killed run resumes
(`--work_dir` holds the worlds and runs).

Measured cost of the centre (2026-12-07 07:08 UTC, idle VM at a fast hour: a fixed
Python loop 1.06 s, against 1.8-3.5 s on other days): the 1M Ali-CCP-shaped world
simulated in 34 s and preprocessed in about 60 s; naive and ESMM (3 epochs at most,
learning rate 3e-3, uncalibrated) trained in 68 s and 91 s, 100 s wall for the pair on
2 processes. Three values an axis with a 3M cell and a 4-trial grid (105 runs) came to
about 2 hours at that speed, so the full mode has two values an axis (4 worlds, 57 runs
and 4 tuning runs, estimated at 48 min at that speed) and a 2-trial grid (learning
rate; embedding L2 0). Its run (2026-12-07 07:28-08:04, the same fast hour) took 36.8
min; at a slow hour (the loop about 2x slower) expect about 70 min.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks import common
from benchmarks import models as truth_benchmark
from benchmarks import tune as tune_lib
from configs import config as config_lib
from simulation import profiles
from simulation import world_config

RESULTS_DIR = truth_benchmark.RESULTS_DIR
TITLE = "The regime the seeds were written for: worlds shaped like Ali-CCP (issue 32)"
BASELINE = "naive"
CELL_MODELS = ("naive", "shared_bottom", "esmm", "escm2_dr")
CENTRE_MODELS = CELL_MODELS + ("esmc", "aitm", "esmm_oracle")
ENTIRE_SPACE_MODELS = ("esmm", "escm2_dr", "esmc", "aitm")
# Paired against naive beside them, not an entire-space model (no crossover, no "best"):
# the click-space CVR model with the CTR task's shared embeddings.
SHARED_EMBEDDINGS = "shared_bottom"
ORACLE = "esmm_oracle"
DEFAULT_SIGNAL_SHARE = profiles.click_signal_share_of(world_config.BehaviourParams())
ALICCP = profiles.profile("aliccp")
# axis -> (simulate flag or None for the size, knob label, values in the order the
# crossover walks: from the default world's value out). The centre's value is in each.
_KNOB_AXES = {
    "sparsity": ("--target_purchase_per_click", "P(buy | click)",
                 (0.07, ALICCP.target_purchase_per_click)),
    "signal": ("--click_signal_share", "click signal share", (DEFAULT_SIGNAL_SHARE, 1.0)),
}
AXES = {  # the two modes differ in their sizes only
    # Two values an axis: what fits the budget at 1M (the docstring's measured cost).
    "full": {**_KNOB_AXES, "size": (None, "impressions", (300_000, 1_000_000))},
    "quick": {**_KNOB_AXES, "size": (None, "impressions", (20_000, 40_000))},
}
MODES = {
    "full": {"centre_size": 1_000_000, "seeds": 3, "epochs": 3,
             "grid": {"learning_rate": (1e-3, 3e-3), "embedding_l2": (0.0,)}},
    "quick": {"centre_size": 40_000, "seeds": 1, "epochs": 1,
              "grid": {"learning_rate": (3e-3,), "embedding_l2": (0.0, 1e-4)}},
}
# Two-sided 95% Student t quantiles by degrees of freedom (n seeds - 1).
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306,
         9: 2.262}
# (report label, task, path in the task's report block)
GAINS = (("ES CVR AUC", "cvr", ("entire_space", "expected_auc")),
         ("CTCVR AUC", "ctcvr", ("auc",)))


def centre_world(size: int) -> Dict[str, Any]:
  """The centre's knobs at `size` impressions: Ali-CCP's sparsity, the default world's
  click signal share."""
  return {"size": size, "purchase": ALICCP.target_purchase_per_click,
          "share": DEFAULT_SIGNAL_SHARE}


def cell_key(size: int, purchase: float, share: float) -> str:
  """A world's directory name: its size, P(buy | click) and click signal share."""
  return f"n{size}_buy{purchase:.4g}_share{share:.3g}"


def cells_of(mode: str, axes: Sequence[str]) -> List[Dict[str, Any]]:
  """Every distinct world of the axes: {key, size, purchase, share, axes: [(axis,
  value)], centre}; the centre (and a size axis's centre-size cell) appears once."""
  base = centre_world(MODES[mode]["centre_size"])
  cells: Dict[str, Dict[str, Any]] = {}
  for axis in axes:
    flag, _, values = AXES[mode][axis]
    for value in values:
      world = dict(base)
      world[{"sparsity": "purchase", "signal": "share", "size": "size"}[axis]] = (
          int(value) if flag is None else value)
      key = cell_key(world["size"], world["purchase"], world["share"])
      cell = cells.setdefault(key, dict(world, key=key, axes=[], centre=False))
      cell["axes"].append((axis, value))
      cell["centre"] = cell["centre"] or world == base
  if not any(c["centre"] for c in cells.values()):
    key = cell_key(**base)
    cells[key] = dict(base, key=key, axes=[], centre=True)
  return list(cells.values())


def simulate_flags(cell: Dict[str, Any]) -> Tuple[str, ...]:
  """pipeline.simulate flags of a cell's world (the profile, then the two knobs)."""
  return ("--profile", "aliccp", "--target_purchase_per_click", repr(cell["purchase"]),
          "--click_signal_share", repr(cell["share"]))


def paired_gain(per_seed: Dict[str, List[Optional[float]]], model: str
                ) -> Dict[str, float]:
  """`model` minus the baseline, per seed (same world, same seed), as {mean, std, n,
  low, high, significant}: a 95% t interval of the mean; significant when low > 0."""
  pairs = [a - b for a, b in zip(per_seed.get(model, []), per_seed.get(BASELINE, []))
           if a is not None and b is not None]
  n = len(pairs)
  if n == 0:
    return {"mean": math.nan, "std": math.nan, "n": 0, "low": math.nan, "high": math.nan,
            "significant": False}
  mean = sum(pairs) / n
  std = math.sqrt(sum((p - mean) ** 2 for p in pairs) / (n - 1)) if n > 1 else math.nan
  half = T_975[n - 1] * std / math.sqrt(n) if n > 1 else math.nan
  return {"mean": mean, "std": std, "n": n, "low": mean - half, "high": mean + half,
          "significant": bool(n > 1 and mean - half > 0)}


def per_seed_values(reports: Dict[str, List[Dict[str, Any]]], task: str,
                    path: Sequence[str]) -> Dict[str, List[Optional[float]]]:
  """model -> the metric per seed, in seed order."""
  return {name: [truth_benchmark._get(run.get("tasks", {}).get(task, {}), path)  # pylint: disable=protected-access
                 for run in runs] for name, runs in reports.items()}


def gains_of(reports: Dict[str, List[Dict[str, Any]]]) -> Dict[str, Dict[str, Any]]:
  """label of GAINS -> model -> paired_gain over the baseline, for the entire-space
  models and SHARED_EMBEDDINGS."""
  out = {}
  for label, task, path in GAINS:
    values = per_seed_values(reports, task, path)
    out[label] = {model: paired_gain(values, model)
                  for model in ENTIRE_SPACE_MODELS + (SHARED_EMBEDDINGS,) if model in values}
  return out


def best_gain(gains: Dict[str, Dict[str, Any]], label: str) -> Tuple[Optional[str],
                                                                     Dict[str, Any]]:
  """(model, gain) of the entire-space model with the largest mean gain on `label`."""
  candidates = {m: g for m, g in gains.get(label, {}).items()
                if g["n"] and m in ENTIRE_SPACE_MODELS}
  if not candidates:
    return None, {}
  model = max(candidates, key=lambda m: candidates[m]["mean"])
  return model, candidates[model]


def crossover(rows: Sequence[Tuple[float, Dict[str, Dict[str, Any]]]], label: str
              ) -> Dict[str, Any]:
  """The first (value, model) along an axis's ordered (value, gains) rows where the best
  entire-space model's paired gain on `label` is significant; {} when none is."""
  for value, gains in rows:
    model, gain = best_gain(gains, label)
    if model and gain["significant"]:
      return {"value": value, "model": model, **gain}
  return {}


def tune_size(work_dir: str, size: int, settings: Dict[str, Any]) -> Dict[str, Any]:
  """The validation-day choice of learning rate x embedding L2 for a world size:
  {"trials": [...], "best": {...}} (ESMM, seed 1, the centre world of that size)."""
  cell = centre_world(size)
  mode_dir = os.path.join(work_dir, cell_key(**cell))
  world = truth_benchmark.make_world(mode_dir, size, simulate_flags(cell))
  grid = settings["grid"]
  trials = [{"learning_rate": lr, "embedding_l2": l2}
            for lr in grid["learning_rate"] for l2 in grid["embedding_l2"]]
  names = {f"esmm_lr{t['learning_rate']:g}_embl2_{t['embedding_l2']:g}": t for t in trials}
  configs = {name: truth_benchmark.MODELS["esmm"] for name in names}
  reports = truth_benchmark.run_all(
      mode_dir, world, list(names), 1, settings["epochs"], None,
      parallel=settings["parallel"],
      overrides={n: overrides_of(t, settings.get("calibration")) for n, t in names.items()},
      configs=configs, runs_dir="tuning")
  rows = [dict(trial, objective=tune_lib.objective(reports[name][0]))
          for name, trial in names.items()]
  finite = [row for row in rows if not math.isnan(row["objective"])]
  if not finite:
    raise RuntimeError(f"no tuning trial of the {size}-impression world has a validation "
                       f"loss (runs under {mode_dir}/tuning)")
  return {"trials": rows, "best": min(finite, key=lambda row: row["objective"])}


def overrides_of(choice: Dict[str, Any], calibration: Optional[str] = None
                 ) -> Dict[str, Any]:
  """Config overrides of a tuned choice (learning rate, embedding L2) and, when given,
  the output calibration (train.calibration)."""
  train = {"learning_rate": choice["learning_rate"]}
  if calibration:
    train["calibration"] = calibration
  return {"train": train, "model": {"embedding_l2": choice["embedding_l2"]}}


def run_cell(work_dir: str, cell: Dict[str, Any], choice: Dict[str, Any],
             settings: Dict[str, Any]) -> Dict[str, Any]:
  """One world: every model x seed with the size's tuned settings; the cell's record."""
  mode_dir = os.path.join(work_dir, cell["key"])
  world = truth_benchmark.make_world(mode_dir, cell["size"], simulate_flags(cell))
  models = CENTRE_MODELS if cell["centre"] else CELL_MODELS
  reports = truth_benchmark.run_all(
      mode_dir, world, models, settings["seeds"], settings["epochs"], None,
      parallel=settings["parallel"],
      overrides={m: overrides_of(choice, settings.get("calibration")) for m in models})
  with open(os.path.join(world["data"], "counts.json")) as f:
    labels = json.load(f)["labels"]["train"]
  return {**{k: cell[k] for k in ("key", "size", "purchase", "share", "axes", "centre")},
          "train_clicks": labels["click"], "train_purchases": labels["purchase"],
          "summary": truth_benchmark.aggregate(reports), "gains": gains_of(reports),
          "train_seconds": sum(run.get("train_seconds") or 0.0
                               for runs in reports.values() for run in runs)}


def axis_rows(cells: Sequence[Dict[str, Any]], axis: str, mode: str
              ) -> List[Tuple[float, Dict[str, Any]]]:
  """(value, cell) of an axis, in the axis's order of AXES, for the cells that ran."""
  order = AXES[mode][axis][2]
  rows = [(value, cell) for cell in cells for name, value in cell["axes"] if name == axis]
  return sorted(rows, key=lambda row: order.index(row[0]))


def _gap(summary: Dict[str, Any], model: str, task: str, metric: str, bayes: str
         ) -> Optional[Dict[str, float]]:
  block = summary.get(model, {}).get(task, {})
  if not block.get(metric) or not block[metric]["n"] or not block.get(bayes):
    return None
  return {"mean": block[bayes]["mean"] - block[metric]["mean"], "std": block[metric]["std"],
          "n": block[metric]["n"]}


def _fmt(stat: Optional[Dict[str, float]], digits: int = 4) -> str:
  return truth_benchmark._cell(stat, digits)  # pylint: disable=protected-access


def _fmt_gain(gain: Dict[str, Any]) -> str:
  if not gain or not gain["n"]:
    return "-"
  if gain["n"] == 1:
    return f"{gain['mean']:+.4f} (1 seed)"
  mark = " **significant**" if gain["significant"] else ""
  return (f"{gain['mean']:+.4f} ± {gain['std']:.4f} [{gain['low']:+.4f}, "
          f"{gain['high']:+.4f}]{mark}")


def _value_text(axis: str, value: float) -> str:
  if axis == "size":
    return f"{int(value):,}"
  return f"{value:.4g}"


def render_markdown(cells: List[Dict[str, Any]], tuning: Dict[int, Dict[str, Any]],
                    settings: Dict[str, Any]) -> str:
  """The results page: cost and settings, the tuning, one section per axis, the centre."""
  lines = [
      f"Generated by `python -m benchmarks.regime{settings['flag']}` on "
      f"{settings['date']}: {settings['seeds']} seed(s) per model and cell (the world's "
      f"seed is fixed), at most {settings['epochs']} epoch(s) with early stopping on the "
      f"validation day, output calibration `{settings.get('calibration') or 'each config'}`"
      f"{' (the models as trained)' if settings.get('calibration') == 'none' else ''}. Cost: {settings['seconds'] / 60:.1f} min wall on "
      f"{settings['parallel']} processes, {settings['cpus']} CPUs; load average "
      f"{settings['load_before']} before and {settings['load_after']} after; trainings "
      f"{settings['train_seconds'] / 60:.1f} min summed over the runs.",
      "",
      f"Centre: `pipeline.simulate --profile aliccp` at {settings['centre_size']:,} "
      "impressions (Ali-CCP's published marginals, ESMM paper Table 1: CTR "
      f"{ALICCP.target_ctr:.4f}, P(buy | click) {ALICCP.target_purchase_per_click:.4f}, "
      f"{ALICCP.impressions_per_user:.0f} impressions per user, "
      f"{ALICCP.impressions_per_item:.1f} per item; simulation/profiles.py), click "
      f"signal share {DEFAULT_SIGNAL_SHARE:.3f} (the default world's click weights).",
      "",
      "Gap = Bayes AUC minus model AUC on the same eval rows (ES CVR: the expected AUC of "
      "the predicted cvr against the true P(buy | click, x) over all eval exposures). "
      "Calibration against the truth: sum predicted / sum true (ES cvr over all eval "
      "exposures; ctcvr). Gain = model minus naive per seed, mean ± std [95% t "
      "interval]; significant when the interval is above 0. The crossover and the best "
      "model are the entire-space models'; shared_bottom (naive's click-space CVR on the "
      "CTR task's embeddings) is paired beside them.",
      "",
      "## Settings per world size (validation day, ESMM, seed 1)",
      "",
      "| impressions | learning rate | embedding L2 | validation ctr + ctcvr log loss |",
      "|---|---|---|---|",
  ]
  for size, tuned in sorted(tuning.items()):
    for trial in tuned["trials"]:
      chosen = " (chosen)" if trial == tuned["best"] else ""
      lines.append(f"| {size:,} | {trial['learning_rate']:g} | {trial['embedding_l2']:g} | "
                   f"{trial['objective']:.6f}{chosen} |")
  for axis in settings["axes"]:
    _, label, _ = AXES[settings["mode"]][axis]
    rows = axis_rows(cells, axis, settings["mode"])
    lines += ["", f"## Axis: {label} ({axis})", "",
              f"| {label} | train clicks | train purchases | model | ES CVR AUC gap | "
              "CTCVR AUC gap | ES CVR calib. | CTCVR calib. |",
              "|---|---|---|---|---|---|---|---|"]
    for value, cell in rows:
      summary = cell["summary"]
      for model in summary:
        ctcvr_calibration = summary[model].get("ctcvr", {}).get("calibration_vs_truth")
        lines.append(
            f"| {_value_text(axis, value)} | {cell['train_clicks']} | "
            f"{cell['train_purchases']} | {model} | "
            f"{_fmt(_gap(summary, model, 'cvr', 'es_expected_auc', 'es_bayes_expected_auc'))}"
            f" | {_fmt(_gap(summary, model, 'ctcvr', 'auc', 'bayes_auc'))} | "
            f"{_fmt(summary[model].get('cvr', {}).get('es_calibration'), 3)} | "
            f"{_fmt(ctcvr_calibration, 3)} |")
    lines += ["", f"Paired gain over naive along {label}:", "",
              f"| {label} | model | ES CVR AUC gain | CTCVR AUC gain |", "|---|---|---|---|"]
    for value, cell in rows:
      for model in cell["gains"]["ES CVR AUC"]:
        name = (f"{model} (click-space, shared embeddings)" if model == SHARED_EMBEDDINGS
                else model)
        lines.append(f"| {_value_text(axis, value)} | {name} | "
                     f"{_fmt_gain(cell['gains']['ES CVR AUC'][model])} | "
                     f"{_fmt_gain(cell['gains']['CTCVR AUC'][model])} |")
    lines.append("")
    for gain_label, _, _ in GAINS:
      found = crossover([(value, cell["gains"]) for value, cell in rows], gain_label)
      if found:
        lines.append(f"- Crossover on {gain_label}: {label} = "
                     f"{_value_text(axis, found['value'])} ({found['model']}, "
                     f"{_fmt_gain(found)}).")
      else:
        lines.append(f"- Crossover on {gain_label}: none in the range "
                     f"{', '.join(_value_text(axis, v) for v, _ in rows)} (no entire-space "
                     "model's paired gain over naive is significant).")
  lines += _centre_section(cells)
  return "\n".join(lines) + "\n"


def _centre_section(cells: Sequence[Dict[str, Any]]) -> List[str]:
  """The centre world: the best entire-space model's gaps beside the oracle's."""
  centre = next((c for c in cells if c["centre"]), None)
  if not centre:
    return []
  summary = centre["summary"]
  lines = ["", f"## The Ali-CCP-shaped world ({centre['size']:,} impressions)", "",
           "| model | ES CVR AUC gap | CTCVR AUC gap | ES CVR calib. | CTCVR calib. |",
           "|---|---|---|---|---|"]
  model, _ = best_gain(centre["gains"], "ES CVR AUC")
  for name in (BASELINE, model, ORACLE):
    if name and name in summary:
      role = {BASELINE: " (baseline)", ORACLE: " (oracle: + hidden factors)"}.get(
          name, " (best entire-space model)")
      lines.append(
          f"| {name}{role} | "
          f"{_fmt(_gap(summary, name, 'cvr', 'es_expected_auc', 'es_bayes_expected_auc'))} | "
          f"{_fmt(_gap(summary, name, 'ctcvr', 'auc', 'bayes_auc'))} | "
          f"{_fmt(summary[name].get('cvr', {}).get('es_calibration'), 3)} | "
          f"{_fmt(summary[name].get('ctcvr', {}).get('calibration_vs_truth'), 3)} |")
  return lines


def plot(cells: List[Dict[str, Any]], settings: Dict[str, Any], path: str) -> None:
  """Per axis (columns) and gain (rows): each entire-space model's paired gain over
  naive against the knob's value, with its 95% interval."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  axes_names = settings["axes"]
  figure, grid = pyplot.subplots(len(GAINS), len(axes_names),
                                 figsize=(4.8 * len(axes_names), 3.8 * len(GAINS)),
                                 squeeze=False)
  for column, axis in enumerate(axes_names):
    rows = axis_rows(cells, axis, settings["mode"])
    for row, (label, _, _) in enumerate(GAINS):
      panel = grid[row][column]
      for model in ENTIRE_SPACE_MODELS + (SHARED_EMBEDDINGS,):
        points = [(i, cell["gains"][label][model]) for i, (_, cell) in enumerate(rows)
                  if model in cell["gains"][label] and cell["gains"][label][model]["n"]]
        if not points:
          continue
        xs = [i for i, _ in points]
        means = [g["mean"] for _, g in points]
        errors = [0.0 if math.isnan(g["high"]) else g["high"] - g["mean"]
                  for _, g in points]
        panel.errorbar(xs, means, yerr=errors, marker="o", capsize=3, label=model)
      panel.axhline(0.0, color="k", linewidth=0.8, linestyle="--")
      panel.set_xticks(range(len(rows)))
      panel.set_xticklabels([_value_text(axis, v) for v, _ in rows])
      panel.set_xlabel(AXES[settings["mode"]][axis][1])
      panel.set_ylabel(f"{label} gain over naive")
      panel.legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  pyplot.close(figure)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true",
                      help="Tiny worlds, 1 seed, 1 epoch: checks the machinery.")
  parser.add_argument("--axes", default="sparsity,signal,size")
  parser.add_argument("--seeds", type=int)
  parser.add_argument("--work_dir", default="/tmp/cvr_regime")
  parser.add_argument("--results_dir", default=RESULTS_DIR)
  parser.add_argument("--parallel", type=int, default=2)
  parser.add_argument("--calibration", default="none",
                      choices=config_lib.CALIBRATIONS,
                      help="Every run's train.calibration (default none: the models as "
                      "trained, the ESMM paper's setting; a validation day of a sparse "
                      "world holds too few purchases for a fit to mean much).")
  parser.add_argument("--name", help="Results base name (default regime / regime_quick).")
  args = parser.parse_args(argv)
  mode = "quick" if args.quick else "full"
  axes = [a for a in args.axes.split(",") if a]
  unknown = sorted(set(axes) - set(AXES[mode]))
  if unknown:
    parser.error(f"unknown axis(es) {unknown}; known: {list(AXES[mode])}")
  settings = dict(MODES[mode], mode=mode, axes=axes, parallel=args.parallel,
                  calibration=args.calibration,
                  cpus=os.cpu_count(), load_before=truth_benchmark._load(),  # pylint: disable=protected-access
                  flag="".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])))
  if args.seeds:
    settings["seeds"] = args.seeds
  work_dir = os.path.join(args.work_dir, mode)
  start = time.time()
  cells = cells_of(mode, axes)
  tuning = {}
  for size in sorted({cell["size"] for cell in cells}):
    truth_benchmark._log(f"tuning the {size}-impression world")  # pylint: disable=protected-access
    tuning[size] = tune_size(work_dir, size, settings)
  results = []
  for cell in cells:
    truth_benchmark._log(f"cell {cell['key']}")  # pylint: disable=protected-access
    results.append(run_cell(work_dir, cell, tuning[cell["size"]]["best"], settings))
  settings.update(seconds=time.time() - start, load_after=truth_benchmark._load(),  # pylint: disable=protected-access
                  date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  train_seconds=sum(c["train_seconds"] for c in results))
  name = args.name or ("regime_quick" if args.quick else "regime")
  os.makedirs(args.results_dir, exist_ok=True)
  with open(os.path.join(args.results_dir, f"{name}.json"), "w") as f:
    json.dump({"settings": settings, "tuning": {str(k): v for k, v in tuning.items()},
               "cells": results}, f, indent=1, default=list)
  markdown = render_markdown(results, tuning, settings)
  common.write_result(name, TITLE, markdown, results_dir=args.results_dir,
                      command="python -m benchmarks.regime" + settings["flag"])
  plot(results, settings, os.path.join(args.results_dir, f"{name}.png"))
  print(markdown)


if __name__ == "__main__":
  main()
