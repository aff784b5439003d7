"""Where entire-space modelling wins: a sweep over data size and click sparsity.

  python -m benchmarks.sweep [--quick] [--sizes 100000,300000,1000000] \
      [--ctrs 0.045,0.015] [--models naive,esmm,esm2,esmc,esms] [--seeds 2] \
      [--catalog_of 1000000] [--calibration none] [--name learning_curve]

For every (impressions, target CTR) cell: a simulated world (pipeline.simulate
--impressions N --target_ctr C, seed benchmarks.models.WORLD_SEED) preprocessed once,
then every model x seed trained, exported and evaluated against the truth exactly as in
the truth benchmark (benchmarks.models.run_all: subprocess per run, validation split
and early stopping from the configs). What is compared is the CVR over the entire
space: the expected AUC of the predicted cvr against the true P(buy | click, x) over all
eval exposures, and its calibration against the truth (sum predicted / sum true).

Writes benchmarks/results/sweep.{md,json,png} (`--quick`: sweep_quick.*): one table row
per cell and model (mean +- std over seeds), the gain of the best entire-space model
over the naive baseline per cell with the seeds' spread, and a plot of entire-space CVR
AUC against the number of training clicks, one panel per CTR. Every step is skipped
when its output exists, so a killed sweep resumes.

Two kinds of size axis. By default the catalog grows with the world (the simulator's
users = impressions / 40, items = impressions / 100): a bigger platform with the same
data per user and item, so the id embeddings see no more data as the size grows. With
`--catalog_of M` every world has the catalog (users, items, brands) of the M-impression
world, so more impressions are more data per id: that is the learning curve that says
how much of a gap is data (run as `--name learning_curve`).

The ESMM paper's claim to compare with: on the public and production data sets, ESMM
beats the click-space BASE on entire-space CVR AUC, and the gain grows as the training
set shrinks (its Figure: sparser data -> larger gain).
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from benchmarks import models as truth_benchmark
from configs import config as config_lib
from simulation import world_config

RESULTS_DIR = truth_benchmark.RESULTS_DIR
ENTIRE_SPACE_MODELS = ("esmm", "esm2", "esmc", "esms")
MODES = {
    "quick": {"sizes": (50_000, 150_000), "ctrs": (0.045, 0.015), "seeds": 1, "epochs": 3,
              "batch_size": None},
    "full": {"sizes": (100_000, 300_000, 1_000_000), "ctrs": (0.045, 0.015), "seeds": 2,
             "epochs": 3, "batch_size": None},
}
DEFAULT_MODELS = ("naive",) + ENTIRE_SPACE_MODELS


def cell_name(size: int, ctr: float, catalog_of: Optional[int] = None) -> str:
  return f"n{size}_ctr{ctr:g}" + (f"_catalog{catalog_of}" if catalog_of else "")


def catalog(impressions: int) -> Dict[str, int]:
  """The simulator's default catalog of an `impressions` world: users, items, brands."""
  world = world_config.WorldConfig(num_impressions=impressions)
  return {"users": world.users, "items": world.items, "brands": world.brands}


def simulate_flags(ctr: float, catalog_of: Optional[int] = None) -> Tuple[str, ...]:
  """pipeline.simulate flags of a cell: the target CTR and, with catalog_of, the catalog
  of the catalog_of-impression world (else the simulator sizes it by the impressions)."""
  flags = ("--target_ctr", str(ctr))
  for key, value in (catalog(catalog_of) if catalog_of else {}).items():
    flags += (f"--{key}", str(value))
  return flags


def run_cell(work_dir: str, size: int, ctr: float, models: Sequence[str], settings
             ) -> Dict[str, Any]:
  """One (size, ctr) cell: world, runs, the aggregate and the world's training clicks."""
  catalog_of = settings.get("catalog_of")
  mode_dir = os.path.join(work_dir, cell_name(size, ctr, catalog_of))
  world = truth_benchmark.make_world(mode_dir, size, simulate_flags(ctr, catalog_of))
  overrides, runs_suffix = truth_benchmark.calibration_override(
      models, settings.get("calibration"))
  reports = truth_benchmark.run_all(
      mode_dir, world, models, settings["seeds"], settings["epochs"], settings["batch_size"],
      parallel=settings["parallel"], overrides=overrides, runs_dir="runs" + runs_suffix)
  with open(os.path.join(world["data"], "counts.json")) as f:
    counts = json.load(f)
  return {"size": size, "ctr": ctr, "train_clicks": counts["labels"]["train"]["click"],
          "train_purchases": counts["labels"]["train"]["purchase"],
          "summary": truth_benchmark.aggregate(reports),
          "per_seed": {name: [run["tasks"]["cvr"]["entire_space"]["expected_auc"]
                              for run in runs] for name, runs in reports.items()}}


def gain_over_naive(cell: Dict[str, Any]) -> Dict[str, Any]:
  """The best entire-space model's entire-space CVR AUC minus naive's, per seed paired."""
  per_seed = cell["per_seed"]
  if "naive" not in per_seed:
    return {}
  candidates = [m for m in ENTIRE_SPACE_MODELS if m in per_seed]
  if not candidates:
    return {}
  stat = truth_benchmark._stat  # pylint: disable=protected-access
  best = max(candidates, key=lambda m: stat(per_seed[m])["mean"])
  diffs = [a - b for a, b in zip(per_seed[best], per_seed["naive"])]
  return {"model": best, **stat(diffs)}


def render_markdown(cells: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
  cell = truth_benchmark._cell  # pylint: disable=protected-access
  lines = [
      "# Where entire-space modelling wins: data size x click sparsity",
      "",
      f"Generated by `python -m benchmarks.sweep{settings['flag']}`"
      f" on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}: "
      f"{settings['seeds']} seed(s) per model and cell, at most {settings['epochs']} epochs "
      f"(early stopping on the last training day), batch "
      f"{settings['batch_size'] or 'from each config'}, output calibration "
      f"{settings.get('calibration') or 'from each config'}. "
      f"Wall time {settings['seconds'] / 60:.1f} min, {settings['cpus']} CPUs, load average "
      f"{settings['load_before']} before and {settings['load_after']} after.",
      "",
      _catalog_text(settings.get("catalog_of")),
      "",
      "ES AUC = expected AUC of the predicted cvr against the true P(buy | click, x) over all "
      "eval exposures; ES calib. = sum of predicted cvr / sum of true cvr over them.",
      "",
      "| impressions | target CTR | train clicks | train purchases | model | ES AUC | "
      "ES calib. | CVR AUC (clicked) | CTCVR AUC |",
      "|---|---|---|---|---|---|---|---|---|",
  ]
  for c in cells:
    for name, tasks in c["summary"].items():
      cvr, ctcvr = tasks.get("cvr", {}), tasks.get("ctcvr", {})
      lines.append(
          f"| {c['size']} | {c['ctr']:g} | {c['train_clicks']} | {c['train_purchases']} | "
          f"{name} | {cell(cvr.get('es_expected_auc'))} | {cell(cvr.get('es_calibration'), 3)} "
          f"| {cell(cvr.get('auc'))} | {cell(ctcvr.get('auc'))} |")
  lines += ["", "## Gain of the best entire-space model over naive (entire-space CVR AUC)", "",
            "| impressions | target CTR | train clicks | best model | gain (mean ± std over "
            "seeds, paired) |", "|---|---|---|---|---|"]
  for c in cells:
    gain = gain_over_naive(c)
    if gain:
      lines.append(f"| {c['size']} | {c['ctr']:g} | {c['train_clicks']} | {gain['model']} | "
                   f"{cell(gain)} |")
  sizes = sorted({c["size"] for c in cells})
  lines += ["", "## Learning curves: gap to the Bayes-optimal AUC by data size", "",
            "Bayes AUC minus model AUC on the same eval rows (entire-space CVR: expected AUC "
            "against the true P(buy | click, x)). A gap that shrinks with data is data; a gap "
            "that stays is the model or the training.", "",
            "| target CTR | model | " + " | ".join(
                f"{size} impressions: CTR / CTCVR / ES CVR gap" for size in sizes) + " |",
            "|---|---|" + "---|" * len(sizes)]
  for ctr in sorted({c["ctr"] for c in cells}, reverse=True):
    by_size = {c["size"]: c for c in cells if c["ctr"] == ctr}
    for name in _model_names(by_size.values()):
      gaps = []
      for size in sizes:  # a (size, CTR) cell that was not run is "-"
        tasks = by_size[size]["summary"].get(name) if size in by_size else None
        gaps.append(" / ".join(cell(_gap(tasks, metric)) for metric in GAPS)
                    if tasks else "-")
      lines.append(f"| {ctr:g} | {name} | " + " | ".join(gaps) + " |")
  return "\n".join(lines) + "\n"


def _catalog_text(catalog_of: Optional[int]) -> str:
  if catalog_of:
    sizes = catalog(catalog_of)
    return (f"Catalog fixed at the {catalog_of}-impression world's ({sizes['users']} users, "
            f"{sizes['items']} items, {sizes['brands']} brands) in every cell: more "
            "impressions are more data per user and item.")
  return ("Catalog grows with the world (users = impressions / 40, items = impressions / "
          "100): every size has about the same data per user and item, so the sizes are "
          "bigger platforms, not more data per id (`--catalog_of` holds the catalog fixed).")


def _model_names(cells) -> List[str]:
  """Every model of these cells, in first-seen order (a cell may lack some)."""
  return list(dict.fromkeys(name for c in cells for name in c["summary"]))


# (task, model metric, Bayes metric) of the learning curves' gaps
GAPS = (("ctr", "auc", "bayes_auc"), ("ctcvr", "auc", "bayes_auc"),
        ("cvr", "es_expected_auc", "es_bayes_expected_auc"))


def _gap(tasks: Dict[str, Any], metric) -> Dict[str, float]:
  """Bayes minus model (mean; std of the model's AUC: Bayes is fixed per world)."""
  task, model_metric, bayes_metric = metric
  model, bayes = tasks.get(task, {}).get(model_metric), tasks.get(task, {}).get(bayes_metric)
  if not model or not bayes or not model["n"]:
    return {"mean": math.nan, "std": math.nan, "n": 0}
  return {"mean": bayes["mean"] - model["mean"], "std": model["std"], "n": model["n"]}


def plot(cells: List[Dict[str, Any]], path: str) -> None:
  """Entire-space CVR AUC vs training clicks (log x), a line per model, a panel per CTR."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  ctrs = sorted({c["ctr"] for c in cells}, reverse=True)
  figure, axes = pyplot.subplots(1, len(ctrs), figsize=(5.2 * len(ctrs), 4.2), squeeze=False)
  for axis, ctr in zip(axes[0], ctrs):
    row = sorted((c for c in cells if c["ctr"] == ctr), key=lambda c: c["train_clicks"])
    names = list(row[0]["summary"]) if row else []
    for name in names:
      stats = [c["summary"][name]["cvr"]["es_expected_auc"] for c in row]
      axis.errorbar([c["train_clicks"] for c in row], [s["mean"] for s in stats],
                    yerr=[s["std"] for s in stats], marker="o", capsize=3, label=name)
    bayes = [c["summary"][names[0]]["cvr"]["es_bayes_expected_auc"]["mean"] for c in row]
    axis.plot([c["train_clicks"] for c in row], bayes, "k--", label="Bayes")
    axis.set_xscale("log")
    axis.set_xlabel("training clicks")
    axis.set_ylabel("entire-space CVR AUC")
    axis.set_title(f"target CTR {ctr:g}")
    axis.legend(fontsize=8)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  pyplot.close(figure)


def plot_learning_curves(cells: List[Dict[str, Any]], path: str) -> None:
  """Gap to Bayes (CTR, CTCVR, entire-space CVR) vs impressions (log x), a line per model
  and target CTR."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  from matplotlib import pyplot  # pylint: disable=g-import-not-at-top

  titles = ("CTR AUC gap", "CTCVR AUC gap", "entire-space CVR AUC gap")
  figure, axes = pyplot.subplots(1, len(GAPS), figsize=(5.2 * len(GAPS), 4.2))
  for axis, metric, title in zip(axes, GAPS, titles):
    for ctr in sorted({c["ctr"] for c in cells}, reverse=True):
      row = sorted((c for c in cells if c["ctr"] == ctr), key=lambda c: c["size"])
      for name in _model_names(row):
        gaps = [_gap(c["summary"].get(name, {}), metric) for c in row]
        axis.errorbar([c["size"] for c in row], [g["mean"] for g in gaps],
                      yerr=[g["std"] for g in gaps], marker="o", capsize=3,
                      label=f"{name} (CTR {ctr:g})")
    axis.axhline(0.0, color="k", linestyle="--", linewidth=0.8)
    axis.set_xscale("log")
    axis.set_xlabel("impressions")
    axis.set_title(title)
  axes[0].legend(fontsize=7)
  figure.tight_layout()
  figure.savefig(path, dpi=110)
  pyplot.close(figure)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help="2 sizes x 2 CTRs, 1 seed.")
  parser.add_argument("--work_dir", default="/tmp/cvr_sweep")
  parser.add_argument("--results_dir", default=RESULTS_DIR)
  parser.add_argument("--sizes", help="Comma-separated impression counts.")
  parser.add_argument("--ctrs", help="Comma-separated target CTRs (simulator knob).")
  parser.add_argument("--models", default=",".join(DEFAULT_MODELS))
  parser.add_argument("--seeds", type=int)
  parser.add_argument("--epochs", type=int)
  parser.add_argument("--batch_size", type=int)
  parser.add_argument("--parallel", type=int, default=2)
  parser.add_argument("--catalog_of", type=int, help="Give every world the catalog "
                      "(users, items, brands) of a world of this many impressions "
                      "(default: the catalog grows with the impressions).")
  parser.add_argument("--calibration", choices=config_lib.CALIBRATIONS,
                      help="Override every config's train.calibration (runs: "
                      "runs_calibration_<method>/; `none` compares the models as trained, "
                      "the ESMM paper's setting).")
  parser.add_argument("--name", help="Results base name (default sweep / sweep_quick), "
                      "e.g. learning_curve for a one-CTR run over sizes.")
  args = parser.parse_args(argv)
  mode = "quick" if args.quick else "full"
  settings = dict(MODES[mode], mode=mode, parallel=args.parallel, cpus=os.cpu_count(),
                  catalog_of=args.catalog_of, calibration=args.calibration,
                  flag="".join(f" {a}" for a in (argv if argv is not None else sys.argv[1:])))
  if args.sizes:
    settings["sizes"] = tuple(int(v) for v in args.sizes.split(","))
  if args.ctrs:
    settings["ctrs"] = tuple(float(v) for v in args.ctrs.split(","))
  for key in ("seeds", "epochs", "batch_size"):
    if getattr(args, key) is not None:
      settings[key] = getattr(args, key)
  models = [m for m in args.models.split(",") if m]
  unknown = sorted(set(models) - set(truth_benchmark.MODELS))
  if unknown:
    parser.error(f"unknown model(s) {unknown}; known: {list(truth_benchmark.MODELS)}")
  start = time.time()
  settings["load_before"] = truth_benchmark._load()  # pylint: disable=protected-access
  cells = []
  for ctr in settings["ctrs"]:
    for size in settings["sizes"]:
      truth_benchmark._log(f"cell {cell_name(size, ctr, args.catalog_of)}")  # pylint: disable=protected-access
      cells.append(run_cell(os.path.join(args.work_dir, mode), size, ctr, models, settings))
  settings["seconds"] = time.time() - start
  settings["load_after"] = truth_benchmark._load()  # pylint: disable=protected-access
  name = args.name or ("sweep_quick" if mode == "quick" else "sweep")
  os.makedirs(args.results_dir, exist_ok=True)
  with open(os.path.join(args.results_dir, f"{name}.json"), "w") as f:
    json.dump({"settings": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in settings.items()},
               "cells": cells, "gains": [gain_over_naive(c) for c in cells]}, f, indent=1)
  markdown = render_markdown(cells, settings)
  with open(os.path.join(args.results_dir, f"{name}.md"), "w") as f:
    f.write(markdown)
  plot(cells, os.path.join(args.results_dir, f"{name}.png"))
  plot_learning_curves(cells, os.path.join(args.results_dir, f"{name}_gaps.png"))
  print(markdown)


if __name__ == "__main__":
  main()
