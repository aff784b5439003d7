"""Join impressions with their behaviour events and derive the 0/1 labels.

Flow: ParseImpressions + ParseEvents -> **JoinAndLabel** -> SplitByTime -> EncodeExamples.
Both inputs are keyed by impression_id and co-grouped. Per impression id:

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

Outputs: "records" (labelled impressions: {"impression_id", "timestamp", "features",
"labels": {name: 0/1 for every configured label}, "file", "line"}), "dead_letter", and
"attributed" (one element, the event type, per attributed event, for the accounting).
"""

import json
from typing import Any, Dict, Iterable, List, Sequence, Tuple

import apache_beam as beam

from configs import config as config_lib
from transforms import dead_letter as dl
from transforms import parse as parse_lib

RECORDS = parse_lib.RECORDS
ATTRIBUTED = "attributed"


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
    ordered = sorted(impressions, key=lambda imp: (imp["timestamp"], canonical_json(
        imp["record"]), imp["file"], imp["line"]))
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
    for event in sorted(events, key=lambda e: (e["timestamp"], e["event"], e["file"], e["line"])):
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


class _LabelFn(beam.DoFn):
  """(impression_id, {"impressions": [...], "events": [...]}) -> labelled impression."""

  def __init__(self, data_config: config_lib.DataConfig):
    self._data_config = data_config
    self._labelled = beam.metrics.Metrics.counter("label", "impressions_labelled")
    self._attributed = beam.metrics.Metrics.counter("label", "events_attributed")
    self._rejected = beam.metrics.Metrics.counter("label", "dead_letter")

  def setup(self):
    self._labeler = EventLabeler(self._data_config)

  def process(self, keyed: Tuple[str, Dict[str, Iterable[Dict[str, Any]]]]):
    _, grouped = keyed
    impressions = list(grouped["impressions"])
    events = list(grouped["events"])
    if not impressions:
      self._rejected.inc(len(events))
      for event in events:
        yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, _event_dead_letter(
            event, dl.EVENT_WITHOUT_IMPRESSION,
            f"no impression with impression_id {event['impression_id']!r}"))
      return
    impression, dead = self._labeler.choose_impression(impressions)
    labels, attributed, dead_events = self._labeler.attribute(impression, events)
    self._rejected.inc(len(dead) + len(dead_events))
    for letter in dead + dead_events:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    self._attributed.inc(len(attributed))
    for event in attributed:
      yield beam.pvalue.TaggedOutput(ATTRIBUTED, event["event"])
    self._labelled.inc()
    yield {"impression_id": impression["impression_id"], "timestamp": impression["timestamp"],
           "features": impression["features"], "labels": labels,
           "file": impression["file"], "line": impression["line"]}


class JoinAndLabel(beam.PTransform):
  """(impressions, events) -> {"records", "dead_letter", "attributed"}.

  Args:
    data_config: labels, attribution window and orphan policy.
  """

  def __init__(self, data_config: config_lib.DataConfig):
    super().__init__()
    self._data_config = data_config

  def expand(self, impressions_and_events):
    impressions, events = impressions_and_events
    keyed_impressions = impressions | "KeyImpressions" >> beam.Map(
        lambda imp: (imp["impression_id"], imp))
    keyed_events = events | "KeyEvents" >> beam.Map(lambda event: (event["impression_id"], event))
    outputs = ({"impressions": keyed_impressions, "events": keyed_events}
               | "CoGroup" >> beam.CoGroupByKey()
               | "Label" >> beam.ParDo(_LabelFn(self._data_config)).with_outputs(
                   dl.DEAD_LETTER, ATTRIBUTED, main=RECORDS))
    return {RECORDS: outputs[RECORDS], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER],
            ATTRIBUTED: outputs[ATTRIBUTED]}
