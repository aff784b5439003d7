r"""Entry point: raw impression/event logs -> labelled TFRecords, artifacts, stats, counts.

  python -m pipeline.preprocess --impressions 'logs/impressions/*.jsonl.gz' \
      --events 'logs/events/*.jsonl.gz' --output runs/demo/data \
      [--config configs/esmm.yaml] [--eval_from 2026-01-08] \
      [--schema runs/demo/data/schema/schema.pbtxt --fail_on_anomalies] \
      [--join_buckets 64] [--progress_interval_s 30] \
      [--local_workers 0 (every core of this machine) |
       Beam options: --runner DataflowRunner --project P --region R --temp_location gs://... \
       --setup_file ./setup.py]

  python -m pipeline.preprocess --day 2026-01-05 --previous work/days/2026-01-04 \
      --impressions 'raw/impressions/{day}/*' --events 'raw/events/{day}/*' \
      --output work/days/2026-01-05     # the incremental job: pipeline/preprocess_day.py

  python -m pipeline.preprocess --source ali_ccp --config configs/ali_ccp.yaml \
      --skeleton 'aliccp/train/sample_skeleton_train.csv' \
      --common_features 'aliccp/train/common_features_train.csv' \
      --eval_skeleton 'aliccp/test/sample_skeleton_test.csv' \
      --eval_common_features 'aliccp/test/common_features_test.csv' --output runs/aliccp/data

  python -m pipeline.preprocess --source rechub_csv --config configs/rechub_aliccp.yaml \
      --train 'ali_ccp_train*.csv' --eval 'ali_ccp_val*.csv,ali_ccp_test*.csv' --output DIR
  python -m pipeline.preprocess --source paddle_esmm --config configs/paddle_esmm.yaml \
      --train 'data/train/*.txt' --eval 'data/test/*.txt' --output DIR
  python -m pipeline.preprocess --source aliexpress --config configs/aliexpress.yaml \
      --train 'AliExpress_NL/train.csv' --eval 'AliExpress_NL/test.csv' --output DIR

Flow: raw logs -> **this job** (transforms.job.Preprocess, or PreprocessAliCcp /
PreprocessDerived by --source: one engine, every stage on pyarrow RecordBatches;
docs/ALI_CCP.md) -> OUTPUT/ -> pipeline.train. At the start the job removes an old success
marker and its own old TFRecord and dead-letter shards (`remove_previous_shards`: a rerun
with fewer shards must not leave the extra ones behind, for the marker would list them). Flags this
module does not know must be Beam pipeline options (an option of a registered
`PipelineOptions` class: --runner, --project, --temp_location, --direct_num_workers,
...), passed to `PipelineOptions` untouched, so the same command runs on DirectRunner and
Dataflow; any other flag is refused (a near miss of ours: `did you mean --eval_from?`).
After the pipeline, the run checks that every input record was written or
dead-lettered (OUTPUT/counts.json), that neither split is empty (else one line naming
data.eval_from / --eval_from, or the split's input flag), and infers or validates the TFDV
schema; only then does it write OUTPUT/_SUCCESS.json (features/success_marker.py), which
readers check. A user error ends with one line `error: ...`, exit status 2
(pipeline/cli.py; --verbose adds the traceback).
"""

import argparse
import os
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

from absl import logging

import configs
from configs import config as config_lib
import layouts
from pipeline import cli
from transforms import errors

# Beam, TensorFlow, TFDV and the job's modules (transforms/, layouts/, training/,
# features.success_marker) are imported by the functions that use them, after the flags,
# the config and the feature spec are checked: start-up time of --help and of a user
# error (about 0.3 s instead of 5 s idle; Beam's option list alone, for an unknown flag,
# about 2 s).

CONFIG_DIR = os.path.dirname(os.path.abspath(configs.__file__))
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "esmm.yaml")


# Beam's pickler for the DoFns, unless --pickle_library is given: cloudpickle pickles the
# job's ~230 DoFns faster than Beam 2.61's default dill (docs/SCALING.md 2.8).
DEFAULT_PICKLER = "cloudpickle"
LOG = "log"
ALI_CCP = "ali_ccp"
SOURCES = (LOG, ALI_CCP) + layouts.LAYOUTS
ENGINE_REMOVED = ("--engine was removed: pipeline.preprocess has one engine, the columnar "
                  "RecordBatch job")
DEFAULT_CONFIGS = {
    LOG: DEFAULT_CONFIG,
    ALI_CCP: os.path.join(CONFIG_DIR, "ali_ccp.yaml"),
    layouts.RECHUB_CSV: os.path.join(CONFIG_DIR, "rechub_aliccp.yaml"),
    layouts.PADDLE_ESMM: os.path.join(CONFIG_DIR, "paddle_esmm.yaml"),
    layouts.ALIEXPRESS: os.path.join(CONFIG_DIR, "aliexpress.yaml"),
}
# The input flags each source needs.
SOURCE_FLAGS = {
    LOG: ("impressions", "events"),
    ALI_CCP: ("skeleton", "common_features", "eval_skeleton", "eval_common_features"),
    **{layout: ("train", "eval") for layout in layouts.LAYOUTS},
}


def _parser() -> argparse.ArgumentParser:
  parser = cli.ArgumentParser(
      prog="python -m pipeline.preprocess",
      description="Raw logs (or Ali-CCP files) -> labelled, split TFRecords + transform "
                  "artifacts + TFDV statistics. Unknown flags are Beam pipeline options.")
  parser.add_argument("--source", default=LOG, choices=SOURCES,
                      help="Input layout: 'log' (the raw log contract: --impressions, "
                           "--events), 'ali_ccp' (the raw Ali-CCP release: --skeleton, "
                           "--common_features, --eval_skeleton, --eval_common_features), "
                           "'rechub_csv' / 'paddle_esmm' / 'aliexpress' (derived layouts: "
                           "--train, --eval).")
  parser.add_argument("--impressions", default=None,
                      help="--source log: glob(s), comma-separated, of impression files "
                           "(.jsonl, .jsonl.gz or .parquet; local or gs://).")
  parser.add_argument("--events", default=None,
                      help="--source log: glob(s), comma-separated, of behaviour event "
                           "files (same types).")
  parser.add_argument("--skeleton", default=None,
                      help="--source ali_ccp: glob(s) of the train sample_skeleton files.")
  parser.add_argument("--common_features", default=None,
                      help="--source ali_ccp: glob(s) of the train common_features files.")
  parser.add_argument("--eval_skeleton", default=None,
                      help="--source ali_ccp: glob(s) of the eval (test) sample_skeleton "
                           "files.")
  parser.add_argument("--eval_common_features", default=None,
                      help="--source ali_ccp: glob(s) of the eval (test) common_features "
                           "files.")
  parser.add_argument("--train", default=None,
                      help="--source rechub_csv / paddle_esmm / aliexpress: glob(s) of the "
                           "train files.")
  parser.add_argument("--eval", default=None,
                      help="--source rechub_csv / paddle_esmm / aliexpress: glob(s) of the "
                           "eval files (e.g. val and test).")
  parser.add_argument("--output", required=True,
                      help="Output directory: train/, eval/, transform/, stats/, schema/, "
                           "dead_letter/, counts.json (DESIGN.md section 3).")
  parser.add_argument("--config", default=None,
                      help="Experiment YAML; its data section and feature spec are used "
                           "(default per --source: configs/esmm.yaml, configs/ali_ccp.yaml, "
                           "configs/rechub_aliccp.yaml, configs/paddle_esmm.yaml, "
                           "configs/aliexpress.yaml).")
  parser.add_argument("--eval_from", default=None,
                      help="--source log: YYYY-MM-DD (UTC): impressions from this day on "
                           "are eval; overrides data.eval_from. Without either, the last "
                           "UTC day present in the logs is eval (recorded in "
                           "OUTPUT/split.json). Other sources split by file.")
  parser.add_argument("--as_of", default=None,
                      help="--source log: the logs' snapshot time (YYYY-MM-DD = its UTC "
                           "midnight, an ISO 8601 datetime with Z or an offset, or unix "
                           "seconds); overrides data.as_of: impressions and events with a "
                           "timestamp after this instant are dead-lettered (bad_value).")
  parser.add_argument("--day", default=None,
                      help="--source log: run the incremental job for this UTC day "
                           "(YYYY-MM-DD; pipeline/preprocess_day.py): --impressions and "
                           "--events are the day's files ('{day}' in a glob stands for "
                           "it), --previous the earlier day's output; the snapshot "
                           "(--as_of) defaults to the day's last second.")
  parser.add_argument("--previous", default=None,
                      help="With --day: the output directory of the previous day (its "
                           "open impressions and analyzer states are read); omit on the "
                           "first day.")
  parser.add_argument("--vocabulary_window_days", type=int, default=None,
                      help="With --day: vocabularies, moments and boundaries come from "
                           "the analyzer states of this many days up to --day; overrides "
                           "data.vocabulary_window_days.")
  parser.add_argument("--schema", default=None,
                      help="TFDV schema.pbtxt to validate both splits against (writes "
                           "OUTPUT/anomalies/); without it a schema is inferred from train.")
  parser.add_argument("--fail_on_anomalies", action="store_true",
                      help="With --schema: exit non-zero when a split has anomalies.")
  parser.add_argument("--join_buckets", type=int, default=None,
                      help="Hash buckets of the join's shuffle (of impression_id; of md5 per "
                           "split for --source ali_ccp) (default "
                           "transforms/join.DEFAULT_BUCKETS).")
  parser.add_argument("--progress_interval_s", type=float, default=None,
                      help="Seconds between the progress lines (records so far, "
                           "records/s) each worker logs (default "
                           "transforms/progress.DEFAULT_INTERVAL_S).")
  parser.add_argument("--local_workers", type=int, default=None,
                      help="Run on this machine with N worker processes (DirectRunner "
                           "--direct_running_mode multi_processing; 0 = one per core, 1 = "
                           "one in-memory worker). Applies transforms/beam_compat.py's fix "
                           "for Beam's data-loss race in that mode (docs/SCALING.md 2.1).")
  return parser


def parse_flags(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
  """Our flags, checked without Beam; the rest (Beam's options, unchecked yet) as a list.

  A leading program name (as in sys.argv) is skipped; --config defaults per --source.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if argv and not argv[0].startswith("-"):
    argv = argv[1:]
  if any(arg == "--engine" or arg.startswith("--engine=") for arg in argv):
    raise errors.PreprocessError(ENGINE_REMOVED)
  parser = _parser()
  args, beam_args = parser.parse_known_args(argv)
  # pylint: disable-next=protected-access
  args.known_flags = sorted(flag for flag in parser._option_string_actions
                            if flag.startswith("--"))
  if args.config is None:
    args.config = DEFAULT_CONFIGS[args.source]
  return args, beam_args


def check_source_flags(args: argparse.Namespace) -> None:
  """The input flags fit --source: each one it reads given, none of another source's.

  Raises:
    errors.PreprocessError: a flag missing or of another source, or
      --eval_from / --as_of with a file source.
  """
  for flag in ("eval_from", "as_of", "day"):
    if getattr(args, flag) and args.source != LOG:
      raise errors.PreprocessError(f"--{flag} is for --source log; --source {args.source} takes "
                                   f"train and eval from separate files")
  if args.day is None:
    given = [f"--{flag}" for flag in ("previous", "vocabulary_window_days")
             if getattr(args, flag) is not None]
    if given:
      raise errors.PreprocessError(f"{' and '.join(given)} go with --day (the incremental "
                                   f"job)")
  elif args.eval_from:
    raise errors.PreprocessError("--eval_from splits a one-pass run; --day writes one day "
                                 "(its next day is that model's evaluation)")
  else:
    from pipeline import preprocess_day  # pylint: disable=g-import-not-at-top
    preprocess_day.day_start(args.day)  # A malformed --day fails here, before Beam.
  needed = SOURCE_FLAGS[args.source]
  others = sorted({flag for flags in SOURCE_FLAGS.values() for flag in flags} - set(needed))
  given = [f"--{flag}" for flag in others if getattr(args, flag) is not None]
  if given:
    raise errors.PreprocessError(f"--source {args.source} does not use {given}; it "
                                 f"reads {['--' + flag for flag in needed]}")
  for flag in needed:
    if not getattr(args, flag):
      raise errors.PreprocessError(f"--source {args.source} needs --{flag}")


def parse_args(argv: Optional[Sequence[str]]) -> Tuple[argparse.Namespace, List[str]]:
  """Splits our flags from Beam's (`parse_flags`, then Beam's options are checked).

  Returns:
    (our flags, Beam's options, with those `--local_workers` stands for).
  """
  args, beam_args = parse_flags(argv)
  return args, beam_pipeline_args(args, beam_args)


def beam_pipeline_args(args: argparse.Namespace, beam_args: List[str]) -> List[str]:
  """Beam's options checked (`check_beam_args`), plus those of `--local_workers`."""
  check_beam_args(beam_args, args.known_flags)
  if args.local_workers is not None:
    beam_args = beam_args + local_workers_options(args.local_workers, beam_args)
  return beam_args


def _beam_options_parser() -> argparse.ArgumentParser:
  """The parser of every flag a registered `PipelineOptions` class defines (--runner,
  --project, ...); a bad value is a cli.UserError (one line).

  The classes are found as `PipelineOptions.get_all_options` finds them (its direct
  subclasses, the last one of each name), so an options class a runner or an import
  registers counts too.
  """
  # Beam is imported here, after our own flags are checked: start-up time of a user error.
  # pylint: disable-next=g-import-not-at-top
  from apache_beam.options import pipeline_options as beam_options
  parser = beam_options._BeamArgumentParser(allow_abbrev=False)  # pylint: disable=protected-access
  classes = {str(cls): cls for cls in beam_options.PipelineOptions.__subclasses__()}
  for cls in classes.values():
    cls._add_argparse_args(parser)  # pylint: disable=protected-access

  def error(message: str):
    raise cli.UserError(f"{message} (a Beam pipeline option)")
  parser.error = error
  return parser


def beam_option_flags(parser: Optional[argparse.ArgumentParser] = None) -> List[str]:
  """Every flag a registered `PipelineOptions` class defines (`_beam_options_parser`)."""
  parser = parser or _beam_options_parser()
  return sorted(flag for flag in parser._option_string_actions  # pylint: disable=protected-access
                if flag.startswith("--"))


def check_beam_args(beam_args: Sequence[str], ours: Sequence[str]) -> None:
  """Refuses a flag that is neither ours (`ours`: --source, ...) nor a Beam pipeline option.

  Beam would drop it with a warning and the job would run without it (`--eval_form
  2026-03-02` split on the config's date); a near miss of one of our flags or of a Beam
  option is named (configs.config.closest_name). A word that is neither a flag nor a
  flag's value is refused as cli.refuse_arguments refuses it in the other steps. Beam is
  imported only when there are flags to check.

  Raises:
    cli.UserError: naming the first unknown flag, a bad value of a Beam option, or the
      words that are not flags.
  """
  flags = [arg for arg in beam_args  # not a value (a negative number neither)
           if arg.startswith("-") and not arg.lstrip("-").replace(".", "", 1).isdigit()]
  if not flags:
    cli.refuse_arguments(["pipeline.preprocess", *beam_args])  # only words: none allowed
    return
  parser = _beam_options_parser()
  known_beam = set(beam_option_flags(parser))
  for arg in flags:
    flag = arg.split("=", 1)[0]
    if flag in known_beam:
      continue
    close = config_lib.closest_name(flag, ours, known_beam, cutoff=0.75)
    hint = (f"did you mean {close}?" if close else
            "see --help for this job's flags; Beam's are its PipelineOptions")
    raise cli.UserError(f"unknown flag {flag}: neither a pipeline.preprocess flag nor a Beam "
                        f"pipeline option ({hint})")
  cli.refuse_arguments(["pipeline.preprocess", *parser.parse_known_args(list(beam_args))[1]])


def local_workers_options(workers: int, beam_args: Sequence[str]) -> List[str]:
  """The DirectRunner options `--local_workers N` stands for.

  Raises:
    errors.PreprocessError: N < 0, or the options it sets are also given.
  """
  if workers < 0:
    raise errors.PreprocessError(f"--local_workers {workers}: must be >= 0 "
                                 f"(0 = one worker process per core)")
  clashes = [arg for arg in beam_args if arg.split("=")[0] in (
      "--direct_num_workers", "--direct_running_mode")]
  if clashes:
    raise errors.PreprocessError(f"--local_workers sets the DirectRunner's worker "
                                 f"options itself; drop {clashes}")
  # Beam is imported here, after our own flags are checked: start-up time of a user error.
  # pylint: disable-next=g-import-not-at-top
  from apache_beam.options import pipeline_options as beam_options
  from transforms import beam_compat  # pylint: disable=g-import-not-at-top
  runner = beam_options.PipelineOptions(list(beam_args)).view_as(
      beam_options.StandardOptions).runner
  if runner not in beam_compat.DIRECT_RUNNERS:
    raise errors.PreprocessError(f"--local_workers runs on this machine "
                                 f"(DirectRunner); it cannot be used with --runner "
                                 f"{runner}")
  mode = "in_memory" if workers == 1 else "multi_processing"
  return [f"--direct_num_workers={workers}", f"--direct_running_mode={mode}"]


def input_patterns(args: argparse.Namespace) -> Dict[str, List[str]]:
  """flag -> its globs, for the flags of `--source` (`check_source_flags` checked them).

  Raises:
    errors.PreprocessError: a glob matches no file.
  """
  # Beam's file systems (local, gs://) are imported here: start-up time of a user error.
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  patterns = {}
  for flag in SOURCE_FLAGS[args.source]:
    patterns[flag] = config_lib.split_patterns(getattr(args, flag))
    if args.day:
      from pipeline import preprocess_day  # pylint: disable=g-import-not-at-top
      patterns[flag] = preprocess_day.day_patterns(patterns[flag], args.day)
    for pattern in patterns[flag]:
      if not FileSystems.match([pattern])[0].metadata_list:
        raise errors.PreprocessError(f"--{flag} {pattern!r} matches no file")
  return patterns


def remove_previous_shards(paths) -> List[str]:
  """Deletes the shards a previous run wrote (`outputs_lib.shard_patterns`); returns them.

  A rerun with fewer shards (data.train_shards lowered) would otherwise leave the old
  extra shards beside the new ones, and the success marker (which lists every file)
  would vouch for them. Only files named like this job's own shards are touched
  (`train/train-*-of-*.tfrecord.gz`, `eval/eval-*-of-*.tfrecord.gz`,
  `dead_letter/dead_letter-*-of-*.jsonl`); anything else in OUTPUT stays.

  Args:
    paths: the run's transforms.outputs.OutputPaths.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up time (module doc)
  from transforms import outputs as outputs_lib  # pylint: disable=g-import-not-at-top
  removed = []
  for pattern in outputs_lib.shard_patterns(paths):
    for path in sorted(tf.io.gfile.glob(pattern)):
      tf.io.gfile.remove(path)
      removed.append(path)
  if removed:
    logging.info("Removed %d shard files of a previous run in %s: %s", len(removed),
                 paths.root, ", ".join(removed))
  return removed


def build_transform(args: argparse.Namespace, patterns: Dict[str, List[str]],
                    config: config_lib.ExperimentConfig, spec):
  """The job's root composite (a beam.PTransform) for `--source` (transforms/job.py).

  Args:
    spec: the config's features.spec.FeatureSpec.
  """
  from transforms import job  # pylint: disable=g-import-not-at-top  # start-up time (module doc)
  options = {}  # Flags not given keep the job's defaults.
  if args.progress_interval_s is not None:
    options["progress_interval_s"] = args.progress_interval_s
  joined = dict(options)
  if args.join_buckets is not None:
    joined["num_buckets"] = args.join_buckets
  if args.source == LOG:
    return job.Preprocess(patterns["impressions"], patterns["events"], args.output,
                          config.data, spec, **joined)
  if args.source == ALI_CCP:
    return job.PreprocessAliCcp(
        {"train": patterns["skeleton"], "eval": patterns["eval_skeleton"]},
        {"train": patterns["common_features"], "eval": patterns["eval_common_features"]},
        args.output, config.data, spec, **joined)
  return job.PreprocessDerived({"train": patterns["train"], "eval": patterns["eval"]},
                               args.source, args.output, config.data, spec, **options)


def load_checked_config(args: argparse.Namespace):
  """(config, feature spec) of --config with --eval_from / --as_of over it; no Beam, no TF.

  Raises:
    configs.config.ConfigError: a bad config, feature spec or date (one line).
  """
  data = {flag: getattr(args, flag) for flag in ("eval_from", "as_of", "vocabulary_window_days")
          if getattr(args, flag) is not None}
  config = config_lib.load_config(args.config, overrides={"data": data} if data else None)
  return config, config.load_feature_spec()


class BuiltJob(NamedTuple):
  """The job `run` runs, built and checked, not run (`build_pipeline`).

  Attributes:
    args: our flags; config, spec: the experiment config and its feature spec;
    patterns: flag -> globs of the inputs; pipeline: a beam.Pipeline with the job's root
    composite applied; day: for --day, preprocess_day.DayPlan (as_of, previous day).
  """

  args: argparse.Namespace
  config: config_lib.ExperimentConfig
  spec: Any
  patterns: Dict[str, List[str]]
  pipeline: Any
  day: Any = None


def build_pipeline(argv: Optional[Sequence[str]] = None) -> BuiltJob:
  """The job `run(argv)` runs, applied to a new beam.Pipeline and not run; nothing is
  written. Every check `run` makes before it writes is made here, in the order of what
  each costs: our flags, the config and feature spec, then with Beam: Beam's options,
  the input globs, the schema path and, for --day, the snapshot and the previous day.
  tests/test_dataflow_dry_run.py translates it for Dataflow.
  """
  args, beam_args = parse_flags(argv)
  check_source_flags(args)
  config, spec = load_checked_config(args)
  pipeline_args = beam_pipeline_args(args, beam_args)
  patterns = input_patterns(args)
  from apache_beam.io.filesystems import FileSystems  # pylint: disable=g-import-not-at-top
  if args.schema and not FileSystems.exists(args.schema):
    raise errors.PreprocessError(f"--schema {args.schema!r}: file not found")

  # The job's modules (Beam, TensorFlow, TFDV) only now: start-up time of a user error.
  cli.import_quietly("tensorflow_data_validation")  # before transforms.stats imports it
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  day = None
  if args.day:
    from pipeline import preprocess_day  # pylint: disable=g-import-not-at-top
    day = preprocess_day.plan_day(args, config)
    label, transform = "PreprocessDay", preprocess_day.build_day_transform(
        args, patterns, config, spec, day)
  else:
    try:
      label, transform = "Preprocess", build_transform(args, patterns, config, spec)
    except ValueError as e:
      raise errors.PreprocessError(f"{args.config}: {e}") from e
  pipeline = beam.Pipeline(options=pipeline_options(pipeline_args))
  _ = pipeline | label >> transform
  return BuiltJob(args, config, spec, patterns, pipeline, day)


def run(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the job and its post-run checks.

  Args:
    argv: command-line arguments (see the module docstring); None reads sys.argv.

  Returns:
    {"counts": counts.json contents, "seconds": pipeline wall time, "schema": schema
    path, "anomalies": split -> anomaly lines}; with Dataflow's --dry_run=True, {"dry_run":
    True} after the job was built and translated (nothing is read or written).

  Raises:
    errors.PreprocessError: inputs missing, records unaccounted for, or (with
      --fail_on_anomalies) anomalies against --schema.
  """
  built = build_pipeline(argv)
  args, config, spec, patterns = built.args, built.config, built.spec, built.patterns
  if is_dry_run(built.pipeline.options):
    built.pipeline.run()
    logging.info("--dry_run: the job was built and translated for Dataflow; nothing was "
                 "submitted, read or written")
    return {"dry_run": True}
  if args.fail_on_anomalies and not args.schema:
    logging.warning("--fail_on_anomalies has no effect without --schema")
  if args.day:
    from pipeline import preprocess_day  # pylint: disable=g-import-not-at-top
    return preprocess_day.run_day(built)
  # pylint: disable=g-import-not-at-top
  from apache_beam.io.filesystems import FileSystems
  from features import success_marker
  from transforms import job
  from training import data as training_data
  from transforms import outputs as outputs_lib
  # pylint: enable=g-import-not-at-top

  paths = outputs_lib.OutputPaths(args.output)
  # Readers trust a directory only with a marker (features/success_marker.py): an old
  # one goes first, so a failure below leaves the directory unmarked.
  if success_marker.remove_success_marker(args.output):
    logging.info("Removed the success marker of a previous run in %s", args.output)
  remove_previous_shards(paths)
  split_dates = paths.split_dates
  if FileSystems.exists(split_dates):  # A file source writes none: no stale eval day.
    FileSystems.delete([split_dates])
  if FileSystems.exists(paths.counts):
    logging.warning("%s holds a previous run; its files are overwritten", args.output)
  job.write_run_inputs(paths, config)
  logging.info("Preprocessing --source %s %s -> %s (config %s, labels %s%s)", args.source,
               patterns, args.output, args.config, config.data.label_names,
               f", eval from {config.data.eval_from or 'the last day present'}"
               if args.source == LOG else
               ", train/eval by file")

  start = time.time()
  state = built.pipeline.run().wait_until_finish()
  seconds = time.time() - start
  logging.info("Pipeline finished in %.1f s with state %s", seconds, state)

  counts = job.check_run(paths, seconds)
  if args.source == LOG:
    dates = training_data.read_split_dates(args.output) or {}
    logging.info("Eval split: impressions from %s (UTC) on, chosen by the %s",
                 dates.get("eval_from"), dates.get("chosen_by"))
  check_splits_not_empty(counts, args, config)
  checked = job.check_schema(paths, spec, config.data.label_names, schema_path=args.schema,
                             fail_on_anomalies=args.fail_on_anomalies)
  if not args.schema:
    check_schema_has_features(checked["schema"], spec)
  marker = success_marker.write_success_marker(args.output, counts)
  logging.info("Every check passed; wrote %s", marker)
  return {"counts": counts, "seconds": seconds, "marker": marker, **checked}


def pipeline_options(pipeline_args: List[str]):
  """Beam's PipelineOptions of the run: cloudpickle as the pickler unless
  --pickle_library is given (DEFAULT_PICKLER), and transforms/beam_compat.py's
  workarounds: the cached DoFn introspection and options views, and the fix of the local
  multi-process runner (an unchecked Beam version is refused there, before anything is
  written)."""
  # pylint: disable=g-import-not-at-top  # start-up time (module doc)
  import apache_beam as beam
  from transforms import beam_compat
  # pylint: enable=g-import-not-at-top
  if not any(arg.split("=", 1)[0] == "--pickle_library" for arg in pipeline_args):
    pipeline_args = [*pipeline_args, f"--pickle_library={DEFAULT_PICKLER}"]
  options = beam.options.pipeline_options.PipelineOptions(pipeline_args)
  beam_compat.cache_dofn_specs()  # a fifth of a small job's CPU (docs/SCALING.md 2.6)
  beam_compat.cache_option_views()  # a third of its construction (2.7)
  try:
    mode = beam_compat.prepare_local_parallelism(options)
  except beam_compat.UnsupportedBeamModeError as e:
    raise errors.PreprocessError(str(e)) from e
  if mode:
    workers = options.view_as(beam.options.pipeline_options.DirectOptions).direct_num_workers
    logging.info(
        "DirectRunner %s with %s worker(s): Beam's timed-flush data-loss race is fixed for "
        "this run (transforms/beam_compat.py, docs/SCALING.md 2.1); the accounting check "
        "below still fails the job if any record is lost.", mode,
        workers or f"{os.cpu_count()} (one per core)")
  return options


def is_dry_run(options) -> bool:
  """Whether Beam's --dry_run=True is set in the PipelineOptions; only DataflowRunner honours it (it translates
  the job and submits nothing), so with another runner it is refused.

  Raises:
    errors.PreprocessError: --dry_run with a runner that would run the job for real.
  """
  from apache_beam.options import pipeline_options as beam_options  # pylint: disable=g-import-not-at-top
  if not options.view_as(beam_options.TestOptions).dry_run:
    return False
  runner = options.view_as(beam_options.StandardOptions).runner
  if runner not in ("DataflowRunner", "dataflow"):
    raise errors.PreprocessError(f"--dry_run is DataflowRunner's (it translates the job and "
                                 f"submits nothing); --runner {runner} would run it")
  return True


def split_setting(args: argparse.Namespace, config: config_lib.ExperimentConfig,
                  split: str) -> str:
  """The setting that decides what goes into `split`, for an error message."""
  if args.source == LOG:
    side = "at or after" if split == "eval" else "before"
    if config.data.eval_from is None:
      from training import data as training_data  # pylint: disable=g-import-not-at-top
      dates = training_data.read_split_dates(args.output) or {}
      return (f"it holds the impressions {side} {dates.get('eval_from')}, the last day "
              f"present in the logs (data.eval_from unset, config {args.config}): the logs "
              f"need at least two UTC days, or set --eval_from (or data.eval_from)")
    return (f"it holds the impressions {side} data.eval_from {config.data.eval_from} "
            f"(config {args.config}): set --eval_from (or data.eval_from) to a day inside "
            f"the logs")
  flags = [f"--{flag}" for flag in SOURCE_FLAGS[args.source]
           if flag.startswith("eval") == (split == "eval")]
  return f"its rows come from {' '.join(flags)} (--source {args.source}): check those files"


def check_splits_not_empty(counts: Dict[str, Any], args: argparse.Namespace,
                           config: config_lib.ExperimentConfig) -> None:
  """An empty train or eval split fails the job (before the success marker).

  Raises:
    errors.PreprocessError: naming the split and the setting to change.
  """
  # pylint: disable-next=g-import-not-at-top  # start-up time (module doc)
  from transforms import outputs as outputs_lib
  written = counts["impressions"]["written"]
  for split in outputs_lib.SPLITS:
    if not written.get(split):
      others = ", ".join(f"{name} {written.get(name, 0)}" for name in outputs_lib.SPLITS)
      raise errors.PreprocessError(f"the {split} split is empty ({others} examples written); "
                                   f"{split_setting(args, config, split)}")


def check_schema_has_features(schema_path: str, spec) -> None:
  """An inferred schema without any of the spec's features (a features.spec.FeatureSpec)
  fails the job.

  Raises:
    errors.PreprocessError: naming the schema and the feature spec.
  """
  # pylint: disable-next=g-import-not-at-top  # start-up time (module doc)
  from transforms import stats as stats_lib
  schema = stats_lib.load_schema(schema_path)
  if not {feature.name for feature in schema.feature} & set(spec.names):
    raise errors.PreprocessError(f"{schema_path}: the schema inferred from the train split has "
                                 f"none of the features of {spec.source} ({len(spec.names)} "
                                 f"declared); check the feature spec against the input files")


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The command line: one-line user errors, exit status 2 (pipeline/cli.py)."""
  logging.set_verbosity(logging.INFO)
  cli.run_argv_main(lambda args: run(args) and None, argv)


if __name__ == "__main__":
  main()
