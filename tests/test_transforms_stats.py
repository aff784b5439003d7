"""transforms.stats: TFDV statistics in the pipeline, schema inference and validation."""

import os

import apache_beam as beam
from apache_beam.testing import test_pipeline
from tensorflow_metadata.proto.v0 import schema_pb2

from features import example_codec
from transforms import stats
from transforms import testing


def _serialized(indices, **overrides):
  codec = example_codec.ExampleCodec(testing.small_spec(), testing.LABEL_NAMES)
  labels = dict.fromkeys(testing.LABEL_NAMES, 0)
  return [codec.to_example(testing.impression(i, 100 + i, **overrides), labels, f"imp{i}",
                           100 + i).SerializeToString() for i in indices]


def _statistics(tmp_path, name, serialized):
  path = str(tmp_path / f"{name}_stats.pb")
  with test_pipeline.TestPipeline() as p:
    _ = (p | beam.Create(serialized)
         | stats.GenerateExampleStatistics(testing.small_spec(), testing.LABEL_NAMES, path))
  return stats.load_statistics(path)


def test_example_schema_types_every_key():
  schema = stats.example_schema(testing.small_spec(), testing.LABEL_NAMES)
  types = {f.name: f.type for f in schema.feature}
  assert types["user_id"] == schema_pb2.BYTES and types["user_age"] == schema_pb2.INT
  assert types["item_price"] == schema_pb2.FLOAT and types["tags__weight"] == schema_pb2.FLOAT
  assert types["click"] == schema_pb2.INT and types["impression_id"] == schema_pb2.BYTES
  assert types["timestamp"] == schema_pb2.INT


def test_statistics_infer_validate_and_report(tmp_path):
  spec = testing.small_spec()
  train = _statistics(tmp_path, "train", _serialized(range(60)))
  assert train.datasets[0].num_examples == 60
  schema = stats.infer_schema(train, spec, testing.LABEL_NAMES)
  features = {f.name: f for f in schema.feature}
  assert features["impression_id"].WhichOneof("domain_info") is None
  assert features["user_id"].WhichOneof("domain_info") is None  # hash: open-ended.
  assert features["device"].WhichOneof("domain_info") == "domain"  # vocabulary: kept.
  assert (features["click"].int_domain.min, features["click"].int_domain.max) == (0, 1)
  assert features["tags"].WhichOneof("shape_type") is None
  assert {d.name for d in schema.string_domain} == {"device", "tags"}

  same = _statistics(tmp_path, "same", _serialized(range(60, 90)))
  assert stats.describe_anomalies(stats.validate_statistics(same, schema)) == []

  drifted = _statistics(tmp_path, "drifted", _serialized(range(90, 100), device="toaster",
                                                         item_price=None))
  paths = {"eval": str(tmp_path / "anomalies" / "eval_anomalies.pbtxt")}
  found = stats.check_splits(schema, {"eval": str(tmp_path / "drifted_stats.pb")}, paths)
  assert os.path.exists(paths["eval"])
  text = "\n".join(found["eval"])
  assert "'device'" in text and "'item_price'" in text
  assert drifted.datasets[0].num_examples == 10
