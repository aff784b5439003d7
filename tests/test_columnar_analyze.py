"""transforms.columnar.analyze: batches give the row analyzers' transform.json, byte for byte.

The records of tests/test_transforms_analyze.py (order-sensitive floats, log1p of
negatives, -0.0, ints beyond 2^53, unwritable tokens, multivalent lists) are turned into
RecordBatches of several sizes; AnalyzeBatches must write the file AnalyzeTransforms
writes from the records, whatever the batching and the order.
"""

import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.testing import test_pipeline

from features import artifacts as artifacts_lib
from tests import test_transforms_analyze as row_test
from transforms import analyze
from transforms.columnar import analyze as canalyze

_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}


def _batches(records, rows_per_batch):
  fields = [pa.field(f.name, pa.list_(_TYPES[f.dtype]) if f.multivalent else _TYPES[f.dtype])
            for f in row_test.SPEC]
  schema = pa.schema(fields)
  rows = [{f.name: record["features"].get(f.name) for f in row_test.SPEC} for record in records]
  return [pa.RecordBatch.from_pylist(rows[start:start + rows_per_batch], schema=schema)
          for start in range(0, len(rows), rows_per_batch)]


def _records():
  records = row_test._records() + row_test._bundling_records()  # pylint: disable=protected-access
  records += [{"features": {"price": -0.0, "rating": -0.0, "age": 2**60 + 1,
                            "position": 2**62, "tags": []}},
              {"features": {"price": 1e-300, "rating": -1e150, "age": -(2**60)}}]
  return records


def _write(directory, make_input, analyzer):
  with test_pipeline.TestPipeline() as p:
    _ = (make_input(p) | analyzer(row_test.SPEC)
         | analyze.WriteTransformArtifacts(directory))
  files = [artifacts_lib.TRANSFORM_FILE] + [f"vocab/{name}.txt"
                                            for name in ("device", "tags", "position")]
  contents = {}
  for name in files:
    with open(f"{directory}/{name}", "rb") as f:
      contents[name] = f.read()
  return contents


def test_batches_write_the_row_artifacts(tmp_path):
  records = _records()
  expected = _write(str(tmp_path / "row"), lambda p: p | beam.Create(records),
                    analyze.AnalyzeTransforms)
  shuffled = random.Random(5).sample(records, len(records))
  for name, run_records, rows_per_batch in (("one", records, len(records)),
                                            ("small", shuffled, 7), ("single", records, 1)):
    batches = _batches(run_records, rows_per_batch)
    found = _write(str(tmp_path / name), lambda p, b=batches: p | beam.Create(b),
                   canalyze.AnalyzeBatches)
    assert found == expected, name


def test_moments_of_counts_is_the_row_accumulator():
  values = [0.1, 0.1, 0.2, -3.0, 5.0, 5.0, 5.0]
  fn = analyze.ExactMomentsCombineFn()
  accumulator = fn.create_accumulator()
  for value in values:
    accumulator = fn.add_input(accumulator, value)
  assert canalyze.moments_of([(0.1, 2), (0.2, 1), (-3.0, 1), (5.0, 3)], False) == accumulator
  assert canalyze.distinct_counts(pa.array([["a", "b"], None, ["a"]])) == [("a", 2), ("b", 1)]


def test_exact_moments_in_numpy_is_the_row_accumulator_to_the_bit():
  """Subnormals, zeros of both signs, the extremes, integers near 2^53 and values over
  the whole exponent range: the numpy sums equal `ExactMomentsCombineFn`'s integers."""
  rng = np.random.default_rng(0)
  cases = [
      rng.normal(size=4096),
      np.array([5e-324, -5e-324, 2.2e-308, 1e-310, 0.0, -0.0, 1.7976931348623157e308,
                -1.7976931348623157e308, 0.1, 1.0 / 3.0]),
      rng.integers(-2**53, 2**53, 2000).astype(np.float64),
      np.ldexp(rng.random(4096), rng.integers(-1074, 1000, 4096)) * rng.choice([-1, 1], 4096),
      np.array([]),
  ]
  fn = analyze.ExactMomentsCombineFn()
  for values in cases:
    accumulator = fn.create_accumulator()
    for value in values.tolist():
      accumulator = fn.add_input(accumulator, value)
    assert canalyze.exact_moments(values) == accumulator
  # Chunked beyond the int64-safe size gives the same integers.
  values = rng.normal(size=1000)
  canalyze._MAX_VALUES, saved = 64, canalyze._MAX_VALUES  # pylint: disable=protected-access
  try:
    chunked = canalyze.exact_moments(values)
  finally:
    canalyze._MAX_VALUES = saved  # pylint: disable=protected-access
  assert chunked == canalyze.exact_moments(values)
