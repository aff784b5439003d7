"""A day's delayed-feedback training input, and the auxiliary classifier's, from the stored
daily outputs.

Flow position: pipeline.preprocess --day D (DAY/train, updates, closed, day.json) ->
training/feedback_days.day_stream (which rows enter, how often, with which labels) ->
training/feedback_data.samples_dataset (the rows' Examples) -> **`stream_dataset`**:
batches of (features, labels) for training/feedback_objective.feedback_model.

The period of day D is (D-1's snapshot, D's snapshot] (`day.json`'s `as_of`; the day
before's, or one day earlier on the first day). The windowed methods (waiting, esdfm,
defer) also read D-1's train/ (`day.json`'s `previous`).

ES-DFM and DEFER weigh their samples with f_dp = P(delayed positive | click, x), the
probability that a click converts after the elapsed-time window c but inside the
attribution window W. Its classifier learns from complete labels only: the clicked rows
of closed/ (impressions whose window W closed at the snapshot, final labels), labelled
1[c < d <= W] with d the conversion's delay after the click (`delayed_positive_dataset`,
labels named as the data config's click and conversion labels so that a registered
click-space model, the naive baseline's cvr tower, learns it: `f_dp_function`).

DFM's day input (`dfm_day_stream`) is D's train/ and the train/ of the ceil(W / day) days
before it with their labels brought up to D (feedback_days.dfm_stream). The oracle's is
vanilla's with the final labels of the simulator's outcomes (`final_labels_of`).
"""

import dataclasses
import functools
import json
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np
import tensorflow as tf

from configs import config as config_lib
from features import parsing
from features import spec as spec_lib
from training import feedback_data
from training import feedback_days
from training import feedback_objective as objective
from training import feedback_streams as streams
from transforms import label as label_lib
from transforms import outputs as outputs_lib

FDpFunction = Callable[[Dict[str, tf.Tensor]], tf.Tensor]


def read_day(day_dir: str) -> Dict[str, object]:
  """DAY/day.json: {"day", "as_of" (the snapshot, unix s), "previous" (D-1's output or
  None), ...}."""
  with tf.io.gfile.GFile(outputs_lib.OutputPaths(day_dir).day) as f:
    return json.load(f)


def period(day_dir: str, record: Optional[Dict[str, object]] = None) -> Tuple[int, int]:
  """(start, end] of day D's stream: D-1's snapshot (or D's minus a day) and D's;
  `record` is D's day.json when read already."""
  record = record or read_day(day_dir)
  end = int(record["as_of"])
  previous = record.get("previous")
  if previous and tf.io.gfile.exists(outputs_lib.OutputPaths(previous).day):
    return int(read_day(previous)["as_of"]), end
  return end - config_lib.DAY_S, end


def day_patterns(day_dir: str, method: str,
                 record: Optional[Dict[str, object]] = None) -> Dict[str, str]:
  """The shards a method's stream of day D reads (feedback_days.outputs_read, and D-1's
  train/ for the windowed methods): output name -> glob."""
  paths = outputs_lib.OutputPaths(day_dir)
  patterns = {name: paths.examples_pattern(name)
              for name in feedback_days.outputs_read(method)}
  previous = (record or read_day(day_dir)).get("previous")
  if method in streams.WINDOWED and previous:
    patterns["previous"] = outputs_lib.OutputPaths(previous).examples_pattern("train")
  return patterns


def day_stream(day_dir: str, config: streams.StreamConfig, click_label: str = "click",
               conversion_label: str = "purchase",
               final_labels: Optional[Mapping[str, int]] = None
               ) -> Tuple[Dict[str, str], feedback_days.DayStream]:
  """(patterns, the stream's samples) of day D: feedback_days.day_stream on its rows;
  DFM's input (`dfm_day_stream`); the oracle's, vanilla's samples with the final label of
  each clicked exposure (`final_labels`: impression_id -> the conversion label once its
  window has closed, the simulator's outcomes).

  Raises:
    ValueError: the oracle without `final_labels`, or an impression they lack.
  """
  record = read_day(day_dir)
  if config.method == streams.DFM:
    return dfm_day_stream(day_dir, config.attribution_s, click_label, conversion_label,
                          record)
  oracle = config.method == "oracle"
  if oracle and final_labels is None:
    raise ValueError("the oracle stream needs the final labels: the simulator's outcomes "
                     "(feedback_inputs.final_labels_of)")
  if oracle:
    config = dataclasses.replace(config, method="vanilla")
  patterns = day_patterns(day_dir, config.method, record)
  rows = {name: feedback_data.read_rows(pattern, click_label, conversion_label)
          for name, pattern in patterns.items()}
  start, end = period(day_dir, record)
  previous = rows.pop("previous", None)
  stream = feedback_days.day_stream(config, start, end, rows, previous, click_label,
                                    conversion_label)
  if oracle:
    stream = _with_final_labels(stream, rows["train"]["impression_id"], final_labels,
                                day_dir)
  return patterns, stream


def _with_final_labels(stream: feedback_days.DayStream, impression_ids: np.ndarray,
                       final_labels: Mapping[str, int],
                       day_dir: str) -> feedback_days.DayStream:
  """`stream` (vanilla's: one exposure sample per row of train/) with each clicked
  sample's conversion label replaced by its final label."""
  try:
    final = np.array([final_labels[impression_ids[row]] for row in stream.row], np.int64)
  except KeyError as e:
    raise ValueError(f"{day_dir}: impression {e.args[0]!r} has no final label in the "
                     f"simulator's outcomes") from e
  return dataclasses.replace(stream, conversion=stream.click * final)


def final_labels_of(outcomes_path: str, conversion_label: str = "purchase"
                    ) -> Dict[str, int]:
  """impression_id -> its final conversion label (simulation.truth's outcomes: the label
  once the attribution window has closed), from a simulator OUTPUT or its truth/."""
  from simulation import truth as truth_lib  # pylint: disable=g-import-not-at-top
  outcomes = truth_lib.load_outcomes(outcomes_path)
  return dict(zip(outcomes["impression_id"].tolist(),
                  outcomes[conversion_label].tolist()))


def earlier_days(day_dir: str, count: int,
                 record: Optional[Dict[str, object]] = None) -> List[str]:
  """Up to `count` earlier days' outputs, newest first, along day.json's `previous`."""
  found, record = [], record or read_day(day_dir)
  while len(found) < count and record.get("previous"):
    previous = str(record["previous"])
    if not tf.io.gfile.exists(outputs_lib.OutputPaths(previous).day):
      break
    found.append(previous)
    record = read_day(previous)
  return found


def dfm_day_stream(day_dir: str, attribution_s: float, click_label: str = "click",
                   conversion_label: str = "purchase",
                   record: Optional[Dict[str, object]] = None
                   ) -> Tuple[Dict[str, str], feedback_days.DayStream]:
  """(patterns, DFM's samples) of day D (feedback_days.dfm_stream): D's train/, and the
  train/ of the ceil(W / day) days before it, their labels brought up to D's snapshot by
  the updates/ of the days after each (oldest first: the newest update of an impression
  wins). Outputs "train" and "day-<k>" (k days before D)."""
  record = record or read_day(day_dir)
  end = int(record["as_of"])
  earlier = earlier_days(day_dir, int(np.ceil(attribution_s / config_lib.DAY_S)), record)
  paths = [outputs_lib.OutputPaths(path) for path in [day_dir, *earlier]]
  patterns = {"train": paths[0].examples_pattern("train")}
  read = functools.partial(feedback_data.read_rows, click_label=click_label,
                           conversion_label=conversion_label)
  for k, path in enumerate(paths[1:], start=1):
    patterns[f"day-{k}"] = path.examples_pattern("train")
  rows = feedback_days.dfm_earlier_rows(
      [read(patterns[f"day-{k}"]) for k in range(1, len(paths))],
      [read(path.examples_pattern("updates")) for path in paths[:-1]], click_label,
      conversion_label)
  stream = feedback_days.dfm_stream(end, read(patterns["train"]), rows, click_label,
                                    conversion_label)
  return patterns, stream


def stream_dataset(day_dir: str, config: streams.StreamConfig, spec: spec_lib.FeatureSpec,
                   batch_size: int, *, f_dp: Optional[FDpFunction] = None,
                   shuffle_buffer: int = 0, seed: Optional[int] = None,
                   click_label: str = "click", conversion_label: str = "purchase",
                   final_labels: Optional[Mapping[str, int]] = None,
                   stream: Optional[Tuple[Dict[str, str], feedback_days.DayStream]] = None
                   ) -> tf.data.Dataset:
  """Batches (features, labels) of day D's stream: features as parsing.parse_examples
  gives them, labels as feedback_objective.stream_labels (f_dp from `f_dp(features)`,
  float [batch], for esdfm and defer; DFM's elapsed time in days). Samples in stream
  order, shuffled when `shuffle_buffer` > 0. `stream`: day_stream's answer when read
  already; `final_labels`: the oracle's (day_stream)."""
  if config.method in objective.NEEDS_DELAYED_POSITIVE and f_dp is None:
    raise ValueError(f"{config.method} needs f_dp: an auxiliary classifier "
                     f"(training/feedback_inputs.f_dp_function)")
  patterns, samples = stream or day_stream(day_dir, config, click_label, conversion_label,
                                           final_labels)
  dataset = feedback_data.samples_dataset(patterns, samples)
  if shuffle_buffer:
    dataset = dataset.shuffle(shuffle_buffer, seed=seed)

  def parse(batch):
    features, _ = parsing.parse_examples(batch["example"], spec, label_names=[])
    delayed = f_dp(features) if config.method in objective.NEEDS_DELAYED_POSITIVE else None
    elapsed = (batch["elapsed"] / config_lib.DAY_S if config.method == objective.DFM
               else None)
    labels = objective.stream_labels(batch["click"], batch["conversion"], batch["kind"],
                                     config.method, delayed, click_label, conversion_label,
                                     elapsed)
    return features, labels

  return dataset.batch(batch_size).map(parse).prefetch(tf.data.AUTOTUNE)


def delayed_positive_labels(rows: Dict[str, np.ndarray], window_s: float,
                            attribution_s: float, click_label: str = "click",
                            conversion_label: str = "purchase") -> np.ndarray:
  """1[clicked, c < d <= W] per row of closed/ (rows of feedback_data.read_rows), int64."""
  click = np.asarray(rows[label_lib.timestamp_column(click_label)])
  conversion = np.asarray(rows[label_lib.timestamp_column(conversion_label)])
  delay = conversion - click
  return ((click >= 0) & (conversion >= 0) & (delay > window_s)
          & (delay <= attribution_s)).astype(np.int64)


def closed_labels(day_dirs, window_s: float, attribution_s: float,
                  click_label: str = "click", conversion_label: str = "purchase"
                  ) -> List[Tuple[str, np.ndarray, np.ndarray]]:
  """Per day with closed/ rows: (its examples pattern, every row's delayed-positive
  label, whether the row was clicked), in the files' order (ValueError when none). Read
  once, it feeds both delayed_positive_dataset and delayed_positive_counts."""
  found = []
  for day_dir in day_dirs:
    pattern = outputs_lib.OutputPaths(day_dir).examples_pattern(outputs_lib.CLOSED)
    if not tf.io.gfile.glob(pattern):
      continue
    rows = feedback_data.read_rows(pattern, click_label, conversion_label)
    label = delayed_positive_labels(rows, window_s, attribution_s, click_label,
                                    conversion_label)
    found.append((pattern, label, rows[label_lib.timestamp_column(click_label)] >= 0))
  if not found:
    raise ValueError(f"no closed/ rows in {list(day_dirs)}: the auxiliary classifier "
                     f"needs impressions whose attribution window has closed")
  return found


def delayed_positive_counts(closed: List[Tuple[str, np.ndarray, np.ndarray]]
                            ) -> Tuple[int, int]:
  """(clicked rows, delayed positives among them) of delayed_positive_dataset's rows,
  from the label columns alone (`closed`: closed_labels')."""
  rows = positives = 0
  for _, label, clicked in closed:
    rows += int(clicked.sum())
    positives += int(label[clicked].sum())
  return rows, positives


def delayed_positive_dataset(closed: List[Tuple[str, np.ndarray, np.ndarray]],
                             spec: spec_lib.FeatureSpec, batch_size: int,
                             click_label: str = "click",
                             conversion_label: str = "purchase") -> tf.data.Dataset:
  """Batches (features, labels) of the clicked closed/ rows of `closed` (closed_labels'
  days): labels {click_label: 1, conversion_label: 1[c < d <= W]}, float32, for a
  click-space model (module docstring)."""
  parts = []
  for pattern, label, clicked in closed:
    keep = tf.constant(clicked)
    records = feedback_data.records(pattern)
    labels = tf.data.Dataset.from_tensor_slices(tf.constant(label, tf.float32))
    parts.append(tf.data.Dataset.zip((records.enumerate(), labels)).filter(
        lambda indexed, _, keep=keep: keep[indexed[0]]).map(
            lambda indexed, y: (indexed[1], y)))
  dataset = parts[0]
  for part in parts[1:]:
    dataset = dataset.concatenate(part)

  def parse(serialized, label):
    features, _ = parsing.parse_examples(serialized, spec, label_names=[])
    return features, {click_label: tf.ones_like(label), conversion_label: label}

  return dataset.batch(batch_size).map(parse)


def f_dp_function(auxiliary_scorer, output: str = "cvr") -> FDpFunction:
  """features -> P(delayed positive | click, x), float32 [batch]: `output` of a scorer
  trained on delayed_positive_dataset (its click-space conversion output)."""

  def f_dp(features):
    return tf.reshape(auxiliary_scorer(features, training=False)[output], [-1])

  return f_dp

