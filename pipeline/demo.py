"""Entry point of `make demo`: the whole flow on a simulated world, with a summary table.

  python -m pipeline.demo --workdir runs/demo [--impressions 200000] [--seed 7]

Steps, each the same command a user would type (so the demo also documents them):
  1. pipeline.simulate    raw impression/event logs + ground truth   -> WORKDIR/raw
  2. pipeline.preprocess  Beam: join, label, split, TFRecords, TFDV   -> WORKDIR/data
  3. pipeline.train       ESMM and the naive click-space baseline     -> WORKDIR/models/<name>
  4. pipeline.evaluate    exact metrics and gaps to the Bayes optimum -> WORKDIR/metrics/<name>.json
  5. pipeline.predict     score a few raw records with the SavedModel -> WORKDIR/scored.jsonl
"""

import gzip
import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags
from absl import logging

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Directory for every artifact of the demo.")
flags.DEFINE_integer("impressions", 200_000, "Simulated impressions.")
flags.DEFINE_integer("seed", 7, "Seed of the simulated world and of training.")
flags.DEFINE_float("corrupt_fraction", 0.001, "Share of corrupted log lines, to show the "
                   "dead-letter accounting.")
flags.DEFINE_list("models", ["esmm", "naive"], "Configs (configs/<name>.yaml) to train.")
flags.DEFINE_integer("beam_workers", 2, "pipeline.preprocess --local_workers: DirectRunner "
                     "worker processes (0 = one per core).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(step: str, module: str, *args: str) -> None:
  command = [sys.executable, "-m", module, *args]
  logging.info("[%s] %s", step, " ".join(command))
  start = time.time()
  subprocess.run(command, check=True, cwd=REPO)
  logging.info("[%s] done in %.1f s", step, time.time() - start)


def _sample_records(raw_dir: str, count: int = 5) -> list:
  impressions = os.path.join(raw_dir, "impressions")
  first = sorted(os.listdir(impressions))[0]
  records = []
  with gzip.open(os.path.join(impressions, first), "rt") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
      if len(records) == count:
        break
  return records


def _fmt(value, digits=4):
  return "-" if value is None else f"{value:.{digits}f}"


def summary_table(metrics_by_model: dict) -> str:
  """A table of AUCs and Bayes gaps per model and task."""
  header = (f"{'model':8} {'task':6} {'rows':>6} {'pos':>5} {'AUC':>7} {'Bayes':>7} "
            f"{'gap':>7} {'calib':>6}")
  lines = [header, "-" * len(header)]
  for model, report in metrics_by_model.items():
    for task in ("ctr", "cvr", "ctcvr"):
      entry = report["tasks"].get(task)
      if not entry:
        continue
      truth = entry.get("truth") or {}
      lines.append(f"{model:8} {task:6} {entry['n']:>6} {entry['positives']:>5} "
                   f"{_fmt(entry['auc']):>7} {_fmt(truth.get('bayes_auc')):>7} "
                   f"{_fmt(truth.get('auc_gap')):>7} {_fmt(entry['calibration'], 2):>6}")
    entire = (report["tasks"].get("cvr") or {}).get("entire_space") or {}
    if entire:
      lines.append(f"{model:8} {'cvr*':6} {'all':>6} {'-':>5} "
                   f"{_fmt(entire.get('expected_auc')):>7} "
                   f"{_fmt(entire.get('bayes_expected_auc')):>7} "
                   f"{_fmt(entire.get('expected_auc_gap')):>7} "
                   f"{_fmt(entire.get('calibration'), 2):>6}")
  lines.append("cvr: over clicked exposures; cvr*: over the entire space against the true "
               "p(purchase | click, x)")
  return "\n".join(lines)


def main(argv):
  del argv
  start = time.time()
  workdir = os.path.abspath(FLAGS.workdir)
  raw, data = os.path.join(workdir, "raw"), os.path.join(workdir, "data")
  _run("simulate", "pipeline.simulate", f"--output={raw}", f"--impressions={FLAGS.impressions}",
       f"--seed={FLAGS.seed}", f"--corrupt_fraction={FLAGS.corrupt_fraction}", "--overwrite")
  _run("preprocess", "pipeline.preprocess",
       f"--impressions={raw}/impressions/*.jsonl.gz", f"--events={raw}/events/*.jsonl.gz",
       f"--output={data}", "--config=configs/esmm.yaml",
       f"--local_workers={FLAGS.beam_workers}")
  reports = {}
  for name in FLAGS.models:
    model_dir = os.path.join(workdir, "models", name)
    metrics_file = os.path.join(workdir, "metrics", f"{name}.json")
    os.makedirs(os.path.dirname(metrics_file), exist_ok=True)
    _run(f"train {name}", "pipeline.train", f"--config=configs/{name}.yaml", f"--data={data}",
         f"--model_dir={model_dir}", f"--seed={FLAGS.seed}")
    _run(f"evaluate {name}", "pipeline.evaluate", f"--saved_model={model_dir}",
         f"--data={data}", f"--truth={raw}", f"--output={metrics_file}")
    with open(metrics_file) as f:
      reports[name] = json.load(f)

  requests = os.path.join(workdir, "requests.jsonl")
  with open(requests, "w") as f:
    for record in _sample_records(raw):
      f.write(json.dumps(record) + "\n")
  scored = os.path.join(workdir, "scored.jsonl")
  _run("predict", "pipeline.predict",
       f"--saved_model={os.path.join(workdir, 'models', FLAGS.models[0], 'export')}",
       f"--input={requests}", f"--output={scored}")

  with open(os.path.join(data, "counts.json")) as f:
    counts = json.load(f)
  print("\n=== Data (Beam job, counts.json) ===")
  for source in ("impressions", "events"):
    entry = counts[source]
    kept = entry.get("written") or {"attributed": entry.get("attributed")}
    print(f"{source:12} read {entry['read']:>8}  kept {json.dumps(kept)}  "
          f"dead-lettered {json.dumps(entry['dead_letter'])}")
  print("\n=== Eval split (last simulated day) ===")
  print(summary_table(reports))
  print(f"\n=== Raw records scored by the SavedModel ({FLAGS.models[0]}) ===")
  with open(scored) as f:
    for line in f:
      result = json.loads(line)
      record = result["record"]
      predictions = result.get("predictions") or result.get("error")
      print(f"{record.get('impression_id', '?'):14} {record.get('item_category', ''):12} "
            + "  ".join(f"{k}={v:.5f}" for k, v in sorted(predictions.items())))
  print(f"\nDemo finished in {time.time() - start:.0f} s; artifacts under {workdir}")


if __name__ == "__main__":
  app.run(main)
