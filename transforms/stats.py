"""TFDV statistics of the written Examples, and schema inference / validation after the run.

Flow: SplitBatchesByTime -> batches of a split -> **GenerateBatchStatistics** ->
OUTPUT/stats/{split}_stats.pb; after the pipeline: **infer_schema** (first run, ->
OUTPUT/schema/schema.pbtxt) or **validate_statistics** against `--schema` (->
OUTPUT/anomalies/{split}_anomalies.pbtxt).

Statistics run inside the job, on the labelled batches: each is reshaped once
(`stats_batch`) into what the split's serialized Examples decode to with tfx_bsl's
`ExamplesToRecordBatchDecoder` and `example_schema`: one list column per Example key, in
`example_schema` order (features, weights, labels, impression_id, timestamp), null where
the Example has no such key (a missing feature and its weights), floats as float32 (the
Example's float_list). `tfdv.GenerateStatistics` takes those batches directly.

The Examples hold labels and metadata besides the features, so the inferred schema is
adjusted with what the spec knows and statistics cannot: `impression_id` is unique and
hash features are open-ended (no string domain for either; new values are expected),
labels are 0/1 ints, multivalent features may hold any number of values (no value-count
or shape constraint). Vocabulary features keep their inferred domain: a value unseen in
train is worth an anomaly, as the model maps it to OOV.
"""

import os
from typing import Dict, List, Optional, Sequence

from absl import logging
import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow as tf
import tensorflow_data_validation as tfdv
from tensorflow_metadata.proto.v0 import anomalies_pb2
from tensorflow_metadata.proto.v0 import schema_pb2
from tensorflow_metadata.proto.v0 import statistics_pb2

from features import spec as spec_lib

_SCHEMA_TYPES = {"string": schema_pb2.BYTES, "int": schema_pb2.INT, "float": schema_pb2.FLOAT}


def stats_options() -> tfdv.StatsOptions:
  """The statistics the job computes. Top values and unique counts come from TFDV's
  sketches (Misra-Gries, HyperLogLog) rather than an exact count per distinct value,
  which made one Beam element per (batch, feature, value) and was the job's largest
  per-record cost (issue 12). Exact for a feature with fewer distinct values than the
  sketch holds (every vocabulary and the ids of the simulated worlds: the inferred
  schema is unchanged); for `impression_id` (one occurrence per id) the unique count is
  an estimate and its "top values" mean nothing."""
  return tfdv.StatsOptions(use_sketch_based_topk_uniques=True)


def example_schema(spec: spec_lib.FeatureSpec, label_names: Sequence[str]) -> schema_pb2.Schema:
  """Types of every Example key (features, weights, labels, metadata), for decoding."""
  schema = schema_pb2.Schema()
  for feature in spec:
    schema.feature.add(name=feature.name, type=_SCHEMA_TYPES[feature.dtype])
    if feature.weighted:
      schema.feature.add(name=feature.weight_key, type=schema_pb2.FLOAT)
  for name in label_names:
    schema.feature.add(name=name, type=schema_pb2.INT)
  schema.feature.add(name=spec_lib.IMPRESSION_ID_KEY, type=schema_pb2.BYTES)
  schema.feature.add(name=spec_lib.TIMESTAMP_KEY, type=schema_pb2.INT)
  return schema


def _list_array(offsets: np.ndarray, values: pa.Array, null: np.ndarray) -> pa.Array:
  """list<values> with rows [offsets[i], offsets[i + 1]) of values, null where `null`."""
  mask = np.r_[null, False] if null.any() else None
  return pa.ListArray.from_arrays(pa.array(offsets - offsets[0], pa.int32(), mask=mask),
                                  values)


def _as_list(column: pa.Array, missing: Optional[np.ndarray] = None) -> pa.Array:
  """A list array with one element per present value (list columns: their lists), null
  where the value is null or `missing`; float64 values become float32."""
  null = column.is_null().to_numpy(zero_copy_only=False)
  if missing is not None:
    null = null | missing
  if pa.types.is_list(column.type):
    offsets = column.offsets.to_numpy()
    values = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
  else:
    offsets = np.r_[0, np.cumsum(~null)].astype(np.int32)
    values = column.filter(pa.array(~null))
  if pa.types.is_float64(values.type):
    values = values.cast(pa.float32())
  return _list_array(offsets, values, null)


def stats_batch(batch: pa.RecordBatch, spec: spec_lib.FeatureSpec,
                label_names: Sequence[str]) -> pa.RecordBatch:
  """A labelled batch as the RecordBatch its serialized Examples decode to (docstring)."""
  column = lambda name: batch.column(batch.schema.get_field_index(name))
  arrays: List[pa.Array] = []
  names: List[str] = []
  for feature in spec:
    values = column(feature.name)
    arrays.append(_as_list(values))
    names.append(feature.name)
    if feature.weighted:
      missing = values.is_null().to_numpy(zero_copy_only=False)
      arrays.append(_as_list(column(feature.weight_key), missing))
      names.append(feature.weight_key)
  for name in list(label_names) + [spec_lib.IMPRESSION_ID_KEY, spec_lib.TIMESTAMP_KEY]:
    arrays.append(_as_list(column(name)))
    names.append(name)
  return pa.RecordBatch.from_arrays(arrays, names)


class GenerateBatchStatistics(beam.PTransform):
  """Labelled batches of one split -> TFDV DatasetFeatureStatisticsList at `output_path`
  (binary, e.g. OUTPUT/stats/train_stats.pb): the statistics of the split's Examples."""

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str], output_path: str):
    super().__init__()
    self._spec = spec
    self._label_names = tuple(label_names)
    self._output_path = output_path

  def expand(self, batches):
    return (batches
            | "ToStatsBatch" >> beam.Map(stats_batch, self._spec, self._label_names)
            | "Statistics" >> tfdv.GenerateStatistics(stats_options())
            | "Write" >> tfdv.WriteStatisticsToBinaryFile(self._output_path))


def load_statistics(path: str) -> statistics_pb2.DatasetFeatureStatisticsList:
  return tfdv.load_stats_binary(path)


def _clear_domain(schema: schema_pb2.Schema, feature: schema_pb2.Feature) -> None:
  if feature.WhichOneof("domain_info") == "domain":
    kept = [d for d in schema.string_domain if d.name != feature.domain]
    del schema.string_domain[:]
    schema.string_domain.extend(kept)
  feature.ClearField("domain_info")


def adjust_schema(schema: schema_pb2.Schema, spec: spec_lib.FeatureSpec,
                  label_names: Sequence[str]) -> schema_pb2.Schema:
  """Applies what the spec knows to an inferred schema (see the module docstring)."""
  open_ended = {spec_lib.IMPRESSION_ID_KEY} | {f.name for f in spec if f.transform == "hash"}
  multivalent = set()
  for feature in spec:
    if feature.multivalent:
      multivalent.add(feature.name)
      if feature.weighted:
        multivalent.add(feature.weight_key)
  for feature in schema.feature:
    if feature.name in open_ended:
      _clear_domain(schema, feature)
    if feature.name in multivalent:
      feature.ClearField("shape_type")
    if feature.name in label_names:
      _clear_domain(schema, feature)
      feature.int_domain.min = 0
      feature.int_domain.max = 1
  return schema


def infer_schema(statistics: statistics_pb2.DatasetFeatureStatisticsList,
                 spec: spec_lib.FeatureSpec, label_names: Sequence[str]) -> schema_pb2.Schema:
  """tfdv.infer_schema on (train) statistics, adjusted by `adjust_schema`."""
  return adjust_schema(tfdv.infer_schema(statistics), spec, label_names)


def load_schema(path: str) -> schema_pb2.Schema:
  return tfdv.load_schema_text(path)


def write_schema(schema: schema_pb2.Schema, path: str) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path))
  tfdv.write_schema_text(schema, path)


def validate_statistics(statistics: statistics_pb2.DatasetFeatureStatisticsList,
                        schema: schema_pb2.Schema) -> anomalies_pb2.Anomalies:
  return tfdv.validate_statistics(statistics, schema)


def write_anomalies(anomalies: anomalies_pb2.Anomalies, path: str) -> None:
  tf.io.gfile.makedirs(os.path.dirname(path))
  tfdv.write_anomalies_text(anomalies, path)


def describe_anomalies(anomalies: anomalies_pb2.Anomalies) -> List[str]:
  """One readable line per anomaly: the feature (or the dataset) and what is wrong."""
  lines = []
  for name, info in sorted(anomalies.anomaly_info.items()):
    kinds = ", ".join(anomalies_pb2.AnomalyInfo.Type.Name(reason.type) for reason in info.reason)
    lines.append(f"feature {name!r}: {info.short_description} ({kinds}): {info.description}")
  if anomalies.HasField("dataset_anomaly_info"):
    info = anomalies.dataset_anomaly_info
    lines.append(f"dataset: {info.short_description}: {info.description}")
  return lines


def check_splits(schema: schema_pb2.Schema, stats_paths: Dict[str, str],
                 anomalies_paths: Dict[str, str]) -> Dict[str, List[str]]:
  """Validates each split's statistics, writes its anomalies file and logs each anomaly.

  Returns:
    split -> readable anomaly lines (empty lists when the data matches the schema).
  """
  found = {}
  for split, stats_path in stats_paths.items():
    anomalies = validate_statistics(load_statistics(stats_path), schema)
    write_anomalies(anomalies, anomalies_paths[split])
    found[split] = describe_anomalies(anomalies)
    for line in found[split]:
      logging.warning("Anomaly in %s: %s", split, line)
    if not found[split]:
      logging.info("No anomalies in %s", split)
  return found
