"""Tests of features/parsing.py: the TFRecord contract parser and the predict_raw inputs."""

from typing import Any, Mapping, Optional

import numpy as np
import pytest
import tensorflow as tf

from features import parsing
from features import spec as spec_lib

LABELS = ("click", "purchase")

SPEC = spec_lib.feature_spec_from_dict({"features": [
    {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 10},
    {"name": "user_age", "dtype": "int", "transform": "bucketize", "num_buckets": 4},
    {"name": "item_price", "dtype": "float", "transform": "normalize", "default": 1.5},
    {"name": "categories", "dtype": "string", "transform": "vocabulary", "max_tokens": 5,
     "multivalent": True},
    {"name": "tags", "dtype": "int", "transform": "hash", "hash_buckets": 10,
     "multivalent": True, "weighted": True},
    {"name": "scores", "dtype": "float", "transform": "bucketize", "num_buckets": 3,
     "multivalent": True},
]}, source="test_spec")


def make_example(features: Mapping[str, Any], labels: Optional[Mapping[str, int]] = None,
                 impression_id: Optional[str] = None, timestamp: Optional[int] = None,
                 spec: spec_lib.FeatureSpec = SPEC) -> bytes:
  """A serialized tf.train.Example built by hand (DESIGN.md section 3).

  Args:
    features: Example key -> scalar or list (weights under `<name>__weight`); keys left
      out are absent from the Example.
    labels: label name -> 0/1 (int64).
    impression_id, timestamp: metadata, written when given.
    spec: gives each feature key's dtype.
  """
  dtypes = {}
  for feature in spec:
    dtypes[feature.name] = feature.dtype
    if feature.weighted:
      dtypes[feature.weight_key] = "float"
  example = tf.train.Example()
  feature_map = example.features.feature
  for key, value in features.items():
    values = value if isinstance(value, (list, tuple)) else [value]
    if dtypes[key] == "string":
      feature_map[key].bytes_list.value.extend([v.encode("utf-8") for v in values])
      feature_map[key].bytes_list.SetInParent()
    elif dtypes[key] == "int":
      feature_map[key].int64_list.value.extend(values)
      feature_map[key].int64_list.SetInParent()
    else:
      feature_map[key].float_list.value.extend(values)
      feature_map[key].float_list.SetInParent()
  for name, value in (labels or {}).items():
    feature_map[name].int64_list.value.append(value)
  if impression_id is not None:
    feature_map["impression_id"].bytes_list.value.append(impression_id.encode("utf-8"))
  if timestamp is not None:
    feature_map["timestamp"].int64_list.value.append(timestamp)
  return example.SerializeToString()


FULL = {"user_id": "u1", "user_age": 31, "item_price": 9.5, "categories": ["a", "b", "c"],
        "tags": [4, 5], "tags__weight": [0.5, 2.0], "scores": [0.25]}
EMPTY_LISTS = {"user_id": "u2", "user_age": 40, "item_price": 2.0, "categories": [],
               "tags": [], "tags__weight": [], "scores": []}


def parsed_batch(with_metadata=False):
  serialized = tf.constant([
      make_example(FULL, {"click": 1, "purchase": 1}, "imp-0", 1000),
      make_example({}, {"click": 1}),                       # every feature missing
      make_example(EMPTY_LISTS, {"click": 0, "purchase": 0}, "imp-2", 1002),
  ])
  return parsing.parse_examples(serialized, SPEC, LABELS, with_metadata=with_metadata)


def test_parse_spec_types_defaults_and_keys():
  parse = parsing.parse_spec(SPEC, LABELS)
  assert parse["user_id"] == tf.io.FixedLenFeature([], tf.string, default_value="")
  assert parse["user_age"] == tf.io.FixedLenFeature([], tf.int64, default_value=-1)
  assert parse["item_price"] == tf.io.FixedLenFeature([], tf.float32, default_value=1.5)
  for key, dtype in (("categories", tf.string), ("tags", tf.int64),
                     ("tags__weight", tf.float32), ("scores", tf.float32)):
    assert isinstance(parse[key], tf.io.RaggedFeature)
    assert parse[key].dtype == dtype and parse[key].row_splits_dtype == tf.int64
  assert parse["click"] == tf.io.FixedLenFeature([], tf.int64, default_value=0)
  assert "impression_id" not in parse and "timestamp" not in parse
  with_metadata = parsing.parse_spec(SPEC, LABELS, with_metadata=True)
  assert set(with_metadata) - set(parse) == {"impression_id", "timestamp"}


def test_parse_spec_rejects_a_label_named_like_a_feature_or_metadata():
  with pytest.raises(ValueError, match="tags__weight"):
    parsing.parse_spec(SPEC, ["tags__weight"])
  with pytest.raises(ValueError, match="timestamp"):
    parsing.parse_spec(SPEC, ["timestamp"])


def test_parse_round_trip_of_every_dtype_with_defaults_and_empty_lists():
  features, labels, metadata = parsed_batch(with_metadata=True)
  assert sorted(features) == sorted(SPEC.example_keys())
  assert features["user_id"].numpy().tolist() == [b"u1", b"", b"u2"]
  assert features["user_age"].dtype == tf.int64
  assert features["user_age"].numpy().tolist() == [31, -1, 40]
  assert features["item_price"].dtype == tf.float32
  np.testing.assert_allclose(features["item_price"].numpy(), [9.5, 1.5, 2.0])
  for key in ("categories", "tags", "tags__weight", "scores"):
    assert isinstance(features[key], tf.RaggedTensor)
    assert features[key].shape.as_list() == [3, None]
    assert features[key].row_splits.dtype == tf.int64
  assert features["categories"].to_list() == [[b"a", b"b", b"c"], [], []]
  assert features["tags"].to_list() == [[4, 5], [], []]
  assert features["tags__weight"].to_list() == [[0.5, 2.0], [], []]
  assert features["scores"].to_list() == [[0.25], [], []]
  assert labels["click"].dtype == tf.float32 and labels["click"].shape == [3]
  assert labels["click"].numpy().tolist() == [1.0, 1.0, 0.0]
  assert labels["purchase"].numpy().tolist() == [1.0, 0.0, 0.0]  # missing -> 0
  assert metadata["impression_id"].numpy().tolist() == [b"imp-0", b"", b"imp-2"]
  assert metadata["timestamp"].numpy().tolist() == [1000, 0, 1002]


def test_parse_without_labels_or_metadata_returns_a_pair():
  result = parsing.parse_examples(tf.constant([make_example(FULL)]), SPEC, [])
  assert len(result) == 2 and result[1] == {}


def test_raw_input_signature_shapes_and_dtypes():
  signature = parsing.raw_input_signature(SPEC)
  assert list(signature) == SPEC.example_keys()
  assert signature["user_id"] == tf.TensorSpec([None], tf.string, name="user_id")
  assert signature["user_age"].shape.as_list() == [None]
  assert signature["categories"] == tf.TensorSpec([None, None], tf.string, name="categories")
  assert signature["tags"].dtype == tf.int64 and signature["tags"].shape.as_list() == [None, None]
  assert signature["tags__weight"] == tf.TensorSpec([None, None], tf.float32,
                                                    name="tags__weight")


def test_dense_to_model_inputs_equals_the_ragged_parse_of_the_same_values():
  features, _ = parsed_batch()
  raw = {}
  for feature in SPEC:
    values = features[feature.name]
    if feature.multivalent:
      raw[feature.name] = values.to_tensor(default_value=feature.default_value, shape=[3, 4])
      if feature.weighted:  # Weight padding is arbitrary: rows are cut by value lengths.
        raw[feature.weight_key] = features[feature.weight_key].to_tensor(
            default_value=9.0, shape=[3, 4])
    else:
      raw[feature.name] = values
  converted = parsing.dense_to_model_inputs(raw, SPEC)
  assert sorted(converted) == sorted(features)
  for key, expected in features.items():
    actual = converted[key]
    assert type(actual) is type(expected), key
    assert actual.dtype == expected.dtype, key
    if isinstance(expected, tf.RaggedTensor):
      assert actual.row_splits.dtype == tf.int64
      assert actual.to_list() == expected.to_list(), key
    else:
      assert actual.numpy().tolist() == expected.numpy().tolist(), key


def test_dense_to_model_inputs_inside_a_function_with_the_raw_signature():
  @tf.function(input_signature=[parsing.raw_input_signature(SPEC)])
  def count_values(raw):
    inputs = parsing.dense_to_model_inputs(raw, SPEC)
    return inputs["categories"].row_lengths(), tf.reduce_sum(inputs["tags__weight"], axis=1)

  lengths, weight_sums = count_values({
      "user_id": tf.constant(["a", "b"]), "user_age": tf.constant([1, 2], tf.int64),
      "item_price": tf.constant([1.0, 2.0]),
      "categories": tf.constant([["x", "y", ""], ["", "", ""]]),
      "tags": tf.constant([[3, -1], [7, 8]], tf.int64),
      "tags__weight": tf.constant([[2.0, 5.0], [1.0, 1.0]]),
      "scores": tf.constant([[0.5], [0.0]]),
  })
  assert lengths.numpy().tolist() == [2, 0]
  assert weight_sums.numpy().tolist() == [2.0, 2.0]  # row 0: one tag, its weight only
