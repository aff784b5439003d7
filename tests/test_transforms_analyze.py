"""transforms.analyze: vocabularies, mean/variance and bucket boundaries on known data."""

import math

import apache_beam as beam
import numpy as np
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from features import artifacts as artifacts_lib
from features import spec as spec_lib
from transforms import analyze

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
  logged = np.log1p(np.maximum(PRICES, 0.0))
  assert features["price"]["mean"] == pytest.approx(logged.mean())
  assert features["price"]["variance"] == pytest.approx(logged.var())
  assert features["rating"]["mean"] == pytest.approx(3.5)
  assert features["rating"]["variance"] == pytest.approx(np.var(np.arange(8.0)))
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
       ("normalize", "price", (4, 1.5, 8.0)), ("bucketize", "age", [0, 2, 2, 5, 9])], SPEC)
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


def test_merge_moments_matches_numpy():
  values = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
  left = (2, values[:2].mean(), ((values[:2] - values[:2].mean()) ** 2).sum())
  right = (3, values[2:].mean(), ((values[2:] - values[2:].mean()) ** 2).sum())
  count, mean, m2 = analyze.merge_moments(left, right)
  assert count == 5 and mean == pytest.approx(values.mean())
  assert m2 / count == pytest.approx(values.var())
  assert analyze.merge_moments((0, 0.0, 0.0), (0, 0.0, 0.0)) == (0, 0.0, 0.0)
  assert not math.isnan(analyze.merge_moments((0, 0.0, 0.0), right)[1])


def test_sort_vocabulary_and_tokens():
  assert analyze.sort_vocabulary([(2, "b"), (5, "z"), (2, "a"), (1, "c")], 3) == ["z", "a", "b"]
  assert analyze.vocabulary_token("int", 12) == "12"
  assert not analyze.is_writable_token("") and not analyze.is_writable_token("a\r")
