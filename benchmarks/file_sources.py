"""Throughput of the file-split sources (raw Ali-CCP release, AliExpress CSV).

  python -m benchmarks.file_sources [--quick] [--rows 200000] [--workers 1]
                                   [--sources ali_ccp,aliexpress]

Flow position: files in the releases' layouts (simulation.release_layouts: uniform random
ids, 2% bad lines of every kind) -> **pipeline.preprocess --source ali_ccp / aliexpress**
(the real CLI, in a subprocess, `--local_workers N`) -> TFRecords. Per source: input
lines read per second of pipeline time (Ali-CCP: skeleton + common-features lines;
AliExpress: rows) and per worker process, peak memory of the process tree, and the
accounting check (the outputs themselves are pinned by tests/test_file_sources_golden.py).
Run it alone on an idle machine (the header records the load average at the start and
the end).
"""

import os
import sys
from typing import Any, Dict, List, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top

from benchmarks import beam_preprocess
from benchmarks import common
from simulation import release_layouts

NAME = "file_sources"
SOURCES = ("ali_ccp", "aliexpress")


def write_inputs(source: str, rows: int, workdir: str) -> List[str]:
  """The source's files for `rows` train rows (written once per size), as CLI flags."""
  raw = os.path.join(workdir, f"{source}_{rows}")
  done = os.path.join(raw, "_DONE")
  if source == "ali_ccp":
    if not os.path.exists(done):
      release_layouts.write_aliccp_release(raw, skeleton_rows=rows, seed=0)
    base = {f"{kind}_{folder}": os.path.join(raw, folder, f"{kind}_{folder}.csv")
            for kind in ("sample_skeleton", "common_features") for folder in ("train", "test")}
    flags = ["--source=ali_ccp", f"--skeleton={base['sample_skeleton_train']}",
             f"--common_features={base['common_features_train']}",
             f"--eval_skeleton={base['sample_skeleton_test']}",
             f"--eval_common_features={base['common_features_test']}"]
  else:
    if not os.path.exists(done):
      release_layouts.write_aliexpress(raw, train_rows=rows, seed=0)
    flags = ["--source=aliexpress", f"--train={raw}/train.csv", f"--eval={raw}/test.csv"]
  with open(done, "w") as f:
    f.write("")
  return flags


def lines_read(counts: Dict[str, Any]) -> int:
  return counts["impressions"]["read"] + counts.get("common_features", {}).get("read", 0)


def run(rows: int, workers: Sequence[int], workdir: str, results_dir: str,
        command: str, sources: Sequence[str] = SOURCES) -> List[Dict[str, Any]]:
  """One job per source of `sources` and worker count; writes file_sources.md."""
  unknown = sorted(set(sources) - set(SOURCES))
  if unknown:
    raise ValueError(f"unknown sources {unknown}: choose from {list(SOURCES)}")
  load_start = common.load_average()
  results = []
  for source in sources:
    flags = write_inputs(source, rows, workdir)
    for count in workers:
      output = os.path.join(workdir, f"file_sources_{source}_w{count}")
      logging.info("pipeline.preprocess --source %s, %d rows, %d worker(s)", source, rows,
                   count)
      result = beam_preprocess.run_job(flags + [f"--output={output}", f"--local_workers={count}"],
                                       output, output + ".log")
      lines = lines_read(result["counts"])
      results.append({
          "source": source, "workers": count, "lines": lines,
          "written": sum(result["counts"]["impressions"]["written"].values()),
          "seconds": result["pipeline_seconds"],
          "lines_per_s_per_worker": lines / result["pipeline_seconds"] / count,
          "peak_rss_gib": result["peak_rss_gib"], "failure": result["failure"]})
      logging.info("%s", results[-1])
  table = common.markdown_table(
      ["source", "workers", "lines read", "Examples written", "pipeline s",
       "lines/s per worker", "peak RSS GiB", "accounting"],
      [[r["source"], r["workers"], f"{r['lines']:,}", f"{r['written']:,}",
        f"{r['seconds']:.1f}", f"{r['lines_per_s_per_worker']:,.0f}",
        f"{r['peak_rss_gib']:.2f}", r["failure"] or "ok"] for r in results])
  body = (f"Load average (1/5/15 min) at the start: {load_start}; at the end: "
          f"{common.load_average()}.\n\n{table}\n")
  common.write_result(NAME, "File-split sources: throughput of the job", body,
                      results_dir, command)
  print(table)
  return results


def main(argv=None):
  parser = common.arg_parser(__doc__, "20k rows (default 200k).")
  parser.add_argument("--rows", type=int, default=None,
                      help="Train rows per source (Ali-CCP skeleton rows; eval a third).")
  parser.add_argument("--workers", default="1")
  parser.add_argument("--sources", default=",".join(SOURCES),
                      help="Comma-separated sources to run (default: all).")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  rows = args.rows or (20_000 if args.quick else 200_000)
  argv_text = " ".join(sys.argv[1:] if argv is None else argv)
  run(rows, [int(w) for w in args.workers.split(",")], args.workdir, args.results_dir,
      f"python -m benchmarks.file_sources {argv_text}".strip(), args.sources.split(","))


if __name__ == "__main__":
  main()
