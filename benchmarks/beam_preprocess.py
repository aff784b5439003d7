"""Beam preprocess throughput on DirectRunner (multi_processing) with 1 and 2 workers.

  python -m benchmarks.beam_preprocess [--quick] [--impressions N] [--workers 1,2]

Flow position: raw logs (pipeline.simulate) -> **pipeline.preprocess** (the real CLI, in a
subprocess) -> TFRecords. Reported per worker count: input records (impressions +
events) per second of pipeline time (the job's own "Pipeline finished in" log line; the
post-run checks and TFDV schema step are outside it) and of wall time (process start to
exit), and peak memory: the largest summed RSS of the process tree (the job and its
worker processes), polled with psutil every POLL_SECONDS. A run that exits 0 must leave a
verifiable OUTPUT/_SUCCESS.json (features/success_marker.py).

  python -m benchmarks.beam_preprocess --stages [--impressions 200000]

measures instead, in one process and without a runner, each stage of the columnar engine
(transforms/columnar, issue 12) against the row job's code for the same stage on the same
simulated JSON Lines: read+parse+validate, join+label, split+encode (records/s of input
records of the stage), and the pyarrow floor (the bare C++ JSON reader on the same files).
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


def run_preprocess(raw: str, output: str, workers: int, log_path: str,
                   engine: str = "row") -> Dict[str, Any]:
  """Runs pipeline.preprocess once; returns its seconds, counts and peak memory."""
  if os.path.exists(output):
    shutil.rmtree(output)
  args = common.preprocess_args(raw, output) + [
      "--direct_num_workers", str(workers), "--direct_running_mode", "multi_processing",
      "--engine", engine]
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
        keep_output: bool = False, engine: str = "row") -> List[Dict[str, Any]]:
  """Simulates `impressions` once, preprocesses per worker count, writes beam_preprocess.md."""
  raw = common.ensure_raw(workdir, impressions)
  rows = []
  for count in workers:
    output = os.path.join(workdir, f"beam_bench_{impressions}_w{count}")
    log_path = output + ".log"
    logging.info("pipeline.preprocess on %d impressions, %d worker(s)", impressions, count)
    rows.append(run_preprocess(raw, output, count, log_path, engine))
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


def _timed(function):
  start = time.perf_counter()
  result = function()
  return result, time.perf_counter() - start


class _File:
  """The slice of fileio.ReadableFile that the row readers use."""

  def __init__(self, path: str):
    import types  # pylint: disable=g-import-not-at-top
    self.metadata = types.SimpleNamespace(path=path)

  def open(self, compression_type=None, mime_type=None):  # pylint: disable=unused-argument
    import gzip  # pylint: disable=g-import-not-at-top
    return gzip.open(self.metadata.path, "rb")


def stage_throughput(raw: str, num_buckets: int = 64) -> List[Dict[str, Any]]:
  """Rows of (stage, engine, records, seconds, records/s) on the JSON Lines under raw."""
  import glob  # pylint: disable=g-import-not-at-top
  import gzip  # pylint: disable=g-import-not-at-top
  import io  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.json as pa_json  # pylint: disable=g-import-not-at-top
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from configs import config as config_lib  # pylint: disable=g-import-not-at-top
  from features import spec as spec_lib  # pylint: disable=g-import-not-at-top
  from transforms import encode, label, parse, read  # pylint: disable=g-import-not-at-top
  from transforms.columnar import encode as cencode  # pylint: disable=g-import-not-at-top
  from transforms.columnar import label as clabel  # pylint: disable=g-import-not-at-top
  from transforms.columnar import parse as cparse  # pylint: disable=g-import-not-at-top

  config = config_lib.load_config(common.ESMM_CONFIG)
  spec = spec_lib.load_feature_spec(config.feature_spec_path)
  data = config.data
  event_types = label.EventLabeler(data).event_types
  files = {source: sorted(glob.glob(os.path.join(raw, source, "*.jsonl.gz")))
           for source in ("impressions", "events")}
  rows = []

  def add(stage, engine, records, seconds):
    rows.append({"stage": stage, "engine": engine, "records": records, "seconds": seconds,
                 "records_per_s": records / seconds})
    logging.info("%s", rows[-1])

  def main_outputs(outputs):
    return [o for o in outputs if not isinstance(o, beam.pvalue.TaggedOutput)]

  # Read + parse + validate.
  def row_parse(source, fn):
    fn.setup() if hasattr(fn, "setup") else None
    fn.start_bundle()
    return [out for path in files[source] for raw_record in read.read_json_lines(_File(path))
            for out in main_outputs(fn.process(raw_record))]

  def columnar_parse(source, parser):
    batches = []
    for path in files[source]:
      with gzip.open(path, "rb") as handle:
        for lines, texts, _ in cparse.json_line_batches(handle):
          batches.append(parser.parse_json_lines(path, lines, texts)[0])
    return pa.Table.from_batches(batches, schema=parser.schema)

  def floor(source):
    total = 0
    for path in files[source]:
      with gzip.open(path, "rb") as handle:
        total += pa_json.read_json(io.BytesIO(handle.read())).num_rows
    return total

  row_imps, t_row_imps = _timed(lambda: row_parse(
      "impressions", parse._ParseImpressionFn(spec)))  # pylint: disable=protected-access
  row_events, t_row_events = _timed(lambda: row_parse(
      "events", parse._ParseEventFn(event_types)))  # pylint: disable=protected-access
  imps, t_imps = _timed(lambda: columnar_parse("impressions", cparse.ImpressionParser(spec)))
  events, t_events = _timed(lambda: columnar_parse("events", cparse.EventParser(event_types)))
  floor_records, t_floor = _timed(lambda: floor("impressions") + floor("events"))
  parsed_records = len(row_imps) + len(row_events)
  assert (imps.num_rows, events.num_rows) == (len(row_imps), len(row_events))
  add("read+parse", "row", parsed_records, t_row_imps + t_row_events)
  add("read+parse", "columnar", parsed_records, t_imps + t_events)
  add("read+parse", "pyarrow floor (read_json only)", floor_records, t_floor)

  # Join + label (the shuffle itself is the runner's: not measured here).
  def row_join():
    groups = {}
    for imp in row_imps:
      groups.setdefault(imp["impression_id"], ([], []))[0].append(imp)
    for event in row_events:
      groups.setdefault(event["impression_id"], ([], []))[1].append(event)
    fn = label._LabelFn(data)  # pylint: disable=protected-access
    fn.setup()
    return [out for key, (i, e) in groups.items()
            for out in main_outputs(fn.process((key, {"impressions": i, "events": e})))]

  def columnar_join():
    labeler = clabel.BucketLabeler(data, imps.schema)
    by_bucket = {}
    for source, table in (("i", imps), ("e", events)):
      for batch in table.to_batches():
        for bucket, part in clabel.split_by_bucket(batch, num_buckets):
          by_bucket.setdefault(bucket, {"i": [], "e": []})[source].append(part)
    out = []
    for parts in by_bucket.values():
      out.append(labeler.join_and_label(
          pa.Table.from_batches(parts["i"], schema=imps.schema),
          pa.Table.from_batches(parts["e"], schema=events.schema))[0])
    return out

  row_labelled, t_row_join = _timed(row_join)
  labelled, t_join = _timed(columnar_join)
  assert sum(b.num_rows for b in labelled) == len(row_labelled)
  add("join+label", "row", parsed_records, t_row_join)
  add("join+label", "columnar", parsed_records, t_join)

  # Split + encode.
  def row_encode():
    fn = encode._EncodeFn(spec, data.label_names, "all")  # pylint: disable=protected-access
    fn.setup()
    return [out for record in row_labelled for out in fn.process(record)]

  def columnar_encode():
    encoder = cencode.BatchEncoder(spec, data.label_names)
    return [example for batch in labelled
            for part in cencode.split_batch(batch, data.eval_from_timestamp).values()
            for example in encoder.encode(part)[0]]

  row_examples, t_row_encode = _timed(row_encode)
  examples, t_encode = _timed(columnar_encode)
  assert sorted(examples) == sorted(row_examples)
  add("split+encode", "row", len(row_labelled), t_row_encode)
  add("split+encode", "columnar (row codec per row)", len(row_labelled), t_encode)
  return rows


def main(argv=None):
  parser = common.arg_parser(__doc__, "100k impressions (default 1M).")
  parser.add_argument("--impressions", type=int, default=None, help="Simulated impressions.")
  parser.add_argument("--workers", default="1,2", help="Comma-separated worker counts.")
  parser.add_argument("--engine", default="row", choices=("row", "columnar"),
                      help="pipeline.preprocess --engine (the columnar one is issue 12's).")
  parser.add_argument("--stages", action="store_true",
                      help="Per-stage row vs columnar throughput in one process (no runner, "
                           "no results file); default 200k impressions.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  if args.stages:
    raw = common.ensure_raw(args.workdir, args.impressions or 200_000)
    table = common.markdown_table(
        ["stage", "engine", "records", "seconds", "records/s"],
        [[r["stage"], r["engine"], f"{r['records']:,}", f"{r['seconds']:.2f}",
          f"{r['records_per_s']:,.0f}"] for r in stage_throughput(raw)])
    print(table)
    return
  impressions = args.impressions or (100_000 if args.quick else 1_000_000)
  run(impressions, [int(w) for w in args.workers.split(",")], args.workdir, args.results_dir,
      command="python -m benchmarks.beam_preprocess" + (" --quick" if args.quick else "")
      + (f" --engine {args.engine}" if args.engine != "row" else ""), engine=args.engine)


if __name__ == "__main__":
  main()
