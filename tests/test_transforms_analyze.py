"""transforms.analyze: vocabularies, mean/variance and bucket boundaries on known data.

Also checks that the artifacts do not depend on input order, batching or bundling: exact
moments for any split and merge order (the numpy sums equal `ExactMomentsCombineFn`'s
integers to the bit), exact histogram quantiles, identical transform.json and vocabulary
files.
"""

import fractions
import json
import math
import random

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from features import artifacts as artifacts_lib
from features import spec as spec_lib
from transforms import analyze
from transforms import beam_compat

SPEC = spec_lib.feature_spec_from_dict({"features": [
    {"name": "device", "dtype": "string", "transform": "vocabulary", "max_tokens": 3},
    {"name": "tags", "dtype": "string", "transform": "vocabulary", "max_tokens": 10,
     "multivalent": True},
    {"name": "position", "dtype": "int", "transform": "vocabulary", "max_tokens": 10},
    {"name": "price", "dtype": "float", "transform": "normalize", "log1p": True},
    {"name": "rating", "dtype": "float", "transform": "normalize"},
    {"name": "age", "dtype": "int", "transform": "bucketize", "num_buckets": 4},
    {"name": "flat", "dtype": "int", "transform": "bucketize", "num_buckets": 4},
    {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 10},
]})

# device: b x3, a x2, c x2, d x1 -> top 3 [b, a, c] (tie a/c by token).
DEVICES = ["b", "a", "c", "b", "d", "a", "c", "b"]
PRICES = [0.0, 1.0, 3.0, -2.0, 7.0, 15.0, 31.0, 63.0]  # log1p(max(x, 0)) is used.
POSITIONS = [9, 10, 9, 10, 1, 2, 3, 4]  # 9 and 10 tie; "10" < "9" as bytes.


def _exact_mean_variance(values):
  """Population mean and variance of floats in exact rational arithmetic, rounded once."""
  exact = [fractions.Fraction(float(value)) for value in values]
  mean = sum(exact) / len(exact)
  return float(mean), float(sum((value - mean) ** 2 for value in exact) / len(exact))


def _records():
  records = []
  for index in range(101):  # age 0..100 -> quartile boundaries 25, 50, 75.
    features = {"age": index, "flat": 7, "user_id": f"u{index}"}
    if index < len(DEVICES):
      features.update(device=DEVICES[index], price=PRICES[index], rating=float(index),
                      position=POSITIONS[index], tags=["x", "y"] if index % 2 else ["y"])
    records.append({"features": features})
  records.append({"features": {"device": "", "tags": ["bad\ntoken"]}})  # Not writable.
  return records


def _check_analysis(analyses):
  [analysis] = analyses
  features, vocabularies = analysis["features"], analysis["vocabularies"]
  assert analysis["train_examples"] == 102
  assert vocabularies["device"] == ["b", "a", "c"]
  assert features["device"] == {"transform": "vocabulary", "vocabulary_file": "vocab/device.txt",
                                "vocabulary_size": 3}
  assert vocabularies["tags"] == ["y", "x"]
  assert vocabularies["position"] == ["10", "9", "1", "2", "3", "4"]
  logged = [math.log1p(max(price, 0.0)) for price in PRICES]
  assert (features["price"]["mean"], features["price"]["variance"]) == _exact_mean_variance(
      logged)
  assert features["price"]["variance"] == pytest.approx(np.var(logged))
  assert features["rating"]["mean"] == 3.5
  assert features["rating"]["variance"] == np.var(np.arange(8.0)) == 5.25
  assert features["age"] == {"transform": "bucketize", "boundaries": [25.0, 50.0, 75.0]}
  assert features["flat"]["boundaries"] == [7.0]  # Deduplicated.
  assert features["user_id"] == {"transform": "hash"}


_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}


def _batches(records, rows_per_batch):
  """Records as labelled-like batches: one column per SPEC feature (null = missing)."""
  schema = pa.schema([pa.field(f.name, pa.list_(_TYPES[f.dtype]) if f.multivalent
                               else _TYPES[f.dtype]) for f in SPEC])
  rows = [{f.name: record["features"].get(f.name) for f in SPEC} for record in records]
  return [pa.RecordBatch.from_pylist(rows[start:start + rows_per_batch], schema=schema)
          for start in range(0, len(rows), rows_per_batch)]


def test_analyze_known_data():
  with test_pipeline.TestPipeline() as p:
    analysis = p | beam.Create(_batches(_records(), 10)) | analyze.AnalyzeBatches(SPEC)
    assert_that(analysis, _check_analysis)


def test_write_artifacts_loads_back(tmp_path):
  analysis = analyze.assemble_artifacts(
      [("count", None, 5), ("vocabulary", "device", ["b", "a"]),
       ("normalize", "price", (4, 1.5, 2.0)), ("bucketize", "age", [0, 2, 2, 5, 9])], SPEC)
  directory = analyze.write_artifacts(analysis, str(tmp_path / "transform"))
  artifacts = artifacts_lib.load_artifacts(str(tmp_path))
  assert artifacts.directory == directory and artifacts.train_examples == 5
  assert artifacts.vocabulary(SPEC["device"]) == ["b", "a"]
  assert artifacts.vocabulary(SPEC["tags"]) == []
  assert artifacts.stats(SPEC["price"]) == {"transform": "normalize", "mean": 1.5,
                                            "variance": 2.0}
  assert artifacts.stats(SPEC["rating"])["variance"] == 0.0  # No data.
  assert artifacts.stats(SPEC["age"])["boundaries"] == [2.0, 5.0]
  artifacts_lib.check_artifacts(SPEC, artifacts)


def _order_sensitive_values(count=2000, seed=0):
  """Floats whose plain float64 sum changes with the summation order."""
  rng = np.random.default_rng(seed)
  values = np.concatenate([rng.normal(1e8, 1.0, count // 2), rng.lognormal(0.0, 3.0, count // 2),
                           [1e-300, 5e-324, -0.0, 0.0]])
  return [float(value) for value in values]


def _moments_of_partition(values, seed):
  """ExactMomentsCombineFn over a random order, a random split and a random merge tree."""
  fn = analyze.ExactMomentsCombineFn()
  shuffled = random.Random(seed).sample(values, len(values))
  cuts = sorted(random.Random(seed + 1).sample(range(1, len(values)), 7))
  accumulators = []
  for start, end in zip([0] + cuts, cuts + [len(values)]):
    accumulator = fn.create_accumulator()
    for value in shuffled[start:end]:
      accumulator = fn.add_input(accumulator, value)
    accumulators.append(accumulator)
  accumulators.append(fn.create_accumulator())  # An empty bundle.
  order = random.Random(seed + 2)
  while len(accumulators) > 1:
    order.shuffle(accumulators)
    accumulators = [fn.merge_accumulators(accumulators[:2])] + accumulators[2:]
  return fn.extract_output(accumulators[0])


def test_exact_moments_independent_of_order_and_split():
  values = _order_sensitive_values()
  assert sum(values) != sum(sorted(values))  # Plain float sums would disagree.
  expected = (len(values), *_exact_mean_variance(values))
  for seed in range(5):
    assert _moments_of_partition(values, seed) == expected, seed
  count, mean, variance = expected
  assert mean == pytest.approx(np.mean(values), rel=1e-12)
  assert variance == pytest.approx(np.var(values), rel=1e-9)


def test_exact_moments_small_cases():
  fn = analyze.ExactMomentsCombineFn()
  assert fn.extract_output(fn.create_accumulator()) == (0, 0.0, 0.0)
  assert fn.extract_output(fn.merge_accumulators([])) == (0, 0.0, 0.0)
  accumulator = fn.create_accumulator()
  for value in [1.0, 2.0, 4.0, 8.0, 16.0]:
    accumulator = fn.add_input(accumulator, value)
  assert fn.extract_output(accumulator) == (5, 6.2, 29.76)  # 31/5, 341/5 - (31/5)^2.
  single = fn.add_input(fn.create_accumulator(), 1e308)  # x^2 would overflow a float.
  assert fn.extract_output(fn.merge_accumulators([single, single])) == (2, 1e308, 0.0)
  assert fn.extract_output(fn.add_input(fn.create_accumulator(), 3)) == (1, 3.0, 0.0)


def test_histogram_quantiles_hand_computed():
  # N = 10, k = 4: thresholds i * N / k = 0, 2.5, 5, 7.5, 10; cumulative 2, 7, 8, 10.
  histogram = [(10.0, 2), (1.0, 2), (4.0, 1), (3.0, 5)]
  assert analyze.histogram_quantiles(histogram, 4) == [1.0, 3.0, 3.0, 4.0, 10.0]
  assert analyze.interior_boundaries(analyze.histogram_quantiles(histogram, 4)) == [3.0, 4.0]
  # 0..99 once each: C(v) = v + 1 hits 25, 50, 75 exactly at 24, 49, 74 (>=, not >).
  uniform = [(float(value), 1) for value in range(100)]
  assert analyze.histogram_quantiles(uniform, 4) == [0.0, 24.0, 49.0, 74.0, 99.0]
  # Split pairs of one value add up; the order of the pairs does not matter.
  assert analyze.histogram_quantiles([(3.0, 2), (1.0, 2), (4.0, 1), (10.0, 2), (3.0, 3)],
                                     4) == [1.0, 3.0, 3.0, 4.0, 10.0]
  assert analyze.histogram_quantiles([(7.0, 3)], 3) == [7.0, 7.0, 7.0, 7.0]
  assert analyze.histogram_quantiles([], 4) == []


@pytest.mark.parametrize("num_buckets", [2, 4, 8])
def test_histogram_quantiles_match_numpy_inverted_cdf(num_buckets):
  values = np.random.default_rng(num_buckets).integers(0, 60, 997)
  distinct, counts = np.unique(values, return_counts=True)
  histogram = [(float(value), int(count)) for value, count in zip(distinct, counts)]
  expected = np.quantile(values, np.arange(num_buckets + 1) / num_buckets,
                         method="inverted_cdf")
  assert analyze.histogram_quantiles(histogram, num_buckets) == [float(q) for q in expected]


def test_histogram_value_folds_equal_keys():
  assert analyze.histogram_value(7) == 7.0 and isinstance(analyze.histogram_value(7), float)
  assert math.copysign(1.0, analyze.histogram_value(-0.0)) == 1.0


def _bundling_records(seed=3):
  """Records with order-sensitive prices and ratings, many distinct ages, and extremes."""
  rng = np.random.default_rng(seed)
  values = _order_sensitive_values(600, seed)
  records = []
  for index, value in enumerate(values):
    features = {"age": int(rng.integers(0, 90)), "flat": 7, "rating": value,
                "price": float(rng.lognormal(2.0, 2.0)), "device": DEVICES[index % 8]}
    if index % 3:
      features["tags"] = ["x", "y"][: 1 + index % 2]
    records.append({"features": features})
  records += [{"features": {"price": -0.0, "rating": -0.0, "age": 2**60 + 1,
                            "position": 2**62, "tags": []}},
              {"features": {"price": 1e-300, "rating": -1e150, "age": -(2**60)}}]
  return records


def _artifact_files(batches, directory, pipeline_args):
  """transform.json and the vocabulary files the job writes from these batches."""
  # As pipeline.preprocess does: multi_threading needs Beam's data-loss fix.
  beam_compat.prepare_local_parallelism(PipelineOptions(pipeline_args))
  with test_pipeline.TestPipeline(argv=pipeline_args) as p:
    _ = (p | beam.Create(batches) | analyze.AnalyzeBatches(SPEC)
         | analyze.WriteTransformArtifacts(directory))
  contents = {}
  for name in [artifacts_lib.TRANSFORM_FILE] + [f"vocab/{feature}.txt" for feature in
                                                 ("device", "tags", "position")]:
    with open(f"{directory}/{name}", "rb") as f:
      contents[name] = f.read()
  return contents


def test_artifacts_independent_of_order_batching_and_bundling(tmp_path):
  records = _bundling_records() + _records()
  shuffled = random.Random(1).sample(records, len(records))
  runs = {"in_order_one_batch": (_batches(records, len(records)), []),
          "shuffled_batches_of_7": (_batches(shuffled, 7), []),
          "reversed_rows_two_threads": (_batches(records[::-1], 1), [
              "--direct_num_workers=2", "--direct_running_mode=multi_threading"])}
  outputs = {name: _artifact_files(batches, str(tmp_path / name), args)
             for name, (batches, args) in runs.items()}
  assert (outputs["in_order_one_batch"] == outputs["shuffled_batches_of_7"]
          == outputs["reversed_rows_two_threads"])
  features = json.loads(outputs["in_order_one_batch"][artifacts_lib.TRANSFORM_FILE])["features"]
  ratings = [r["features"]["rating"] for r in records if "rating" in r["features"]]
  assert (features["rating"]["mean"], features["rating"]["variance"]) == _exact_mean_variance(
      ratings)
  prices = [math.log1p(max(r["features"]["price"], 0.0)) for r in records
            if "price" in r["features"]]
  assert (features["price"]["mean"], features["price"]["variance"]) == _exact_mean_variance(
      prices)
  ages = [r["features"]["age"] for r in records if "age" in r["features"]]
  expected = np.quantile(ages, [0.25, 0.5, 0.75], method="inverted_cdf")
  assert features["age"]["boundaries"] == sorted({float(q) for q in expected})


def test_sort_vocabulary_and_tokens():
  assert analyze.sort_vocabulary([(2, "b"), (5, "z"), (2, "a"), (1, "c")], 3) == ["z", "a", "b"]
  assert analyze.vocabulary_token("int", 12) == "12"
  assert not analyze.is_writable_token("") and not analyze.is_writable_token("a\r")


def test_moments_of_counts_is_the_accumulator_of_the_values():
  values = [0.1, 0.1, 0.2, -3.0, 5.0, 5.0, 5.0]
  fn = analyze.ExactMomentsCombineFn()
  accumulator = fn.create_accumulator()
  for value in values:
    accumulator = fn.add_input(accumulator, value)
  assert analyze.moments_of([(0.1, 2), (0.2, 1), (-3.0, 1), (5.0, 3)], False) == accumulator
  assert analyze.distinct_counts(pa.array([["a", "b"], None, ["a"]])) == [("a", 2), ("b", 1)]


def test_exact_moments_in_numpy_is_the_accumulator_to_the_bit():
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
    assert analyze.exact_moments(values) == accumulator
  # Chunked beyond the int64-safe size gives the same integers.
  values = rng.normal(size=1000)
  analyze._MAX_VALUES, saved = 64, analyze._MAX_VALUES  # pylint: disable=protected-access
  try:
    chunked = analyze.exact_moments(values)
  finally:
    analyze._MAX_VALUES = saved  # pylint: disable=protected-access
  assert chunked == analyze.exact_moments(values)
