"""Accounting as data: every input record is counted in, and out exactly once.

Flow: each stage of the preprocessing job -> **Count* transforms -> WriteCounts** ->
OUTPUT/counts.json -> `check_counts` after the run. Counts are PCollections, not Beam
metrics, because metrics cannot be read back on every runner (DaskRunner raises). The
layout (DESIGN.md section 3):

  {"impressions": {"read": n, "written": {"train": n, "eval": n}, "dead_letter": {reason: n}},
   "events": {"read": n, "attributed": n, "dead_letter": {reason: n}},
   "labels": {"train": {"click": n, ...}, "eval": {...}}}

Identities checked after the run: impressions read == written + dead-lettered, and
events read == attributed + dead-lettered.
"""

import json
import os
from typing import Any, Dict, List, Sequence, Tuple

from absl import logging
import apache_beam as beam
import tensorflow as tf

from transforms import dead_letter as dl
from transforms import outputs as outputs_lib

CountPath = Tuple[str, ...]  # e.g. ("impressions", "written", "train")


class CountAs(beam.PTransform):
  """PCollection -> a single (path, number of elements); 0 on an empty input."""

  def __init__(self, path: CountPath):
    super().__init__()
    self._path = tuple(path)

  def expand(self, pcoll):
    path = self._path
    return (pcoll
            | "Count" >> beam.combiners.Count.Globally()
            | "Tag" >> beam.Map(lambda n: (path, n)))


class CountDeadLetters(beam.PTransform):
  """Dead letters -> ((source, "dead_letter", reason), n) per source and reason."""

  def expand(self, dead_letters):
    return (dead_letters
            | "SourceReason" >> beam.Map(lambda letter: (letter["source"], letter["reason"]))
            | "Count" >> beam.combiners.Count.PerElement()
            | "Tag" >> beam.Map(lambda kv: ((kv[0][0], "dead_letter", kv[0][1]), kv[1])))


class _SumLabelsFn(beam.CombineFn):
  """Labelled records -> positives per label, in label order."""

  def __init__(self, label_names: Sequence[str]):
    self._label_names = tuple(label_names)

  def create_accumulator(self):
    return [0] * len(self._label_names)

  def add_input(self, accumulator, record):
    labels = record["labels"]
    for index, name in enumerate(self._label_names):
      accumulator[index] += labels[name]
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
  """Labelled records of a split -> (("labels", split, name), positives) per label."""

  def __init__(self, split: str, label_names: Sequence[str]):
    super().__init__()
    self._split = split
    self._label_names = tuple(label_names)

  def expand(self, records):
    split, names = self._split, self._label_names
    return (records
            | "Sum" >> beam.CombineGlobally(_SumLabelsFn(names))
            | "Tag" >> beam.FlatMap(lambda sums: [(("labels", split, name), n)
                                                  for name, n in zip(names, sums)]))


def empty_counts(label_names: Sequence[str]) -> Dict[str, Any]:
  """The counts.json skeleton, every number 0."""
  return {dl.IMPRESSIONS: {"read": 0, "written": {split: 0 for split in outputs_lib.SPLITS},
                           "dead_letter": {}},
          dl.EVENTS: {"read": 0, "attributed": 0, "dead_letter": {}},
          "labels": {split: {name: 0 for name in label_names} for split in outputs_lib.SPLITS}}


def build_counts(entries: List[Tuple[CountPath, int]],
                 label_names: Sequence[str]) -> Dict[str, Any]:
  """(path, n) entries -> the nested counts.json mapping (paths seen twice are summed)."""
  counts = empty_counts(label_names)
  for path, n in entries:
    node = counts
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = node.get(path[-1], 0) + int(n)
  for source in (dl.IMPRESSIONS, dl.EVENTS):
    counts[source]["dead_letter"] = dict(sorted(counts[source]["dead_letter"].items()))
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

  def __init__(self, path: str, label_names: Sequence[str]):
    super().__init__()
    self._path = path
    self._label_names = tuple(label_names)

  def expand(self, counts):
    return (counts
            | "Gather" >> beam.combiners.ToList()
            | "Build" >> beam.Map(build_counts, self._label_names)
            | "Write" >> beam.Map(write_json, self._path))


def load_counts(path: str) -> Dict[str, Any]:
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)


def check_counts(counts: Dict[str, Any]) -> List[str]:
  """The broken identities, as readable sentences (empty when every record is accounted)."""
  problems = []
  impressions = counts[dl.IMPRESSIONS]
  written = sum(impressions["written"].values())
  rejected = sum(impressions["dead_letter"].values())
  if impressions["read"] != written + rejected:
    problems.append(
        f"impressions: read {impressions['read']} != written {written} "
        f"({impressions['written']}) + dead-lettered {rejected} ({impressions['dead_letter']}); "
        f"{impressions['read'] - written - rejected} unaccounted")
  events = counts[dl.EVENTS]
  rejected = sum(events["dead_letter"].values())
  if events["read"] != events["attributed"] + rejected:
    problems.append(
        f"events: read {events['read']} != attributed {events['attributed']} + "
        f"dead-lettered {rejected} ({events['dead_letter']}); "
        f"{events['read'] - events['attributed'] - rejected} unaccounted")
  return problems


def format_counts(counts: Dict[str, Any], seconds: float) -> str:
  """A readable table of counts.json with throughput over `seconds` of wall time."""
  impressions, events = counts[dl.IMPRESSIONS], counts[dl.EVENTS]

  def rate(n: int) -> float:
    return n / seconds if seconds > 0 else float("nan")

  total_read = impressions["read"] + events["read"]
  lines = [
      f"{'':<13}{'read':>10}{'written/attributed':>22}{'dead-lettered':>15}",
      f"{'impressions':<13}{impressions['read']:>10}"
      f"{sum(impressions['written'].values()):>22}{sum(impressions['dead_letter'].values()):>15}",
      f"{'events':<13}{events['read']:>10}{events['attributed']:>22}"
      f"{sum(events['dead_letter'].values()):>15}",
  ]
  for split in outputs_lib.SPLITS:
    written = impressions["written"].get(split, 0)
    labels = counts["labels"].get(split, {})
    positives = ", ".join(f"{name} {n} ({n / written:.2%})" if written else f"{name} {n}"
                          for name, n in labels.items())
    lines.append(f"  {split:<6} {written:>10} examples; positives: {positives}")
  for source, section in ((dl.IMPRESSIONS, impressions), (dl.EVENTS, events)):
    for reason, n in section["dead_letter"].items():
      lines.append(f"  dead letter {source}/{reason}: {n}")
  lines.append(f"{total_read} input records in {seconds:.1f} s: {rate(total_read):,.0f} "
               f"records/s ({rate(impressions['read']):,.0f} impressions/s)")
  return "\n".join(lines)


def log_counts(counts: Dict[str, Any], seconds: float) -> None:
  for line in format_counts(counts, seconds).split("\n"):
    logging.info("%s", line)
