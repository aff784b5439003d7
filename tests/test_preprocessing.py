"""Tests of features.preprocessing: model inputs and the in-model feature encoder."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from features import artifacts as artifacts_lib
from features import parsing
from features import preprocessing
from features import spec as spec_lib


def _spec(*entries):
  return spec_lib.feature_spec_from_dict({"features": list(entries)})


def _artifacts(tmp_path, stats, vocabularies=None):
  """Hand-made TransformArtifacts; vocabularies: feature -> tokens written to vocab/."""
  directory = str(tmp_path / "transform")
  os.makedirs(os.path.join(directory, "vocab"), exist_ok=True)
  stats = {name: dict(entry) for name, entry in stats.items()}
  for name, tokens in (vocabularies or {}).items():
    relative = f"vocab/{name}.txt"
    with open(os.path.join(directory, relative), "w") as f:
      f.write("".join(f"{token}\n" for token in tokens))
    stats[name].update(vocabulary_file=relative, vocabulary_size=len(tokens))
  return artifacts_lib.TransformArtifacts(directory=directory, features=stats)


def _embedding_table(encoder, name):
  return encoder.embeddings[name].embedding.embeddings.numpy()


RECENT = {"name": "recent", "dtype": "string", "transform": "vocabulary", "max_tokens": 10,
          "multivalent": True, "pooling": "mean", "embedding_dim": 3}


def test_feature_inputs_follow_the_model_input_contract():
  spec = _spec(
      {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 10},
      {"name": "age", "dtype": "int", "transform": "bucketize", "num_buckets": 3},
      {"name": "price", "dtype": "float", "transform": "normalize"},
      dict(RECENT, weighted=True))
  inputs = preprocessing.feature_inputs(spec)
  assert list(inputs) == ["user_id", "age", "price", "recent", "recent__weight"]
  assert [inputs[k].dtype for k in inputs] == [tf.string, tf.int64, tf.float32, tf.string,
                                               tf.float32]
  assert inputs["user_id"].shape.as_list() == [None]
  assert isinstance(inputs["recent"].type_spec, tf.RaggedTensorSpec)
  assert isinstance(inputs["recent__weight"].type_spec, tf.RaggedTensorSpec)
  assert inputs["recent"].shape.as_list() == [None, None]


def test_unknown_vocabulary_values_map_to_oov_without_crashing(tmp_path):
  spec = _spec(
      {"name": "color", "dtype": "string", "transform": "vocabulary", "max_tokens": 5},
      # -1 (the int default) and "[UNK]" are ordinary values when in the vocabulary.
      {"name": "slot", "dtype": "int", "transform": "vocabulary", "max_tokens": 5})
  artifacts = _artifacts(
      tmp_path, {"color": {"transform": "vocabulary"}, "slot": {"transform": "vocabulary"}},
      {"color": ["red", "[UNK]", "blue"], "slot": ["3", "-1", "7"]})
  color, slot = (preprocessing.bake_feature(f, artifacts, 4) for f in spec)
  color_ids = preprocessing.make_lookup(color)(tf.constant(["blue", "green", "[UNK]", ""]))
  slot_ids = preprocessing.make_lookup(slot)(tf.constant([7, 99, -1, 3], tf.int64))
  np.testing.assert_array_equal(color_ids, [3, 0, 2, 0])
  np.testing.assert_array_equal(slot_ids, [3, 0, 2, 1])
  assert preprocessing.num_ids(color) == 4

  encoder = preprocessing.FeatureEncoder.from_artifacts(spec, artifacts, embedding_dim=4)
  out = encoder({"color": tf.constant(["never-seen", "red"]),
                 "slot": tf.constant([12345, 3], tf.int64)}).numpy()
  assert out.shape == (2, 8)
  np.testing.assert_allclose(out[0, :4], _embedding_table(encoder, "color")[0])
  np.testing.assert_allclose(out[0, 4:], _embedding_table(encoder, "slot")[0])


def test_bake_feature_reads_and_cleans_the_vocabulary(tmp_path):
  feature = spec_lib.Feature("slot", "int", "vocabulary", max_tokens=3)
  artifacts = _artifacts(tmp_path, {"slot": {"transform": "vocabulary"}},
                         {"slot": ["5", "5", "2", "9", "4"]})
  baked = preprocessing.bake_feature(feature, artifacts, 8)
  assert baked["vocabulary"] == [5, 2, 9]
  assert baked["embedding_dim"] == 8
  json.dumps(baked)


def test_bake_feature_fails_on_missing_statistics(tmp_path):
  spec = _spec({"name": "price", "dtype": "float", "transform": "normalize"})
  artifacts = _artifacts(tmp_path, {"price": {"transform": "normalize", "mean": 1.0}})
  with pytest.raises(artifacts_lib.ArtifactError, match="variance"):
    preprocessing.FeatureEncoder.from_artifacts(spec, artifacts, 4)
  color = _spec({"name": "color", "dtype": "string", "transform": "vocabulary",
                 "max_tokens": 3})
  empty = _artifacts(tmp_path, {"color": {"transform": "vocabulary"}}, {"color": []})
  with pytest.raises(artifacts_lib.ArtifactError, match="empty vocabulary"):
    preprocessing.FeatureEncoder.from_artifacts(color, empty, 4)
  with pytest.raises(artifacts_lib.ArtifactError, match="no transform statistics"):
    preprocessing.FeatureEncoder.from_artifacts(
        spec, _artifacts(tmp_path, {}), 4)


def _recent_encoder(tmp_path, **overrides):
  spec = _spec(dict(RECENT, **overrides))
  artifacts = _artifacts(tmp_path, {"recent": {"transform": "vocabulary"}},
                         {"recent": ["a", "b", "c"]})
  return preprocessing.FeatureEncoder.from_artifacts(spec, artifacts, embedding_dim=16)


def test_mean_pooling_equals_the_hand_computed_mean(tmp_path):
  encoder = _recent_encoder(tmp_path)
  values = tf.ragged.constant([["a", "b", "c"], ["b"], ["c", "zz"]])
  out = encoder({"recent": values}).numpy()
  table = _embedding_table(encoder, "recent")  # rows: OOV, a, b, c
  assert out.shape == (3, 3)  # the feature's own embedding_dim wins over the model's
  np.testing.assert_allclose(out[0], table[1:4].mean(axis=0), rtol=1e-6)
  np.testing.assert_allclose(out[1], table[2], rtol=1e-6)
  np.testing.assert_allclose(out[2], (table[3] + table[0]) / 2, rtol=1e-6)


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_weighted_pooling(tmp_path, pooling):
  encoder = _recent_encoder(tmp_path, weighted=True, pooling=pooling)
  values = tf.ragged.constant([["a", "b"], ["c", "c", "a"]])
  weights = tf.ragged.constant([[1.0, 3.0], [0.5, 0.5, 2.0]])
  out = encoder({"recent": values, "recent__weight": weights}).numpy()
  table = _embedding_table(encoder, "recent")
  row0 = 1.0 * table[1] + 3.0 * table[2]
  row1 = 0.5 * table[3] + 0.5 * table[3] + 2.0 * table[1]
  if pooling == "mean":
    row0, row1 = row0 / 4.0, row1 / 3.0
  np.testing.assert_allclose(out, np.stack([row0, row1]), rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("weighted", [False, True])
def test_empty_lists_pool_to_zeros(tmp_path, weighted):
  encoder = _recent_encoder(tmp_path, weighted=weighted)
  features = {"recent": tf.ragged.constant([[], ["a"], []], dtype=tf.string)}
  if weighted:  # the middle row has zero total weight: also zeros, not NaN.
    features["recent__weight"] = tf.ragged.constant([[], [0.0], []], dtype=tf.float32)
  out = encoder(features).numpy()
  assert np.all(np.isfinite(out))
  np.testing.assert_array_equal(out[0], 0.0)
  np.testing.assert_array_equal(out[2], 0.0)
  if weighted:
    np.testing.assert_array_equal(out[1], 0.0)


@pytest.mark.parametrize("log1p", [False, True])
def test_normalize_gives_the_z_score(tmp_path, log1p):
  spec = _spec({"name": "price", "dtype": "float", "transform": "normalize", "log1p": log1p})
  artifacts = _artifacts(
      tmp_path, {"price": {"transform": "normalize", "mean": 2.0, "variance": 9.0}})
  encoder = preprocessing.FeatureEncoder.from_artifacts(spec, artifacts, 4)
  raw = np.array([-5.0, 0.0, 2.0, 11.0], np.float32)
  out = encoder({"price": tf.constant(raw)}).numpy()
  transformed = np.log1p(np.maximum(raw, 0.0)) if log1p else raw
  np.testing.assert_allclose(out[:, 0], (transformed - 2.0) / 3.0, rtol=1e-6)
  assert out.shape == (4, 1)


def test_zero_variance_does_not_blow_up():
  out = preprocessing.Standardize(mean=1.0, variance=0.0)(tf.constant([1.0, 4.0]))
  np.testing.assert_allclose(out.numpy()[:, 0], [0.0, 3.0])


def test_hash_and_bucketize_ids(tmp_path):
  spec = _spec(
      {"name": "user_id", "dtype": "int", "transform": "hash", "hash_buckets": 7},
      {"name": "age", "dtype": "int", "transform": "bucketize", "num_buckets": 4})
  artifacts = _artifacts(tmp_path, {
      "user_id": {"transform": "hash"},
      "age": {"transform": "bucketize", "boundaries": [30.0, 20.0, 40.0, 30.0]}})
  user_id, age = (preprocessing.bake_feature(f, artifacts, 4) for f in spec)
  hashed = preprocessing.make_lookup(user_id)(tf.range(100, dtype=tf.int64)).numpy()
  assert hashed.min() >= 0 and hashed.max() < 7
  assert age["boundaries"] == [20.0, 30.0, 40.0]
  buckets = preprocessing.make_lookup(age)(tf.constant([5, 20, 25, 39, 40, 90], tf.int64))
  np.testing.assert_array_equal(buckets, [0, 1, 1, 2, 3, 3])
  assert preprocessing.num_ids(age) == 4


def _mixed_encoder(tmp_path, **kwargs):
  spec = _spec(
      {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 11},
      {"name": "age", "dtype": "int", "transform": "bucketize", "num_buckets": 3},
      {"name": "price", "dtype": "float", "transform": "normalize", "log1p": True},
      dict(RECENT, weighted=True))
  artifacts = _artifacts(tmp_path, {
      "user_id": {"transform": "hash"},
      "age": {"transform": "bucketize", "boundaries": [18.0, 40.0]},
      "price": {"transform": "normalize", "mean": 1.5, "variance": 0.25},
      "recent": {"transform": "vocabulary"}}, {"recent": ["a", "b"]})
  features = {
      "user_id": tf.constant(["u1", "u2", "u3"]),
      "age": tf.constant([10, 30, 70], tf.int64),
      "price": tf.constant([1.0, 10.0, 100.0]),
      "recent": tf.ragged.constant([["a"], [], ["b", "x"]]),
      "recent__weight": tf.ragged.constant([[2.0], [], [1.0, 1.0]]),
  }
  return spec, preprocessing.FeatureEncoder.from_artifacts(spec, artifacts, 5, **kwargs), \
      features


def test_encoder_output_layout_and_dict_mode(tmp_path):
  _, encoder, features = _mixed_encoder(tmp_path)
  assert encoder.feature_dims == {"user_id": 5, "age": 5, "price": 1, "recent": 3}
  out = encoder(features)
  assert out.shape == (3, encoder.output_dim) == (3, 14)
  as_dict = encoder.encode(features)
  np.testing.assert_array_equal(
      out.numpy(), np.concatenate([as_dict[n].numpy() for n in encoder.feature_dims], -1))
  encoder.return_dict = True
  assert set(encoder(features)) == set(encoder.feature_dims)


def test_get_config_from_config_round_trip(tmp_path):
  _, encoder, features = _mixed_encoder(tmp_path)
  expected = encoder(features).numpy()
  config = json.loads(json.dumps(encoder.get_config()))  # plain, JSON-able values
  clone = preprocessing.FeatureEncoder.from_config(config)
  clone(features)
  clone.set_weights(encoder.get_weights())
  np.testing.assert_array_equal(clone(features).numpy(), expected)
  for layer in (preprocessing.PooledEmbedding(4, 2, pooling="sum"),
                preprocessing.Standardize(1.0, 2.0, log1p=True)):
    assert type(layer).from_config(layer.get_config()).get_config() == layer.get_config()


def test_encoder_inside_a_functional_model_with_ragged_inputs(tmp_path):
  spec, encoder, features = _mixed_encoder(tmp_path)
  inputs = preprocessing.feature_inputs(spec)
  model = tf_keras.Model(inputs, encoder(inputs))
  np.testing.assert_allclose(model(features).numpy(), encoder(features).numpy())


def test_padded_inputs_restore_the_ragged_form(tmp_path):
  spec, encoder, features = _mixed_encoder(tmp_path)
  padded = dict(features, recent=features["recent"].to_tensor(default_value=""),
                recent__weight=features["recent__weight"].to_tensor(default_value=9.0))
  restored = parsing.dense_to_model_inputs(padded, spec)
  assert restored["recent"].to_list() == features["recent"].to_list()
  assert restored["recent__weight"].to_list() == features["recent__weight"].to_list()
  np.testing.assert_array_equal(encoder(restored).numpy(), encoder(features).numpy())


def test_missing_or_dense_multivalent_inputs_fail_clearly(tmp_path):
  _, encoder, features = _mixed_encoder(tmp_path)
  with pytest.raises(KeyError, match=r"input feature .*price.* is missing"):
    encoder({k: v for k, v in features.items() if k != "price"})
  with pytest.raises(TypeError, match="dense_to_model_inputs"):
    encoder(dict(features, recent=features["recent"].to_tensor()))


def test_embedding_l2_penalises_the_rows_a_batch_uses(tmp_path):
  _, encoder, features = _mixed_encoder(tmp_path, embedding_l2=0.01)
  with tf.GradientTape() as tape:
    vectors = encoder.encode(features)
    encoder(features)
    penalty = tf.add_n(encoder.losses)
  # Oracle: 0.01 * mean over the 3 rows of the squared norms of the embedding vectors
  # (user_id, age, pooled recent), the z-score column of price excluded.
  squares = sum(np.sum(vectors[name].numpy().astype(np.float64) ** 2, axis=-1)
                for name in ("user_id", "age", "recent"))
  np.testing.assert_allclose(penalty.numpy(), 0.01 * squares.mean(), rtol=1e-5)
  table = encoder.embeddings["user_id"].embedding.embeddings
  grad = tf.convert_to_tensor(tape.gradient(penalty, table)).numpy()
  used = np.flatnonzero(np.abs(grad).sum(-1))
  assert 0 < len(used) <= 3  # only the rows of u1, u2, u3 (or OOV) get a gradient
  assert json.loads(json.dumps(encoder.get_config()))["embedding_l2"] == 0.01
  with pytest.raises(ValueError, match="embedding_l2"):
    preprocessing.FeatureEncoder([], embedding_l2=-1.0)
