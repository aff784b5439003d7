"""Progress of a long run: records so far and records/s, logged at a steady interval.

Flow: any PCollection of RecordBatches -> **LogProgress(stage)** -> the same batches.
The job puts one after parsing (impressions, events) and one after labelling.

Each worker process keeps one running total per stage (shared by the DoFn instances of
its threads) and logs, at most every `interval_s` seconds of wall time:

  INFO:progress:impressions_parsed: 1,234,567 records in 61.2 s (20,172 records/s; last
  30.0 s: 21,003 records/s) in worker process 4242

The totals are also Beam counters (`progress/<stage>_records`), which runners that
report metrics (Dataflow's monitoring page) show live. Cost: one lock and a clock
read per batch.

The lines go to the worker process's stderr through a logger of their own ("progress",
INFO, not propagated), not through absl: in DirectRunner's multi_processing mode a
worker's logging goes to the runner's logging service, which logs it on the root logger
and so drops INFO, while the worker processes inherit the job's stderr. In one process
(the default in-memory runner) the line is the same. Dataflow collects workers' stderr.
"""

import logging
import os
import sys
import threading
import time
from typing import Dict, List

import apache_beam as beam
import pyarrow as pa

DEFAULT_INTERVAL_S = 30.0

_LOCK = threading.Lock()
# stage -> [records, first batch time, last log time, records at last log]
_TOTALS: Dict[str, List[float]] = {}


def progress_logger() -> logging.Logger:
  """The "progress" logger: INFO lines to this process's stderr (module docstring)."""
  logger = logging.getLogger("progress")
  if not logger.handlers:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s:progress:%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
  return logger


def record_progress(stage: str, rows: int, interval_s: float, now: float = None) -> bool:
  """Adds rows to this process's total of `stage`; logs a progress line when `interval_s`
  has passed since the last one (or since the first batch). Returns whether it logged."""
  now = time.time() if now is None else now
  with _LOCK:
    total = _TOTALS.setdefault(stage, [0, now, now, 0])
    total[0] += rows
    records, started, last_log, records_at_log = total
    if now - last_log < interval_s:
      return False
    total[2], total[3] = now, records
  elapsed, recent = now - started, now - last_log
  progress_logger().info(
      "%s: %s records in %.1f s (%s records/s; last %.1f s: %s records/s) in worker "
      "process %d", stage, f"{int(records):,}", elapsed,
      f"{records / elapsed:,.0f}" if elapsed > 0 else "-", recent,
      f"{(records - records_at_log) / recent:,.0f}" if recent > 0 else "-", os.getpid())
  return True


class _ProgressFn(beam.DoFn):

  def __init__(self, stage: str, interval_s: float):
    self._stage = stage
    self._interval_s = interval_s
    self._records = beam.metrics.Metrics.counter("progress", f"{stage}_records")

  def process(self, batch: pa.RecordBatch):
    self._records.inc(batch.num_rows)
    record_progress(self._stage, batch.num_rows, self._interval_s)
    yield batch


class LogProgress(beam.PTransform):
  """RecordBatches -> the same RecordBatches, counting their rows (module docstring).

  Args:
    stage: the name in the log line and the counter, e.g. "impressions_parsed".
    interval_s: seconds between two lines of one worker process.
  """

  def __init__(self, stage: str, interval_s: float = DEFAULT_INTERVAL_S):
    super().__init__()
    self._stage = stage
    self._interval_s = float(interval_s)

  def expand(self, batches):
    return batches | "Count" >> beam.ParDo(_ProgressFn(self._stage, self._interval_s))
