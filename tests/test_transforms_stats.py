"""transforms.stats: TFDV statistics of labelled batches, schema inference and validation.

A labelled batch reshaped for TFDV (`stats_batch`) must be what its serialized Examples
decode to with tfx_bsl and `example_schema` (the columns, and the statistics TFDV
computes from them); the statistics written in a pipeline feed schema inference and
validation, whose anomalies name the drifted features.
"""

import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
import pyarrow as pa
from tensorflow_data_validation.statistics import stats_impl
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import schema_pb2
from tfx_bsl.coders import example_coder

from tests import test_transforms_label as label_test
from transforms import encode
from transforms import label
from transforms import parse
from transforms import stats
from tests import beam_testing as testing


def _labelled(records):
  """Impression records -> one labelled batch (no events: every label 0, except as
  `_labelled_batch` adds)."""
  spec, config = testing.small_spec(), testing.data_config()
  impressions = label_test._parse(  # pylint: disable=protected-access
      parse.ImpressionParser(spec), records, "imps.jsonl")
  labeler = label.BucketLabeler(config, impressions.schema)
  batch, _, _ = labeler.join_and_label(pa.Table.from_batches([impressions]),
                                       parse.event_schema().empty_table())
  return batch


def _statistics_files(tmp_path, batches_by_name):
  """name -> statistics of its batches, all computed in one pipeline."""
  paths = {name: str(tmp_path / f"{name}_stats.pb") for name in batches_by_name}
  with test_pipeline.TestPipeline() as p:
    for name, batches in batches_by_name.items():
      _ = (p | f"Create_{name}" >> beam.Create(batches)
           | f"Statistics_{name}" >> stats.GenerateBatchStatistics(
               testing.small_spec(), testing.LABEL_NAMES, paths[name]))
  return {name: stats.load_statistics(path) for name, path in paths.items()}


def test_example_schema_types_every_key():
  schema = stats.example_schema(testing.small_spec(), testing.LABEL_NAMES)
  types = {f.name: f.type for f in schema.feature}
  assert types["user_id"] == schema_pb2.BYTES and types["user_age"] == schema_pb2.INT
  assert types["item_price"] == schema_pb2.FLOAT and types["tags__weight"] == schema_pb2.FLOAT
  assert types["click"] == schema_pb2.INT and types["impression_id"] == schema_pb2.BYTES
  assert types["timestamp"] == schema_pb2.INT


def test_statistics_infer_validate_and_report(tmp_path):
  spec = testing.small_spec()
  found = _statistics_files(tmp_path, {
      "train": [_labelled([testing.impression(i, testing.START + i) for i in range(30)]),
                _labelled([testing.impression(i, testing.START + i) for i in range(30, 60)])],
      "same": [_labelled([testing.impression(i, testing.START + i) for i in range(60, 90)])],
      "drifted": [_labelled([testing.impression(i, testing.START + i, device="toaster", item_price=None)
                             for i in range(90, 100)])]})
  train = found["train"]
  assert train.datasets[0].num_examples == 60
  schema = stats.infer_schema(train, spec, testing.LABEL_NAMES)
  features = {f.name: f for f in schema.feature}
  assert features["impression_id"].WhichOneof("domain_info") is None
  assert features["user_id"].WhichOneof("domain_info") is None  # hash: open-ended.
  assert features["device"].WhichOneof("domain_info") == "domain"  # vocabulary: kept.
  assert (features["click"].int_domain.min, features["click"].int_domain.max) == (0, 1)
  assert features["tags"].WhichOneof("shape_type") is None
  assert {d.name for d in schema.string_domain} == {"device", "tags"}

  assert stats.describe_anomalies(stats.validate_statistics(found["same"], schema)) == []

  paths = {"eval": str(tmp_path / "anomalies" / "eval_anomalies.pbtxt")}
  anomalies = stats.check_splits(schema, {"eval": str(tmp_path / "drifted_stats.pb")}, paths)
  assert os.path.exists(paths["eval"])
  text = "\n".join(anomalies["eval"])
  assert "'device'" in text and "'item_price'" in text
  assert found["drifted"].datasets[0].num_examples == 10


def _labelled_batch():
  spec, config = testing.small_spec(), testing.data_config()
  t0 = testing.START
  records = [testing.impression(i, t0 + i) for i in range(30)]
  records += [testing.impression(30, t0, device=None, item_price=None, tags=None,
                                 tags__weight=None),
              testing.impression(31, t0, tags=[], tags__weight=[]),
              testing.impression(32, t0, tags__weight=None, item_price=2.5e-40)]
  impressions = label_test._parse(  # pylint: disable=protected-access
      parse.ImpressionParser(spec), records, "imps.jsonl")
  events = label_test._parse(  # pylint: disable=protected-access
      parse.EventParser(["click"]), [testing.event("imp3", t0 + 9, "click")], "events.jsonl")
  labeler = label.BucketLabeler(config, impressions.schema)
  batch, _, _ = labeler.join_and_label(pa.Table.from_batches([impressions]),
                                       pa.Table.from_batches([events]))
  return spec, config.label_names, batch


def _decoded(spec, label_names, batch):
  examples, dead = encode.BatchEncoder(spec, label_names).encode(batch)
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
    reshaped = stats.stats_batch(part, spec, label_names)
    assert reshaped.schema.names == decoded.schema.names
    for name in decoded.schema.names:
      assert (_python(reshaped.column(reshaped.schema.get_field_index(name)).to_pylist())
              == _python(decoded.column(decoded.schema.get_field_index(name)).to_pylist())), name
    options = tfdv.StatsOptions()
    assert (stats_impl.generate_statistics_in_memory(reshaped, options)
            == stats_impl.generate_statistics_in_memory(decoded, options))
