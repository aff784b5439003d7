"""A delayed-feedback method's training stream for one day, from the stored daily outputs.

Flow position: pipeline.preprocess --day D (transforms/daily.py) -> DAY/train, updates,
closed -> **day_stream** -> the method's weighted loss (models/layers/delayed_feedback.py).
The stream is the one training/feedback_streams.py defines per exposure, read for the
day's period (start, end] (end = the day's snapshot): built from day D's outputs and, for
the windowed methods, day D-1's train/, never from the history:

  exposure samples   day D's train/ (the day's new impressions): an unclicked one with
                     conversion 0, a clicked one at its click with conversion 0, or its
                     label at the snapshot (vanilla)
  duplicates         rows of D's train/ and updates/ whose conversion time falls in the
                     period (updates/ holds the earlier impressions whose labels changed
                     on D); ES-DFM and DEFER only those with d > c
  observed           clicks whose window c ends in the period (waiting, esdfm, defer): D's
                     train/ and D-1's train/, the latter with the timestamps of D's
                     updates/ where it has the impression; label 1[d <= c]
  final (defer)      D's closed/ (impressions whose attribution window closed on D), the
                     clicked ones with their final label

DFM (Chapelle 2014) is no stream of events but a daily refit on the recent clicks, each
once, with its label and elapsed time as of the snapshot (`dfm_stream`): D's train/ as
exposure samples, and the clicked rows of the ceil(W / day) days before D (their labels
brought up to D by the days' updates/) as "observed" samples, which train the conversion
part only. Those include clicks whose window W has just closed: a click that has not
converted after W is the censored evidence the delay model learns from.

The oracle stream needs the final labels at the click, which only the simulator's truth
has (the benchmark joins it); it is refused here. A row's columns are numpy arrays:
`impression_id`, `timestamp`, and the click and conversion labels' first-event times
(`<label>_timestamp`, int64 seconds, -1 for none), as the daily Examples carry them.
"""

import dataclasses
from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from training import feedback_streams as streams
from transforms import label as label_lib

Rows = Mapping[str, np.ndarray]
KINDS = ("exposure", "observed", "duplicate", "final")


@dataclasses.dataclass(frozen=True)
class DayStream:
  """The period's samples, int64/str arrays [n] each: `output` ("train", "updates",
  "closed" or "previous": D-1's train/; DFM's earlier days "day-<k>") and `row` say which
  stored row a sample is; `time`, `click`, `conversion`, `kind` are feedback_streams
  .Sample's fields; `elapsed` (DFM only, float64 s) the conversion's delay after the click
  when converted, else the time from the click to the snapshot (0 when not clicked)."""
  output: np.ndarray
  row: np.ndarray
  time: np.ndarray
  click: np.ndarray
  conversion: np.ndarray
  kind: np.ndarray
  elapsed: Optional[np.ndarray] = None

  def __len__(self):
    return len(self.row)


def _size(rows: Rows) -> int:
  return len(rows["impression_id"])


def _with_updates(previous: Rows, updates: Rows, click: str,
                  conversion: str) -> Dict[str, np.ndarray]:
  """`previous`'s columns with the click and conversion times of `updates` where it has
  the same impression (labels that changed on day D; of several rows of one impression,
  the last one's)."""
  merged = {name: np.array(previous[name]) for name in
            ("impression_id", "timestamp", click, conversion)}
  where = {impression: index for index, impression in enumerate(updates["impression_id"])}
  for index, impression in enumerate(merged["impression_id"]):
    found = where.get(impression)
    if found is not None:
      merged[click][index] = updates[click][found]
      merged[conversion][index] = updates[conversion][found]
  return merged


def with_updates(rows: Rows, updates: Rows, click_label: str = "click",
                 conversion_label: str = "purchase") -> Dict[str, np.ndarray]:
  """`rows` (an earlier day's train/) with the label times of `updates` (updates/ rows of
  the days after it, oldest first: the newest row of an impression wins)."""
  return _with_updates(rows, updates, label_lib.timestamp_column(click_label),
                       label_lib.timestamp_column(conversion_label))


def dfm_earlier_rows(earlier_train: Sequence[Rows], updates: Sequence[Rows],
                     click_label: str = "click",
                     conversion_label: str = "purchase") -> Dict[str, Dict[str, np.ndarray]]:
  """DFM's earlier days with their labels as of day D: {"day-<k>": day D-k's train/ with
  the updates/ of days D-k+1 .. D (`with_updates`, oldest first)}.

  Args:
    earlier_train: train/ Rows of days D-1, D-2, ... (newest first).
    updates: updates/ Rows of days D, D-1, ... (newest first; at least as many).
  """
  found = {}
  for k, rows in enumerate(earlier_train, start=1):
    later = list(reversed(updates[:k]))  # day D-k+1 .. D, oldest first
    merged = {name: np.concatenate([part[name] for part in later]) for name in later[0]}
    found[f"day-{k}"] = with_updates(rows, merged, click_label, conversion_label)
  return found


def dfm_stream(end: float, today_train: Rows, earlier: Mapping[str, Rows],
               click_label: str = "click", conversion_label: str = "purchase") -> DayStream:
  """DFM's samples of the day whose snapshot is `end` (module docstring).

  Args:
    end: the snapshot, unix s.
    today_train: day D's train/ Rows: every row once, kind "exposure".
    earlier: output name -> an earlier day's train/ Rows with labels as of `end`
      (`with_updates`; the ceil(W / day) days before D): each clicked row once, kind
      "observed".
  """
  click, conversion = (label_lib.timestamp_column(click_label),
                       label_lib.timestamp_column(conversion_label))
  parts = []
  for output, rows in [("train", today_train), *earlier.items()]:
    clicks, times = np.asarray(rows[click]), np.asarray(rows[conversion])
    clicked = clicks >= 0
    converted = clicked & (times >= 0)
    if output == "train":
      mask, kind = np.ones(_size(rows), bool), "exposure"
      time = np.where(clicked, clicks, np.asarray(rows["timestamp"]))
    else:
      mask, kind = clicked, "observed"
      time = np.full(_size(rows), end)
    elapsed = np.where(converted, times - clicks, np.where(clicked, end - clicks, 0))
    index = np.flatnonzero(mask)
    parts.append((np.full(len(index), output), index, np.asarray(time)[index],
                  clicked[index].astype(np.int64), converted[index].astype(np.int64),
                  np.full(len(index), kind), elapsed[index].astype(np.float64)))
  output, row, time, click_values, conversion_values, kind, elapsed = (
      np.concatenate([part[i] for part in parts]) for i in range(7))
  order = np.lexsort((row, output, time))
  return DayStream(output[order], row[order].astype(np.int64), time[order],
                   click_values[order], conversion_values[order], kind[order],
                   elapsed[order])


def outputs_read(method: str) -> tuple:
  """The outputs of day D that `day_stream` reads for `method` (the keys of `today` it
  needs): train/ always, updates/ for the duplicates, the windowed methods' D-1 rows and
  DFM's earlier days' labels, closed/ for DEFER."""
  if method in ("oracle", "vanilla"):
    return ("train",)
  return ("train", "updates", "closed") if method == "defer" else ("train", "updates")


def day_stream(config: streams.StreamConfig, start: float, end: float,
               today: Mapping[str, Rows], previous_train: Optional[Rows] = None,
               click_label: str = "click", conversion_label: str = "purchase") -> DayStream:
  """The samples `config.method`'s stream ingests in (start, end] (module docstring).

  Args:
    config: the method and its windows (feedback_streams.StreamConfig).
    start, end: the period; end is the day's snapshot (the outputs' snapshot_timestamp).
    today: {"train", "updates", "closed": Rows} of day D (only `outputs_read(method)`
      are read).
    previous_train: day D-1's train/ Rows (the windowed methods; None on the first day).
    click_label, conversion_label: the data config's label names.

  Raises:
    ValueError: the oracle (final labels at the click: the simulator's), or a window c
      longer than the period (its clicks would come from more than one earlier day).
  """
  method, window = config.method, config.window_s
  if method == "oracle":
    raise ValueError("the oracle stream needs the final labels at the click: the "
                     "simulator's truth, not the daily outputs")
  if method in streams.WINDOWED and window > end - start:
    raise ValueError(f"{method}: window_s {window} is longer than the period "
                     f"({end - start} s): its clicks would span more than one earlier day")
  click, conversion = (label_lib.timestamp_column(click_label),
                       label_lib.timestamp_column(conversion_label))
  parts = []

  def add(output, mask, time, click_value, conversion_value, kind):
    index = np.flatnonzero(mask)
    parts.append((np.full(len(index), output), index, np.asarray(time)[index],
                  np.broadcast_to(click_value, mask.shape)[index],
                  np.broadcast_to(conversion_value, mask.shape)[index],
                  np.full(len(index), kind)))

  new = today["train"]
  clicked = np.asarray(new[click]) >= 0
  converted = np.asarray(new[conversion]) >= 0
  exposure_time = np.where(clicked, new[click], new["timestamp"])
  label = (clicked & converted).astype(np.int64) if method == "vanilla" else 0
  add("train", np.ones(_size(new), bool), exposure_time, clicked.astype(np.int64),
      label, "exposure")

  if method in ("fnw", "fnc", "esdfm", "defer"):
    for output in ("train", "updates"):
      rows = today[output]
      times = np.asarray(rows[conversion])
      mask = (times > start) & (times <= end) & (np.asarray(rows[click]) >= 0)
      if method in ("esdfm", "defer"):
        mask &= times - np.asarray(rows[click]) > window
      add(output, mask, times, 1, 1, "duplicate")

  if method in streams.WINDOWED:
    sources = [("train", new)]
    if previous_train is not None and _size(previous_train):
      sources.append(("previous", _with_updates(previous_train, today["updates"], click,
                                                conversion)))
    for output, rows in sources:
      clicks, times = np.asarray(rows[click]), np.asarray(rows[conversion])
      due = clicks + window
      mask = (clicks >= 0) & (due > start) & (due <= end)
      in_window = ((times >= 0) & (times - clicks <= window)).astype(np.int64)
      add(output, mask, due, 1, in_window, "observed")

  if method == "defer":
    rows = today["closed"]
    clicks = np.asarray(rows[click])
    final = (np.asarray(rows[conversion]) >= 0).astype(np.int64)
    add("closed", clicks >= 0, clicks + config.attribution_s, 1, final, "final")

  output, row, time, click_values, conversion_values, kind = (
      np.concatenate([part[i] for part in parts]) for i in range(6))
  order = np.lexsort((row, output, time))
  return DayStream(output[order], row[order].astype(np.int64), time[order],
                   click_values[order].astype(np.int64),
                   conversion_values[order].astype(np.int64), kind[order])
