"""Accounting as data: every input record is counted in, and out exactly once.

Flow: each stage of the preprocessing job -> (path, n) counts, **CountDeadLetters,
CountLabels -> WriteCounts** ->
OUTPUT/counts.json -> `check_counts` after the run. Counts are PCollections, not Beam
metrics, because metrics cannot be read back on every runner (DaskRunner raises). The
layout and its identities (impressions read == written + dead-lettered, events read ==
attributed + dead-lettered): DESIGN.md section 3. Sources other than the raw log
contract list their own sections (`SOURCE_SECTIONS`), e.g. Ali-CCP's "common_features"
(read == used + unused + dead-lettered; docs/ALI_CCP.md).

A source section also holds `"cut": {feature: n}` when n of its records had a value of
that feature cut to the spec's max_length (`on_too_long: cut`; transforms.parse). Cut
records are still written, so "cut" is a note, not an outcome: it is outside the
identities, and absent when nothing was cut.
"""

import json
import os
from typing import Any, Dict, List, Sequence, Tuple

from absl import logging
import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf

from transforms import dead_letter as dl
from transforms import outputs as outputs_lib

CountPath = Tuple[str, ...]  # e.g. ("impressions", "written", "train")


class CountDeadLetters(beam.PTransform):
  """Dead letters -> ((source, "dead_letter", reason), n) per source and reason."""

  def expand(self, dead_letters):
    return (dead_letters
            | "SourceReason" >> beam.Map(lambda letter: (letter["source"], letter["reason"]))
            | "Count" >> beam.combiners.Count.PerElement()
            | "Tag" >> beam.Map(lambda kv: ((kv[0][0], "dead_letter", kv[0][1]), kv[1])))


def label_sums(batch: pa.RecordBatch, label_names: Sequence[str]) -> List[int]:
  """Positives per label of a labelled batch (int64 0/1 columns), in label order."""
  return [int(pc.sum(batch.column(batch.schema.get_field_index(name))).as_py() or 0)
          for name in label_names]


class _SumPositivesFn(beam.CombineFn):
  """Labelled batches -> positives per label, in label order: the sum of their
  `label_sums` (exact integers, so any bundling gives the same)."""

  def __init__(self, label_names: Sequence[str]):
    self._label_names = tuple(label_names)

  def create_accumulator(self):
    return [0] * len(self._label_names)

  def add_input(self, accumulator, element):
    for index, value in enumerate(label_sums(element, self._label_names)):
      accumulator[index] += value
    return accumulator

  def merge_accumulators(self, accumulators):
    total = self.create_accumulator()
    for accumulator in accumulators:
      for index, value in enumerate(accumulator):
        total[index] += value
    return total

  def extract_output(self, accumulator):
    return accumulator


class CountLabels(beam.PTransform):
  """Labelled batches of a split -> (("labels", split, name), positives) per label.

  Args:
    split, label_names: the split and its labels, in order.
  """

  def __init__(self, split: str, label_names: Sequence[str]):
    super().__init__()
    self._split = split
    self._label_names = tuple(label_names)

  def expand(self, batches):
    split, names = self._split, self._label_names
    return (batches
            | "Sum" >> beam.CombineGlobally(_SumPositivesFn(names))
            | "Tag" >> beam.FlatMap(lambda sums: [(("labels", split, name), n)
                                                  for name, n in zip(names, sums)]))


# The outcome keys of each source section (besides "read" and "dead_letter"): every
# record read lands in exactly one of them or in a dead letter.
SOURCE_SECTIONS = {
    dl.IMPRESSIONS: ("written",),
    dl.EVENTS: ("attributed",),
    dl.COMMON_FEATURES: ("used", "unused"),
}
LOG_SOURCES = (dl.IMPRESSIONS, dl.EVENTS)
# The daily job's impressions carried across days (transforms/daily.py): every impression
# open before the day (open_in) or new today is, after it, either still open (open_out)
# or closed (its attribution window ended: written with its final labels).
STATE = "state"
STATE_IN = ("open_in", "new")
STATE_OUT = ("open_out", "closed")
CUT = "cut"  # A source section's {feature: records whose value was cut} (module docstring).


def _empty_section(source: str) -> Dict[str, Any]:
  section: Dict[str, Any] = {"read": 0}
  for outcome in SOURCE_SECTIONS[source]:
    section[outcome] = ({split: 0 for split in outputs_lib.SPLITS} if outcome == "written"
                        else 0)
  section["dead_letter"] = {}
  return section


def empty_counts(label_names: Sequence[str],
                 sources: Sequence[str] = LOG_SOURCES) -> Dict[str, Any]:
  """The counts.json skeleton, every number 0, with a section per source."""
  counts: Dict[str, Any] = {source: _empty_section(source) for source in sources}
  counts["labels"] = {split: {name: 0 for name in label_names} for split in outputs_lib.SPLITS}
  return counts


def build_counts(entries: List[Tuple[CountPath, int]], label_names: Sequence[str],
                 sources: Sequence[str] = LOG_SOURCES) -> Dict[str, Any]:
  """(path, n) entries -> the nested counts.json mapping (paths seen twice are summed)."""
  counts = empty_counts(label_names, sources)
  for path, n in entries:
    node = counts
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = node.get(path[-1], 0) + int(n)
  for section in counts.values():
    for note in ("dead_letter", CUT):
      if note in section:
        section[note] = dict(sorted(section[note].items()))
  return counts


def write_json(value: Any, path: str) -> str:
  """Writes a JSON file (local or gs://); returns its path."""
  tf.io.gfile.makedirs(os.path.dirname(path) or ".")
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(value, f, indent=1, sort_keys=False)
  return path


class WriteCounts(beam.PTransform):
  """PCollection of (path, n) (flatten the Count* outputs first) -> OUTPUT/counts.json.

  Args:
    path: the counts.json path.
    label_names: configured labels, listed with 0 when they have no positives.
  """

  def __init__(self, path: str, label_names: Sequence[str],
               sources: Sequence[str] = LOG_SOURCES):
    super().__init__()
    self._path = path
    self._label_names = tuple(label_names)
    self._sources = tuple(sources)

  def expand(self, counts):
    return (counts
            | "Gather" >> beam.combiners.ToList()
            | "Build" >> beam.Map(build_counts, self._label_names, self._sources)
            | "Write" >> beam.Map(write_json, self._path))


def load_counts(path: str) -> Dict[str, Any]:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def _outcomes(section: Dict[str, Any], outcome: str) -> int:
  value = section.get(outcome, 0)
  return sum(value.values()) if isinstance(value, dict) else int(value)


def check_counts(counts: Dict[str, Any]) -> List[str]:
  """The broken identities, as readable sentences (empty when every record is accounted).

  For each source section present: read == sum of its outcomes (SOURCE_SECTIONS) +
  dead-lettered; with a "state" section (the daily job): open_in + new == open_out +
  closed.
  """
  problems = []
  for source, outcomes in SOURCE_SECTIONS.items():
    section = counts.get(source)
    if section is None:
      continue
    rejected = sum(section["dead_letter"].values())
    kept = sum(_outcomes(section, outcome) for outcome in outcomes)
    if section["read"] != kept + rejected:
      described = " + ".join(f"{outcome} {_outcomes(section, outcome)}"
                             + (f" ({section[outcome]})" if isinstance(section.get(outcome), dict)
                                else "") for outcome in outcomes)
      problems.append(
          f"{source}: read {section['read']} != {described} + dead-lettered {rejected} "
          f"({section['dead_letter']}); {section['read'] - kept - rejected} unaccounted")
  state = counts.get(STATE)
  if state is not None:
    carried_in = sum(state.get(key, 0) for key in STATE_IN)
    carried_out = sum(state.get(key, 0) for key in STATE_OUT)
    if carried_in != carried_out:
      problems.append(
          f"{STATE}: " + " + ".join(f"{key} {state.get(key, 0)}" for key in STATE_IN)
          + " != " + " + ".join(f"{key} {state.get(key, 0)}" for key in STATE_OUT)
          + f"; {carried_in - carried_out} impressions unaccounted")
  return problems


def format_counts(counts: Dict[str, Any], seconds: float) -> str:
  """A readable table of counts.json with throughput over `seconds` of wall time."""
  impressions = counts[dl.IMPRESSIONS]
  sources = [source for source in SOURCE_SECTIONS if source in counts]

  def rate(n: int) -> float:
    return n / seconds if seconds > 0 else float("nan")

  total_read = sum(counts[source]["read"] for source in sources)
  lines = [f"{'':<16}{'read':>10}{'written/attributed/used':>25}{'dead-lettered':>15}"]
  for source in sources:
    section = counts[source]
    kept = sum(_outcomes(section, outcome) for outcome in SOURCE_SECTIONS[source])
    lines.append(f"{source:<16}{section['read']:>10}{kept:>25}"
                 f"{sum(section['dead_letter'].values()):>15}")
  if dl.COMMON_FEATURES in counts:
    lines.append(f"  {dl.COMMON_FEATURES}: used {counts[dl.COMMON_FEATURES]['used']}, "
                 f"unused {counts[dl.COMMON_FEATURES]['unused']}")
  for split in outputs_lib.SPLITS:
    written = impressions["written"].get(split, 0)
    labels = counts["labels"].get(split, {})
    positives = ", ".join(f"{name} {n} ({n / written:.2%})" if written else f"{name} {n}"
                          for name, n in labels.items())
    lines.append(f"  {split:<6} {written:>10} examples; positives: {positives}")
  for source in sources:
    for reason, n in counts[source]["dead_letter"].items():
      lines.append(f"  dead letter {source}/{reason}: {n}")
    for feature, n in counts[source].get(CUT, {}).items():
      lines.append(f"  cut to max_length {source}/{feature}: {n} (kept, written cut)")
  lines.append(f"{total_read} input records in {seconds:.1f} s: {rate(total_read):,.0f} "
               f"records/s ({rate(impressions['read']):,.0f} impressions/s)")
  return "\n".join(lines)


def log_counts(counts: Dict[str, Any], seconds: float) -> None:
  for line in format_counts(counts, seconds).split("\n"):
    logging.info("%s", line)
