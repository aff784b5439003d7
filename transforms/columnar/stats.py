"""TFDV statistics straight from labelled RecordBatches: the columnar `stats.GenerateExampleStatistics`.

Flow: SplitBatchesByTime -> batches of a split -> **GenerateBatchStatistics** ->
OUTPUT/stats/{split}_stats.pb -> (after the run) stats.infer_schema / check_splits.

The row job encodes Examples, then decodes them back into RecordBatches for TFDV. Here
each labelled batch is reshaped once (`stats_batch`) into what that decoding gives: one
list column per Example key, in `stats.example_schema` order (features, weights, labels,
impression_id, timestamp), null where the Example has no such key (a missing feature
and its weights), floats as float32 (the Example's float_list). TFDV's
`GenerateStatistics` takes those batches directly.
"""

from typing import List, Optional, Sequence

import apache_beam as beam
import numpy as np
import pyarrow as pa
import tensorflow_data_validation as tfdv

from features import spec as spec_lib
from transforms import stats as stats_lib


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
  (as `stats.GenerateExampleStatistics` computes it from the split's Examples)."""

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str], output_path: str):
    super().__init__()
    self._spec = spec
    self._label_names = tuple(label_names)
    self._output_path = output_path

  def expand(self, batches):
    return (batches
            | "ToStatsBatch" >> beam.Map(stats_batch, self._spec, self._label_names)
            | "Statistics" >> tfdv.GenerateStatistics(stats_lib.stats_options())
            | "Write" >> tfdv.WriteStatisticsToBinaryFile(self._output_path))
