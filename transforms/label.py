"""Label impressions from their behaviour events: the rules, and their columnar use per bucket.

Flow: join.BucketedJoinAndLabel -> **BucketLabeler.join_and_label** (one hash bucket's
impressions and events) -> labelled batches -> split -> ... The rules, per impression id:

  * several impressions: the earliest is kept (by timestamp, then canonical JSON of the
    raw record, then file and line, so the choice is deterministic); the others are
    dead letters `duplicate_impression_id`.
  * no impression: every event is a dead letter `event_without_impression`.
  * events, sorted by (timestamp, event type), are checked in this order:
      before the impression               -> `event_before_impression`
      later than impression.timestamp + data.attribution_window_s
                                          -> `outside_attribution_window`
      same timestamp and type as an earlier one -> `duplicate_event`
      an `after_click` label's event with no valid click at or before it (an orphan)
                                          -> data.orphan_event_policy: "dead_letter"
                                             (`event_without_click`) or "infer_click"
                                             (attributed, and click = 1)
    every other event is attributed and sets its label(s) to 1.

Prior records (the daily job, transforms/daily.py): impressions and events carried over
from earlier days (still inside their attribution window) enter the same rules with
`prior` set (column PRIOR). They were checked on the day they arrived, so they are never
dead-lettered again: a prior impression is kept over a new one with its id (the new one is
the `duplicate_impression_id`), and a new event repeating a prior one's timestamp and
type is the `duplicate_event`. Only new events count as attributed. An event dead-lettered
on its own day stays so: labels are those of the records accepted by each snapshot.

`EventLabeler` states the rules as plain functions over dicts (tests call it without
Beam), and its own code decides every case that is not plain: duplicate impression ids
go through `EventLabeler.choose_impression`, and an impression with any event before
it, outside the window, repeated, or an orphan goes through `EventLabeler.attribute`
(with its events as dicts). Impressions whose events are all valid (the vast majority)
are labelled in columns by `BucketLabeler`: label = 1 when any of its events has one of
the label's event types.

Output (per bucket): labelled impressions as a RecordBatch with the impression columns of
`parse.impression_schema` (file, line, record, impression_id, timestamp, features)
followed by one int64 0/1 column per configured label; dead letters; the number of
attributed events (for the accounting).
"""

import json
from typing import Any, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from configs import config as config_lib
from transforms import dead_letter as dl
from transforms import read

_ROW = "__row"
PRIOR = "__prior"  # bool column / dict key: a record carried over from an earlier day.
NO_TIME = -1  # A label's first-event time when the label is 0.


def timestamp_column(label_name: str) -> str:
  """The column (and Example key) of a label's first-event time: "<label>_timestamp"."""
  return f"{label_name}_timestamp"


def canonical_json(record: Any) -> str:
  """Key-sorted compact JSON of a raw record (JSON text or a Parquet row's dict), to order
  duplicates deterministically whatever their key order or spacing."""
  if isinstance(record, (str, bytes)):
    record = json.loads(record)
  return json.dumps(record, sort_keys=True, separators=(",", ":"), default=str)


def _event_dead_letter(event: Dict[str, Any], reason: str, detail: str) -> Dict[str, Any]:
  return dl.make_dead_letter(dl.EVENTS, event["file"], event["line"], reason, detail,
                             event["record"])


class EventLabeler:
  """The labelling rules of one DataConfig, usable without Beam.

  Args:
    data_config: labels (the first one is the click label), attribution window and
      orphan policy.
  """

  def __init__(self, data_config: config_lib.DataConfig):
    self.label_names = tuple(data_config.label_names)
    self.click_label = data_config.labels[0].name
    self.click_events = frozenset(data_config.labels[0].events)
    self.window_s = data_config.attribution_window_s
    self.infer_click = data_config.orphan_event_policy == "infer_click"
    # event type -> (label names it sets, needs a click first)
    labels_of: Dict[str, List[str]] = {}
    needs_click: Dict[str, bool] = {}
    for label in data_config.labels:
      for event_type in label.events:
        labels_of.setdefault(event_type, []).append(label.name)
        needs_click[event_type] = needs_click.get(event_type, False) or label.after_click
    self.rules = {event: (tuple(names), needs_click[event]) for event, names in labels_of.items()}

  @property
  def event_types(self) -> Tuple[str, ...]:
    return tuple(sorted(self.rules))

  def choose_impression(self, impressions: Sequence[Dict[str, Any]]
                        ) -> Tuple[Dict[str, Any], List[Dict[str, Any]]]:
    """The kept impression and the dead letters of its duplicates."""
    if len(impressions) == 1:
      return impressions[0], []
    ordered = sorted(impressions, key=lambda imp: (
        not imp.get(PRIOR, False), imp["timestamp"], canonical_json(imp["record"]),
        imp["file"], imp["line"]))
    kept = ordered[0]
    dead = [dl.make_dead_letter(
        dl.IMPRESSIONS, imp["file"], imp["line"], dl.DUPLICATE_IMPRESSION_ID,
        f"impression_id {imp['impression_id']!r} already kept from {kept['file']} line "
        f"{kept['line']} (timestamp {kept['timestamp']})", imp["record"]) for imp in ordered[1:]]
    return kept, dead

  def attribute(self, impression: Dict[str, Any], events: Sequence[Dict[str, Any]]
                ) -> Tuple[Dict[str, int], List[Dict[str, Any]], List[Dict[str, Any]]]:
    """Labels of one impression from its events.

    Returns:
      (labels: every configured label -> 0/1, attributed events, dead letters).
    """
    labels = dict.fromkeys(self.label_names, 0)
    dead: List[Dict[str, Any]] = []
    start = impression["timestamp"]
    end = start + self.window_s
    valid = []
    seen = set()
    for event in sorted(events, key=lambda e: (e["timestamp"], e["event"], not e.get(PRIOR, False),
                                               e["file"], e["line"])):
      timestamp, event_type = event["timestamp"], event["event"]
      if timestamp < start:
        dead.append(_event_dead_letter(
            event, dl.EVENT_BEFORE_IMPRESSION,
            f"{event_type!r} at {timestamp} is {start - timestamp}s before its impression "
            f"at {start}"))
      elif timestamp > end:
        dead.append(_event_dead_letter(
            event, dl.OUTSIDE_ATTRIBUTION_WINDOW,
            f"{event_type!r} at {timestamp} is {timestamp - start}s after its impression; "
            f"the attribution window is {self.window_s}s"))
      elif (timestamp, event_type) in seen:
        dead.append(_event_dead_letter(
            event, dl.DUPLICATE_EVENT, f"{event_type!r} at {timestamp} repeats an earlier "
            "event with the same timestamp and type"))
      else:
        seen.add((timestamp, event_type))
        valid.append(event)
    click_times = [e["timestamp"] for e in valid if e["event"] in self.click_events]
    first_click = min(click_times) if click_times else None
    attributed = []
    for event in valid:
      names, needs_click = self.rules[event["event"]]
      if needs_click and (first_click is None or first_click > event["timestamp"]):
        if not self.infer_click:
          dead.append(_event_dead_letter(
              event, dl.EVENT_WITHOUT_CLICK,
              f"{event['event']!r} at {event['timestamp']} has no {self.click_label!r} at or "
              "before it (orphan_event_policy: dead_letter)"))
          continue
        labels[self.click_label] = 1
      for name in names:
        labels[name] = 1
      attributed.append(event)
    return labels, attributed, dead

  def label_times(self, attributed: Sequence[Dict[str, Any]]) -> Dict[str, int]:
    """Each label's first-event time among `attribute`'s attributed events (NO_TIME when
    none sets it). An after-click event counts for the click label too: under
    infer_click it implies the click; otherwise a click at or before it is earlier
    anyway."""
    times = dict.fromkeys(self.label_names, NO_TIME)

    def note(name: str, timestamp: int) -> None:
      if times[name] == NO_TIME or timestamp < times[name]:
        times[name] = timestamp

    for event in attributed:
      names, needs_click = self.rules[event["event"]]
      for name in names:
        note(name, event["timestamp"])
      if needs_click:
        note(self.click_label, event["timestamp"])
    return times


def _rows(table: pa.Table, indices: np.ndarray) -> List[Dict[str, Any]]:
  return table.take(pa.array(indices, pa.int64())).to_pylist() if len(indices) else []


def _impression_dict(row: Dict[str, Any], feature_names: Sequence[str]) -> Dict[str, Any]:
  """A parsed impression row as the dict `EventLabeler` reads (features without nulls)."""
  return {"impression_id": row["impression_id"], "timestamp": row["timestamp"],
          "features": {k: row[k] for k in feature_names if row[k] is not None},
          "file": row["file"], "line": row["line"], "record": row["record"], _ROW: row[_ROW],
          PRIOR: bool(row.get(PRIOR) or False)}


def _with_row_index(table: pa.Table) -> pa.Table:
  return table.append_column(_ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))


class BucketLabeler:
  """Joins and labels one bucket's impressions and events (module docstring).

  Args:
    data_config: labels, attribution window and orphan policy.
    impression_schema: `parse.impression_schema(spec)`.
  """

  def __init__(self, data_config: config_lib.DataConfig, impression_schema: pa.Schema):
    self.labeler = EventLabeler(data_config)
    self.impression_schema = impression_schema
    meta = {"file", "line", "record", "impression_id", "timestamp"}
    self.feature_names = [name for name in impression_schema.names if name not in meta]
    self.output_schema = pa.schema(list(impression_schema) + [
        pa.field(name, pa.int64()) for name in self.labeler.label_names])
    self._click_events = pa.array(sorted(self.labeler.click_events), pa.string())
    self._after_click_events = pa.array(sorted(
        event for event, (_, needs_click) in self.labeler.rules.items() if needs_click),
                                        pa.string())
    self._parquet = read.ParquetRows()
    self._label_events = [pa.array(sorted(e for e, (names, _) in self.labeler.rules.items()
                                          if name in names), pa.string())
                          for name in self.labeler.label_names]

  def _choose(self, impressions: pa.Table, dead: List[Dict[str, Any]]) -> pa.Table:
    """One impression per id: duplicates through `EventLabeler.choose_impression`."""
    impressions = _with_row_index(impressions)
    ids = impressions.column("impression_id")
    counts = pc.value_counts(ids)
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    if len(repeated) == 0:
      return impressions
    is_repeated = pc.is_in(ids, value_set=repeated).to_numpy()
    groups: Dict[str, List[Dict[str, Any]]] = {}
    for row in self._parquet.fill_records(_rows(impressions, np.flatnonzero(is_repeated))):
      groups.setdefault(row["impression_id"], []).append(
          _impression_dict(row, self.feature_names))
    chosen = []
    for group in groups.values():
      kept, letters = self.labeler.choose_impression(group)
      dead.extend(letters)
      chosen.append(kept[_ROW])
    keep = np.flatnonzero(~is_repeated).tolist() + chosen
    return impressions.take(pa.array(sorted(keep), pa.int64()))

  def join_and_label(self, impressions: pa.Table, events: pa.Table
                     ) -> Tuple[pa.RecordBatch, List[Dict[str, Any]], int]:
    """One bucket -> (labelled impressions, dead letters, attributed events)."""
    labelled = self.label_bucket(impressions, events)
    columns = [labelled.kept.column(name) for name in self.impression_schema.names]
    table = pa.Table.from_arrays(columns + [pa.array(row) for row in labelled.labels],
                                 schema=self.output_schema).combine_chunks()
    batches = table.to_batches()
    batch = batches[0] if batches else pa.RecordBatch.from_pylist([], schema=self.output_schema)
    return batch, labelled.dead, labelled.attributed

  def label_bucket(self, impressions: pa.Table, events: pa.Table) -> "LabelledBucket":
    """One bucket's impressions and events (optionally with a bool PRIOR column each)
    -> the kept impressions with their labels, label times and attributed events."""
    dead: List[Dict[str, Any]] = []
    # One chunk per column, so .to_numpy() of a ChunkedArray is one copy-free array.
    impressions, events = impressions.combine_chunks(), events.combine_chunks()
    kept = self._choose(impressions, dead)
    n = kept.num_rows
    position = pc.index_in(events.column("impression_id"), value_set=kept.column(
        "impression_id")).to_numpy()
    position = np.where(np.isnan(position), -1, position).astype(np.int64) if (
        position.dtype.kind == "f") else position.astype(np.int64)
    orphans = np.flatnonzero(position < 0)
    for event in self._parquet.fill_records(_rows(events, orphans)):
      dead.append(dl.make_dead_letter(
          dl.EVENTS, event["file"], event["line"], dl.EVENT_WITHOUT_IMPRESSION,
          f"no impression with impression_id {event['impression_id']!r}", event["record"]))
    matched = np.flatnonzero(position >= 0)
    events = events.take(pa.array(matched, pa.int64()))
    position = position[matched]
    timestamp = events.column("timestamp").to_numpy()
    event_type = events.column("event")
    event_prior = prior_mask(events)
    start = kept.column("timestamp").to_numpy()[position]
    window = self.labeler.window_s
    problem = (timestamp < start) | (timestamp > start + window)
    # Repeats of (impression, timestamp, type): flag every member of such a group (the
    # `EventLabeler` then decides which one is the repeat).
    type_code = pc.index_in(event_type, value_set=pc.unique(event_type)).to_numpy()
    type_code = type_code.astype(np.int64)
    key = np.stack([position, timestamp, type_code], axis=1)
    if len(key):
      _, inverse, group_sizes = np.unique(key, axis=0, return_inverse=True, return_counts=True)
      problem |= group_sizes[inverse.reshape(-1)] > 1
    # Orphans: an after-click event with no click at or before it.
    is_click = pc.is_in(event_type, value_set=self._click_events).to_numpy()
    first_click = np.full(n, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first_click, position[is_click], timestamp[is_click])
    needs_click = pc.is_in(event_type, value_set=self._after_click_events).to_numpy()
    problem |= needs_click & (first_click[position] > timestamp)
    # Impressions with any problem event: `EventLabeler.attribute` labels them.
    hard = np.zeros(n, dtype=bool)
    hard[position[problem]] = True
    num_labels = len(self.labeler.label_names)
    labels = np.zeros((num_labels, n), dtype=np.int64)
    prior_labels = np.zeros((num_labels, n), dtype=np.int64)
    times = np.full((num_labels, n), _NEVER, dtype=np.int64)
    easy_events = ~hard[position]
    attributed = int((easy_events & ~event_prior).sum())
    click_index = self.labeler.label_names.index(self.labeler.click_label)
    for index, label_events in enumerate(self._label_events):
      sets = pc.is_in(event_type, value_set=label_events).to_numpy() & easy_events
      labels[index, position[sets]] = 1
      prior_labels[index, position[sets & event_prior]] = 1
      if index == click_index:  # An after-click event implies its click (`label_times`).
        sets = sets | (needs_click & easy_events)
      np.minimum.at(times[index], position[sets], timestamp[sets])
    keep_event = easy_events.copy()
    hard_positions = np.flatnonzero(hard)
    if len(hard_positions):
      hard_rows = np.flatnonzero(~easy_events)
      event_rows = self._parquet.fill_records(_rows(events, hard_rows))
      by_position: Dict[int, List[Dict[str, Any]]] = {}
      for row, index, pos in zip(event_rows, hard_rows.tolist(),
                                 position[~easy_events].tolist()):
        row[PRIOR] = bool(event_prior[index])
        row[_ROW] = index
        by_position.setdefault(pos, []).append(row)
      for pos, impression in zip(hard_positions.tolist(), _rows(kept, hard_positions)):
        events_here = by_position.get(pos, [])
        found, attributed_events, letters = self.labeler.attribute(impression, events_here)
        dead.extend(letters)
        attributed += sum(not event[PRIOR] for event in attributed_events)
        keep_event[[event[_ROW] for event in attributed_events]] = True
        prior_found, _, _ = self.labeler.attribute(
            impression, [event for event in events_here if event[PRIOR]])
        found_times = self.labeler.label_times(attributed_events)
        for index, name in enumerate(self.labeler.label_names):
          labels[index, pos] = found[name]
          prior_labels[index, pos] = prior_found[name]
          if found_times[name] != NO_TIME:
            times[index, pos] = found_times[name]
    times[times == _NEVER] = NO_TIME
    return LabelledBucket(kept=kept, labels=labels, prior_labels=prior_labels, times=times,
                          events=events.filter(pa.array(keep_event)), dead=dead,
                          attributed=attributed)


_NEVER = np.iinfo(np.int64).max


def prior_mask(table: pa.Table) -> np.ndarray:
  """[rows] bool: the PRIOR column, or all False when the table has none."""
  if PRIOR not in table.column_names:
    return np.zeros(table.num_rows, dtype=bool)
  return np.asarray(table.column(PRIOR).to_numpy(), dtype=bool)


class LabelledBucket(NamedTuple):
  """`BucketLabeler.label_bucket`'s result for one bucket.

  Attributes:
    kept: the kept impressions (one per id; the input's columns plus "__row").
    labels: int64 [labels, kept] 0/1, the labels from every attributed event.
    prior_labels: int64 [labels, kept] 0/1, from the attributed PRIOR events only (the
      labels an earlier day wrote).
    times: int64 [labels, kept], each label's first-event time (`EventLabeler.label_times`),
      NO_TIME when the label is 0.
    events: the attributed events (prior and new), the input events' columns.
    dead: dead letters (new records only).
    attributed: new events attributed.
  """

  kept: pa.Table
  labels: np.ndarray
  prior_labels: np.ndarray
  times: np.ndarray
  events: pa.Table
  dead: List[Dict[str, Any]]
  attributed: int
