"""Runs every benchmark and writes benchmarks/results/*.md.

  python -m benchmarks.all --quick     # small sizes, under 10 minutes on 2 cores
  python -m benchmarks.all             # full sizes (Beam on 1M impressions)

Order: Beam preprocess (its own raw data), then the simulated TFRecords shared by the
training-throughput, input-pipeline and serving-latency benchmarks (made once with
pipeline.simulate + pipeline.preprocess, reused from --workdir on later runs).
Benchmarks run one after another so they never compete for the cores.
"""

import os
import time

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top

from benchmarks import beam_preprocess
from benchmarks import common
from benchmarks import input_pipeline
from benchmarks import serving_latency
from benchmarks import training_throughput

# (quick, full) sizes.
BEAM_IMPRESSIONS = (100_000, 1_000_000)
TRAIN_IMPRESSIONS = (50_000, 300_000)
SERVING_CALLS = (200, 1000)


def main(argv=None):
  parser = common.arg_parser(__doc__, "Small sizes (< 10 minutes).")
  parser.add_argument("--skip", default="", help="Comma-separated benchmarks to skip: "
                      "beam_preprocess,training_throughput,input_pipeline,serving_latency.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  size = 0 if args.quick else 1
  suffix = " --quick" if args.quick else ""
  skip = set(filter(None, args.skip.split(",")))
  command = "python -m benchmarks.all" + suffix
  started = time.time()

  if beam_preprocess.NAME not in skip:
    beam_preprocess.run(BEAM_IMPRESSIONS[size], (1, 2), args.workdir, args.results_dir, command)
  data_dir = common.ensure_data(args.workdir, TRAIN_IMPRESSIONS[size])
  if training_throughput.NAME not in skip:
    training_throughput.run(data_dir, results_dir=args.results_dir, command=command)
  if input_pipeline.NAME not in skip:
    input_pipeline.run(data_dir, results_dir=args.results_dir, command=command)
  if serving_latency.NAME not in skip:
    saved_model = common.ensure_model(args.workdir, data_dir)
    serving_latency.run(saved_model, data_dir, SERVING_CALLS[size], args.results_dir,
                        command=command)
  logging.info("All benchmarks done in %.0f s -> %s", time.time() - started, args.results_dir)


if __name__ == "__main__":
  main()
