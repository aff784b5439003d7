"""Beam preprocess throughput against the floor, side by side on the same files.

  python -m benchmarks.beam_preprocess [--quick] [--impressions 1000000,10000000]
      [--workers 1,2] [--multi_worker_max_impressions 1000000] [--formats jsonl,parquet]
      [--name NAME]

Flow position: raw logs (pipeline.simulate) -> **pipeline.preprocess** (the real CLI, in a
subprocess) -> TFRecords. For each --impressions size, on the same simulated files:

  (a) the floor: pyarrow's C++ JSON reader reading and parsing the same gzipped JSON
      Lines files, plus writing as many gzipped TFRecords as the job wrote (the first
      FLOOR_SAMPLE of the job's own Examples, cycled to the same count, so about the same
      bytes: both byte counts are reported), through TensorFlow's C++ TFRecordWriter, in
      this process on one core;
  (b) the job with `--local_workers 1` (one in-memory worker);
  (c) the job with `--local_workers 2` (DirectRunner multi_processing, 2 processes).

Reported per run: input records (impressions + events) per second of pipeline time (the
job's "Pipeline finished in" log line: post-run checks and schema inference excluded)
and per worker process, the ratio of the job's pipeline time to the floor's time, peak
memory (the largest summed RSS of the process tree, polled every POLL_SECONDS), and the
accounting check (counts.json identities; a run that exits 0 must leave a verifiable
OUTPUT/_SUCCESS.json, features/success_marker.py). The results file's header records the
load average at the start and the end of the benchmark: above the core count, other
work shared the CPU.

  python -m benchmarks.beam_preprocess --stages [--impressions 200000]

measures instead, in one process and without a runner, each stage of the job
(transforms/, issue 12) on the same simulated JSON Lines: read+parse+validate,
join+label, split+encode (records/s of input records of the stage), and the pyarrow
floor (the bare C++ JSON reader on the same files).
"""

import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Union

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top
import psutil

from benchmarks import common

NAME = "beam_preprocess"
POLL_SECONDS = 0.5
PIPELINE_SECONDS = re.compile(r"Pipeline finished in ([0-9.]+) s")
MULTI_WORKER_MAX_IMPRESSIONS = 1_000_000  # Larger sizes run with 1 worker only.
FLOOR_SAMPLE = 20_000  # Examples of the job's output cycled by the floor's writer.


def _tree_rss(process: psutil.Process) -> int:
  """Summed resident memory (bytes) of a process and all its descendants."""
  total = 0
  for member in [process] + process.children(recursive=True):
    try:
      total += member.memory_info().rss
    except (psutil.NoSuchProcess, psutil.AccessDenied):
      pass
  return total


def run_job(args: Sequence[str], output: str, log_path: str) -> Dict[str, Any]:
  """Runs `python -m pipeline.preprocess args` (writing `output`), polling its memory.

  Returns:
    {"counts": counts.json, "pipeline_seconds", "wall_seconds", "peak_rss_gib",
     "failure": the accounting check's message, or None}.
  """
  if os.path.exists(output):
    shutil.rmtree(output)
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
  with open(counts_path) as f:
    counts = json.load(f)
  if proc.returncode == 0:  # A run that exits 0 must have left a verifiable marker.
    common.checked_data_dir(output)
  # A run that finished but whose accounting check failed (records lost inside the
  # runner) is a result too: it is reported, with the check's message, not hidden.
  failure = next((line.split("failed: ", 1)[-1] for line in text.splitlines()
                  if line.startswith("pipeline.preprocess failed")), None)
  return {"counts": counts, "pipeline_seconds": float(match.group(1)) if match else wall,
          "wall_seconds": wall, "peak_rss_gib": peak / 2**30,
          "failure": failure if proc.returncode != 0 else None}


def run_preprocess(raw: str, output: str, workers: int, log_path: str,
                   fmt: str = "jsonl") -> Dict[str, Any]:
  """Runs pipeline.preprocess once (`--local_workers workers`); returns its row."""
  args = common.preprocess_args(raw, output, fmt) + ["--local_workers", str(workers)]
  result = run_job(args, output, log_path)
  return dict(row("job", workers, result["counts"],
                  result["pipeline_seconds"], result["wall_seconds"],
                  result["peak_rss_gib"], result["failure"]), format=fmt)


def row(run_name: str, workers: int, counts: Dict[str, Any], pipeline_seconds: float,
        wall_seconds: Optional[float], peak_rss_gib: Optional[float],
        failure: Optional[str] = None) -> Dict[str, Any]:
  """One table row from a run's counts.json, its times and peak memory."""
  records = counts["impressions"]["read"] + counts["events"]["read"]
  return {"run": run_name, "workers": workers, "impressions": counts["impressions"]["read"],
          "events": counts["events"]["read"], "records": records,
          "pipeline_seconds": pipeline_seconds, "wall_seconds": wall_seconds,
          "records_per_s": records / pipeline_seconds,
          "records_per_s_per_worker": records / pipeline_seconds / workers,
          "peak_rss_gib": peak_rss_gib, "failure": failure}


def _tfrecord_payloads(pattern: str, limit: Optional[int] = None) -> List[bytes]:
  """Records of gzip TFRecord files (plain Python framing: length, crc, data, crc)."""
  records: List[bytes] = []
  for path in sorted(glob.glob(pattern)):
    with gzip.open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data) and (limit is None or len(records) < limit):
      length = int.from_bytes(data[offset:offset + 8], "little")
      records.append(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
  return records


def output_size(output: str) -> Dict[str, int]:
  """{"records", "bytes"}: Examples and their payload bytes written by a job's run."""
  records = payload = 0
  for example in _tfrecord_payloads(os.path.join(output, "*", "*.tfrecord.gz")):
    records += 1
    payload += len(example)
  return {"records": records, "bytes": payload}


def floor(raw: str, examples: Sequence[bytes], records: int, scratch: str,
          fmt: str = "jsonl") -> Dict[str, Any]:
  """The floor (module docstring): pyarrow reads the raw files (the C++ JSON reader, or
  the Parquet reader); `records` Examples (cycling `examples`, a sample of the job's
  own) are written as gzipped TFRecords."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.json as pa_json  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(common.raw_files(raw, "impressions", fmt))
                 + glob.glob(common.raw_files(raw, "events", fmt)))
  start = time.perf_counter()
  parsed = 0
  for path in files:
    if fmt == "parquet":
      parsed += pq.read_table(path).num_rows
      continue
    with pa.input_stream(path, compression="gzip") as stream:
      parsed += pa_json.read_json(stream).num_rows
  parse_seconds = time.perf_counter() - start
  os.makedirs(scratch, exist_ok=True)
  path = os.path.join(scratch, "floor.tfrecord.gz")
  written = written_bytes = 0
  start = time.perf_counter()
  with tf.io.TFRecordWriter(path, options="GZIP") as writer:
    while written < records and examples:
      example = examples[written % len(examples)]
      writer.write(example)
      written += 1
      written_bytes += len(example)
  write_seconds = time.perf_counter() - start
  os.remove(path)
  return {"parsed": parsed, "parse_seconds": parse_seconds, "written": written,
          "written_bytes": written_bytes, "write_seconds": write_seconds,
          "seconds": parse_seconds + write_seconds}


def run_size(impressions: int, workers: Sequence[int], workdir: str,
             keep_output: bool = False,
             multi_worker_max_impressions: int = MULTI_WORKER_MAX_IMPRESSIONS,
             fmt: str = "jsonl") -> List[Dict[str, Any]]:
  """Every run on one simulated world (files in `fmt`): the jobs, then the floor
  (written bytes known)."""
  if impressions > multi_worker_max_impressions:
    logging.info("Only 1 worker at %d impressions (> %d)", impressions,
                 multi_worker_max_impressions)
    workers = [count for count in workers if count == 1]
  raw = common.ensure_raw(workdir, impressions, fmt=fmt)
  rows: List[Dict[str, Any]] = []
  sample: List[bytes] = []
  size: Optional[Dict[str, int]] = None
  for count in workers:
    output = os.path.join(workdir, f"beam_bench_{impressions}_{fmt}_w{count}")
    logging.info("pipeline.preprocess on %d impressions (%s), %d worker(s)", impressions,
                 fmt, count)
    rows.append(run_preprocess(raw, output, count, output + ".log", fmt))
    logging.info("%s", rows[-1])
    if size is None and not rows[-1]["failure"]:
      size = output_size(output)
      sample = _tfrecord_payloads(os.path.join(output, "*", "*.tfrecord.gz"), FLOOR_SAMPLE)
    if not keep_output:
      shutil.rmtree(output, ignore_errors=True)
  if size is None:
    raise RuntimeError(f"no job run at {impressions} impressions succeeded: no floor")
  measured = floor(raw, sample, size["records"],
                   os.path.join(workdir, f"beam_bench_{impressions}_floor"), fmt)
  measured["job_bytes"] = size["bytes"]
  logging.info("floor: %s", measured)
  counts = {"impressions": {"read": impressions},
            "events": {"read": measured["parsed"] - impressions}}
  floor_row = row("floor: pyarrow read+parse, TFRecord gzip write", 1, counts,
                  measured["seconds"], None, None)
  floor_row["format"] = fmt
  floor_row.update(parse_seconds=measured["parse_seconds"],
                   write_seconds=measured["write_seconds"], written=measured["written"],
                   written_bytes=measured["written_bytes"], job_bytes=measured["job_bytes"])
  for job_row in rows:
    job_row["floor_ratio"] = job_row["pipeline_seconds"] / measured["seconds"]
  floor_row["floor_ratio"] = 1.0
  return [floor_row] + rows


def run(impressions: Union[int, Sequence[int]], workers: Sequence[int] = (1, 2),
        workdir: str = common.DEFAULT_WORKDIR, results_dir: str = common.RESULTS_DIR,
        command: str = None, keep_output: bool = False,
        multi_worker_max_impressions: int = MULTI_WORKER_MAX_IMPRESSIONS,
        formats: Sequence[str] = ("jsonl",), name: str = NAME) -> List[Dict[str, Any]]:
  """Every size of `impressions` and input format: floor and jobs (run_size); writes
  <name>.md."""
  sizes = [impressions] if isinstance(impressions, int) else list(impressions)
  load_start = common.load_average()
  rows = []
  for size in sizes:
    for fmt in formats:
      rows += run_size(size, workers, workdir, keep_output, multi_worker_max_impressions,
                       fmt)
  write_table(rows, results_dir, command, load_start, common.load_average(), name)
  return rows


def _number(value, pattern: str) -> str:
  return "-" if value is None else pattern.format(value)


def write_table(rows: List[Dict[str, Any]], results_dir: str, command: str,
                load_start: str = "", load_end: str = "", name: str = NAME) -> str:
  """Writes (and prints) <name>.md from the rows of `run`; returns the body."""
  table = common.markdown_table(
      ["impressions", "events", "input", "run", "worker processes", "seconds", "records/s",
       "records/s per worker", "x floor time", "peak RSS (tree)", "accounting"],
      [[f"{r['impressions']:,}", f"{r['events']:,}",
        {"jsonl": "JSON Lines (gzip)", "parquet": "Parquet"}[r.get("format", "jsonl")],
        r["run"], r["workers"],
        f"{r['pipeline_seconds']:.2f}", f"{r['records_per_s']:,.0f}",
        f"{r['records_per_s_per_worker']:,.0f}", f"{r['floor_ratio']:.1f}x",
        _number(r["peak_rss_gib"], "{:.2f} GiB"),
        ("-" if r["run"].startswith("floor") else
         "FAILED (see below)" if r.get("failure") else "every record accounted for")]
       for r in rows])
  failures = "".join(f"\n\n**{r['run']}, {r['workers']} worker(s), {r['impressions']:,} "
                     f"impressions: the job's accounting check failed** (exit 1): "
                     f"{r['failure']}" for r in rows if r.get("failure"))
  floors = "".join(
      f"\n- floor at {r['impressions']:,} impressions ({r.get('format', 'jsonl')}): "
      f"parse {r['parse_seconds']:.1f} s, "
      f"write {r['written']:,} Examples {r['write_seconds']:.1f} s "
      f"({r['written_bytes'] / 2**20:,.1f} MiB before gzip; the job wrote "
      f"{r['job_bytes'] / 2**20:,.1f} MiB)" for r in rows if r["run"].startswith("floor"))
  body = (f"Load average 1/5/15 min at the start: {load_start}; at the end: {load_end} "
          f"(2 cores: above 2, other work shared the CPU).\n\n"
          f"Jobs: `python -m pipeline.preprocess --local_workers N` "
          f"(configs/esmm.yaml: parse, join, label, split, transform analysis, TFRecord "
          f"encode, TFDV statistics; N = 1: one in-memory worker, N = 2: DirectRunner "
          f"multi_processing with transforms/beam_compat.py's fix, docs/SCALING.md 2.1) on "
          f"simulated impressions (pipeline.simulate --seed 7). Seconds are pipeline time "
          f"(interpreter start-up, post-run checks and schema inference excluded); records "
          f"are impressions + events read. The floor (first row of each size and input) is "
          f"pyarrow's C++ JSON (or Parquet) reader on the same files plus TensorFlow's C++ "
          f"gzip TFRecord "
          f"writer writing as many Examples as the job wrote (a sample of its own, "
          f"cycled), in one process; \"x floor time\" is the run's seconds over the "
          f"floor's.\n\n{table}{failures}\n{floors}\n")
  common.write_result(name, "Beam preprocess (DirectRunner) against the floor", body,
                      results_dir, command)
  print(body)
  return body


def _timed(function):
  start = time.perf_counter()
  result = function()
  return result, time.perf_counter() - start


def stage_throughput(raw: str, num_buckets: int = 64) -> List[Dict[str, Any]]:
  """Rows of (stage, records, seconds, records/s) on the JSON Lines under raw."""
  import io  # pylint: disable=g-import-not-at-top
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.json as pa_json  # pylint: disable=g-import-not-at-top
  from configs import config as config_lib  # pylint: disable=g-import-not-at-top
  from features import spec as spec_lib  # pylint: disable=g-import-not-at-top
  # pylint: disable=g-import-not-at-top
  from transforms import encode, join, label, parse, read, split
  # pylint: enable=g-import-not-at-top

  config = config_lib.load_config(common.ESMM_CONFIG)
  spec = spec_lib.load_feature_spec(config.feature_spec_path)
  data = config.data
  event_types = label.EventLabeler(data).event_types
  files = {source: sorted(glob.glob(os.path.join(raw, source, "*.jsonl.gz")))
           for source in ("impressions", "events")}
  rows = []

  def add(stage, records, seconds):
    rows.append({"stage": stage, "records": records, "seconds": seconds,
                 "records_per_s": records / seconds})
    logging.info("%s", rows[-1])

  # Read + parse + validate.
  def parse_files(source, parser):
    batches = []
    for path in files[source]:
      with gzip.open(path, "rb") as handle:
        for lines, texts, _ in read.json_line_batches(handle):
          batches.append(parser.parse_json_lines(path, lines, texts)[0])
    return pa.Table.from_batches(batches, schema=parser.schema)

  def floor(source):
    total = 0
    for path in files[source]:
      with gzip.open(path, "rb") as handle:
        total += pa_json.read_json(io.BytesIO(handle.read())).num_rows
    return total

  imps, t_imps = _timed(lambda: parse_files("impressions", parse.ImpressionParser(spec)))
  events, t_events = _timed(lambda: parse_files("events", parse.EventParser(event_types)))
  floor_records, t_floor = _timed(lambda: floor("impressions") + floor("events"))
  parsed_records = imps.num_rows + events.num_rows
  add("read+parse", parsed_records, t_imps + t_events)
  add("read+parse: pyarrow floor (read_json only)", floor_records, t_floor)

  # Join + label (the shuffle itself is the runner's: not measured here).
  def join_and_label():
    labeler = label.BucketLabeler(data, imps.schema)
    by_bucket = {}
    for source, table in (("i", imps), ("e", events)):
      for batch in table.to_batches():
        for bucket, part in join.split_by_bucket(batch, num_buckets):
          by_bucket.setdefault(bucket, {"i": [], "e": []})[source].append(part)
    out = []
    for parts in by_bucket.values():
      out.append(labeler.join_and_label(
          pa.Table.from_batches(parts["i"], schema=imps.schema),
          pa.Table.from_batches(parts["e"], schema=events.schema))[0])
    return out

  labelled, t_join = _timed(join_and_label)
  add("join+label", parsed_records, t_join)

  # Split + encode.
  def split_and_encode():
    encoder = encode.BatchEncoder(spec, data.label_names)
    return [example for batch in labelled
            for part in split.split_batch(batch, data.eval_from_timestamp).values()
            for example in encoder.encode(part)[0]]

  examples, t_encode = _timed(split_and_encode)
  add("split+encode (BatchEncoder)", len(examples), t_encode)
  return rows


def main(argv=None):
  parser = common.arg_parser(__doc__, "100k impressions (default 1M).")
  parser.add_argument("--impressions", default=None,
                      help="Simulated impressions, comma-separated sizes (e.g. "
                           "1000000,10000000); default 1M (--quick: 100k).")
  parser.add_argument("--workers", default="1,2",
                      help="Comma-separated pipeline.preprocess --local_workers counts.")
  parser.add_argument("--formats", default="jsonl",
                      help="Comma-separated input formats (pipeline.simulate --format): "
                           "jsonl, parquet.")
  parser.add_argument("--name", default=NAME, help="Results file name (<name>.md).")
  parser.add_argument("--multi_worker_max_impressions", type=int,
                      default=MULTI_WORKER_MAX_IMPRESSIONS,
                      help="Sizes above this run with 1 worker only.")
  parser.add_argument("--stages", action="store_true",
                      help="Per-stage throughput in one process (no runner, no results "
                           "file); default 200k impressions.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  sizes = [int(n) for n in args.impressions.split(",")] if args.impressions else None
  if args.stages:
    raw = common.ensure_raw(args.workdir, sizes[0] if sizes else 200_000)
    table = common.markdown_table(
        ["stage", "records", "seconds", "records/s"],
        [[r["stage"], f"{r['records']:,}", f"{r['seconds']:.2f}",
          f"{r['records_per_s']:,.0f}"] for r in stage_throughput(raw)])
    print(table)
    return
  sizes = sizes or [100_000 if args.quick else 1_000_000]
  argv_text = " ".join(sys.argv[1:] if argv is None else argv)
  run(sizes, [int(w) for w in args.workers.split(",")], args.workdir, args.results_dir,
      command=f"python -m benchmarks.beam_preprocess {argv_text}".strip(),
      multi_worker_max_impressions=args.multi_worker_max_impressions,
      formats=args.formats.split(","), name=args.name)


if __name__ == "__main__":
  main()
