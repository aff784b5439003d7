"""features.example_codec: raw record -> tf.train.Example -> dict, and its errors."""

import pytest
import tensorflow as tf

from features import example_codec
from tests import beam_testing as testing

LABELS = {"click": 1, "micro": 0, "action": 1, "purchase": 0}


@pytest.fixture(name="spec")
def fixture_spec():
  return testing.small_spec()


def test_round_trip_all_dtypes(spec):
  record = {"user_id": 42, "user_age": 31, "device": "ios", "tags": ["a", "b", "c"],
            "tags__weight": [0.5, 1, 2.25], "item_id": "i9", "item_price": 3,
            "position": 4, "ignored_key": {"nested": True}}
  example = example_codec.record_to_example(record, spec, LABELS, "imp1", 1767225600)
  decoded = example_codec.example_to_dict(example.SerializeToString(), spec, list(LABELS))
  assert decoded == {
      "user_id": "42", "user_age": 31, "device": "ios", "tags": ["a", "b", "c"],
      "tags__weight": [0.5, 1.0, 2.25], "item_id": "i9", "item_price": 3.0, "position": 4,
      "click": 1, "micro": 0, "action": 1, "purchase": 0, "impression_id": "imp1",
      "timestamp": 1767225600}


def test_example_layout_follows_the_contract(spec):
  record = {"user_id": "u", "user_age": 3, "tags": ["x"], "item_price": 1.5}
  features = example_codec.record_to_example(record, spec, LABELS, "imp", 7).features.feature
  kinds = {key: feature.WhichOneof("kind") for key, feature in features.items()}
  assert kinds == {"user_id": "bytes_list", "user_age": "int64_list", "tags": "bytes_list",
                   "tags__weight": "float_list", "item_price": "float_list",
                   "click": "int64_list", "micro": "int64_list", "action": "int64_list",
                   "purchase": "int64_list", "impression_id": "bytes_list",
                   "timestamp": "int64_list"}


def test_multivalent_scalar_weights_missing_and_empty(spec):
  codec = example_codec.ExampleCodec(spec, list(LABELS))
  scalar = codec.to_dict(codec.to_example({"tags": "solo"}, LABELS, "a", 1))
  assert scalar["tags"] == ["solo"] and scalar["tags__weight"] == [1.0]
  empty = codec.to_example({"tags": [], "device": None}, LABELS, "b", 1)
  assert "device" not in empty.features.feature and "user_id" not in empty.features.feature
  assert empty.features.feature["tags"].WhichOneof("kind") == "bytes_list"
  assert codec.to_dict(empty)["tags"] == []


def test_tf_parses_the_examples(spec):
  codec = example_codec.ExampleCodec(spec, list(LABELS))
  serialized = [codec.to_example({"user_age": 5, "tags": ["a", "b"]}, LABELS, "x", 1)
                .SerializeToString(),
                codec.to_example({"tags": []}, LABELS, "y", 2).SerializeToString()]
  parsed = tf.io.parse_example(serialized, {
      "user_age": tf.io.FixedLenFeature([], tf.int64, default_value=-1),
      "tags": tf.io.RaggedFeature(tf.string),
      "tags__weight": tf.io.RaggedFeature(tf.float32),
      "click": tf.io.FixedLenFeature([], tf.int64)})
  assert parsed["user_age"].numpy().tolist() == [5, -1]
  assert parsed["tags"].to_list() == [[b"a", b"b"], []]
  assert parsed["tags__weight"].to_list() == [[1.0, 1.0], []]
  assert parsed["click"].numpy().tolist() == [1, 1]


@pytest.mark.parametrize("record, field, reason", [
    ({"user_age": "31"}, "user_age", "bad_type"),
    ({"user_age": True}, "user_age", "bad_type"),
    ({"user_age": 31.0}, "user_age", "bad_type"),
    ({"user_age": 2**63}, "user_age", "bad_value"),
    ({"user_id": 1.5}, "user_id", "bad_type"),
    ({"user_id": False}, "user_id", "bad_type"),
    ({"item_price": "cheap"}, "item_price", "bad_type"),
    ({"item_price": float("nan")}, "item_price", "bad_value"),
    ({"device": ["ios"]}, "device", "bad_type"),
    ({"tags": ["a", None]}, "tags", "bad_type"),
    ({"tags": ["a", 2.5]}, "tags", "bad_type"),
    ({"tags": ["a", "b"], "tags__weight": [1.0]}, "tags__weight", "bad_value"),
    ({"tags__weight": [1.0]}, "tags__weight", "bad_value"),
])
def test_bad_values_raise_naming_the_field(spec, record, field, reason):
  with pytest.raises(example_codec.RecordError, match=field) as caught:
    example_codec.record_to_example(record, spec, LABELS, "imp", 1)
  assert caught.value.field == field
  assert caught.value.reason == reason


def test_labels_must_be_zero_or_one(spec):
  with pytest.raises(example_codec.RecordError, match="purchase"):
    example_codec.record_to_example({}, spec, {**LABELS, "purchase": 2}, "imp", 1)


def test_coerce_keeps_only_present_spec_features(spec):
  assert example_codec.coerce_features({"user_id": 7, "other": 1, "device": None}, spec) == {
      "user_id": "7"}
