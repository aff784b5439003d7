r"""Entry point: the daily loop, one day at a time: preprocess, train, export, evaluate.

  python -m pipeline.daily --raw RAW --workdir WORK --config configs/esmm.yaml \
      --start 2026-01-02 --end 2026-01-06 [--history_days 2] [--truth RAW] \
      [--validation_fraction 0.1] [Beam options for pipeline.preprocess, e.g. --local_workers 1]

RAW is a daily layout (pipeline.simulate --layout daily): RAW/impressions/YYYY-MM-DD/* the
day's impressions, RAW/events/YYYY-MM-DD/* the events that arrived that day. For each day D
from --start to --end:

  1. preprocess  pipeline.preprocess --day D --previous WORK/days/<D-1> -> WORK/days/<D>/
  2. train       warm-started from WORK/models/<D-1> on day D's new impressions; a day
                 without an earlier model (the first) trains from scratch on the union of
                 the --history_days K days up to D (training/day_window.py's view,
                 WORK/history/<D>/) -> WORK/models/<D>/ (training.trainer's layout).
                 With a config's feedback.method (docs/MODELS.md, "Delayed feedback"):
                 on the method's stream of day D, or of each history day in turn
                 (training/feedback_training.py; the oracle reads --truth's outcomes)
  3. export      the model's SavedModel published as WORK/serving/<YYYYMMDD of D>/
                 (hard links into a temporary name, then one rename)
  4. evaluate    the new version on day D+1's new impressions (WORK/days/<D+1>, preprocessed
                 here when RAW has that day; against the simulator's truth when there is
                 one) -> WORK/evals/<D>.json. Without day D+1 in RAW yet, the row has no
                 metrics; the run of a later day evaluates it then (run every day as
                 --start D --end D: day D-1's model is scored on D, its row printed again)
  5. row         one line printed; WORK/daily.jsonl rewritten with every finished day's row
                 (columns: pipeline/daily_state.py)

WORK's layout, the stage records and the rows: pipeline/daily_state.py. WORK/.lock is held
while a loop runs: a second one on the same WORK is refused.

Validation: each training holds out --validation_fraction of its examples (by a stable
hash of impression_id; default the config's train.validation_fraction, else 0.1) for early
stopping and the output calibration; the config's train.validation_from is replaced (a
date cannot split a single day).

Idempotent and resumable. Each finished stage leaves WORK/stages/<D>/<stage>.json (its
outputs, counts, wall and CPU seconds; written to a temporary name and renamed), and a
day's stage with a record is skipped: rerunning a finished range prints the same rows and
recomputes nothing. A run first removes what a killed run left: a day folder, model or
history view without its stage record, a temporary version under serving/, temporary
records. A killed stage is thus redone from its start (a killed training restarts from
scratch, not from its backup), by the same command, with the same result as an
uninterrupted run when the config sets train.deterministic_ops (tests/test_daily_loop.py
kills the Beam stage and the training with SIGKILL and compares). Redoing a stage removes
the records of the day's later stages. Serving readers (pipeline.predict, pipeline.evaluate
--saved_model WORK/serving) always see the newest complete version: a version appears by
one rename (serving/versions.py ignores the temporary names).

User errors (bad or reversed dates, a missing RAW day folder, a config that does not fit,
--history_days longer than data.vocabulary_window_days) end in one line `error: ...`
before TensorFlow or Beam is imported (pipeline/cli.py). WORK is a local directory.
"""

import contextlib
import dataclasses
import datetime
import os
import shutil
import sys
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence

from absl import logging

from configs import config as config_lib
from features import success_marker
from pipeline import cli
from pipeline import daily_state

STAGES = daily_state.STAGES
DEFAULT_VALIDATION_FRACTION = 0.1


def shift_day(day: str, days: int) -> str:
  return (datetime.date.fromisoformat(day) + datetime.timedelta(days=days)).isoformat()


def day_range(first: str, last: str) -> List[str]:
  """The days from FIRST to LAST, both included."""
  count = (datetime.date.fromisoformat(last) - datetime.date.fromisoformat(first)).days
  return [shift_day(first, k) for k in range(count + 1)]


@dataclasses.dataclass(frozen=True)
class Loop:
  """One invocation's settings, checked (`check_settings`)."""

  layout: daily_state.Layout
  raw: str
  config_path: str
  config: config_lib.ExperimentConfig  # train.validation_* replaced (module docstring)
  days: List[str]                      # --start .. --end
  history_days: int
  truth: Optional[str]
  beam_args: List[str]


# ---- flags and the checks made before TensorFlow and Beam ----


def parse_flags(argv: Sequence[str]):
  """(args, Beam options passed on to pipeline.preprocess)."""
  parser = cli.ArgumentParser(prog="python -m pipeline.daily", description=(
      "Each day: preprocess, train (warm-started), export a version, evaluate on the next "
      "day; one row per day (docs/COMMANDS.md)."))
  parser.add_argument("--raw", required=True, help="Daily raw logs: RAW/impressions/"
                      "YYYY-MM-DD/*, RAW/events/YYYY-MM-DD/* (pipeline.simulate --layout daily).")
  parser.add_argument("--workdir", required=True, help="Local folder for every output.")
  parser.add_argument("--config", default=config_lib.DEFAULT_CONFIG, help="Experiment YAML.")
  parser.add_argument("--start", required=True, help="First day to train a model for.")
  parser.add_argument("--end", required=True, help="Last day (included).")
  parser.add_argument("--history_days", type=int, default=1, help="The first model (no "
                      "earlier one in WORKDIR) trains from scratch on this many days up to "
                      "its day.")
  parser.add_argument("--truth", default=None, help="Simulator output or truth file for "
                      "the gaps to Bayes (default RAW when RAW/truth exists).")
  parser.add_argument("--validation_fraction", type=float, default=None, help="Held out "
                      "of each training's examples (default the config's, else 0.1).")
  return parser.parse_known_args(list(argv))


def _day(flag: str, value: str) -> str:
  try:
    return datetime.date.fromisoformat(value).isoformat()
  except ValueError as e:
    raise cli.UserError(f"{flag} {value!r}: must be a date YYYY-MM-DD ({e})") from e


def check_settings(args, beam_args: List[str]) -> Loop:
  """Every check that needs neither TensorFlow nor Beam; returns the Loop.

  Raises:
    cli.UserError, configs.config.ConfigError: one line naming the flag, folder or setting.
  """
  start, end = _day("--start", args.start), _day("--end", args.end)
  if end < start:
    raise cli.UserError(f"--end {end} is before --start {start}")
  if args.history_days < 1:
    raise cli.UserError(f"--history_days {args.history_days}: must be >= 1")
  if "://" in args.workdir:
    raise cli.UserError(f"--workdir {args.workdir}: must be a local folder")
  first = shift_day(start, 1 - args.history_days)
  if "://" not in args.raw:
    for kind in ("impressions", "events"):
      missing = [day for day in day_range(first, end)
                 if not os.path.isdir(os.path.join(args.raw, kind, day))]
      if missing:
        raise cli.UserError(
            f"--raw {args.raw}: no {kind}/<day> folder for {', '.join(missing)} (needed "
            f"for --start {start} --end {end} with --history_days {args.history_days}; "
            f"a daily layout is pipeline.simulate --layout daily)")
  base = config_lib.load_config(args.config)
  fraction = args.validation_fraction
  if fraction is None:
    fraction = base.train.validation_fraction or DEFAULT_VALIDATION_FRACTION
  if not 0.0 < fraction < 1.0:
    raise cli.UserError(f"--validation_fraction {fraction}: must be in (0, 1)")
  config = config_lib.load_config(args.config, overrides={
      "train": {"validation_from": None, "validation_fraction": fraction}})
  config.load_feature_spec()
  window = config.data.vocabulary_window_days
  if args.history_days > window:
    raise cli.UserError(
        f"--history_days {args.history_days} is longer than data.vocabulary_window_days "
        f"{window} of {args.config}: the first model's vocabularies would miss the oldest "
        f"days' tokens; set data.vocabulary_window_days >= {args.history_days}")
  truth = args.truth
  if truth is None and os.path.isdir(os.path.join(args.raw, "truth")):
    truth = args.raw
  if truth is not None and "://" not in truth and not os.path.exists(truth):
    raise cli.UserError(f"--truth {truth}: no such file or folder")
  if config.feedback.method == "oracle" and truth is None:
    raise cli.UserError(f"{args.config}: feedback.method 'oracle' trains on the final "
                        f"labels, which only the simulator's outcomes have: give --truth "
                        f"(a simulator output) or a RAW with truth/")
  return Loop(daily_state.Layout(os.path.abspath(args.workdir)), args.raw, args.config,
              config, day_range(start, end), args.history_days, truth, list(beam_args))


def run_stage(loop: Loop, day: str, stage: str, work) -> Dict[str, Any]:
  """The day's stage record: read when the stage is done, else `work()` (-> record)
  measured and recorded, after removing the records of the day's later stages."""
  record = daily_state.read_record(loop.layout, day, stage)
  if record is not None and not _redo(loop, day, stage, record):
    logging.info("%s %s: done earlier (%s), skipped", day, stage, loop.layout.record(day, stage))
    return record
  for later in STAGES[STAGES.index(stage) + 1:]:
    daily_state.remove_path(loop.layout.record(day, later))
  with daily_state.measured() as cost:
    record = work()
  record.update(cost)
  daily_state.write_record(loop.layout, day, stage, record)
  return record


def _redo(loop: Loop, day: str, stage: str, record: Dict[str, Any]) -> bool:
  """Whether a recorded stage must run again: its output changed, or (evaluate) the next
  day, missing then, has arrived."""
  layout = loop.layout
  if stage == "preprocess":
    try:
      success_marker.check_success_marker(layout.day_dir(day))
    except success_marker.IncompleteOutputError as e:
      logging.warning("%s: redone (%s)", layout.day_dir(day), e)
      return True
  if stage == "export":
    from serving import versions  # pylint: disable=g-import-not-at-top
    return bool(versions.missing_parts(layout.version_dir(day)))
  if stage == "evaluate":
    return record["eval_day"] is None and has_raw_day(loop, shift_day(day, 1))
  return False


def has_raw_day(loop: Loop, day: str) -> bool:
  """Whether RAW has the day's impressions and events folders."""
  isdir = os.path.isdir
  if "://" in loop.raw:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # loaded by now
    isdir = tf.io.gfile.isdir
  return all(isdir(os.path.join(loop.raw, kind, day)) for kind in ("impressions", "events"))


# ---- the stages ----


def preprocess_day(loop: Loop, day: str) -> Dict[str, Any]:
  """Stage 1: pipeline.preprocess --day (chained to the day before when it is done)."""
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top
  layout = loop.layout
  before = shift_day(day, -1)
  done = daily_state.read_record(layout, before, "preprocess")
  previous = layout.day_dir(before) if done else None
  argv = ["--day", day, "--output", layout.day_dir(day), "--config", loop.config_path,
          "--impressions", os.path.join(loop.raw, "impressions", "{day}", "*"),
          "--events", os.path.join(loop.raw, "events", "{day}", "*"),
          *(["--previous", previous] if previous else []), *loop.beam_args]
  start = time.perf_counter()
  counts = preprocess.run(argv)["counts"]
  columns = daily_state.count_columns(counts)
  logging.info("%s preprocess: %d impressions read (%d new, %d dead-lettered), %d events "
               "(%d attributed), %d updated, %d closed, %d still open; %.0f records/s",
               day, columns["impressions_read"], columns["impressions_written"],
               columns["impressions_dead_letter"], columns["events_read"],
               columns["events_attributed"], columns["updated"], columns["closed"],
               columns["open_out"], (columns["impressions_read"] + columns["events_read"])
               / max(time.perf_counter() - start, 1e-9))
  return {"counts": counts, "previous": previous}


def train_day(loop: Loop, day: str) -> Dict[str, Any]:
  """Stage 2: warm-started from the day before's model, else from scratch on the history."""
  # pylint: disable=g-import-not-at-top
  import tf_keras
  from evaluation import report
  from training import day_window
  from training import trainer
  # pylint: enable=g-import-not-at-top
  layout = loop.layout
  before = shift_day(day, -1)
  done = daily_state.read_record(layout, before, "train")
  warm_from = layout.model_dir(before) if done else None
  if warm_from:
    trained_on, data_dir = [day], layout.day_dir(day)
  else:
    trained_on = [shift_day(day, -k) for k in reversed(range(loop.history_days))]
    data_dir = layout.day_dir(day)
    if len(trained_on) > 1:
      data_dir = layout.history_dir(day)
      day_window.write_window_view(data_dir, [layout.day_dir(d) for d in trained_on])
  # A killed training's backup, logs, half export:
  daily_state.remove_path(layout.model_dir(day))
  tf_keras.backend.clear_session()
  start = time.perf_counter()
  with contextlib.redirect_stdout(sys.stderr):  # Keras' epoch lines: stdout is the table
    if loop.config.feedback.enabled:  # the method's stream of each day, oldest first
      from training import feedback_inputs  # pylint: disable=g-import-not-at-top
      from training import feedback_training  # pylint: disable=g-import-not-at-top
      data_dir = layout.day_dir(day)
      final = (feedback_inputs.final_labels_of(loop.truth, loop.config.data.conversion_label)
               if loop.config.feedback.method == "oracle" else None)
      result = feedback_training.train_on_streams(
          loop.config, [layout.day_dir(d) for d in trained_on], layout.model_dir(day),
          warm_start_from=warm_from, final_labels=final)
    else:
      result = trainer.train_and_export(loop.config, data_dir, layout.model_dir(day),
                                        warm_start_from=warm_from)
  metrics = report.json_ready(result.metrics)
  steps = metrics["final_step"] - metrics["initial_step"]
  logging.info("%s train (%s on %s): %d examples, %d validation, %d steps; %.0f examples/s "
               "over the stage", day, "warm from " + warm_from if warm_from else "scratch",
               ", ".join(trained_on), metrics["train_examples"],
               metrics["validation_examples"], steps, steps * loop.config.train.batch_size
               / max(time.perf_counter() - start, 1e-9))
  return {"mode": "warm" if warm_from else "scratch", "trained_on": trained_on,
          "data": data_dir, "warm_start_from": warm_from, "metrics": metrics}


def publish_version(source: str, target: str) -> str:
  """Makes TARGET a copy of the SavedModel version SOURCE in one rename: hard links (a
  copy across file systems) into TARGET.tmp-<uuid>, then renamed. An earlier TARGET is
  first renamed away, so a reader meanwhile sees the version before it."""
  base = os.path.dirname(target)
  os.makedirs(base, exist_ok=True)
  temporary = f"{target}{daily_state.TMP_MARK}{uuid.uuid4().hex}"

  def link(src, dst):
    try:
      os.link(src, dst)
    except OSError:
      shutil.copy2(src, dst)

  shutil.copytree(source, temporary, copy_function=link)
  if os.path.exists(target):
    replaced = f"{target}{daily_state.TMP_MARK}replaced-{uuid.uuid4().hex}"
    os.rename(target, replaced)
    os.rename(temporary, target)
    shutil.rmtree(replaced)
  else:
    os.rename(temporary, target)
  return target


def export_day(loop: Loop, day: str) -> Dict[str, Any]:
  """Stage 3: the model's newest complete export published as serving/<version>."""
  from serving import versions  # pylint: disable=g-import-not-at-top
  layout = loop.layout
  source = versions.newest_complete_version(
      os.path.join(layout.model_dir(day), versions.EXPORT_SUBDIR))
  target = publish_version(source, layout.version_dir(day))
  logging.info("%s export: %s -> %s (serving base %s)", day, source, target, layout.serving)
  return {"version": daily_state.day_version(day), "path": target, "source": source}


def evaluate_day(loop: Loop, day: str) -> Dict[str, Any]:
  """Stage 4: the day's version scored on day D+1's new impressions (when preprocessed)."""
  next_day = shift_day(day, 1)
  layout = loop.layout
  if daily_state.read_record(layout, next_day, "preprocess") is None:
    logging.info("%s evaluate: no day %s in %s yet; no evaluation", day, next_day, loop.raw)
    return {"eval_day": None, "examples": None, "tasks": None}
  # pylint: disable=g-import-not-at-top
  from evaluation import report
  from evaluation import runner
  # pylint: enable=g-import-not-at-top
  start = time.perf_counter()
  result = runner.evaluate(layout.version_dir(day), layout.day_dir(next_day), split="train",
                           truth_path=loop.truth, config_path=loop.config_path)
  runner.write_report(result, layout.eval_report(day))
  logging.info("%s evaluate on %s: %d examples (%.0f/s)%s", day, next_day, result["examples"],
               result["examples"] / max(time.perf_counter() - start, 1e-9),
               " against the truth in " + loop.truth if loop.truth else "")
  return {"eval_day": next_day, "examples": result["examples"],
          "tasks": report.json_ready(result["tasks"]), "report": layout.eval_report(day)}


def run_day(loop: Loop, day: str) -> List[Dict[str, Any]]:
  """The day's stages (each skipped when done); returns the rows to print: the day
  before's when its evaluation waited for this day's data (run the loop every day with
  --start D --end D: day D-1's model is evaluated on D then), then the day's."""
  layout = loop.layout
  run_stage(loop, day, "preprocess", lambda: preprocess_day(loop, day))
  rows = []
  before = shift_day(day, -1)
  waiting = daily_state.read_record(layout, before, "evaluate")
  if waiting is not None and waiting["eval_day"] is None:
    run_stage(loop, before, "evaluate", lambda: evaluate_day(loop, before))
    rows.append(daily_state.row_of(layout, before))
  run_stage(loop, day, "train", lambda: train_day(loop, day))
  run_stage(loop, day, "export", lambda: export_day(loop, day))
  next_day = shift_day(day, 1)
  if has_raw_day(loop, next_day):
    run_stage(loop, next_day, "preprocess", lambda: preprocess_day(loop, next_day))
  run_stage(loop, day, "evaluate", lambda: evaluate_day(loop, day))
  return rows + [daily_state.row_of(layout, day)]


def run(argv: Optional[Sequence[str]] = None, out=None) -> List[Dict[str, Any]]:
  """Runs the loop (module docstring); prints the table to OUT (default stdout) and
  returns the rows of --start .. --end."""
  out = out or sys.stdout
  args, beam_args = parse_flags(sys.argv[1:] if argv is None else argv)
  loop = check_settings(args, beam_args)
  layout = loop.layout
  os.makedirs(layout.workdir, exist_ok=True)
  with daily_state.workdir_lock(layout):
    return _run_days(loop, out)


def _run_days(loop: Loop, out) -> List[Dict[str, Any]]:
  layout = loop.layout
  daily_state.remove_leftovers(layout)
  history = [shift_day(loop.days[0], -k) for k in reversed(range(1, loop.history_days))]
  for day in history:
    run_stage(loop, day, "preprocess", lambda day=day: preprocess_day(loop, day))
  out.write(daily_state.format_header() + "\n")
  rows = []
  for day in loop.days:
    printed = run_day(loop, day)
    rows.append(printed[-1])
    out.writelines(daily_state.format_row(row) + "\n" for row in printed)
    out.flush()
    daily_state.write_table(layout.table, daily_state.finished_rows(layout))
  logging.info("Days %s..%s done: table %s, serving base %s", loop.days[0], loop.days[-1],
               layout.table, layout.serving)
  return rows


def main(argv: Optional[Sequence[str]] = None) -> None:
  """The command line: one-line user errors, exit status 2 (pipeline/cli.py)."""
  logging.set_verbosity(logging.INFO)
  cli.run_argv_main(lambda args: run(args[1:]) and None, argv)


if __name__ == "__main__":
  main()
