"""Deliberately bad raw-log lines, to test the Beam job's dead-letter accounting.

Flow: simulation.world + simulation.behaviour -> **simulation.corruption** (extra bad
records, planned here) -> simulation.writer (mixes them into the shards and records the
counts under `corruption` in world.json) -> pipeline.preprocess (must dead-letter each).

Corruption only ever adds lines: the clean impressions, events and truth are the same
with and without it (it draws from its own random stream). With `fraction` F it adds
about F * impressions bad impression lines and F * events bad event lines, split evenly
over the kinds, which are named after the dead-letter reasons of pipeline.preprocess
(transforms/dead_letter.py); exact counts go to world.json under `corruption`:

  impressions.unparseable_json          a truncated JSON object (JSON Lines only)
  impressions.missing_field             a record with a fresh id (no event refers to it)
                                        that lacks one of impression_id / timestamp /
                                        user_id / item_id (per field in
                                        `missing_field_by_name`); in Parquet the field is null
  impressions.duplicate_impression_id   an exact copy of a clean impression (byte-identical
                                        JSON line / row); each copied id occurs twice, so
                                        keeping either copy gives the same data
  events.unparseable_json               a truncated JSON event (JSON Lines only)
  events.event_without_impression       a well-formed event whose impression_id is in no
                                        impression file
  events.event_without_click            a cart / favorite / purchase event (per type in
                                        `event_without_click_by_event`) inside the
                                        attribution window of a clean impression without
                                        a click; at most one per impression

`expected_dead_letter` adds the late purchases (reason outside_attribution_window) and
lists, per source, every reason with a non-zero count: what counts.json's `dead_letter`
should hold when the Beam job runs with data.orphan_event_policy dead_letter and the
simulator's attribution window.
"""

import dataclasses
import json
from typing import Any, Callable, Dict, List, Tuple, Union

import numpy as np

from simulation import behaviour as behaviour_lib
from simulation import world as world_lib
from simulation import world_config as config_lib

OUTSIDE_ATTRIBUTION_WINDOW = "outside_attribution_window"
IMPRESSION_KINDS = ("unparseable_json", "missing_field", "duplicate_impression_id")
EVENT_KINDS = ("unparseable_json", "event_without_impression", "event_without_click")
REQUIRED_FIELDS = ("impression_id", "timestamp", "user_id", "item_id")
ORPHAN_EVENTS = ("cart", "favorite", "purchase")
MAX_FRACTION = 0.5

# A bad impression line: a malformed text line (str), a record lacking a field (dict), or
# the row number of a clean impression to copy (int).
BadImpression = Union[str, Dict[str, Any], int]


@dataclasses.dataclass
class Corruption:
  """The bad lines to add, and their counts.

  Attributes:
    impressions: bad impression lines (see BadImpression), in no particular order.
    impression_rows: [len(impressions)] the clean row (exposure) each bad impression line
      was made from (the writer's daily layout files it on that row's day).
    events: (timestamp, line) pairs: a malformed text line (str) or an event record
      (dict with impression_id, timestamp, event); the writer files them by timestamp.
    counts: the `corruption` section of world.json.
  """

  impressions: List[BadImpression]
  impression_rows: List[int]
  events: List[Tuple[int, Union[str, Dict[str, Any]]]]
  counts: Dict[str, Any]


def _truncate(line: str, rng: np.random.Generator) -> str:
  """Cuts a JSON object line before its closing brace: never valid JSON."""
  return line[:int(rng.integers(len(line) // 3, len(line) - 1))]


def _split(total: int, kinds: Tuple[str, ...], allowed: Tuple[str, ...],
           rng: np.random.Generator) -> Dict[str, int]:
  """Splits `total` evenly (multinomially) over the allowed kinds; 0 for the others."""
  counts = dict.fromkeys(kinds, 0)
  if allowed:
    for kind, count in zip(allowed, rng.multinomial(total, [1.0 / len(allowed)] * len(
        allowed))):
      counts[kind] = int(count)
  return counts


def plan_corruption(world: world_lib.World, behaviour: behaviour_lib.Behaviour,
                    fraction: float, allow_unparseable: bool,
                    impression_record: Callable[[int], Dict[str, Any]]) -> Corruption:
  """Plans the bad lines for a world (module docstring).

  Args:
    world, behaviour: the clean world and its sampled events.
    fraction: in [0, MAX_FRACTION]; about this share of each file type's clean lines is
      added as bad lines.
    allow_unparseable: False for Parquet (a row cannot hold malformed JSON); those kinds
      then get 0 and the others share the total.
    impression_record: row -> the clean impression record (dict, contract key order).
  """
  if not 0.0 <= fraction <= MAX_FRACTION:
    raise ValueError(f"corrupt_fraction must be in [0, {MAX_FRACTION}], got {fraction}")
  rng = config_lib.rng_stream(world.config.seed, "corruption")
  exposures = world.exposures
  n, n_events = len(exposures), len(behaviour.event_type)
  width = world_lib.impression_id_width(n)
  fresh_ids = iter(range(n, 10 ** width))   # ids in no impression file

  impression_kinds = tuple(k for k in IMPRESSION_KINDS
                           if allow_unparseable or k != "unparseable_json")
  event_kinds = tuple(k for k in EVENT_KINDS if allow_unparseable or k != "unparseable_json")
  impression_counts = _split(int(round(fraction * n)), IMPRESSION_KINDS, impression_kinds,
                             rng)
  unclicked = np.flatnonzero(~behaviour.click)
  event_counts = _split(int(round(fraction * n_events)), EVENT_KINDS, event_kinds, rng)
  event_counts["event_without_click"] = min(event_counts["event_without_click"],
                                            len(unclicked))

  bad_impressions: List[BadImpression] = []
  source_rows: List[int] = []
  for row in rng.integers(0, n, impression_counts["unparseable_json"]).tolist():
    source_rows.append(row)
    record = dict(impression_record(row),
                  impression_id=world_lib.impression_id(next(fresh_ids), width))
    bad_impressions.append(_truncate(json.dumps(record, separators=(",", ":")), rng))
  missing_by_name = dict.fromkeys(REQUIRED_FIELDS, 0)
  for row in rng.integers(0, n, impression_counts["missing_field"]).tolist():
    source_rows.append(row)
    record = dict(impression_record(row),
                  impression_id=world_lib.impression_id(next(fresh_ids), width))
    missing = REQUIRED_FIELDS[int(rng.integers(len(REQUIRED_FIELDS)))]
    del record[missing]
    missing_by_name[missing] += 1
    bad_impressions.append(record)
  duplicates = rng.choice(n, impression_counts["duplicate_impression_id"],
                          replace=False).tolist()
  bad_impressions.extend(duplicates)
  source_rows.extend(duplicates)

  bad_events: List[Tuple[int, Union[str, Dict[str, Any]]]] = []
  if n_events:
    for k in rng.integers(0, n_events, event_counts["unparseable_json"]).tolist():
      record = {"impression_id": exposures.impression_id[behaviour.event_row[k]],
                "timestamp": int(behaviour.event_timestamp[k]),
                "event": behaviour_lib.EVENT_TYPES[behaviour.event_type[k]]}
      bad_events.append((record["timestamp"],
                         _truncate(json.dumps(record, separators=(",", ":")), rng)))
  for row in rng.integers(0, n, event_counts["event_without_impression"]).tolist():
    timestamp = int(exposures.timestamp[row] + rng.integers(1, 600))
    event = behaviour_lib.EVENT_TYPES[int(rng.integers(len(behaviour_lib.EVENT_TYPES)))]
    bad_events.append((timestamp, {
        "impression_id": world_lib.impression_id(next(fresh_ids), width),
        "timestamp": timestamp, "event": event}))
  orphans_by_event = dict.fromkeys(ORPHAN_EVENTS, 0)
  for row in rng.choice(unclicked, event_counts["event_without_click"],
                        replace=False).tolist():
    timestamp = int(exposures.timestamp[row] + rng.integers(1, 3600))
    event = ORPHAN_EVENTS[int(rng.integers(len(ORPHAN_EVENTS)))]
    orphans_by_event[event] += 1
    bad_events.append((timestamp, {"impression_id": exposures.impression_id[row],
                                   "timestamp": timestamp, "event": event}))

  counts = {
      "fraction": fraction,
      "impressions": impression_counts,
      "events": event_counts,
      "missing_field_by_name": missing_by_name,
      "event_without_click_by_event": orphans_by_event,
      "total_bad_lines": sum(impression_counts.values()) + sum(event_counts.values()),
  }
  return Corruption(impressions=bad_impressions, impression_rows=source_rows,
                    events=bad_events, counts=counts)


def expected_dead_letter(counts: Dict[str, Any], late_purchases: int) -> Dict[str, Any]:
  """Dead letters the Beam job should report: {"impressions": {reason: n}, "events": ...}.

  Args:
    counts: the `counts` of a Corruption.
    late_purchases: purchases after the attribution window (Behaviour.late_purchase).
  """
  events = dict(counts["events"], **{OUTSIDE_ATTRIBUTION_WINDOW: late_purchases})
  return {"impressions": {k: v for k, v in counts["impressions"].items() if v},
          "events": {k: v for k, v in events.items() if v},
          "assumes": {"orphan_event_policy": "dead_letter"}}
