"""Delayed-feedback training streams: which samples each method ingests, when, with which labels.

Flow position: the daily outputs (each exposure with its click and purchase times as seen at
a snapshot; transforms/daily.py) -> **a method's stream** -> the method's weighted loss
(models/layers/delayed_feedback.py) -> training. This module is the definition, one
exposure at a time, in plain Python: the reference that the streams built from the stored
per-day outputs are tested against, and the generator of the unbiasedness simulations
(tests/test_delayed_feedback.py). shared/papers.md, "Delayed feedback", has the methods.

Times are seconds. An exposure has its time, a click time (None: not clicked) and a
conversion time (None: no conversion). W is the attribution window (`attribution_s`): a
conversion later than W after its click is never attributed, so the final label of the
conversion task is y = 1[clicked, converted, d <= W], d = conversion - click. A stream is
read at a time `until` (the snapshot): it holds the samples ingested at or before it.

On the entire space only the conversion part is delayed: a click arrives within seconds of
its exposure, so every exposure enters at once with its click label, and an unclicked one
with conversion label 0, a real negative (kind "exposure"). Each method then decides what a
clicked exposure contributes:

  oracle    at the click: the final label y (simulator only: the upper bound)
  vanilla   at the click: the label as observed at `until`, 1[d <= min(W, until - click)]
  waiting   at click + w (`window_s`): 1[d <= w]; a conversion after w is lost
  fnw, fnc  at the click: 0 (a fake negative if it converts later); at the conversion
            (d <= W): a duplicate with label 1
  esdfm     at click + c (`window_s`): 1[d <= c]; at the conversion if c < d <= W: a
            duplicate with label 1
  defer     the esdfm samples, and at click + W: the exposure again with its final label y

A sample's `kind` says what it is: "exposure" (the exposure's first sample: its click
label and, for the methods that ingest at the click, its conversion label), "observed"
(waiting, esdfm, defer: the clicked exposure at the end of its window), "duplicate" (a
conversion that arrived later) and "final" (defer's re-entry). Only an "exposure" sample
trains the click task; the others train the conversion task alone (their click label is 1
and known since the click: counting it again would bias the CTR).
"""

import dataclasses
import math
from typing import List, Optional

METHODS = ("oracle", "vanilla", "waiting", "fnw", "fnc", "esdfm", "defer")
# DFM (Chapelle 2014) is no stream of events but a daily refit on the clicks still inside
# their window (training/feedback_days.dfm_stream); a StreamConfig names it too, so that one
# config carries any method's input, but `samples` has no per-exposure stream for it.
DFM = "dfm"
# The methods that ingest a clicked exposure at the end of an elapsed-time window.
WINDOWED = ("waiting", "esdfm", "defer")


@dataclasses.dataclass(frozen=True)
class Exposure:
  time: float
  click_time: Optional[float] = None
  conversion_time: Optional[float] = None


@dataclasses.dataclass(frozen=True)
class StreamConfig:
  """method: one of METHODS or DFM; attribution_s: W; window_s: w (waiting) or c (esdfm,
  defer)."""
  method: str
  attribution_s: float
  window_s: float = 0.0

  def __post_init__(self):
    if self.method not in METHODS + (DFM,):
      raise ValueError(f"unknown delayed-feedback method {self.method!r}: one of "
                       f"{METHODS + (DFM,)}")
    if self.attribution_s <= 0:
      raise ValueError(f"attribution_s must be > 0, got {self.attribution_s}")
    if self.method in WINDOWED and not 0 < self.window_s <= self.attribution_s:
      raise ValueError(f"{self.method}: window_s must be in (0, attribution_s], got "
                       f"{self.window_s} (attribution_s {self.attribution_s})")


@dataclasses.dataclass(frozen=True)
class Sample:
  time: float  # when the stream ingests it
  click: int
  conversion: int  # the conversion task's label (ctcvr on the entire space)
  kind: str  # "exposure", "observed", "duplicate" or "final" (module docstring)


def final_label(exposure: Exposure, attribution_s: float) -> int:
  """y = 1[clicked, converted, d <= W]."""
  if exposure.click_time is None or exposure.conversion_time is None:
    return 0
  return int(0 <= exposure.conversion_time - exposure.click_time <= attribution_s)


def samples(exposure: Exposure, config: StreamConfig, until: float,
            since: float = -math.inf) -> List[Sample]:
  """The samples `config.method`'s stream ingests from `exposure` in the period
  (since, until], in ingestion order (module docstring). A training period's stream is
  every exposure's samples in it, including late ones of exposures from before it."""
  return [sample for sample in _ingested(exposure, config, until)
          if since < sample.time <= until]


def _ingested(exposure: Exposure, config: StreamConfig, until: float) -> List[Sample]:
  """Every sample ingested by `until` (a click after `until` may be among them: `samples`
  drops it)."""
  if config.method == DFM:
    raise ValueError("dfm has no per-exposure stream: its day input is "
                     "training/feedback_days.dfm_stream")
  if exposure.time > until:
    return []
  if exposure.click_time is None:
    return [Sample(exposure.time, 0, 0, "exposure")]
  click, window, w = exposure.click_time, config.window_s, config.attribution_s
  y = final_label(exposure, w)
  delay = exposure.conversion_time - click if y else None  # only an attributed conversion
  method = config.method
  if method == "oracle":
    return [Sample(click, 1, y, "exposure")]
  if method == "vanilla":
    return [Sample(click, 1, int(y == 1 and delay <= until - click), "exposure")]
  if method in ("fnw", "fnc"):
    found = [Sample(click, 1, 0, "exposure")]
    if y and click + delay <= until:
      found.append(Sample(click + delay, 1, 1, "duplicate"))
    return found
  # waiting, esdfm, defer: the click enters the click task at once, the conversion task at
  # the end of its window.
  found = [Sample(click, 1, 0, "exposure")]
  in_window = int(y == 1 and delay <= window)
  if click + window <= until:
    found.append(Sample(click + window, 1, in_window, "observed"))
  if method in ("esdfm", "defer") and y and not in_window and click + delay <= until:
    found.append(Sample(click + delay, 1, 1, "duplicate"))
  if method == "defer" and click + w <= until:
    found.append(Sample(click + w, 1, y, "final"))
  return sorted(found, key=lambda s: s.time)


def trains_click(sample: Sample) -> bool:
  """Whether `sample` trains the click task (only an exposure's first sample does)."""
  return sample.kind == "exposure"


def trains_conversion(sample: Sample, method: str) -> bool:
  """Whether `sample` trains the conversion task: every sample but the exposure sample of a
  clicked exposure under a windowed method (its conversion label is not known yet)."""
  return not (sample.kind == "exposure" and sample.click and method in WINDOWED)
