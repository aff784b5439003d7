"""Hyperparameter tuning on the validation split: a documented random search.

  python -m benchmarks.tune --model esmm [--trials 12] [--impressions 100000] \
      [--search_seed 0] [--write_config]

KerasTuner was considered first: keras-tuner 1.4 builds on Keras 3 (`import keras`),
while this project's models are Keras 2 (tf_keras, required by TFRS), so its tuners
cannot drive our models' fit. A random search over the space below is what it would have
run (Bergstra and Bengio 2012: random search beats grid search at equal budget).

Each trial samples a configuration from SPACE (and the model's own entries, e.g. ESMC's
constraint lambda), trains it on the truth benchmark's world (benchmarks.models.make_world,
seed WORLD_SEED) with the config's validation split (the last training day) and early
stopping, and scores it on that validation split ONLY: objective = validation
ctr_logloss + ctcvr_logloss (the two entire-space tasks every model logs; the eval day is
never looked at for the choice). The eval-day metrics are recorded beside it, for the
record. Trials run in subprocesses via benchmarks.models.run_all, `--parallel` at a time;
finished trials are skipped on a rerun.

Writes benchmarks/results/tune_<model>.{md,json}; with --write_config, the best trial's
settings into configs/tuned/<model>.yaml (`base: ../<model>.yaml`), which the truth
benchmark and the sweep then run for that model (benchmarks.models.MODELS).

The zoo's procedure, within a budget the benchmark can afford (two stages):
  1. shared settings (SPACE: embeddings, towers, optimizer, batch, regularisation) on
     ESMM, written to every model that shares those blocks:
       python -m benchmarks.tune --model esmm --impressions 1000000 --write_config \
           --share_with naive,shared_bottom,esm2,...
  2. each model's own knobs (MODEL_SPACE: ESMC's lambda and ties, AITM's alpha, ESCM2's
     lambda_c / lambda_g / clip), on top of stage 1's settings:
       python -m benchmarks.tune --model aitm --space model --trials 4 --write_config
"""

import argparse
import json
import math
import os
import time
from typing import Any, Dict, List

import numpy as np

from benchmarks import models as truth_benchmark
from configs import config as config_lib

RESULTS_DIR = truth_benchmark.RESULTS_DIR
TUNED_DIR = os.path.join(truth_benchmark.PROJECT_ROOT, "configs", "tuned")
# name -> (kind, values): "choice" picks one of the values, "log" is log-uniform in [a, b].
SPACE = {
    "model.embedding_dim": ("choice", (8, 16, 32)),
    "model.tower_units": ("choice", ((64, 32), (128, 64), (256, 128))),
    "model.dropout": ("choice", (0.0, 0.1, 0.2)),
    "model.l2": ("choice", (0.0, 1e-6, 1e-5)),
    "train.learning_rate": ("log", (3e-4, 1e-2)),
    "train.batch_size": ("choice", (512, 1024, 2048)),
    # Adam's epsilon sets how sign-like the steps of rare embedding rows are, and with it
    # the calibration of rare events (docs/TRAINING.md, "Adam's epsilon"); the embedding
    # L2 penalises the rows a batch uses (features.preprocessing.FeatureEncoder).
    "train.adam_epsilon": ("log", (1e-7, 1e-4)),
    "model.embedding_l2": ("choice", (0.0, 1e-5, 1e-4, 1e-3)),
}
MODEL_SPACE = {
    "esmc": {"model.params.constraint_lambda": ("log", (1e-5, 1e-1)),
             "model.params.init_cvr_from_buy_tower": ("choice", (False, True)),
             "model.params.tie_bias": ("choice", (False, True))},
    "esms": {"model.params.path_context_dim": ("choice", (0, 4, 8, 16))},
    "aitm": {"model.params.calibrator_alpha": ("log", (0.05, 2.0))},
    "aitm_action": {"model.params.calibrator_alpha": ("log", (0.05, 2.0))},
    "escm2_ips": {"model.params.lambda_c": ("log", (0.01, 1.0)),
                  "model.params.max_inverse_propensity": ("choice", (5.0, 15.0, 50.0))},
    "escm2_dr": {"model.params.lambda_c": ("log", (0.01, 1.0)),
                 "model.params.lambda_g": ("log", (0.3, 3.0)),
                 "model.params.max_inverse_propensity": ("choice", (5.0, 15.0, 50.0))},
}
OBJECTIVE = ("ctr_logloss", "ctcvr_logloss")


def sample(space: Dict[str, Any], rng: np.random.Generator) -> Dict[str, Any]:
  """One configuration: dotted name -> value."""
  trial = {}
  for name, (kind, values) in sorted(space.items()):
    if kind == "choice":
      value = values[int(rng.integers(len(values)))]
      trial[name] = list(value) if isinstance(value, tuple) else value
    elif kind == "log":
      low, high = values
      trial[name] = float(math.exp(rng.uniform(math.log(low), math.log(high))))
    else:
      raise ValueError(f"{name}: unknown kind {kind!r}")
  return trial


def to_overrides(trial: Dict[str, Any]) -> Dict[str, Any]:
  """{"model.params.x": 1} -> {"model": {"params": {"x": 1}}}."""
  overrides: Dict[str, Any] = {}
  for dotted, value in trial.items():
    node = overrides
    *path, leaf = dotted.split(".")
    for key in path:
      node = node.setdefault(key, {})
    node[leaf] = value
  return overrides


def objective(report: Dict[str, Any]) -> float:
  """Validation ctr_logloss + ctcvr_logloss of a run (NaN when it has no validation)."""
  validation = report.get("training", {}).get("validation") or {}
  values = [validation.get(name) for name in OBJECTIVE]
  return math.nan if any(v is None for v in values) else float(sum(values))


def render_markdown(model: str, rows: List[Dict[str, Any]], settings: Dict[str, Any]) -> str:
  lines = [
      f"# Random search for `{model}` on the validation split",
      "",
      f"Generated by `python -m benchmarks.tune --model {model} --trials {settings['trials']}"
      f" --space {settings.get('space_kind', 'all')}` on "
      f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from configs/"
      f"{settings.get('config', '?')}: world of "
      f"{settings['impressions']} impressions (seed {truth_benchmark.WORLD_SEED}), at most "
      f"{settings['epochs']} epochs with early stopping, search seed {settings['search_seed']}. "
      f"Wall time {settings['seconds'] / 60:.1f} min, {settings['cpus']} CPUs, load average "
      f"{settings['load_before']} before and {settings['load_after']} after.",
      "",
      "Objective (lower is better): validation ctr_logloss + ctcvr_logloss. The eval-day AUCs "
      "are shown for the record only; they play no part in the choice.",
      "",
      "| trial | objective | best epoch | eval CTR AUC | eval CTCVR AUC | settings |",
      "|---|---|---|---|---|---|",
  ]
  for row in sorted(rows, key=lambda r: (math.isnan(r["objective"]), r["objective"])):
    lines.append(f"| {row['trial']} | {row['objective']:.5f} | {row['best_epoch']} | "
                 f"{row['eval_ctr_auc']:.4f} | {row['eval_ctcvr_auc']:.4f} | "
                 f"`{json.dumps(row['settings'], sort_keys=True)}` |")
  return "\n".join(lines) + "\n"


def write_tuned_config(model: str, settings: Dict[str, Any], source: str) -> str:
  """configs/tuned/<model>.yaml: `base: ../<model's own config>` and the tuned settings,
  merged into the file's earlier ones (a second-stage search of the model's own knobs
  keeps the shared settings of the first); `source` names the results page."""
  import yaml  # pylint: disable=g-import-not-at-top
  os.makedirs(TUNED_DIR, exist_ok=True)
  path = os.path.join(TUNED_DIR, f"{model}.yaml")
  document: Dict[str, Any] = {}
  sources = []
  if os.path.exists(path):
    with open(path) as f:
      text = f.read()
    document = yaml.safe_load(text) or {}
    sources = [line[2:] for line in text.splitlines() if line.startswith("# from ")]
  document = config_lib.merge_dicts(document, to_overrides(settings))
  document["base"] = f"../{truth_benchmark.DEFAULTS[model]}"
  sources = sorted(set(sources) | {f"from {source}"})
  with open(path, "w") as f:
    f.write("# Tuned by benchmarks.tune (random search on the validation split):\n")
    f.write("".join(f"# {line}\n" for line in sources))
    yaml.safe_dump(document, f, default_flow_style=None, sort_keys=True)
  return path


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--model", required=True, help=f"One of {list(truth_benchmark.MODELS)}.")
  parser.add_argument("--trials", type=int, default=12)
  parser.add_argument("--impressions", type=int, default=100_000)
  parser.add_argument("--epochs", type=int, default=4)
  parser.add_argument("--search_seed", type=int, default=0)
  parser.add_argument("--parallel", type=int, default=2)
  parser.add_argument("--work_dir", default="/tmp/cvr_tune")
  parser.add_argument("--results_dir", default=RESULTS_DIR)
  parser.add_argument("--write_config", action="store_true",
                      help="Write the best settings to configs/tuned/<model>.yaml.")
  parser.add_argument("--space", choices=("all", "model"), default="all",
                      help="all: SPACE plus the model's own knobs; model: only the model's "
                      "knobs (MODEL_SPACE), on top of its current (tuned) config.")
  parser.add_argument("--share_with", default="",
                      help="With --write_config: also write the best shared (SPACE) settings "
                      "into configs/tuned/<m>.yaml of these comma-separated models.")
  args = parser.parse_args(argv)
  if args.model not in truth_benchmark.MODELS:
    parser.error(f"unknown model {args.model!r}; known: {list(truth_benchmark.MODELS)}")
  share_with = [m for m in args.share_with.split(",") if m]
  unknown = sorted(set(share_with) - set(truth_benchmark.DEFAULTS))
  if unknown:
    parser.error(f"--share_with: unknown model(s) {unknown}")
  if share_with and not args.write_config:
    parser.error("--share_with writes configs: it needs --write_config")
  settings = dict(trials=args.trials, impressions=args.impressions, epochs=args.epochs,
                  search_seed=args.search_seed, cpus=os.cpu_count(),
                  load_before=truth_benchmark._load())  # pylint: disable=protected-access
  start = time.time()
  world_dir = os.path.join(args.work_dir, f"world_{args.impressions}")
  world = truth_benchmark.make_world(world_dir, args.impressions)
  rng = np.random.default_rng(args.search_seed)
  if args.space == "model":
    if args.model not in MODEL_SPACE:
      parser.error(f"{args.model} has no MODEL_SPACE entry")
    space = dict(MODEL_SPACE[args.model])
  else:
    space = dict(SPACE, **MODEL_SPACE.get(args.model, {}))
  settings.update(space_kind=args.space)
  trials = {f"{args.model}_trial{k:02d}": sample(space, rng) for k in range(args.trials)}
  config_file = truth_benchmark.MODELS[args.model]  # the tuned one, when there is one
  settings.update(config=config_file)
  run_name = args.model + ("_model" if args.space == "model" else "")
  results_name = f"tune_{run_name}"
  reports = truth_benchmark.run_all(
      os.path.join(args.work_dir, run_name), world, list(trials), seeds=1,
      epochs=args.epochs, batch_size=None, parallel=args.parallel,  # trial's / config's
      overrides={name: to_overrides(trial) for name, trial in trials.items()},
      configs={name: config_file for name in trials})
  rows = []
  for name, trial in trials.items():
    report = reports[name][0]
    rows.append({"trial": name, "settings": trial, "objective": objective(report),
                 "best_epoch": report.get("training", {}).get("best_epoch"),
                 "eval_ctr_auc": report["tasks"]["ctr"]["auc"],
                 "eval_ctcvr_auc": report["tasks"]["ctcvr"]["auc"]})
  settings.update(seconds=time.time() - start,
                  load_after=truth_benchmark._load())  # pylint: disable=protected-access
  best = min((r for r in rows if not math.isnan(r["objective"])),
             key=lambda r: r["objective"], default=None)
  os.makedirs(args.results_dir, exist_ok=True)
  with open(os.path.join(args.results_dir, f"{results_name}.json"), "w") as f:
    json.dump({"settings": settings, "space": {k: [v[0], list(v[1])] for k, v in space.items()},
               "trials": rows, "best": best}, f, indent=1, default=list)
  markdown = render_markdown(args.model, rows, settings)
  with open(os.path.join(args.results_dir, f"{results_name}.md"), "w") as f:
    f.write(markdown)
  print(markdown)
  if best is None:
    raise SystemExit("no trial has a validation objective: does the config set "
                     "train.validation_from?")
  if args.write_config:
    source = f"benchmarks/results/{results_name}.md"
    print("wrote", write_tuned_config(args.model, best["settings"], source))
    shared = {k: v for k, v in best["settings"].items() if k in SPACE}
    for other in share_with:
      print("wrote", write_tuned_config(other, shared, source))


if __name__ == "__main__":
  main()
