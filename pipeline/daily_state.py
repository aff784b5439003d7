"""The daily loop's WORKDIR: its layout, the stage records, the rows and the table.

Flow: pipeline.daily runs a day's stages; each finished stage leaves a record,
WORKDIR/stages/<D>/<stage>.json (`write_record`: its outputs, counts, wall and CPU seconds
from `measured`; written under a temporary name, then renamed), the loop's only state:
a stage with a record is done. **make_row** turns a day's records into its row: the printed
line (`format_row`) and WORKDIR/daily.jsonl (`write_table`: every finished day's row, by
day, rewritten whole after each day, so a rerun never duplicates a row). What a killed run
left (a day folder, model or history view without its record, a temporary version or
record) is found by `remove_leftovers`; `workdir_lock` keeps a second loop out. No
TensorFlow here.

WORKDIR (`Layout`):
  days/<D>/              pipeline.preprocess --day output (its _SUCCESS.json)
  history/<D>/           the first model's window view (training/day_window.py)
  models/<D>/            the trainer's MODEL_DIR (its warm_start/ starts day D+1)
  serving/<YYYYMMDD>/    one SavedModel version per day (`day_version`): the serving base
  evals/<D>.json         pipeline.evaluate's report of day D's model on day D+1
  stages/<D>/<stage>.json, daily.jsonl, .lock

A row (daily.jsonl, one JSON object a line; null = not measured):
  day                 the model's last training day D (YYYY-MM-DD)
  mode                "scratch" (no earlier model: trained from fresh weights on the
                      history days) or "warm" (started from day D-1's model)
  trained_on          the days trained on (the history, or [D])
  version             its SavedModel version under WORKDIR/serving/ (YYYYMMDD of D)
  impressions_read, impressions_written, impressions_dead_letter, events_read,
  events_attributed, events_dead_letter, updated, closed, open_out
                      day D's counts.json (pipeline.preprocess --day)
  train_examples, validation_examples
                      the examples trained on / held out for early stopping and the
                      output calibration (a fraction of them, by impression-id hash)
  final_step          the optimizer's step count at the end (carried over when warm)
  calibration         the output calibration fitted (train.calibration) or "none"
  eval_day, eval_examples
                      day D+1 (its new impressions, labels at D+1's snapshot) and how
                      many were scored; null when RAW has no day D+1 yet
  <task>_auc, <task>_log_loss, <task>_calibration
                      for task in ctr, cvr (clicked rows), ctcvr, on day D+1
                      (evaluation/report.py; calibration = sum predicted / sum labels)
  <task>_auc_gap, <task>_calibration_vs_truth
                      against the simulator's truth when there is one (Bayes AUC minus
                      the model's; sum predicted / sum true probability)
  <stage>_wall_s, <stage>_cpu_s
                      for stage in preprocess (day D's Beam job), train (including
                      the trainer's SavedModel write), export (publishing the version
                      into the serving base), evaluate; CPU = user + system seconds of
                      the process and its waited-for children
"""

import contextlib
import dataclasses
import fcntl
import functools
import glob
import json
import math
import os
import resource
import shutil
import time
import uuid
from typing import Any, Dict, Iterator, List, Optional, Sequence

from absl import logging

from pipeline import cli

STAGES = ("preprocess", "train", "export", "evaluate")
TASKS = ("ctr", "cvr", "ctcvr")
TASK_METRICS = ("auc", "log_loss", "calibration")
TRUTH_METRICS = ("auc_gap", "calibration_vs_truth")
COUNT_COLUMNS = ("impressions_read", "impressions_written", "impressions_dead_letter",
                 "events_read", "events_attributed", "events_dead_letter", "updated",
                 "closed", "open_out")
COLUMNS = (("day", "mode", "trained_on", "version") + COUNT_COLUMNS
           + ("train_examples", "validation_examples", "final_step", "calibration",
              "eval_day", "eval_examples")
           + tuple(f"{task}_{name}" for task in TASKS for name in TASK_METRICS + TRUTH_METRICS)
           + tuple(f"{stage}_{kind}" for stage in STAGES for kind in ("wall_s", "cpu_s")))
# The printed line: (header, column, format).
PRINTED = (("day", "day", "{}"), ("mode", "mode", "{}"), ("train", "train_examples", "{}"),
           ("eval", "eval_examples", "{}"), ("ctr_auc", "ctr_auc", "{:.4f}"),
           ("ctcvr_auc", "ctcvr_auc", "{:.4f}"), ("ctcvr_gap", "ctcvr_auc_gap", "{:.4f}"),
           ("ctcvr_cal", "ctcvr_calibration", "{:.3f}"),
           ("cal_truth", "ctcvr_calibration_vs_truth", "{:.3f}"),
           *((f"{stage[:5]}_s", f"{stage}_wall_s", "{:.1f}") for stage in STAGES),
           ("cpu_s", "cpu_s", "{:.1f}"))

TMP_MARK = ".tmp-"


def day_version(day: str) -> int:
  """The serving version number of day D's model: YYYYMMDD (later days are larger)."""
  return int(day.replace("-", ""))


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where the loop keeps each day's outputs under WORKDIR (module docstring)."""

  workdir: str

  def _path(self, *parts: str) -> str:
    return os.path.join(self.workdir, *parts)

  def day_dir(self, day: str) -> str:
    return self._path("days", day)

  def history_dir(self, day: str) -> str:
    return self._path("history", day)

  def model_dir(self, day: str) -> str:
    return self._path("models", day)

  @property
  def serving(self) -> str:
    return self._path("serving")

  def version_dir(self, day: str) -> str:
    return os.path.join(self.serving, str(day_version(day)))

  def eval_report(self, day: str) -> str:
    return self._path("evals", f"{day}.json")

  def record(self, day: str, stage: str) -> str:
    return self._path("stages", day, f"{stage}.json")

  @property
  def table(self) -> str:
    return self._path("daily.jsonl")

  @property
  def lock(self) -> str:
    return self._path(".lock")


@contextlib.contextmanager
def measured() -> Iterator[Dict[str, float]]:
  """Yields a dict that gets "wall_s" and "cpu_s" (user + system seconds of this process
  and its waited-for children) of the block."""
  def cpu():
    own, children = (resource.getrusage(who) for who in (resource.RUSAGE_SELF,
                                                          resource.RUSAGE_CHILDREN))
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime
  cost: Dict[str, float] = {}
  wall, start = time.perf_counter(), cpu()
  yield cost
  cost.update(wall_s=round(time.perf_counter() - wall, 3), cpu_s=round(cpu() - start, 3))


def read_record(layout: Layout, day: str, stage: str) -> Optional[Dict[str, Any]]:
  path = layout.record(day, stage)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def write_record(layout: Layout, day: str, stage: str, record: Dict[str, Any]) -> None:
  """Writes a stage's record under a temporary name, then renames it: the stage is done."""
  path = layout.record(day, stage)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  temporary = f"{path}{TMP_MARK}{uuid.uuid4().hex}"
  with open(temporary, "w") as f:
    json.dump(record, f, indent=1, allow_nan=False)
  os.replace(temporary, path)


def remove_path(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path)
  elif os.path.lexists(path):
    os.remove(path)


def remove_leftovers(layout: Layout) -> List[str]:
  """Removes what a killed run left (module docstring); returns the removed paths."""
  stale = glob.glob(os.path.join(layout.serving, f"*{TMP_MARK}*"))
  stale += glob.glob(os.path.join(layout.workdir, "stages", "*", f"*{TMP_MARK}*"))
  stale += glob.glob(f"{layout.table}{TMP_MARK}*")
  for folder, stage in (("days", "preprocess"), ("history", "train"), ("models", "train")):
    for path in sorted(glob.glob(os.path.join(layout.workdir, folder, "*"))):
      if read_record(layout, os.path.basename(path), stage) is None:
        stale.append(path)
  for path in stale:
    remove_path(path)
  if stale:
    logging.info("Removed what an interrupted run left: %s", ", ".join(stale))
  return stale


@contextlib.contextmanager
def workdir_lock(layout: Layout) -> Iterator[None]:
  """An exclusive lock on WORKDIR/.lock for the run (released when the process ends,
  also when it is killed): a second loop on the same WORKDIR is refused."""
  with open(layout.lock, "w") as lock:
    try:
      fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as e:
      raise cli.UserError(f"--workdir {layout.workdir}: another pipeline.daily runs in it "
                          f"({layout.lock} is locked)") from e
    yield


def row_of(layout: Layout, day: str) -> Optional[Dict[str, Any]]:
  """The day's row, or None while one of its stages has no record."""
  records = {stage: read_record(layout, day, stage) for stage in STAGES}
  return make_row(day, records) if all(records.values()) else None


def finished_rows(layout: Layout) -> List[Dict[str, Any]]:
  """The rows of every day of WORKDIR whose stages are all recorded, by day."""
  days = sorted(os.path.basename(path)
                for path in glob.glob(os.path.join(layout.workdir, "stages", "*")))
  return [row for row in map(functools.partial(row_of, layout), days) if row]


def count_columns(counts: Dict[str, Any]) -> Dict[str, int]:
  """COUNT_COLUMNS of a day's counts.json."""
  impressions, events, state = counts["impressions"], counts["events"], counts["state"]
  return {"impressions_read": impressions["read"],
          "impressions_written": impressions["written"]["train"],
          "impressions_dead_letter": sum(impressions["dead_letter"].values()),
          "events_read": events["read"], "events_attributed": events["attributed"],
          "events_dead_letter": sum(events["dead_letter"].values()),
          "updated": state["updated"], "closed": state["closed"],
          "open_out": state["open_out"]}


def metric_columns(tasks: Optional[Dict[str, Any]]) -> Dict[str, Optional[float]]:
  """The <task>_<metric> columns of an evaluation report's "tasks" (None: not measured)."""
  row = {}
  for task in TASKS:
    result = (tasks or {}).get(task, {})
    for name in TASK_METRICS:
      row[f"{task}_{name}"] = result.get(name)
    for name in TRUTH_METRICS:
      row[f"{task}_{name}"] = (result.get("truth") or {}).get(name)
  return row


def make_row(day: str, records: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
  """The row of DAY from its stage records (stage -> record; pipeline.daily writes them:
  every record has "wall_s" and "cpu_s", preprocess "counts", train "mode", "trained_on",
  "metrics", export "version", evaluate "eval_day", "examples", "tasks")."""
  train, evaluate = records["train"], records.get("evaluate") or {}
  metrics = train["metrics"]
  row = {"day": day, "mode": train["mode"], "trained_on": train["trained_on"],
         "version": records["export"]["version"],
         **count_columns(records["preprocess"]["counts"]),
         "train_examples": metrics["train_examples"],
         "validation_examples": metrics["validation_examples"],
         "final_step": metrics["final_step"],
         "calibration": (metrics.get("calibration") or {}).get("method", "none"),
         "eval_day": evaluate.get("eval_day"), "eval_examples": evaluate.get("examples"),
         **metric_columns(evaluate.get("tasks"))}
  for stage in STAGES:
    record = records.get(stage) or {}
    row[f"{stage}_wall_s"] = record.get("wall_s")
    row[f"{stage}_cpu_s"] = record.get("cpu_s")
  assert tuple(row) == COLUMNS, "make_row and COLUMNS disagree"
  return row


def _cell(value: Any, form: str) -> str:
  if value is None or (isinstance(value, float) and math.isnan(value)):
    return "-"
  return form.format(value)


def _printed_values(row: Dict[str, Any]) -> Dict[str, Any]:
  cpu = [row[f"{stage}_cpu_s"] for stage in STAGES if row[f"{stage}_cpu_s"] is not None]
  return {**row, "cpu_s": sum(cpu) if cpu else None}


def format_header() -> str:
  """The printed table's header line."""
  return "  ".join(f"{header:>10}" for header, _, _ in PRINTED)


def format_row(row: Dict[str, Any]) -> str:
  """A row as one printed line under `format_header` (cpu_s: all stages' CPU seconds)."""
  values = _printed_values(row)
  return "  ".join(f"{_cell(values[column], form):>10}" for _, column, form in PRINTED)


def write_table(path: str, rows: Sequence[Dict[str, Any]]) -> str:
  """Writes the rows as JSON lines to PATH (a temporary file renamed over it)."""
  temporary = f"{path}.tmp-{os.getpid()}"
  with open(temporary, "w") as f:
    for row in rows:
      f.write(json.dumps(row, sort_keys=False) + "\n")
  os.replace(temporary, path)
  return path


def read_table(path: str) -> List[Dict[str, Any]]:
  """The rows of a daily.jsonl."""
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]
