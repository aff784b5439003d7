"""Beam preprocess throughput on DirectRunner (multi_processing) with 1 and 2 workers.

  python -m benchmarks.beam_preprocess [--quick] [--impressions N] [--workers 1,2]

Flow position: raw logs (pipeline.simulate) -> **pipeline.preprocess** (the real CLI, in a
subprocess) -> TFRecords. Reported per worker count: input records (impressions +
events) per second of pipeline time (the job's own "Pipeline finished in" log line; the
post-run checks and TFDV schema step are outside it) and of wall time (process start to
exit), and peak memory: the largest summed RSS of the process tree (the job and its
worker processes), polled with psutil every POLL_SECONDS. A run that exits 0 must leave a
verifiable OUTPUT/_SUCCESS.json (features/success_marker.py).
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top
import psutil

from benchmarks import common

NAME = "beam_preprocess"
POLL_SECONDS = 0.5
PIPELINE_SECONDS = re.compile(r"Pipeline finished in ([0-9.]+) s")


def _tree_rss(process: psutil.Process) -> int:
  """Summed resident memory (bytes) of a process and all its descendants."""
  total = 0
  for member in [process] + process.children(recursive=True):
    try:
      total += member.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  return total


def run_preprocess(raw: str, output: str, workers: int, log_path: str) -> Dict[str, Any]:
  """Runs pipeline.preprocess once; returns its seconds, counts and peak memory."""
  if os.path.exists(output):
    shutil.rmtree(output)
  args = common.preprocess_args(raw, output) + [
      "--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing"]
  env = dict(os.environ, PYTHONPATH=common.REPO_ROOT)
  start = time.time()
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, "-m", "pipeline.preprocess", *args],
                            cwd=common.REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    watched = psutil.Process(proc.pid)
    peak = 0
    while proc.poll() is None:
      try:
        peak = max(peak, _tree_rss(watched))
      except psutil.NoSuchProcess:
        break
      time.sleep(POLL_SECONDS)
  wall = time.time() - start
  with open(log_path) as f:
    text = f.read()
  counts_path = os.path.join(output, "counts.json")
  if proc.returncode != 0 and not os.path.exists(counts_path):
    raise RuntimeError(f"pipeline.preprocess failed ({proc.returncode}), see {log_path}:\n"
                       f"{text[-3000:]}")
  match = PIPELINE_SECONDS.search(text)
  pipeline_seconds = float(match.group(1)) if match else wall
  with open(counts_path) as f:
    counts = json.load(f)
  if proc.returncode == 0:  # A run that exits 0 must have left a verifiable marker.
    common.checked_data_dir(output)
  # A run that finished but whose accounting check failed (records lost inside the
  # runner) is a result too: it is reported, with the check's message, not hidden.
  failure = next((line.split("failed: ", 1)[-1] for line in text.splitlines()
                  if line.startswith("pipeline.preprocess failed")), None)
  return row(workers, counts, pipeline_seconds, wall, peak / 2**30,
             failure if proc.returncode != 0 else None)


def row(workers: int, counts: Dict[str, Any], pipeline_seconds: float, wall_seconds: float,
        peak_rss_gib: float, failure: str = None) -> Dict[str, Any]:
  """One table row from a run's counts.json, its times and peak memory."""
  records = counts["impressions"]["read"] + counts["events"]["read"]
  return {"workers": workers, "impressions": counts["impressions"]["read"],
          "events": counts["events"]["read"], "records": records,
          "pipeline_seconds": pipeline_seconds, "wall_seconds": wall_seconds,
          "records_per_s": records / pipeline_seconds,
          "wall_records_per_s": records / wall_seconds if wall_seconds else None,
          "peak_rss_gib": peak_rss_gib,
          "failure": failure}


def run(impressions: int, workers: Sequence[int] = (1, 2), workdir: str = common.DEFAULT_WORKDIR,
        results_dir: str = common.RESULTS_DIR, command: str = None,
        keep_output: bool = False) -> List[Dict[str, Any]]:
  """Simulates `impressions` once, preprocesses per worker count, writes beam_preprocess.md."""
  raw = common.ensure_raw(workdir, impressions)
  rows = []
  for count in workers:
    output = os.path.join(workdir, f"beam_bench_{impressions}_w{count}")
    log_path = output + ".log"
    logging.info("pipeline.preprocess on %d impressions, %d worker(s)", impressions, count)
    rows.append(run_preprocess(raw, output, count, log_path))
    logging.info("%s", rows[-1])
    if not keep_output:
      shutil.rmtree(output, ignore_errors=True)
  write_table(rows, impressions, results_dir, command)
  return rows


def _number(value, pattern: str) -> str:
  return "not recorded" if value is None else pattern.format(value)


def write_table(rows: List[Dict[str, Any]], impressions: int, results_dir: str,
                command: str) -> None:
  """Writes (and prints) beam_preprocess.md from the rows of `run`."""
  base = rows[0]["records_per_s"]
  table = common.markdown_table(
      ["workers", "impressions", "events", "pipeline s", "records/s (pipeline)",
       "wall s", "records/s (wall)", "speed-up", "peak RSS (tree)", "accounting"],
      [[r["workers"], f"{r['impressions']:,}", f"{r['events']:,}",
        f"{r['pipeline_seconds']:.1f}", f"{r['records_per_s']:,.0f}",
        _number(r["wall_seconds"], "{:.1f}"), _number(r["wall_records_per_s"], "{:,.0f}"),
        f"{r['records_per_s'] / base:.2f}x", _number(r["peak_rss_gib"], "{:.2f} GiB"),
        "FAILED (see below)" if r.get("failure") else "every record accounted for"]
       for r in rows])
  failures = "".join(f"\n\n**{r['workers']} worker(s): the job's accounting check failed** "
                     f"(exit 1): {r['failure']}" for r in rows if r.get("failure"))
  body = (f"`python -m pipeline.preprocess` (configs/esmm.yaml: parse, join, label, split, "
          f"transform analysis, TFRecord encode, TFDV statistics) on DirectRunner with "
          f"`--direct_running_mode multi_processing --direct_num_workers N` (with "
          f"transforms/beam_compat.py's fix for Beam's data-plane race, docs/SCALING.md "
          f"2.1), "
          f"{impressions:,} simulated impressions (pipeline.simulate --seed 7). "
          f"Pipeline time excludes interpreter start-up and the post-run checks/schema; "
          f"wall time includes them.\n\n{table}{failures}")
  common.write_result(NAME, "Beam preprocess (DirectRunner)", body, results_dir, command)
  print(body)


def main(argv=None):
  parser = common.arg_parser(__doc__, "100k impressions (default 1M).")
  parser.add_argument("--impressions", type=int, default=None, help="Simulated impressions.")
  parser.add_argument("--workers", default="1,2", help="Comma-separated worker counts.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  impressions = args.impressions or (100_000 if args.quick else 1_000_000)
  run(impressions, [int(w) for w in args.workers.split(",")], args.workdir, args.results_dir,
      command="python -m benchmarks.beam_preprocess" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
  main()
