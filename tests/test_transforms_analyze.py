"""transforms.analyze: vocabularies, mean/variance and bucket boundaries on known data.

Also checks that the artifacts do not depend on input order or bundling: exact moments
for any split and merge order, exact histogram quantiles, identical transform.json files.
"""

import fractions
import json
import math
import random

import apache_beam as beam
import numpy as np
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


def test_analyze_known_data():
  with test_pipeline.TestPipeline() as p:
    analysis = p | beam.Create(_records()) | analyze.AnalyzeTransforms(SPEC)
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
  """Records with order-sensitive prices and ratings and many distinct ages."""
  rng = np.random.default_rng(seed)
  values = _order_sensitive_values(600, seed)
  records = []
  for index, value in enumerate(values):
    features = {"age": int(rng.integers(0, 90)), "flat": 7, "rating": value,
                "price": float(rng.lognormal(2.0, 2.0)), "device": DEVICES[index % 8]}
    if index % 3:
      features["tags"] = ["x", "y"][: 1 + index % 2]
    records.append({"features": features})
  return records


def _transform_json(records, directory, pipeline_args):
  # As pipeline.preprocess does: multi_threading needs Beam's data-loss fix.
  beam_compat.prepare_local_parallelism(PipelineOptions(pipeline_args))
  with test_pipeline.TestPipeline(argv=pipeline_args) as p:
    _ = (p | beam.Create(records) | analyze.AnalyzeTransforms(SPEC)
         | analyze.WriteTransformArtifacts(directory))
  with open(f"{directory}/{artifacts_lib.TRANSFORM_FILE}", "rb") as f:
    return f.read()


def test_artifacts_independent_of_order_and_bundling(tmp_path):
  records = _bundling_records()
  runs = {"in_order": (records, []),
          "shuffled": (random.Random(1).sample(records, len(records)), []),
          "reversed_two_threads": (records[::-1], ["--direct_num_workers=2",
                                                   "--direct_running_mode=multi_threading"])}
  outputs = {name: _transform_json(run_records, str(tmp_path / name), args)
             for name, (run_records, args) in runs.items()}
  assert outputs["in_order"] == outputs["shuffled"] == outputs["reversed_two_threads"]
  features = json.loads(outputs["in_order"])["features"]
  ratings = [record["features"]["rating"] for record in records]
  assert (features["rating"]["mean"], features["rating"]["variance"]) == _exact_mean_variance(
      ratings)
  ages = [record["features"]["age"] for record in records]
  expected = np.quantile(ages, [0.25, 0.5, 0.75], method="inverted_cdf")
  assert features["age"]["boundaries"] == sorted({float(q) for q in expected})


def test_sort_vocabulary_and_tokens():
  assert analyze.sort_vocabulary([(2, "b"), (5, "z"), (2, "a"), (1, "c")], 3) == ["z", "a", "b"]
  assert analyze.vocabulary_token("int", 12) == "12"
  assert not analyze.is_writable_token("") and not analyze.is_writable_token("a\r")
