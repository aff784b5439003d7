"""The columnar preprocessing job for `--source log` (`pipeline.preprocess --engine columnar`).

Flow: **raw logs -> PreprocessColumnar** -> OUTPUT/ -> training.data, as `Preprocess`:

    ReadParseImpressions / ReadParseEvents      RecordBatches + dead letters + read counts
      -> LogProgress (records so far and records/s per worker, every 30 s)
      -> BucketedJoinAndLabel                   CoGroupByKey on hash buckets of impression_id
      -> SplitBatchesByTime                     labelled RecordBatches per split
      -> write_batch_outputs, per split:
           EncodeBatches -> WriteExampleLists    OUTPUT/{train,eval}/*.tfrecord.gz
           GenerateBatchStatistics               OUTPUT/stats/{split}_stats.pb
           (train) AnalyzeBatches -> WriteTransformArtifacts   OUTPUT/transform/
      every dead-letter output -> WriteDeadLetters, counts -> WriteCounts (row job's)

Every element is a RecordBatch up to the encoder, which turns a batch into a list of
serialized Examples (the row codec, per row: byte-identical Examples; see
columnar/encode.py for why not tfx_bsl's C++ encoder). No step is per Example: the job
has two shuffles, the join's (zstd-packed sub-batches per bucket) and the shard
writer's (zstd-packed Example lists per (batch, shard), `transforms.shards`), and the
writer frames and compresses a shard in blocks. The analyzers, label counts and TFDV
statistics (sketch-based top values, `stats.stats_options`) read the batches.
Parquet rows carry no raw record through the job; the few a join dead letter or a
duplicate-id choice needs are read back from their file (`columnar.parse.ParquetRows`),
so dead letters and choices are the row job's for Parquet as for JSON Lines
(tests/test_columnar_job.py).
"""

from typing import Any, Dict, List, Sequence, Union

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from configs import config as config_lib
from features import spec as spec_lib
from transforms import accounting
from transforms import dead_letter as dl
from transforms import derived_sources
from transforms import label as label_lib
from transforms import outputs as outputs_lib
from transforms import preprocess_job
from transforms import split as split_lib
from transforms.columnar import aliccp as caliccp
from transforms.columnar import analyze as canalyze
from transforms.columnar import encode as cencode
from transforms.columnar import derived as cderived
from transforms.columnar import label as clabel
from transforms.columnar import parse as cparse
from transforms.columnar import progress
from transforms.columnar import stats as cstats


class PreprocessColumnar(preprocess_job.Preprocess):
  """Pipeline root -> the outputs of `preprocess_job.Preprocess`, on RecordBatches.

  Args: as `preprocess_job.Preprocess`, plus
    num_buckets: hash buckets of impression_id for the join's shuffle.
    progress_interval_s: seconds between progress lines of a worker (columnar.progress).
  """

  def __init__(self, impressions: Union[str, Sequence[str]], events: Union[str, Sequence[str]],
               output_dir: str, data_config: config_lib.DataConfig,
               spec: spec_lib.FeatureSpec, statistics: bool = True,
               num_buckets: int = clabel.DEFAULT_BUCKETS,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__(impressions, events, output_dir, data_config, spec, statistics)
    self._num_buckets = num_buckets
    self._progress_interval_s = progress_interval_s

  def expand(self, pbegin):
    config, spec = self._data_config, self._spec
    event_types = label_lib.EventLabeler(config).event_types
    impressions = pbegin | "ReadParseImpressions" >> cparse.ReadParseImpressions(
        self._impressions, spec)
    events = pbegin | "ReadParseEvents" >> cparse.ReadParseEvents(self._events, event_types)
    interval = self._progress_interval_s
    parsed_impressions = impressions[cparse.RECORDS] | "ProgressImpressions" >> (
        progress.LogProgress("impressions_parsed", interval))
    parsed_events = events[cparse.RECORDS] | "ProgressEvents" >> progress.LogProgress(
        "events_parsed", interval)
    labelled = ((parsed_impressions, parsed_events)
                | "JoinAndLabel" >> clabel.BucketedJoinAndLabel(
                    config, cparse.impression_schema(spec), self._num_buckets))
    labelled_batches = labelled[clabel.RECORDS] | "ProgressLabelled" >> progress.LogProgress(
        "impressions_labelled", interval)
    split_batches = labelled_batches | "SplitByTime" >> cencode.SplitBatchesByTime(
        config.eval_from_timestamp)

    def tagged(path):
      return beam.Map(lambda n: (path, n))

    counts = [
        impressions[cparse.READ] | "TagImpressionsRead" >> tagged((dl.IMPRESSIONS, "read")),
        events[cparse.READ] | "TagEventsRead" >> tagged((dl.EVENTS, "read")),
        (labelled[clabel.ATTRIBUTED]
         | "SumAttributed" >> beam.CombineGlobally(sum)
         | "TagAttributed" >> tagged((dl.EVENTS, "attributed"))),
    ]
    dead_letters = [impressions[dl.DEAD_LETTER], events[dl.DEAD_LETTER],
                    labelled[dl.DEAD_LETTER]]
    return write_batch_outputs(split_batches, dead_letters, counts, self._paths, config,
                               spec, self._statistics)


def label_sums(batch: pa.RecordBatch, label_names: Sequence[str]) -> List[int]:
  """Positives per label of a labelled batch, in label order."""
  return [int(pc.sum(batch.column(batch.schema.get_field_index(name))).as_py() or 0)
          for name in label_names]


def write_batch_outputs(splits: Dict[str, beam.PCollection],
                        dead_letters: List[beam.PCollection], counts: List[beam.PCollection],
                        paths: outputs_lib.OutputPaths, config: config_lib.DataConfig,
                        spec: spec_lib.FeatureSpec, statistics: bool,
                        sources: Sequence[str] = accounting.LOG_SOURCES,
                        metadata_keys: Sequence[str] = ()) -> Dict[str, Any]:
  """`preprocess_job.write_outputs` on labelled RecordBatches per split: the same files.

  Encoding goes through `columnar.encode.EncodeBatches` (the row codec's bytes)
  and `WriteExampleLists` (the row job's shards: same files), the analyzers are
  `columnar.analyze.AnalyzeBatches`, label counts are column sums and TFDV statistics
  are computed on the batches (`columnar.stats`); dead letters and counts.json are the
  row job's transforms. `sources`: the counts.json source sections; `metadata_keys`:
  string columns written as Example bytes keys (`encode.add_metadata`).

  Returns: as `write_outputs`, but "train" / "eval" hold lists of serialized Examples
  (one per batch).
  """
  label_names = tuple(config.label_names)
  dead_letters, counts = list(dead_letters), list(counts)
  shards = {split_lib.TRAIN: config.train_shards, split_lib.EVAL: config.eval_shards}
  examples = {}
  for split in outputs_lib.SPLITS:
    encoded = splits[split] | f"Encode_{split}" >> cencode.EncodeBatches(spec, label_names,
                                                                          metadata_keys)
    examples[split] = encoded[cencode.EXAMPLES]
    dead_letters.append(encoded[dl.DEAD_LETTER])
    _ = examples[split] | f"Write_{split}" >> cencode.WriteExampleLists(
        paths.examples_prefix(split), shards[split])
    counts.append(examples[split]
                  | f"ListLengths_{split}" >> beam.Map(len)
                  | f"CountWritten_{split}" >> beam.CombineGlobally(sum)
                  | f"TagWritten_{split}" >> beam.Map(
                      lambda n, split: ((dl.IMPRESSIONS, "written", split), n), split))
    counts.append(splits[split] | f"CountLabels_{split}" >> accounting.CountLabels(
        split, label_names, positives=label_sums))
    if statistics:
      _ = splits[split] | f"Statistics_{split}" >> cstats.GenerateBatchStatistics(
          spec, label_names, paths.stats(split))

  analysis = splits[split_lib.TRAIN] | "AnalyzeTransforms" >> canalyze.AnalyzeBatches(spec)
  return preprocess_job.write_artifacts_and_counts(analysis, examples, dead_letters, counts,
                                                   paths, label_names, sources)


class PreprocessAliCcpColumnar(preprocess_job.PreprocessAliCcp):
  """`preprocess_job.PreprocessAliCcp` on RecordBatches (columnar.aliccp): same outputs.

  Args: as `PreprocessAliCcp`, plus
    num_buckets: hash buckets of md5 per split.
    progress_interval_s: seconds between the progress lines of a worker (lines parsed
      per source, rows joined per split; columnar.progress).
  """

  def __init__(self, *args, num_buckets: int = clabel.DEFAULT_BUCKETS,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S, **kwargs):
    super().__init__(*args, **kwargs)
    self._num_buckets = num_buckets
    self._progress_interval_s = progress_interval_s

  def expand(self, pbegin):
    spec, infer_click = self._spec, self._infer_click
    keyed = {caliccp.SKELETON: [], caliccp.COMMON: [], caliccp.REJECTED: []}
    dead_letters, counts = [], []
    for split in outputs_lib.SPLITS:
      for kind, patterns in ((caliccp.SKELETON, self._skeleton[split]),
                             (caliccp.COMMON, self._common[split])):
        read = pbegin | f"ReadParse_{kind}_{split}" >> caliccp.ReadParseRelease(
            patterns, kind, spec, split, infer_click, self._num_buckets,
            self._progress_interval_s)
        keyed[kind].append(read[caliccp.RECORDS])
        keyed[caliccp.REJECTED].append(read[caliccp.REJECTED])
        dead_letters.append(read[dl.DEAD_LETTER])
        counts.append(read[caliccp.READ])
    joined = ({kind: parts | f"Flatten_{kind}" >> beam.Flatten()
               for kind, parts in keyed.items()}
              | "JoinCommonFeatures" >> caliccp.BucketedJoinCommonFeatures(spec))
    dead_letters.append(joined[dl.DEAD_LETTER])
    counts.append(joined[caliccp.COUNTS])
    splits = {split: joined[split] | f"Progress_{split}" >> progress.LogProgress(
        f"{split}_joined", self._progress_interval_s) for split in outputs_lib.SPLITS}
    return write_batch_outputs(splits, dead_letters, counts, self._paths, self._data_config,
                               spec, self._statistics,
                               sources=(dl.IMPRESSIONS, dl.COMMON_FEATURES))


class PreprocessDerivedColumnar(preprocess_job.PreprocessDerived):
  """`preprocess_job.PreprocessDerived` on RecordBatches (columnar.derived): same outputs.

  Args: as `PreprocessDerived`, plus progress_interval_s: seconds between the progress
    lines of a worker (rows parsed per split; columnar.progress).
  """

  def __init__(self, *args, progress_interval_s: float = progress.DEFAULT_INTERVAL_S,
               **kwargs):
    super().__init__(*args, **kwargs)
    self._progress_interval_s = progress_interval_s

  def read_split(self, split: str) -> beam.PTransform:
    return cderived.ReadDerivedBatches(
        self._files[split], self._layout, self._spec, self._data_config.label_names, split,
        self._infer_click, self._progress_interval_s)

  def write(self, splits, dead_letters, counts):
    return write_batch_outputs(
        splits, dead_letters, counts, self._paths, self._data_config, self._spec,
        self._statistics, sources=(dl.IMPRESSIONS,),
        metadata_keys=derived_sources.metadata_keys(self._layout, self._spec))
