"""The preprocessing job: raw logs -> labelled, split TFRecords + artifacts + stats + counts.

Flow: **raw logs -> Preprocess** (this chain of composites) -> OUTPUT/ -> training.data.

    ReadRecords -> ParseImpressions / ParseEvents -> JoinAndLabel -> SplitByTime
      -> EncodeExamples -> WriteExamples               OUTPUT/{train,eval}/*.tfrecord.gz
      -> GenerateExampleStatistics                     OUTPUT/stats/{split}_stats.pb
      -> (train) AnalyzeTransforms -> WriteTransformArtifacts   OUTPUT/transform/
    every dead-letter output -> WriteDeadLetters       OUTPUT/dead_letter/*.jsonl
    Count* of every stage -> WriteCounts               OUTPUT/counts.json

`pipeline.preprocess.run` builds a pipeline with `Preprocess`, runs it, then calls
`check_run` (the accounting identities) and `check_schema` (TFDV schema inference or
validation), which raise `PreprocessError`s with readable messages.
"""

import json
from typing import Any, Dict, Optional, Sequence, Union

from absl import logging
import apache_beam as beam
import tensorflow as tf

from configs import config as config_lib
from features import spec as spec_lib
from transforms import accounting
from transforms import analyze
from transforms import dead_letter as dl
from transforms import encode
from transforms import label
from transforms import outputs as outputs_lib
from transforms import parse
from transforms import read
from transforms import split as split_lib
from transforms import stats as stats_lib


class PreprocessError(RuntimeError):
  """The job ran but its output fails a check; the message says which and why."""


class AccountingError(PreprocessError):
  """Some input records are neither written nor dead-lettered (or counted twice)."""


class AnomaliesError(PreprocessError):
  """The statistics do not match the given schema (with --fail_on_anomalies)."""


class Preprocess(beam.PTransform):
  """Pipeline root -> every output of DESIGN.md section 3 but the schema/anomalies files.

  Args:
    impressions, events: globs (or lists of globs) of raw log files.
    output_dir: OUTPUT (local or gs://).
    data_config: labels, attribution window, orphan policy, eval_from, shard counts.
    spec: the feature spec.
    statistics: also compute TFDV statistics of both splits.

  Returns (from expand): {"train", "eval"} serialized Examples, "dead_letter" and
  "counts" (the path of counts.json, once written).
  """

  def __init__(self, impressions: Union[str, Sequence[str]], events: Union[str, Sequence[str]],
               output_dir: str, data_config: config_lib.DataConfig,
               spec: spec_lib.FeatureSpec, statistics: bool = True):
    super().__init__()
    self._impressions = impressions
    self._events = events
    self._paths = outputs_lib.OutputPaths(output_dir)
    self._data_config = data_config
    self._spec = spec
    self._statistics = statistics

  def expand(self, pbegin):
    config, spec, paths = self._data_config, self._spec, self._paths
    label_names = config.label_names
    event_types = label.EventLabeler(config).event_types

    raw_impressions = pbegin | "ReadImpressions" >> read.ReadRecords(self._impressions,
                                                                     dl.IMPRESSIONS)
    raw_events = pbegin | "ReadEvents" >> read.ReadRecords(self._events, dl.EVENTS)
    impressions = raw_impressions | "ParseImpressions" >> parse.ParseImpressions(spec)
    events = raw_events | "ParseEvents" >> parse.ParseEvents(event_types)
    labelled = ((impressions[parse.RECORDS], events[parse.RECORDS])
                | "JoinAndLabel" >> label.JoinAndLabel(config))
    splits = labelled[label.RECORDS] | "SplitByTime" >> split_lib.SplitByTime(
        config.eval_from_timestamp)

    dead_letters = [impressions[dl.DEAD_LETTER], events[dl.DEAD_LETTER],
                    labelled[dl.DEAD_LETTER]]
    counts = [
        raw_impressions | "CountImpressionsRead" >> accounting.CountAs((dl.IMPRESSIONS, "read")),
        raw_events | "CountEventsRead" >> accounting.CountAs((dl.EVENTS, "read")),
        labelled[label.ATTRIBUTED] | "CountAttributed" >> accounting.CountAs(
            (dl.EVENTS, "attributed")),
    ]
    shards = {split_lib.TRAIN: config.train_shards, split_lib.EVAL: config.eval_shards}
    examples = {}
    for split in outputs_lib.SPLITS:
      encoded = splits[split] | f"Encode_{split}" >> encode.EncodeExamples(spec, label_names,
                                                                          split)
      examples[split] = encoded[encode.EXAMPLES]
      dead_letters.append(encoded[dl.DEAD_LETTER])
      _ = examples[split] | f"Write_{split}" >> encode.WriteExamples(
          paths.examples_prefix(split), shards[split])
      counts.append(examples[split] | f"CountWritten_{split}" >> accounting.CountAs(
          (dl.IMPRESSIONS, "written", split)))
      counts.append(splits[split] | f"CountLabels_{split}" >> accounting.CountLabels(
          split, label_names))
      if self._statistics:
        _ = examples[split] | f"Statistics_{split}" >> stats_lib.GenerateExampleStatistics(
            spec, label_names, paths.stats(split))

    _ = (splits[split_lib.TRAIN]
         | "AnalyzeTransforms" >> analyze.AnalyzeTransforms(spec)
         | "WriteTransformArtifacts" >> analyze.WriteTransformArtifacts(paths.transform_dir))
    all_dead_letters = dead_letters | "FlattenDeadLetters" >> beam.Flatten()
    _ = all_dead_letters | "WriteDeadLetters" >> dl.WriteDeadLetters(paths.dead_letter_prefix)
    counts.append(all_dead_letters | "CountDeadLetters" >> accounting.CountDeadLetters())
    counts_path = (counts
                   | "FlattenCounts" >> beam.Flatten()
                   | "WriteCounts" >> accounting.WriteCounts(paths.counts, label_names))
    return {split_lib.TRAIN: examples[split_lib.TRAIN], split_lib.EVAL: examples[split_lib.EVAL],
            dl.DEAD_LETTER: all_dead_letters, "counts": counts_path}


def write_run_inputs(paths: outputs_lib.OutputPaths, config: config_lib.ExperimentConfig) -> None:
  """Copies the feature spec YAML and the label names beside the data, for training."""
  tf.io.gfile.makedirs(paths.root)
  tf.io.gfile.copy(config.feature_spec_path, paths.feature_spec, overwrite=True)
  with tf.io.gfile.GFile(paths.labels, "w") as f:
    json.dump(list(config.data.label_names), f)


def check_run(paths: outputs_lib.OutputPaths, seconds: float) -> Dict[str, Any]:
  """Reads counts.json, logs the table and checks the identities.

  Raises:
    AccountingError: when some records are unaccounted for.
  """
  counts = accounting.load_counts(paths.counts)
  accounting.log_counts(counts, seconds)
  problems = accounting.check_counts(counts)
  if problems:
    raise AccountingError(f"{paths.counts}: records lost or double-counted: "
                          + "; ".join(problems))
  return counts


def check_schema(paths: outputs_lib.OutputPaths, spec: spec_lib.FeatureSpec,
                 label_names: Sequence[str], schema_path: Optional[str] = None,
                 fail_on_anomalies: bool = False) -> Dict[str, Any]:
  """Infers the schema (no `schema_path`) or validates both splits against it.

  Returns:
    {"schema": path written or read, "anomalies": split -> readable lines}.

  Raises:
    AnomaliesError: with `fail_on_anomalies`, naming every feature and anomaly.
  """
  if schema_path is None:
    schema = stats_lib.infer_schema(stats_lib.load_statistics(paths.stats(split_lib.TRAIN)),
                                    spec, label_names)
    stats_lib.write_schema(schema, paths.schema)
    logging.info("Inferred a schema of %d features from train statistics: %s",
                 len(schema.feature), paths.schema)
    return {"schema": paths.schema, "anomalies": {}}
  schema = stats_lib.load_schema(schema_path)
  found = stats_lib.check_splits(
      schema, {split: paths.stats(split) for split in outputs_lib.SPLITS},
      {split: paths.anomalies(split) for split in outputs_lib.SPLITS})
  if fail_on_anomalies and any(found.values()):
    lines = [f"{split}: {line}" for split, split_lines in found.items() for line in split_lines]
    raise AnomaliesError(f"statistics do not match the schema {schema_path} "
                         f"({len(lines)} anomalies; see {paths.anomalies('*')}):\n  "
                         + "\n  ".join(lines))
  return {"schema": schema_path, "anomalies": found}
