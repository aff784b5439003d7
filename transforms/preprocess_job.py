"""The preprocessing job: raw logs -> labelled, split TFRecords + artifacts + stats + counts.

Flow: **raw logs -> Preprocess** (this chain of composites) -> OUTPUT/ -> training.data.

    ReadRecords -> ParseImpressions / ParseEvents -> JoinAndLabel -> SplitByTime
      -> EncodeExamples -> WriteExamples               OUTPUT/{train,eval}/*.tfrecord.gz
      -> GenerateExampleStatistics                     OUTPUT/stats/{split}_stats.pb
      -> (train) AnalyzeTransforms -> WriteTransformArtifacts   OUTPUT/transform/
    every dead-letter output -> WriteDeadLetters       OUTPUT/dead_letter/*.jsonl
    Count* of every stage -> WriteCounts               OUTPUT/counts.json

Other sources share everything from EncodeExamples on (`write_outputs`):
  * PreprocessAliCcp: the raw Ali-CCP release, ReadRecords -> ParseSkeleton /
    ParseCommonFeatures -> JoinCommonFeatures (CoGroupByKey on split and md5) ->
    SplitByFile (transforms/aliccp.py; docs/ALI_CCP.md).
  * PreprocessDerived: torch-rechub CSV, PaddleRec ESMM text or AliExpress CSV,
    ReadDerived -> per split (transforms/derived_sources.py).

`pipeline.preprocess.run` builds a pipeline with `Preprocess`, runs it, then calls
`check_run` (the accounting identities) and `check_schema` (TFDV schema inference or
validation), which raise `PreprocessError`s with readable messages.
"""

import json
from typing import Any, Dict, List, Optional, Sequence, Union

from absl import logging
import apache_beam as beam
import tensorflow as tf

from configs import config as config_lib
from features import spec as spec_lib
from transforms import accounting
from transforms import aliccp
from transforms import analyze
from transforms import dead_letter as dl
from transforms import derived_sources
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
    return write_outputs(splits, dead_letters, counts, paths, config, spec, self._statistics)


def write_outputs(splits: Dict[str, beam.PCollection], dead_letters: List[beam.PCollection],
                  counts: List[beam.PCollection], paths: outputs_lib.OutputPaths,
                  config: config_lib.DataConfig, spec: spec_lib.FeatureSpec,
                  statistics: bool, sources: Sequence[str] = accounting.LOG_SOURCES
                  ) -> Dict[str, Any]:
  """The tail every source shares: labelled records per split -> every output file.

  Args:
    splits: {"train", "eval"} labelled records ({"impression_id", "timestamp",
      "features", "labels", "file", "line"}).
    dead_letters: the dead-letter PCollections of the stages so far.
    counts: (path, n) PCollections of the stages so far (reads, joins, ...).
    sources: the counts.json source sections (accounting.SOURCE_SECTIONS keys).

  Returns:
    {"train", "eval"} serialized Examples, "dead_letter", "counts" (counts.json path).
  """
  label_names = config.label_names
  dead_letters, counts = list(dead_letters), list(counts)
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
    if statistics:
      _ = examples[split] | f"Statistics_{split}" >> stats_lib.GenerateExampleStatistics(
          spec, label_names, paths.stats(split))

  analysis = splits[split_lib.TRAIN] | "AnalyzeTransforms" >> analyze.AnalyzeTransforms(spec)
  return write_artifacts_and_counts(analysis, examples, dead_letters, counts, paths,
                                    label_names, sources)


def write_artifacts_and_counts(analysis: beam.PCollection, examples: Dict[str, Any],
                               dead_letters: List[beam.PCollection],
                               counts: List[beam.PCollection],
                               paths: outputs_lib.OutputPaths, label_names: Sequence[str],
                               sources: Sequence[str]) -> Dict[str, Any]:
  """The last steps of `write_outputs` (and of the columnar job's): transform artifacts
  from `analysis` (AnalyzeTransforms' output), every dead letter, counts.json.

  Returns:
    {"train", "eval"}: `examples`, "dead_letter", "counts" (counts.json path).
  """
  _ = analysis | "WriteTransformArtifacts" >> analyze.WriteTransformArtifacts(
      paths.transform_dir)
  all_dead_letters = dead_letters | "FlattenDeadLetters" >> beam.Flatten()
  _ = all_dead_letters | "WriteDeadLetters" >> dl.WriteDeadLetters(paths.dead_letter_prefix)
  counts = list(counts) + [
      all_dead_letters | "CountDeadLetters" >> accounting.CountDeadLetters()]
  counts_path = (counts
                 | "FlattenCounts" >> beam.Flatten()
                 | "WriteCounts" >> accounting.WriteCounts(paths.counts, label_names, sources))
  return {split_lib.TRAIN: examples[split_lib.TRAIN], split_lib.EVAL: examples[split_lib.EVAL],
          dl.DEAD_LETTER: all_dead_letters, "counts": counts_path}


class _FileSplitPreprocess(beam.PTransform):
  """Shared set-up of the sources whose train/eval split comes from the files read."""

  def __init__(self, source: str, output_dir: str, data_config: config_lib.DataConfig,
               spec: spec_lib.FeatureSpec, statistics: bool):
    super().__init__()
    aliccp.check_source_labels(data_config.label_names, source)
    self._paths = outputs_lib.OutputPaths(output_dir)
    self._data_config = data_config
    self._spec = spec
    self._statistics = statistics
    self._infer_click = data_config.orphan_event_policy == "infer_click"


class PreprocessAliCcp(_FileSplitPreprocess):
  """Pipeline root -> the outputs of `Preprocess`, from the raw Ali-CCP release.

  Reads skeleton and common-features files of each split (train and eval come from
  separate files), joins them on (split, md5) with a CoGroupByKey and labels click and
  purchase (transforms/aliccp.py). counts.json has an "impressions" section (skeleton
  rows) and a "common_features" section (read == used + unused + dead-lettered).

  Args:
    skeleton, common_features: {"train": globs, "eval": globs}.
    output_dir, data_config, spec, statistics: as for `Preprocess`; data.labels must be
      [click, purchase].
  """

  def __init__(self, skeleton: Dict[str, Sequence[str]],
               common_features: Dict[str, Sequence[str]], output_dir: str,
               data_config: config_lib.DataConfig, spec: spec_lib.FeatureSpec,
               statistics: bool = True):
    super().__init__("ali_ccp", output_dir, data_config, spec, statistics)
    self._skeleton = skeleton
    self._common = common_features

  def expand(self, pbegin):
    config, spec, infer_click = self._data_config, self._spec, self._infer_click
    skeletons, commons, rejected, dead_letters, counts = [], [], [], [], []
    for split in outputs_lib.SPLITS:
      raw_skeleton = pbegin | f"ReadSkeleton_{split}" >> read.ReadRecords(
          self._skeleton[split], dl.IMPRESSIONS)
      raw_common = pbegin | f"ReadCommonFeatures_{split}" >> read.ReadRecords(
          self._common[split], dl.COMMON_FEATURES)
      skeleton = raw_skeleton | f"ParseSkeleton_{split}" >> aliccp.ParseSkeleton(
          spec, split, infer_click)
      common = raw_common | f"ParseCommonFeatures_{split}" >> aliccp.ParseCommonFeatures(
          spec, split)
      skeletons.append(skeleton[aliccp.RECORDS])
      commons.append(common[aliccp.RECORDS])
      rejected.append(common[aliccp.REJECTED])
      dead_letters += [skeleton[dl.DEAD_LETTER], common[dl.DEAD_LETTER]]
      counts += [
          raw_skeleton | f"CountSkeletonRead_{split}" >> accounting.CountAs(
              (dl.IMPRESSIONS, "read")),
          raw_common | f"CountCommonRead_{split}" >> accounting.CountAs(
              (dl.COMMON_FEATURES, "read")),
      ]
    joined = ((skeletons | "FlattenSkeleton" >> beam.Flatten(),
               commons | "FlattenCommon" >> beam.Flatten(),
               rejected | "FlattenRejected" >> beam.Flatten())
              | "JoinCommonFeatures" >> aliccp.JoinCommonFeatures(spec))
    dead_letters.append(joined[dl.DEAD_LETTER])
    counts += [
        joined[aliccp.USED] | "CountUsed" >> accounting.CountAs((dl.COMMON_FEATURES, "used")),
        joined[aliccp.UNUSED] | "CountUnused" >> accounting.CountAs(
            (dl.COMMON_FEATURES, "unused")),
    ]
    splits = joined[aliccp.RECORDS] | "SplitByFile" >> aliccp.SplitByFile()
    return write_outputs(splits, dead_letters, counts, self._paths, config, spec,
                         self._statistics, sources=(dl.IMPRESSIONS, dl.COMMON_FEATURES))


class PreprocessDerived(_FileSplitPreprocess):
  """Pipeline root -> the outputs of `Preprocess`, from a derived Ali-CCP layout.

  Args:
    files: {"train": globs, "eval": globs} (e.g. train vs val/test files).
    layout: "rechub_csv", "paddle_esmm" or "aliexpress" (transforms/derived_sources.py).
    output_dir, data_config, spec, statistics: as for `PreprocessAliCcp`.
  """

  def __init__(self, files: Dict[str, Sequence[str]], layout: str, output_dir: str,
               data_config: config_lib.DataConfig, spec: spec_lib.FeatureSpec,
               statistics: bool = True):
    super().__init__(layout, output_dir, data_config, spec, statistics)
    self._files = files
    self._layout = layout

  def expand(self, pbegin):
    splits, dead_letters, counts = {}, [], []
    for split in outputs_lib.SPLITS:
      rows = pbegin | f"Read_{split}" >> self.read_split(split)
      splits[split] = rows[aliccp.RECORDS]
      dead_letters.append(rows[dl.DEAD_LETTER])
      counts.append(rows[derived_sources.READ] | f"TagRead_{split}" >> beam.Map(
          lambda n: ((dl.IMPRESSIONS, "read"), n)))
    return self.write(splits, dead_letters, counts)

  # The engine's steps (the columnar job overrides them).
  def read_split(self, split: str) -> beam.PTransform:
    """Root -> {"records", "dead_letter", "read"} of the split's files."""
    return derived_sources.ReadDerived(self._files[split], self._layout, self._spec, split,
                                       self._infer_click)

  def write(self, splits: Dict[str, beam.PCollection], dead_letters: List[beam.PCollection],
            counts: List[beam.PCollection]) -> Dict[str, Any]:
    return write_outputs(splits, dead_letters, counts, self._paths, self._data_config,
                         self._spec, self._statistics, sources=(dl.IMPRESSIONS,))


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
