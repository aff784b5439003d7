"""Entry point of `make demo`: the whole flow on a simulated world, with a summary table.

  python -m pipeline.demo --workdir runs/demo [--impressions 200000] [--seed 7]

Steps, each the same command a user would type (so the demo also documents them):
  1. pipeline.simulate    raw impression/event logs + ground truth   -> WORKDIR/raw
  2. pipeline.preprocess  Beam: join, label, split, TFRecords, TFDV   -> WORKDIR/data
  3. pipeline.train       ESMM and the naive click-space baseline     -> WORKDIR/models/<name>
  4. pipeline.evaluate    exact metrics, gaps to the Bayes optimum, slices, the HTML report
                          -> WORKDIR/metrics/<name>.json, WORKDIR/report/index.html
  5. pipeline.predict     score a few raw records with the SavedModel -> WORKDIR/scored.jsonl

The terminal shows a header per step, its counts and rates, and where its log is: each
step's full output (TensorFlow's and Beam's INFO lines included) goes to
WORKDIR/logs/<step>.log. A failed step prints the end of its log and stops the demo.
"""

import gzip
import json
import os
import subprocess
import sys
import time

from absl import flags

from pipeline import cli

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", "runs/demo", "Directory for every artifact of the demo.")
flags.DEFINE_integer("impressions", 200_000, "Simulated impressions.")
flags.DEFINE_integer("seed", 7, "Seed of the simulated world and of training.")
flags.DEFINE_float("corrupt_fraction", 0.001, "Share of corrupted log lines, to show the "
                   "dead-letter accounting.")
flags.DEFINE_list("models", ["esmm", "naive"], "Configs (configs/<name>.yaml) to train.")
flags.DEFINE_integer("beam_workers", 2, "pipeline.preprocess --local_workers: DirectRunner "
                     "worker processes (0 = one per core).")
flags.DEFINE_bool("report", True, "Write the HTML evaluation report to WORKDIR/report.")
flags.DEFINE_list("slice_by", ["item_category", "device", "position", "new_user"],
                  "pipeline.evaluate --slice_by features of the report.")
flags.DEFINE_integer("epochs", None, "pipeline.train --epochs (default: the config's).")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG_TAIL_LINES = 40
# Children log everything to their files; each silences TensorFlow's C++ start-up lines
# and google.api_core's FutureWarning itself (pipeline/cli.py), unless --verbose.
CHILD_ENV = {"TF_USE_LEGACY_KERAS": "1", "PYTHONHASHSEED": "0"}


class StepFailed(RuntimeError):
  """A demo step exited non-zero; the message names its log."""


def run_step(number: str, step: str, what: str, log_dir: str, module: str, *args: str) -> float:
  """Runs `python -m module args` with its output in LOG_DIR/<step>.log; returns seconds."""
  print(f"\n== [{number}] {step}: {what}", flush=True)
  command = [sys.executable, "-m", module, *args]
  os.makedirs(log_dir, exist_ok=True)
  log_path = os.path.join(log_dir, f"{step.replace(' ', '_')}.log")
  start = time.time()
  with open(log_path, "w") as log:
    log.write("$ " + " ".join(command) + "\n")
    log.flush()
    returncode = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env={**os.environ, **CHILD_ENV}, check=False).returncode
  seconds = time.time() - start
  if returncode != 0:
    with open(log_path) as log:
      tail = log.readlines()[-LOG_TAIL_LINES:]
    print("".join(tail), file=sys.stderr)
    raise StepFailed(f"step {step!r} failed (exit {returncode}) after {seconds:.0f} s; "
                     f"full log: {log_path}")
  print(f"   done in {seconds:.0f} s; log: {log_path}", flush=True)
  return seconds


def _read_json(path: str) -> dict:
  with open(path) as f:
    return json.load(f)


def _percent(value) -> str:
  return "-" if value is None else f"{100 * value:.2f}%"


def simulate_lines(world: dict) -> list:
  """Counts and rates of pipeline.simulate's world.json."""
  sizes, rates, bias = world["sizes"], world["rates"], world["selection_bias"]
  return [f"{sizes['impressions']} impressions, {sizes['users']} users, {sizes['items']} items, "
          f"{sizes['events']} events",
          f"CTR {_percent(rates['ctr'])}, CVR over clicks {_percent(rates['purchase_per_click'])}, "
          f"purchases per exposure {_percent(rates['purchase_per_exposure'])}",
          f"true CVR over clicked vs all exposures: {bias['relative_gap']:+.0%} (selection bias)"]


def preprocess_lines(counts: dict) -> list:
  """Read / kept / dead-lettered per source, and each split's label counts and rates."""
  lines = []
  for source in ("impressions", "events"):
    entry = counts[source]
    kept = entry.get("written") or {"attributed": entry.get("attributed")}
    dead = sum(entry["dead_letter"].values())
    lines.append(f"{source:12} read {entry['read']:>8}  kept {json.dumps(kept)}  "
                 f"dead-lettered {dead} {json.dumps(entry['dead_letter'])}")
  written = counts["impressions"].get("written") or {}
  for split, labels in (counts.get("labels") or {}).items():
    rows = written.get(split) or 0
    rates = ", ".join(f"{name} {count} ({_percent(count / rows) if rows else '-'})"
                      for name, count in labels.items())
    lines.append(f"{split:12} {rows} exposures: {rates}")
  return lines


def train_lines(metrics: dict) -> list:
  """Examples, steps, speed and the eval split's training-time metrics, from metrics.json."""
  evaluation = metrics.get("eval") or {}
  aucs = "  ".join(f"{name} {value:.4f}" for name, value in sorted(evaluation.items())
                   if name.endswith("_auc"))
  return [f"{metrics['train_examples']} train / {metrics['validation_examples']} validation / "
          f"{metrics['eval_examples']} eval examples, {metrics['epochs']} epochs x "
          f"{metrics['steps_per_epoch']} steps, {metrics['examples_per_second']:.0f} "
          f"examples/s",
          f"eval (training-time metrics): {aucs}"]


def _print(lines) -> None:
  for line in lines:
    print(f"   {line}", flush=True)


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


def check_models(models) -> None:
  """A --models name without REPO/configs/<name>.yaml fails now, not after the Beam job."""
  config_dir = os.path.join(REPO, "configs")
  for name in models:
    if not os.path.exists(os.path.join(config_dir, f"{name}.yaml")):
      known = sorted(file[:-len(".yaml")] for file in os.listdir(config_dir)
                     if file.endswith(".yaml") and not file.startswith("base_"))
      raise cli.UserError(f"--models {name}: no {config_dir}/{name}.yaml (known: "
                          f"{', '.join(known)})")


def main(argv):
  del argv
  start = time.time()
  workdir = os.path.abspath(FLAGS.workdir)
  raw, data = os.path.join(workdir, "raw"), os.path.join(workdir, "data")
  logs = os.path.join(workdir, "logs")
  models = list(FLAGS.models)
  check_models(models)
  total = 3 + len(models) + 1
  step = iter(f"{i}/{total}" for i in range(1, total + 1))
  print(f"Demo: {FLAGS.impressions} simulated impressions, models {models}; every artifact "
        f"under {workdir}, full logs under {logs}/")
  try:
    run_step(next(step), "simulate", "raw logs and the true probabilities", logs,
             "pipeline.simulate", f"--output={raw}", f"--impressions={FLAGS.impressions}",
             f"--seed={FLAGS.seed}", f"--corrupt_fraction={FLAGS.corrupt_fraction}",
             "--overwrite")
    _print(simulate_lines(_read_json(os.path.join(raw, "world.json"))))
    run_step(next(step), "preprocess", "Beam job: parse, join, label, split, TFRecords, TFDV",
             logs, "pipeline.preprocess", f"--impressions={raw}/impressions/*.jsonl.gz",
             f"--events={raw}/events/*.jsonl.gz", f"--output={data}",
             "--config=configs/esmm.yaml", f"--local_workers={FLAGS.beam_workers}")
    counts = _read_json(os.path.join(data, "counts.json"))
    _print(preprocess_lines(counts))
    for name in models:
      model_dir = os.path.join(workdir, "models", name)
      extra = [f"--epochs={FLAGS.epochs}"] if FLAGS.epochs else []
      run_step(next(step), f"train {name}", f"configs/{name}.yaml -> {model_dir}", logs,
               "pipeline.train", f"--config=configs/{name}.yaml", f"--data={data}",
               f"--model_dir={model_dir}", f"--seed={FLAGS.seed}", *extra)
      _print(train_lines(_read_json(os.path.join(model_dir, "metrics.json"))))
    metrics_dir = os.path.join(workdir, "metrics")
    report_dir = os.path.join(workdir, "report")
    evaluate_args = [f"--saved_model={name}={os.path.join(workdir, 'models', name)}"
                     for name in models]
    evaluate_args += [f"--data={data}", f"--truth={raw}", f"--output_dir={metrics_dir}"]
    evaluate_args += [f"--slice_by={feature}" for feature in FLAGS.slice_by]
    if FLAGS.report:
      evaluate_args.append(f"--report={report_dir}")
    run_step(next(step), "evaluate", "exact metrics on the eval split against the truth"
             + (", slices, HTML report" if FLAGS.report else ""), logs, "pipeline.evaluate",
             *evaluate_args)
    reports = {name: _read_json(os.path.join(metrics_dir, f"{name}.json")) for name in models}
    first = reports[models[0]]
    _print([f"{first['examples']} eval examples scored per model in "
            + ", ".join(f"{name} {report['seconds']:.0f} s" for name, report in reports.items()),
            f"metrics: {metrics_dir}/<model>.json"]
           + ([f"report:  {os.path.join(report_dir, 'index.html')}"] if FLAGS.report else []))

    requests = os.path.join(workdir, "requests.jsonl")
    with open(requests, "w") as f:
      for record in _sample_records(raw):
        f.write(json.dumps(record) + "\n")
    scored = os.path.join(workdir, "scored.jsonl")
    run_step(next(step), "predict", f"score raw records with the {models[0]} SavedModel", logs,
             "pipeline.predict",
             f"--saved_model={os.path.join(workdir, 'models', models[0], 'export')}",
             f"--input={requests}", f"--output={scored}")
  except StepFailed as error:
    print(f"\nDemo stopped: {error}", file=sys.stderr)
    sys.exit(1)

  print("\n=== Eval split (last simulated day) ===")
  print(summary_table(reports))
  print(f"\n=== Raw records scored by the SavedModel ({models[0]}) ===")
  with open(scored) as f:
    for line in f:
      result = json.loads(line)
      # A refused line is echoed as its (cut) text, not as a record.
      record = result["record"] if isinstance(result["record"], dict) else {}
      if "error" in result:
        scores = f"error: {result['error']['reason']} ({result['error']['field']})"
      else:
        scores = "  ".join(f"{k}={v:.5f}" for k, v in sorted(result["predictions"].items()))
      print(f"{record.get('impression_id', '?'):14} {record.get('item_category', ''):12} "
            + scores)
  print(f"\nDemo finished in {time.time() - start:.0f} s; artifacts under {workdir}")
  print(f"  logs:        {logs}/<step>.log")
  if FLAGS.report:
    print(f"  report:      {os.path.join(report_dir, 'index.html')} (open it in a browser)")
  print(f"  TensorBoard: {os.path.join(REPO, '.venv', 'bin', 'tensorboard')} --logdir "
        f"{os.path.join(workdir, 'models')}")


if __name__ == "__main__":
  cli.run_main(main)
