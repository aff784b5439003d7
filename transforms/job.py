"""The preprocessing job: raw logs -> labelled, split TFRecords + artifacts + stats + counts.

Flow: raw logs -> **Preprocess** (this chain of composites) -> OUTPUT/ -> training.data.
Every element is a pyarrow RecordBatch (thousands of records) up to the encoder:

    read + parse    ReadParseImpressions / ReadParseEvents   batches, dead letters, reads,
                                                             values cut (features.spec limits)
      -> LogProgress (records so far and records/s per worker, every 30 s)
    join + label    BucketedJoinAndLabel     CoGroupByKey on hash buckets of impression_id
    split           SplitBatchesByTime       labelled batches per split
    write_outputs, per split:
      encode -> write   EncodeBatches -> WriteExamples   OUTPUT/{train,eval}/*.tfrecord.gz
      stats             GenerateBatchStatistics          OUTPUT/stats/{split}_stats.pb
      analyze (train)   AnalyzeBatches -> WriteTransformArtifacts   OUTPUT/transform/
    every dead-letter output -> WriteDeadLetters        OUTPUT/dead_letter/*.jsonl
    every count -> WriteCounts                          OUTPUT/counts.json
    the split's cut -> WriteSplitDates                  OUTPUT/split.json (eval_from)

The file-split sources replace read/parse/join/label/split and share write_outputs:
  * PreprocessAliCcp: the raw Ali-CCP release, ReadParseRelease -> BucketedJoinCommonFeatures
    (CoGroupByKey on (split, hash bucket of md5); layouts/aliccp_join.py,
    docs/ALI_CCP.md).
  * PreprocessDerived: torch-rechub CSV, PaddleRec ESMM text or AliExpress CSV,
    ReadDerivedBatches per split (layouts/derived.py).

The job has two shuffles, the join's (zstd-packed sub-batches per bucket,
`transforms.packing`) and the shard writer's (`transforms.write`). Parquet rows carry
no raw record through the job; the few a join dead letter or a duplicate-id choice
needs are read back from their file (`read.ParquetRows`).

`pipeline.preprocess.run` builds a pipeline with one of the three, runs it, then calls
`check_run` (the accounting identities) and `check_schema` (TFDV schema inference or
validation), which raise `PreprocessError`s with readable messages.
"""

import json
import os
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

from absl import logging
import apache_beam as beam
import tensorflow as tf

from configs import config as config_lib
from features import spec as spec_lib
from layouts import aliccp
from layouts import aliccp_join
from layouts import derived
from transforms import accounting
from transforms import analyze
from transforms import dead_letter as dl
from transforms import encode
from transforms import join
from transforms import label as label_lib
from transforms import outputs as outputs_lib
from transforms import parse
from transforms import progress
from transforms import split as split_lib
from transforms import stats as stats_lib
from transforms import write
from transforms.errors import AccountingError, AnomaliesError, PreprocessError  # re-exported


class Preprocess(beam.PTransform):
  """Pipeline root -> every output of DESIGN.md section 3 but the schema/anomalies files.

  Args:
    impressions, events: globs (or lists of globs) of raw log files.
    output_dir: OUTPUT (local or gs://).
    data_config: labels, attribution window, orphan policy, eval_from (None = the last
      UTC day present among the labelled impressions), as_of (impressions and events
      after it are dead-lettered as bad_value), shard counts.
    spec: the feature spec.
    statistics: also compute TFDV statistics of both splits.
    num_buckets: hash buckets of impression_id for the join's shuffle.
    progress_interval_s: seconds between progress lines of a worker (transforms.progress).

  Returns (from expand): {"train", "eval"} lists of serialized Examples, "dead_letter"
  and "counts" (the path of counts.json, once written).
  """

  def __init__(self, impressions: Union[str, Sequence[str]], events: Union[str, Sequence[str]],
               output_dir: str, data_config: config_lib.DataConfig,
               spec: spec_lib.FeatureSpec, statistics: bool = True,
               num_buckets: int = join.DEFAULT_BUCKETS,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__()
    self._impressions = impressions
    self._events = events
    self._paths = outputs_lib.OutputPaths(output_dir)
    self._data_config = data_config
    self._spec = spec
    self._statistics = statistics
    self._num_buckets = num_buckets
    self._progress_interval_s = progress_interval_s

  def expand(self, pbegin):
    config, spec = self._data_config, self._spec
    interval = self._progress_interval_s
    logs = read_logs(pbegin, self._impressions, self._events, config, spec,
                     config.as_of_timestamp, interval)
    parsed_impressions, parsed_events = logs.impressions, logs.events
    labelled = ((parsed_impressions, parsed_events)
                | "JoinAndLabel" >> join.BucketedJoinAndLabel(
                    config, parse.impression_schema(spec), self._num_buckets))
    labelled_batches = labelled[join.RECORDS] | "ProgressLabelled" >> progress.LogProgress(
        "impressions_labelled", interval)
    split_batches = labelled_batches | "SplitByTime" >> split_lib.SplitBatchesByTime(
        config.eval_from_timestamp)
    _ = split_batches[split_lib.EVAL_FROM] | "WriteSplitDates" >> beam.Map(
        write_split_dates, self._paths.split_dates,
        "config" if config.eval_from is not None else "data")

    counts = logs.counts + [attributed_count(labelled[join.ATTRIBUTED])]
    dead_letters = logs.dead_letters + [labelled[dl.DEAD_LETTER]]
    return write_outputs(split_batches, dead_letters, counts, self._paths, config, spec,
                         self._statistics)


class ParsedLogs(NamedTuple):
  """`read_logs`' result: the parsed impression and event batches (progress logged), the
  (path, n) counts of records read and values cut, and the parsers' dead letters."""

  impressions: beam.PCollection
  events: beam.PCollection
  counts: List[beam.PCollection]
  dead_letters: List[beam.PCollection]


def read_logs(pbegin, impressions, events, config: config_lib.DataConfig,
              spec: spec_lib.FeatureSpec, as_of: Optional[int],
              progress_interval_s: float) -> ParsedLogs:
  """The head every log job shares (the one-pass `Preprocess`, the daily job): read and
  parse the impression and event globs (records after `as_of` are bad_value dead letters)."""
  event_types = label_lib.EventLabeler(config).event_types
  parsed_impressions = pbegin | "ReadParseImpressions" >> parse.ReadParseImpressions(
      impressions, spec, as_of)
  parsed_events = pbegin | "ReadParseEvents" >> parse.ReadParseEvents(events, event_types,
                                                                      as_of)
  return ParsedLogs(
      impressions=parsed_impressions[parse.RECORDS] | "ProgressImpressions" >> (
          progress.LogProgress("impressions_parsed", progress_interval_s)),
      events=parsed_events[parse.RECORDS] | "ProgressEvents" >> progress.LogProgress(
          "events_parsed", progress_interval_s),
      counts=[parsed_impressions[parse.READ] | "TagImpressionsRead" >> beam.Map(
                  lambda n: ((dl.IMPRESSIONS, "read"), n)),
              parsed_events[parse.READ] | "TagEventsRead" >> beam.Map(
                  lambda n: ((dl.EVENTS, "read"), n)),
              parsed_impressions[parse.CUT], parsed_events[parse.CUT]],
      dead_letters=[parsed_impressions[dl.DEAD_LETTER], parsed_events[dl.DEAD_LETTER]])


def attributed_count(attributed: beam.PCollection) -> beam.PCollection:
  """The ((events, "attributed"), n) count of a labeller's per-bucket attributed counts
  (join.ATTRIBUTED), as both log jobs report it."""
  return (attributed
          | "SumAttributed" >> beam.CombineGlobally(sum)
          | "TagAttributed" >> beam.Map(lambda n: ((dl.EVENTS, "attributed"), n)))


def write_split(batches: beam.PCollection, split: str, num_shards: int,
                paths: outputs_lib.OutputPaths, spec: spec_lib.FeatureSpec,
                label_names: Sequence[str], statistics: bool,
                metadata_keys: Sequence[str] = (),
                written_path: Optional[Tuple[str, ...]] = None):
  """Labelled batches of one output (a split, or the daily job's updates / closed) ->
  its TFRecord shards `OUTPUT/<split>/<split>-SSSSS-of-NNNNN.tfrecord.gz` and, with
  `statistics`, OUTPUT/stats/<split>_stats.pb.

  Returns:
    (the serialized Examples (one list per batch), the encoder's dead letters, the
    count PCollections: (written_path, n) with written_path default ("impressions",
    "written", split), and ("labels", split, name) positives per label).
  """
  written_path = written_path or (dl.IMPRESSIONS, "written", split)
  encoded = batches | f"Encode_{split}" >> encode.EncodeBatches(spec, label_names,
                                                                metadata_keys)
  examples = encoded[encode.EXAMPLES]
  _ = examples | f"Write_{split}" >> write.WriteExamples(paths.examples_prefix(split),
                                                         num_shards)
  counts = [examples
            | f"ListLengths_{split}" >> beam.Map(len)
            | f"CountWritten_{split}" >> beam.CombineGlobally(sum)
            | f"TagWritten_{split}" >> beam.Map(lambda n: (written_path, n)),
            batches | f"CountLabels_{split}" >> accounting.CountLabels(split, label_names)]
  if statistics:
    _ = batches | f"Statistics_{split}" >> stats_lib.GenerateBatchStatistics(
        spec, label_names, paths.stats(split))
  return examples, encoded[dl.DEAD_LETTER], counts


def write_outputs(splits: Dict[str, beam.PCollection], dead_letters: List[beam.PCollection],
                  counts: List[beam.PCollection], paths: outputs_lib.OutputPaths,
                  config: config_lib.DataConfig, spec: spec_lib.FeatureSpec,
                  statistics: bool, sources: Sequence[str] = accounting.LOG_SOURCES,
                  metadata_keys: Sequence[str] = ()) -> Dict[str, Any]:
  """The tail every source shares: labelled batches per split -> every output file.

  Args:
    splits: {"train", "eval"} labelled RecordBatches (`records.labelled_schema`).
    dead_letters: the dead-letter PCollections of the stages so far.
    counts: (path, n) PCollections of the stages so far (reads, joins, ...).
    sources: the counts.json source sections (accounting.SOURCE_SECTIONS keys).
    metadata_keys: string columns written as Example bytes keys (`encode.add_metadata`).

  Returns:
    {"train", "eval"} lists of serialized Examples (one per batch), "dead_letter",
    "counts" (counts.json path).
  """
  label_names = tuple(config.label_names)
  dead_letters, counts = list(dead_letters), list(counts)
  shards = {split_lib.TRAIN: config.train_shards, split_lib.EVAL: config.eval_shards}
  examples = {}
  for split in outputs_lib.SPLITS:
    examples[split], dead, split_counts = write_split(
        splits[split], split, shards[split], paths, spec, label_names, statistics,
        metadata_keys)
    dead_letters.append(dead)
    counts.extend(split_counts)

  analysis = splits[split_lib.TRAIN] | "AnalyzeTransforms" >> analyze.AnalyzeBatches(spec)
  _ = analysis | "WriteTransformArtifacts" >> analyze.WriteTransformArtifacts(
      paths.transform_dir)
  all_dead_letters = dead_letters | "FlattenDeadLetters" >> beam.Flatten()
  _ = all_dead_letters | "WriteDeadLetters" >> dl.WriteDeadLetters(paths.dead_letter_prefix)
  counts.append(all_dead_letters | "CountDeadLetters" >> accounting.CountDeadLetters())
  counts_path = (counts
                 | "FlattenCounts" >> beam.Flatten()
                 | "WriteCounts" >> accounting.WriteCounts(paths.counts, label_names, sources))
  return {split_lib.TRAIN: examples[split_lib.TRAIN], split_lib.EVAL: examples[split_lib.EVAL],
          dl.DEAD_LETTER: all_dead_letters, "counts": counts_path}


class _FileSplitPreprocess(beam.PTransform):
  """Shared set-up of the sources whose train/eval split comes from the files read."""

  def __init__(self, source: str, output_dir: str, data_config: config_lib.DataConfig,
               spec: spec_lib.FeatureSpec, statistics: bool, progress_interval_s: float):
    super().__init__()
    aliccp.check_source_labels(data_config.label_names, source)
    self._paths = outputs_lib.OutputPaths(output_dir)
    self._data_config = data_config
    self._spec = spec
    self._statistics = statistics
    self._infer_click = data_config.orphan_event_policy == "infer_click"
    self._progress_interval_s = progress_interval_s


class PreprocessAliCcp(_FileSplitPreprocess):
  """Pipeline root -> the outputs of `Preprocess`, from the raw Ali-CCP release.

  Reads skeleton and common-features files of each split (train and eval come from
  separate files), joins them on (split, md5) in hash buckets and labels click and
  purchase (layouts/aliccp_join.py). counts.json has an "impressions" section (skeleton
  rows) and a "common_features" section (read == used + unused + dead-lettered).

  Args:
    skeleton, common_features: {"train": globs, "eval": globs}.
    output_dir, data_config, spec, statistics: as for `Preprocess`; data.labels must be
      [click, purchase].
    num_buckets: hash buckets of md5 per split.
    progress_interval_s: seconds between the progress lines of a worker (lines parsed
      per source, rows joined per split).
  """

  def __init__(self, skeleton: Dict[str, Sequence[str]],
               common_features: Dict[str, Sequence[str]], output_dir: str,
               data_config: config_lib.DataConfig, spec: spec_lib.FeatureSpec,
               statistics: bool = True, num_buckets: int = join.DEFAULT_BUCKETS,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__("ali_ccp", output_dir, data_config, spec, statistics,
                     progress_interval_s)
    self._skeleton = skeleton
    self._common = common_features
    self._num_buckets = num_buckets

  def expand(self, pbegin):
    spec = self._spec
    keyed = {aliccp_join.SKELETON: [], aliccp_join.COMMON: [], aliccp_join.REJECTED: []}
    dead_letters, counts = [], []
    for split in outputs_lib.SPLITS:
      for kind, patterns in ((aliccp_join.SKELETON, self._skeleton[split]),
                             (aliccp_join.COMMON, self._common[split])):
        read = pbegin | f"ReadParse_{kind}_{split}" >> aliccp_join.ReadParseRelease(
            patterns, kind, spec, split, self._infer_click, self._num_buckets,
            self._progress_interval_s)
        keyed[kind].append(read[aliccp_join.RECORDS])
        keyed[aliccp_join.REJECTED].append(read[aliccp_join.REJECTED])
        dead_letters.append(read[dl.DEAD_LETTER])
        counts.append(read[aliccp_join.READ])
    joined = ({kind: parts | f"Flatten_{kind}" >> beam.Flatten()
               for kind, parts in keyed.items()}
              | "JoinCommonFeatures" >> aliccp_join.BucketedJoinCommonFeatures(spec))
    dead_letters.append(joined[dl.DEAD_LETTER])
    counts.append(joined[aliccp_join.COUNTS])
    splits = {split: joined[split] | f"Progress_{split}" >> progress.LogProgress(
        f"{split}_joined", self._progress_interval_s) for split in outputs_lib.SPLITS}
    return write_outputs(splits, dead_letters, counts, self._paths, self._data_config, spec,
                         self._statistics, sources=(dl.IMPRESSIONS, dl.COMMON_FEATURES))


class PreprocessDerived(_FileSplitPreprocess):
  """Pipeline root -> the outputs of `Preprocess`, from a derived Ali-CCP layout.

  Args:
    files: {"train": globs, "eval": globs} (e.g. train vs val/test files).
    layout: "rechub_csv", "paddle_esmm" or "aliexpress" (layouts/derived.py).
    output_dir, data_config, spec, statistics: as for `PreprocessAliCcp`.
    progress_interval_s: seconds between the progress lines of a worker (rows parsed
      per split).
  """

  def __init__(self, files: Dict[str, Sequence[str]], layout: str, output_dir: str,
               data_config: config_lib.DataConfig, spec: spec_lib.FeatureSpec,
               statistics: bool = True,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__(layout, output_dir, data_config, spec, statistics, progress_interval_s)
    self._files = files
    self._layout = layout

  def expand(self, pbegin):
    splits, dead_letters, counts = {}, [], []
    for split in outputs_lib.SPLITS:
      rows = pbegin | f"Read_{split}" >> derived.ReadDerivedBatches(
          self._files[split], self._layout, self._spec, self._data_config.label_names, split,
          self._infer_click, self._progress_interval_s)
      splits[split] = rows[derived.RECORDS]
      dead_letters.append(rows[dl.DEAD_LETTER])
      counts.append(rows[derived.READ] | f"TagRead_{split}" >> beam.Map(
          lambda n: ((dl.IMPRESSIONS, "read"), n)))
    return write_outputs(splits, dead_letters, counts, self._paths, self._data_config,
                         self._spec, self._statistics, sources=(dl.IMPRESSIONS,),
                         metadata_keys=derived.metadata_keys(self._layout, self._spec))


def write_split_dates(eval_from_timestamp: Optional[int], path: str, chosen_by: str) -> str:
  """Records the eval split's first day, {"eval_from": "YYYY-MM-DD" or None,
  "eval_from_timestamp": unix s, "chosen_by": "config" (data.eval_from / --eval_from) or
  "data" (the last day present)}; returns the path. pipeline.preprocess logs the day from
  this file once the job is done."""
  eval_from = None if eval_from_timestamp is None else config_lib.utc_day(eval_from_timestamp)
  tf.io.gfile.makedirs(os.path.dirname(path))
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump({"eval_from": eval_from, "eval_from_timestamp": eval_from_timestamp,
               "chosen_by": chosen_by}, f, sort_keys=True)
  return path


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
                 fail_on_anomalies: bool = False,
                 splits: Sequence[str] = outputs_lib.SPLITS) -> Dict[str, Any]:
  """Infers the schema (no `schema_path`) or validates `splits` (default both; the
  daily job has train only) against it.

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
      schema, {split: paths.stats(split) for split in splits},
      {split: paths.anomalies(split) for split in splits})
  if fail_on_anomalies and any(found.values()):
    lines = [f"{split}: {line}" for split, split_lines in found.items() for line in split_lines]
    raise AnomaliesError(f"statistics do not match the schema {schema_path} "
                         f"({len(lines)} anomalies; see {paths.anomalies('*')}):\n  "
                         + "\n  ".join(lines))
  return {"schema": schema_path, "anomalies": found}
