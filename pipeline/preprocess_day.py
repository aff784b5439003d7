r"""pipeline.preprocess --day: one day of the incremental job, and its checks.

  python -m pipeline.preprocess --day 2026-01-05 \
      --impressions 'raw/impressions/{day}/*.jsonl.gz' --events 'raw/events/{day}/*.jsonl.gz' \
      --previous work/days/2026-01-04 --output work/days/2026-01-05 \
      [--as_of '2026-01-05T23:59:59Z'] [--vocabulary_window_days 7] [--config FILE] \
      [Beam options, as for the one-pass job]

Flow: pipeline.preprocess (flags) -> **run_day** -> transforms.daily.PreprocessDay (Beam)
-> checks -> OUTPUT/_SUCCESS.json -> pipeline.train --warm_start_from (pipeline.daily).
`{day}` in --impressions / --events stands for the day (YYYY-MM-DD). The snapshot
(--as_of) defaults to the day's last second (23:59:59 UTC). --previous is the output
of an earlier day (normally the day before): its state/ (the impressions still inside
their attribution window and their events) and its day.json (the analyzer states of the
window) are read; without it the day is a first day (nothing open before it).

After the pipeline, as the one-pass job: the accounting (counts.json, with the state
identity open_in + new == open_out + closed), a non-empty day, the TFDV schema of the
day's new impressions (inferred or validated); then the transform artifacts are merged
from the analyzer states of the last data.vocabulary_window_days days
(transforms/analyzer_state.py), OUTPUT/day.json is written, and the success marker last.
A rerun of the same day removes the earlier run's marker, shards, state, temporaries and
analyzer state first, so a day killed anywhere is redone by the same command.
"""

import argparse
import datetime
import json
import time
from typing import Any, Dict, List, NamedTuple, Optional

from absl import logging

from configs import config as config_lib
from transforms import errors

DAY_PLACEHOLDER = "{day}"


def day_start(day: str) -> int:
  """The unix seconds of a YYYY-MM-DD's UTC midnight (errors.PreprocessError if bad)."""
  try:
    date = datetime.date.fromisoformat(day)
  except (TypeError, ValueError) as e:
    raise errors.PreprocessError(f"--day {day!r}: must be YYYY-MM-DD ({e})") from e
  return int(datetime.datetime(date.year, date.month, date.day,
                               tzinfo=datetime.timezone.utc).timestamp())


def default_as_of(day: str) -> int:
  """The day's last second: its snapshot when --as_of is not given."""
  return day_start(day) + config_lib.DAY_S - 1


def day_patterns(patterns: List[str], day: str) -> List[str]:
  """The globs with `{day}` replaced by the day."""
  return [pattern.replace(DAY_PLACEHOLDER, day) for pattern in patterns]


def read_day_file(output_dir: str) -> Dict[str, Any]:
  """The day.json of a day's output (errors.PreprocessError naming it when absent)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from transforms import outputs as outputs_lib  # pylint: disable=g-import-not-at-top
  path = outputs_lib.OutputPaths(output_dir).day
  if not tf.io.gfile.exists(path):
    raise errors.PreprocessError(f"--previous {output_dir}: no {outputs_lib.DAY_FILE}; it "
                                 f"is not the output of pipeline.preprocess --day")
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def check_previous(previous: str, day: str, as_of: int) -> Dict[str, Any]:
  """The previous day's day.json, after checking it is complete and earlier.

  Raises:
    errors.PreprocessError: no success marker, not a daily output, not earlier.
  """
  from features import success_marker  # pylint: disable=g-import-not-at-top
  try:
    success_marker.check_success_marker(previous)
  except success_marker.IncompleteOutputError as e:
    raise errors.PreprocessError(f"--previous: {e}") from e
  info = read_day_file(previous)
  if info["day"] >= day or info["as_of"] >= as_of:
    raise errors.PreprocessError(
        f"--previous {previous} is day {info['day']} (snapshot {info['as_of']}); it must be "
        f"earlier than --day {day} (snapshot {as_of})")
  if day_start(day) - day_start(info["day"]) > config_lib.DAY_S:
    logging.warning("--previous %s is day %s, not the day before %s: the days between are "
                    "not in this day's state", previous, info["day"], day)
  return info


def remove_previous_day_outputs(paths) -> None:
  """Deletes a previous run's shards and temporaries (every `outputs.shard_patterns`
  glob), analyzer state and day.json: a rerun leaves only its own files."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top
  preprocess.remove_previous_shards(paths)
  for path in (paths.analyzer_state, paths.day):
    for found in tf.io.gfile.glob(path) + tf.io.gfile.glob(path + ".tmp-*"):
      tf.io.gfile.remove(found)


def check_carried_state(counts: Dict[str, Any], previous_info: Optional[Dict[str, Any]]
                        ) -> None:
  """The link between two days: the impressions this day read as open are exactly those
  the previous day left open (its day.json's state.open_out); a first day reads none.
  With each day's own identity (open_in + new == open_out + closed), every impression is
  then written once as new and once as closed, or is still open, over the whole run.

  Raises:
    errors.PreprocessError: naming both numbers.
  """
  carried = previous_info["state"]["open_out"] if previous_info else 0
  read = counts["state"]["open_in"]
  if read != carried:
    raise errors.PreprocessError(
        f"read {read} open impressions from the previous day's state, which holds "
        f"{carried} (its day.json state.open_out): records lost or double-counted between "
        f"days")


def merge_window(paths, spec, config: config_lib.ExperimentConfig,
                 previous_info: Optional[Dict[str, Any]]) -> List[str]:
  """Writes OUTPUT/transform/ from the analyzer states of the window's days; returns
  the states' paths, oldest first."""
  # pylint: disable=g-import-not-at-top
  from transforms import analyze
  from transforms import analyzer_state
  # pylint: enable=g-import-not-at-top
  window = config.data.vocabulary_window_days
  earlier = list(previous_info["analyzer_states"]) if previous_info else []
  states = (earlier[-(window - 1):] if window > 1 else []) + [paths.analyzer_state]
  try:
    merged = analyzer_state.merge_states(  # one day's state in memory at a time
        (analyzer_state.read_state(path, spec) for path in states), spec)
  except analyzer_state.AnalyzerStateError as e:
    raise errors.PreprocessError(str(e)) from e
  analyze.write_artifacts(merged, paths.transform_dir)
  logging.info("Transform artifacts from the analyzer states of %d day(s) (window %d): %s",
               len(states), window, ", ".join(states))
  return states


class DayPlan(NamedTuple):
  """What a day's run is: its snapshot (unix s) and the previous day's day.json (None on
  a first day)."""

  as_of: int
  previous_info: Optional[Dict[str, Any]]


def plan_day(args: argparse.Namespace, config: config_lib.ExperimentConfig) -> DayPlan:
  """The day's snapshot (--as_of, else the day's last second) and the checked previous
  day (errors.PreprocessError naming what is wrong)."""
  as_of = config.data.as_of_timestamp or default_as_of(args.day)
  if as_of < day_start(args.day):
    raise errors.PreprocessError(f"--as_of {config.data.as_of} is before --day {args.day}")
  previous_info = check_previous(args.previous, args.day, as_of) if args.previous else None
  return DayPlan(as_of, previous_info)


def build_day_transform(args: argparse.Namespace, patterns: Dict[str, List[str]],
                        config: config_lib.ExperimentConfig, spec, plan: DayPlan):
  """The day's root composite, transforms.daily.PreprocessDay."""
  from transforms import daily  # pylint: disable=g-import-not-at-top
  kwargs = {}
  if args.progress_interval_s is not None:
    kwargs["progress_interval_s"] = args.progress_interval_s
  if args.join_buckets is not None:
    kwargs["num_buckets"] = args.join_buckets
  return daily.PreprocessDay(patterns["impressions"], patterns["events"], args.previous,
                             args.output, config.data, spec, plan.as_of, **kwargs)


def run_day(built) -> Dict[str, Any]:
  """Runs one day's built job (pipeline.preprocess.build_pipeline) and its checks (module
  docstring); returns as pipeline.preprocess.run does, plus "day"."""
  # pylint: disable=g-import-not-at-top
  import tensorflow as tf
  from features import success_marker
  from transforms import daily
  from transforms import job
  from transforms import outputs as outputs_lib
  # pylint: enable=g-import-not-at-top
  args, config, spec, patterns = built.args, built.config, built.spec, built.patterns
  as_of, previous_info = built.day
  paths = outputs_lib.OutputPaths(args.output)
  if success_marker.remove_success_marker(args.output):
    logging.info("Removed the success marker of a previous run in %s", args.output)
  remove_previous_day_outputs(paths)
  job.write_run_inputs(paths, config)
  logging.info("Preprocessing day %s (snapshot %s, previous %s) from %s -> %s",
               args.day, config_lib.utc_iso(as_of), args.previous or "none (a first day)",
               patterns, args.output)
  start = time.time()
  state = built.pipeline.run().wait_until_finish()
  seconds = time.time() - start
  logging.info("Pipeline finished in %.1f s with state %s", seconds, state)

  counts = job.check_run(paths, seconds)
  check_carried_state(counts, previous_info)
  if not counts["impressions"]["written"].get("train"):
    raise errors.PreprocessError(
        f"day {args.day}: no impression written (--impressions {patterns['impressions']}: "
        f"read {counts['impressions']['read']}, dead-lettered "
        f"{sum(counts['impressions']['dead_letter'].values())})")
  checked = job.check_schema(paths, spec, config.data.label_names, schema_path=args.schema,
                             fail_on_anomalies=args.fail_on_anomalies, splits=("train",))
  states = merge_window(paths, spec, config, previous_info)
  with tf.io.gfile.GFile(paths.day, "w") as f:
    json.dump({"day": args.day, "as_of": as_of, "previous": args.previous,
               "vocabulary_window_days": config.data.vocabulary_window_days,
               "analyzer_states": states,
               "state": counts[daily.STATE]}, f, indent=1, sort_keys=True)
  marker = success_marker.write_success_marker(args.output, counts)
  logging.info("Day %s: every check passed; wrote %s", args.day, marker)
  return {"counts": counts, "seconds": seconds, "marker": marker, "day": args.day,
          **checked}
