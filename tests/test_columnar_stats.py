"""transforms.columnar.stats: a labelled batch reshaped for TFDV is what its Examples decode to.

The row job computes statistics on its serialized Examples, decoded by tfx_bsl with
`stats.example_schema`; `stats_batch` must give the same values per key (missing
features and their weights null, floats as float32) and TFDV must compute the same
statistics from it, including on sliced batches; the Beam transform writes a file that
schema inference reads.
"""

import apache_beam as beam
import pyarrow as pa
from apache_beam.testing import test_pipeline
from tensorflow_data_validation.statistics import stats_impl
import tensorflow_data_validation as tfdv
from tfx_bsl.coders import example_coder

from tests import test_columnar_label as label_test
from transforms import stats
from transforms import testing
from transforms.columnar import encode as cencode
from transforms.columnar import parse as cparse
from transforms.columnar import stats as cstats


def _labelled_batch():
  spec, config = testing.small_spec(), testing.data_config()
  t0 = testing.START
  records = [testing.impression(i, t0 + i) for i in range(30)]
  records += [testing.impression(30, t0, device=None, item_price=None, tags=None,
                                 tags__weight=None),
              testing.impression(31, t0, tags=[], tags__weight=[]),
              testing.impression(32, t0, tags__weight=None, item_price=2.5e-40)]
  impressions = label_test._parse(  # pylint: disable=protected-access
      cparse.ImpressionParser(spec), records, "imps.jsonl")
  events = label_test._parse(  # pylint: disable=protected-access
      cparse.EventParser(["click"]), [testing.event("imp3", t0 + 9, "click")], "events.jsonl")
  labeler = label_test.clabel.BucketLabeler(config, impressions.schema)
  batch, _, _ = labeler.join_and_label(pa.Table.from_batches([impressions]),
                                       pa.Table.from_batches([events]))
  return spec, config.label_names, batch


def _decoded(spec, label_names, batch):
  examples, dead = cencode.BatchEncoder(spec, label_names).encode(batch)
  assert not dead
  schema = stats.example_schema(spec, label_names).SerializeToString()
  return example_coder.ExamplesToRecordBatchDecoder(schema).DecodeBatch(examples)


def _python(value):
  if isinstance(value, list):
    return [_python(item) for item in value]
  return value.decode("utf-8") if isinstance(value, bytes) else value


def test_stats_batch_is_the_decoded_examples_and_gives_the_same_statistics():
  spec, label_names, batch = _labelled_batch()
  for part in (batch, batch.slice(3, 25)):
    decoded = _decoded(spec, label_names, part)
    reshaped = cstats.stats_batch(part, spec, label_names)
    assert reshaped.schema.names == decoded.schema.names
    for name in decoded.schema.names:
      assert (_python(reshaped.column(reshaped.schema.get_field_index(name)).to_pylist())
              == _python(decoded.column(decoded.schema.get_field_index(name)).to_pylist())), name
    options = tfdv.StatsOptions()
    assert (stats_impl.generate_statistics_in_memory(reshaped, options)
            == stats_impl.generate_statistics_in_memory(decoded, options))


def test_generate_batch_statistics_writes_a_file_schema_inference_reads(tmp_path):
  spec, label_names, batch = _labelled_batch()
  path = str(tmp_path / "train_stats.pb")
  with test_pipeline.TestPipeline() as p:
    _ = (p | beam.Create([batch.slice(0, 10), batch.slice(10)])
         | cstats.GenerateBatchStatistics(spec, label_names, path))
  statistics = stats.load_statistics(path)
  assert statistics.datasets[0].num_examples == batch.num_rows
  schema = stats.infer_schema(statistics, spec, label_names)
  assert {f.name for f in schema.feature} >= {"device", "tags__weight", "click", "timestamp"}
  assert stats.describe_anomalies(stats.validate_statistics(statistics, schema)) == []
