"""Entry point: raw impression/event logs -> labelled TFRecords, artifacts, stats, counts.

  python -m pipeline.preprocess --impressions 'logs/impressions/*.jsonl.gz' \
      --events 'logs/events/*.jsonl.gz' --output runs/demo/data \
      [--config configs/esmm.yaml] [--eval_from 2026-01-08] \
      [--schema runs/demo/data/schema/schema.pbtxt --fail_on_anomalies] \
      [Beam options: --direct_num_workers 2 --direct_running_mode multi_processing |
       --runner DataflowRunner --project P --region R --temp_location gs://... \
       --setup_file ./setup.py]

Flow: raw logs -> **this job** (transforms.preprocess_job.Preprocess) -> OUTPUT/ ->
pipeline.train. Flags this module does not know are Beam pipeline options, passed to
`PipelineOptions` untouched, so the same command runs on DirectRunner and Dataflow.
After the pipeline, the run checks that every input record was written or
dead-lettered (OUTPUT/counts.json) and infers or validates the TFDV schema.
"""

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import logging  # pylint: disable=g-import-not-at-top
import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.options.pipeline_options import PipelineOptions

import configs
from configs import config as config_lib
from features import spec as spec_lib
from transforms import outputs as outputs_lib
from transforms import preprocess_job
from transforms import read

DEFAULT_CONFIG = os.path.join(os.path.dirname(os.path.abspath(configs.__file__)), "esmm.yaml")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="python -m pipeline.preprocess",
      description="Raw logs -> labelled, time-split TFRecords + transform artifacts + "
                  "TFDV statistics. Unknown flags are Beam pipeline options.")
  parser.add_argument("--impressions", required=True,
                      help="Glob(s), comma-separated, of impression files (.jsonl, "
                           ".jsonl.gz or .parquet; local or gs://).")
  parser.add_argument("--events", required=True,
                      help="Glob(s), comma-separated, of behaviour event files (same types).")
  parser.add_argument("--output", required=True,
                      help="Output directory: train/, eval/, transform/, stats/, schema/, "
                           "dead_letter/, counts.json (DESIGN.md section 3).")
  parser.add_argument("--config", default=DEFAULT_CONFIG,
                      help="Experiment YAML; its data section and feature spec are used "
                           "(default: the repo's configs/esmm.yaml).")
  parser.add_argument("--eval_from", default=None,
                      help="YYYY-MM-DD (UTC): impressions from this day on are eval; "
                           "overrides data.eval_from.")
  parser.add_argument("--schema", default=None,
                      help="TFDV schema.pbtxt to validate both splits against (writes "
                           "OUTPUT/anomalies/); without it a schema is inferred from train.")
  parser.add_argument("--fail_on_anomalies", action="store_true",
                      help="With --schema: exit non-zero when a split has anomalies.")
  return parser


def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
  """Splits our flags from Beam's; a leading program name (as in sys.argv) is skipped."""
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and not argv[0].startswith("-"):
    argv = argv[1:]
  return _parser().parse_known_args(argv)


def _check_inputs_exist(patterns: Sequence[str], flag: str) -> None:
  for pattern in patterns:
    matched = FileSystems.match([pattern])[0].metadata_list
    if not matched:
      raise preprocess_job.PreprocessError(f"{flag} {pattern!r} matches no file")


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the job and its post-run checks.

  Args:
    argv: command-line arguments (see the module docstring); None reads sys.argv.

  Returns:
    {"counts": counts.json contents, "seconds": pipeline wall time, "schema": schema
    path, "anomalies": split -> anomaly lines}.

  Raises:
    preprocess_job.PreprocessError: inputs missing, records unaccounted for, or (with
      --fail_on_anomalies) anomalies against --schema.
  """
  args, pipeline_args = parse_args(argv)
  overrides = {"data": {"eval_from": args.eval_from}} if args.eval_from else None
  config = config_lib.load_config(args.config, overrides=overrides)
  spec = config.load_feature_spec()
  impressions = read.split_patterns(args.impressions)
  events = read.split_patterns(args.events)
  _check_inputs_exist(impressions, "--impressions")
  _check_inputs_exist(events, "--events")
  if args.schema and not FileSystems.exists(args.schema):
    raise preprocess_job.PreprocessError(f"--schema {args.schema!r}: file not found")
  if args.fail_on_anomalies and not args.schema:
    logging.warning("--fail_on_anomalies has no effect without --schema")

  paths = outputs_lib.OutputPaths(args.output)
  if FileSystems.exists(paths.counts):
    logging.warning("%s holds a previous run; its files are overwritten", args.output)
  preprocess_job.write_run_inputs(paths, config)
  logging.info("Preprocessing %s + %s -> %s (config %s, eval from %s, labels %s)",
               impressions, events, args.output, args.config, config.data.eval_from,
               config.data.label_names)

  start = time.time()
  pipeline = beam.Pipeline(options=PipelineOptions(pipeline_args))
  _ = pipeline | "Preprocess" >> preprocess_job.Preprocess(impressions, events, args.output,
                                                          config.data, spec)
  result = pipeline.run()
  state = result.wait_until_finish()
  seconds = time.time() - start
  logging.info("Pipeline finished in %.1f s with state %s", seconds, state)

  counts = preprocess_job.check_run(paths, seconds)
  checked = preprocess_job.check_schema(paths, spec, config.data.label_names,
                                        schema_path=args.schema,
                                        fail_on_anomalies=args.fail_on_anomalies)
  return {"counts": counts, "seconds": seconds, **checked}


def main() -> None:
  logging.set_verbosity(logging.INFO)
  try:
    run(sys.argv)
  except (preprocess_job.PreprocessError, config_lib.ConfigError, spec_lib.SpecError) as e:
    logging.error("%s", e)
    sys.exit(f"pipeline.preprocess failed: {e}")


if __name__ == "__main__":
  main()
