"""Shared pieces of the benchmarks: the machine description, data set-up, result files.

Flow position: beside the pipeline, not in it. Each benchmark module builds (or reuses)
simulated data with the real CLIs (pipeline.simulate -> pipeline.preprocess), measures
one stage, and writes a markdown table to benchmarks/results/<name>.md headed by the
machine it ran on (cores, CPU model, memory, TF / Beam versions) and the date.
"""

import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from absl import logging

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(REPO_ROOT, "benchmarks", "results")
DEFAULT_WORKDIR = os.path.join("/tmp", "cvr_benchmarks")
ESMM_CONFIG = os.path.join(REPO_ROOT, "configs", "esmm.yaml")


def cpu_model() -> str:
  """The CPU model name from /proc/cpuinfo ("unknown" elsewhere)."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


def memory_gib() -> float:
  """Total memory in GiB from /proc/meminfo (NaN elsewhere)."""
  try:
    with open("/proc/meminfo") as f:
      for line in f:
        if line.startswith("MemTotal:"):
          return int(line.split()[1]) / 2**20
  except OSError:
    pass
  return float("nan")


def machine_description() -> Dict[str, str]:
  """Facts a reader needs to compare numbers across machines."""
  import apache_beam  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return {
      "date (UTC)": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M"),
      "cores (nproc)": str(os.cpu_count()),
      "CPU": cpu_model(),
      "memory": f"{memory_gib():.1f} GiB",
      "python": platform.python_version(),
      "tensorflow": tf.__version__,
      "apache-beam": apache_beam.__version__,
      "GPU": "none" if not tf.config.list_physical_devices("GPU") else "yes",
      # Above the core count, other processes shared the CPU: compare wall rates with care.
      "load average 1/5/15 min (at write)": " / ".join(f"{x:.1f}" for x in os.getloadavg()),
  }


def load_average() -> str:
  """The 1, 5 and 15 minute load averages, for a results header ("0.84 / 1.02 / 1.10")."""
  return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
  """A GitHub markdown table; floats keep the precision they were formatted with."""
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(str(cell) for cell in row) + " |")
  return "\n".join(lines)


def write_result(name: str, title: str, body: str, results_dir: str = RESULTS_DIR,
                 command: Optional[str] = None) -> str:
  """Writes results_dir/<name>.md (machine description, command, body); returns the path."""
  machine = machine_description()
  parts = [f"# {title}", ""]
  parts.append(markdown_table(["machine", ""], list(machine.items())))
  if command:
    parts += ["", f"Command: `{command}`"]
  parts += ["", body.rstrip(), ""]
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, f"{name}.md")
  with open(path, "w") as f:
    f.write("\n".join(parts))
  logging.info("Wrote %s", path)
  return path


def run_module(module: str, args: Sequence[str], log_path: Optional[str] = None,
               extra_env: Optional[Dict[str, str]] = None) -> float:
  """Runs `python -m module args` from the repo root; returns its wall seconds.

  Raises:
    RuntimeError: the command failed (with the tail of its output).
  """
  env = dict(os.environ, PYTHONPATH=REPO_ROOT, **(extra_env or {}))
  start = time.time()
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT, env=env,
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        check=False)
  seconds = time.time() - start
  if log_path:
    with open(log_path, "w") as f:
      f.write(proc.stdout)
  if proc.returncode != 0:
    raise RuntimeError(f"python -m {module} {' '.join(args)} failed "
                       f"({proc.returncode}):\n{proc.stdout[-3000:]}")
  return seconds


RAW_EXTENSIONS = {"jsonl": "jsonl.gz", "parquet": "parquet"}  # pipeline.simulate --format


def raw_dir(workdir: str, impressions: int, seed: int, fmt: str = "jsonl") -> str:
  suffix = "" if fmt == "jsonl" else f"_{fmt}"
  return os.path.join(workdir, f"raw_{impressions}_s{seed}{suffix}")


def ensure_raw(workdir: str, impressions: int, seed: int = 7, fmt: str = "jsonl") -> str:
  """Simulated raw logs of `impressions` impressions in `fmt` (pipeline.simulate
  --format; made once, then reused)."""
  out = raw_dir(workdir, impressions, seed, fmt)
  if not os.path.exists(os.path.join(out, "world.json")):
    logging.info("Simulating %d impressions (%s) -> %s", impressions, fmt, out)
    run_module("pipeline.simulate", ["--output", out, "--impressions", str(impressions),
                                     "--seed", str(seed), "--format", fmt])
  return out


def raw_files(raw: str, source: str, fmt: str = "jsonl") -> str:
  """Glob of one source's files ("impressions" or "events") in a raw directory."""
  return os.path.join(raw, source, f"*.{RAW_EXTENSIONS[fmt]}")


def preprocess_args(raw: str, output: str, fmt: str = "jsonl") -> List[str]:
  return ["--impressions", raw_files(raw, "impressions", fmt),
          "--events", raw_files(raw, "events", fmt), "--output", output,
          "--config", ESMM_CONFIG]


def checked_data_dir(data_dir: str) -> str:
  """`data_dir` if its success marker verifies (features/success_marker.py).

  Raises:
    success_marker.IncompleteOutputError: the preprocess job that wrote it failed, is
      still running, or its files changed since.
  """
  from features import success_marker  # pylint: disable=g-import-not-at-top
  success_marker.check_success_marker(data_dir)
  return data_dir


def ensure_data(workdir: str, impressions: int, seed: int = 7, in_process: bool = False) -> str:
  """TFRecords of `impressions` simulated impressions (pipeline.preprocess, made once).

  A directory is reused only when its success marker verifies; an incomplete one (a
  failed or interrupted run) is deleted and made again.

  in_process: run what pipeline.preprocess's main runs (`pipeline.preprocess.run`) in this
    process instead of the CLI in a subprocess (as `ensure_model`'s in_process).
  """
  from features import success_marker  # pylint: disable=g-import-not-at-top
  out = os.path.join(workdir, f"data_{impressions}_s{seed}")
  try:
    return checked_data_dir(out)
  except success_marker.IncompleteOutputError as e:
    if os.path.exists(out):
      logging.info("Remaking %s: %s", out, e)
      shutil.rmtree(out)
  raw = ensure_raw(workdir, impressions, seed)
  logging.info("Preprocessing %s -> %s", raw, out)
  if in_process:
    from pipeline import preprocess  # pylint: disable=g-import-not-at-top
    preprocess.run(preprocess_args(raw, out))
  else:
    run_module("pipeline.preprocess", preprocess_args(raw, out))
  return checked_data_dir(out)


def ensure_model(workdir: str, data_dir: str, epochs: int = 1, in_process: bool = False) -> str:
  """An exported ESMM SavedModel trained on `data_dir` (pipeline.train, made once).

  in_process: train with what pipeline.train's main calls (trainer.train_and_export, the
    default strategy) in this process instead of the CLI in a subprocess: for a caller
    that already holds TensorFlow (the tests), which saves the 4-5 s start-up.
  """
  from training import export as export_lib  # pylint: disable=g-import-not-at-top
  model_dir = os.path.join(workdir, "model_" + os.path.basename(data_dir))
  export_base = os.path.join(model_dir, "export")
  if not os.path.isdir(export_base) or not os.listdir(export_base):
    logging.info("Training ESMM on %s -> %s", data_dir, model_dir)
    if in_process:
      # pylint: disable=g-import-not-at-top
      from configs import config as config_lib
      from training import trainer
      # pylint: enable=g-import-not-at-top
      config = config_lib.load_config(ESMM_CONFIG, overrides={"train": {"epochs": epochs}})
      trainer.train_and_export(config, data_dir, model_dir)  # checks the success marker
    else:
      run_module("pipeline.train", ["--config", ESMM_CONFIG, "--data", data_dir,
                                    "--model_dir", model_dir, "--epochs", str(epochs)])
  return export_lib.latest_export(export_base)


def arg_parser(doc: str, quick_help: str) -> argparse.ArgumentParser:
  """A benchmark's parser with the shared flags: --quick, --workdir, --results_dir."""
  parser = argparse.ArgumentParser(description=doc.split("\n")[0])
  parser.add_argument("--quick", action="store_true", help=quick_help)
  parser.add_argument("--workdir", default=DEFAULT_WORKDIR,
                      help="Scratch directory (simulated data and models are reused).")
  parser.add_argument("--results_dir", default=RESULTS_DIR, help="Where to write <name>.md.")
  return parser


def run_workers(module: str, argv: Sequence[str], jobs: Sequence[Tuple[str, str]],
                parallel: int) -> None:
  """Runs `python -m MODULE ARGV --worker KEY` for each (KEY, LOG_PATH) of JOBS, PARALLEL
  at a time, each logging to its LOG_PATH (appended).

  Raises:
    RuntimeError: a worker failed (with its log's tail).
  """
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  waiting, running = list(jobs), []
  start = time.perf_counter()
  while waiting or running:
    while waiting and len(running) < parallel:
      key, log_path = waiting.pop(0)
      os.makedirs(os.path.dirname(log_path), exist_ok=True)
      log = open(log_path, "a")  # pylint: disable=consider-using-with
      process = subprocess.Popen([sys.executable, "-m", module, *argv, "--worker", key],
                                 cwd=REPO_ROOT, env=env, stdout=log,
                                 stderr=subprocess.STDOUT)
      running.append((process, log, log_path, key))
      logging.info("worker %s started (log %s)", key, log_path)
    time.sleep(2.0)
    for entry in list(running):
      process, log, log_path, key = entry
      if process.poll() is None:
        continue
      running.remove(entry)
      log.close()
      if process.returncode != 0:
        with open(log_path) as f:
          tail = f.read()[-3000:]
        raise RuntimeError(f"worker {key} failed ({process.returncode}); {log_path}:\n"
                           f"{tail}")
      logging.info("worker %s done; %d of %d left, elapsed %.0f s", key,
                   len(waiting) + len(running), len(jobs), time.perf_counter() - start)


def refuse_unknown(settings: Dict[str, Any], known: Dict[str, Sequence[str]]) -> None:
  """SystemExit naming the values of settings[kind] not in known[kind], for each kind."""
  for kind, names in known.items():
    unknown = sorted(set(settings[kind]) - set(names))
    if unknown:
      raise SystemExit(f"error: unknown {kind} {unknown}; known: {list(names)}")


def percentile_ms(seconds: Sequence[float], q: float) -> float:
  import numpy as np  # pylint: disable=g-import-not-at-top
  return float(np.percentile(np.asarray(seconds) * 1000.0, q))
