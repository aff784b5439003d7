"""The columnar preprocessing job for `--source log` (`pipeline.preprocess --engine columnar`).

Flow: **raw logs -> PreprocessColumnar** -> OUTPUT/ -> training.data, as `Preprocess`:

    ReadParseImpressions / ReadParseEvents      RecordBatches + dead letters + read counts
      -> BucketedJoinAndLabel                   CoGroupByKey on hash buckets of impression_id
      -> SplitBatchesByTime                     labelled RecordBatches per split
      -> RecordsFromBatches -> preprocess_job.write_outputs   (the row job's tail)

Status (issue 12, first part): reading, parsing, validation, the join, labels and the
split run on RecordBatches. The tail (encoding, TFRecord writing, transform analysis,
TFDV statistics, counts) is still the row job's `write_outputs`, fed one dict per
labelled impression; `columnar.encode.BatchEncoder` is built and tested but not wired,
and analyzers / statistics are not columnar yet. Parquet rows carry no raw record into
the join (record is null), so join dead letters of Parquet inputs hold `record: null` and
duplicate Parquet impressions with equal timestamps are ordered by file and line only
(tests/test_columnar_job.py, xfail); JSON Lines outputs are the row job's exactly.
"""

from typing import Any, Dict, Iterator, Sequence, Union

import apache_beam as beam
import pyarrow as pa

from configs import config as config_lib
from features import spec as spec_lib
from transforms import accounting
from transforms import dead_letter as dl
from transforms import label as label_lib
from transforms import outputs as outputs_lib
from transforms import preprocess_job
from transforms.columnar import encode as cencode
from transforms.columnar import label as clabel
from transforms.columnar import parse as cparse

_META = ("file", "line", "record", "impression_id", "timestamp")


def records_from_batch(batch: pa.RecordBatch, label_names: Sequence[str]
                       ) -> Iterator[Dict[str, Any]]:
  """Labelled rows in the row job's layout: {"impression_id", "timestamp", "features"
  (without missing ones), "labels", "file", "line"}."""
  names = batch.schema.names
  columns = {name: cencode.python_values(batch.column(i)) for i, name in enumerate(names)
             if name != "record"}
  feature_names = [n for n in names if n not in _META and n not in label_names]
  for row in range(batch.num_rows):
    yield {"impression_id": columns["impression_id"][row],
           "timestamp": columns["timestamp"][row],
           "features": {name: columns[name][row] for name in feature_names
                        if columns[name][row] is not None},
           "labels": {name: columns[name][row] for name in label_names},
           "file": columns["file"][row], "line": columns["line"][row]}


class PreprocessColumnar(preprocess_job.Preprocess):
  """Pipeline root -> the outputs of `preprocess_job.Preprocess`, columnar up to the split.

  Args: as `preprocess_job.Preprocess`, plus
    num_buckets: hash buckets of impression_id for the join's shuffle.
  """

  def __init__(self, impressions: Union[str, Sequence[str]], events: Union[str, Sequence[str]],
               output_dir: str, data_config: config_lib.DataConfig,
               spec: spec_lib.FeatureSpec, statistics: bool = True,
               num_buckets: int = clabel.DEFAULT_BUCKETS):
    super().__init__(impressions, events, output_dir, data_config, spec, statistics)
    self._num_buckets = num_buckets

  def expand(self, pbegin):
    config, spec = self._data_config, self._spec
    event_types = label_lib.EventLabeler(config).event_types
    label_names = tuple(config.label_names)
    impressions = pbegin | "ReadParseImpressions" >> cparse.ReadParseImpressions(
        self._impressions, spec)
    events = pbegin | "ReadParseEvents" >> cparse.ReadParseEvents(self._events, event_types)
    labelled = ((impressions[cparse.RECORDS], events[cparse.RECORDS])
                | "JoinAndLabel" >> clabel.BucketedJoinAndLabel(
                    config, cparse.impression_schema(spec), self._num_buckets))
    split_batches = labelled[clabel.RECORDS] | "SplitByTime" >> cencode.SplitBatchesByTime(
        config.eval_from_timestamp)
    splits = {split: split_batches[split] | f"Records_{split}" >> beam.FlatMap(
        records_from_batch, label_names) for split in outputs_lib.SPLITS}

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
    return preprocess_job.write_outputs(splits, dead_letters, counts, self._paths, config,
                                        spec, self._statistics,
                                        sources=accounting.LOG_SOURCES)
