"""Model inputs and the in-model feature encoder: raw feature values -> one dense vector.

Flow position: tf.data parser (features.parsing) -> **model input + preprocessing layers**
-> towers. The transforms run inside the model (Keras preprocessing layers), so the
exported SavedModel takes raw values (DESIGN.md section 4):

  hash        Hashing(hash_buckets)                    -> Embedding
  vocabulary  StringLookup / IntegerLookup, 1 OOV id    -> Embedding
  bucketize   Discretization(train quantile boundaries) -> Embedding
  normalize   log1p(max(x, 0)) if `log1p`, then (x - mean) / sqrt(variance) -> 1 column

Multivalent features embed every value and pool per row (mean or sum, weighted by
`<name>__weight` when `weighted`); an empty row pools to zeros.

Vocabularies, boundaries and statistics are read from the transform artifacts once, by
`bake_feature`, and stored as plain lists/floats in the layers' configs, so they survive
`get_config`/`from_config` and SavedModel export without the artifact files.
"""

import math
from typing import Any, Dict, Mapping, Sequence

import tensorflow as tf
import tf_keras

from features import artifacts as artifacts_lib
from features import parsing
from features import spec as spec_lib

def feature_inputs(spec: spec_lib.FeatureSpec) -> Dict[str, tf_keras.Input]:
  """The model's raw-feature Keras inputs (DESIGN.md section 4), in spec order.

  Returns:
    name -> tf_keras.Input: scalar features shape [batch] of tf.string / tf.int64 /
    tf.float32; multivalent features ragged [batch, None]; weighted multivalent
    features also `<name>__weight`, ragged float32 [batch, None].
  """
  inputs = {}
  for feature in spec:
    dtype = parsing.TF_DTYPES[feature.dtype]
    if feature.multivalent:
      inputs[feature.name] = tf_keras.Input(
          shape=(None,), dtype=dtype, ragged=True, name=feature.name)
      if feature.weighted:
        inputs[feature.weight_key] = tf_keras.Input(
            shape=(None,), dtype=tf.float32, ragged=True, name=feature.weight_key)
    else:
      inputs[feature.name] = tf_keras.Input(shape=(), dtype=dtype, name=feature.name)
  return inputs


def _plain(value):
  """A deep copy of `value` with mappings as dicts and sequences as lists (JSON-able).

  Keras wraps dicts and lists assigned to layer attributes in tracking wrappers that
  `json.dumps` rejects; configs must hold plain values.
  """
  if isinstance(value, Mapping) or hasattr(value, "items"):  # _DictWrapper is no Mapping.
    return {key: _plain(item) for key, item in value.items()}
  if isinstance(value, (list, tuple)):
    return [_plain(item) for item in value]
  return value


def _free_token(preferred, taken: set, step):
  """`preferred`, or the first `step(token)` successor not in `taken` (an OOV token)."""
  token = preferred
  while token in taken:
    token = step(token)
  return token


def bake_feature(feature: spec_lib.Feature, artifacts: artifacts_lib.TransformArtifacts,
                 embedding_dim: int) -> Dict[str, Any]:
  """One feature's encoder config: spec fields plus its statistics as plain values.

  Args:
    feature: the spec entry.
    artifacts: transform artifacts holding the feature's statistics.
    embedding_dim: the model's embedding size (a feature's own `embedding_dim` wins).

  Returns:
    A JSON-serialisable dict with `name`, `dtype`, `transform`, `multivalent`,
    `weighted`, `pooling`, `embedding_dim` and, per transform, `num_bins` (hash),
    `vocabulary` (list of str or int, most frequent first, deduplicated, at most
    `max_tokens`), `boundaries` (sorted floats), or `mean`, `variance`, `log1p`.
  """
  stats = artifacts.stats(feature)
  baked = {
      "name": feature.name,
      "dtype": feature.dtype,
      "transform": feature.transform,
      "multivalent": feature.multivalent,
      "weighted": feature.weighted,
      "pooling": feature.pooling,
      "embedding_dim": int(feature.embedding_dim or embedding_dim),
  }
  if feature.transform == "hash":
    baked["num_bins"] = int(feature.hash_buckets)
  elif feature.transform == "vocabulary":
    tokens = artifacts.vocabulary(feature)
    if feature.dtype == "int":
      tokens = [int(token) for token in tokens]
    if not tokens:
      raise artifacts_lib.ArtifactError(
          f"{artifacts.directory}: feature {feature.name!r} has an empty vocabulary "
          f"(no non-empty value on the train split); fix the data or drop the feature")
    # dict.fromkeys: deduplicate, keeping the most-frequent-first order.
    baked["vocabulary"] = list(dict.fromkeys(tokens))[:feature.max_tokens]
  elif feature.transform == "bucketize":
    if "boundaries" not in stats:
      raise artifacts_lib.ArtifactError(
          f"{artifacts.directory}: feature {feature.name!r} has no 'boundaries'")
    baked["boundaries"] = sorted(set(float(b) for b in stats["boundaries"]))
  else:
    for key in ("mean", "variance"):
      if key not in stats:
        raise artifacts_lib.ArtifactError(
            f"{artifacts.directory}: feature {feature.name!r} has no {key!r}")
    baked.update(mean=float(stats["mean"]), variance=float(stats["variance"]),
                 log1p=feature.log1p)
  return baked


def make_lookup(baked: Mapping[str, Any]) -> tf_keras.layers.Layer:
  """The Keras preprocessing layer mapping raw values of a categorical feature to ids.

  Ids lie in [0, `num_ids(baked)`). Unknown vocabulary values map to the single OOV
  id 0 (the OOV token is chosen outside the vocabulary, so a vocabulary that contains
  -1 or "[UNK]" keeps those as ordinary values).
  """
  name = baked["name"] + "_lookup"
  transform = baked["transform"]
  if transform == "hash":
    return tf_keras.layers.Hashing(num_bins=baked["num_bins"], name=name)
  if transform == "vocabulary":
    vocabulary = list(baked["vocabulary"])
    if baked["dtype"] == "int":
      oov = _free_token(-1, set(vocabulary), lambda t: t - 1)
      return tf_keras.layers.IntegerLookup(
          vocabulary=vocabulary, num_oov_indices=1, oov_token=oov, mask_token=None,
          name=name)
    oov = _free_token("[UNK]", set(vocabulary), lambda t: t + "#")
    return tf_keras.layers.StringLookup(
        vocabulary=vocabulary, num_oov_indices=1, oov_token=oov, mask_token=None,
        name=name)
  if transform == "bucketize":
    return tf_keras.layers.Discretization(bin_boundaries=list(baked["boundaries"]),
                                          name=name)
  raise ValueError(f"feature {baked['name']!r}: transform {transform!r} has no lookup")


def num_ids(baked: Mapping[str, Any]) -> int:
  """Number of distinct ids `make_lookup(baked)` produces (the embedding table size)."""
  transform = baked["transform"]
  if transform == "hash":
    return baked["num_bins"]
  if transform == "vocabulary":
    return len(baked["vocabulary"]) + 1
  return len(baked["boundaries"]) + 1


@tf_keras.saving.register_keras_serializable(package="cvr")
class PooledEmbedding(tf_keras.layers.Layer):
  """Embeds ids and, for lists, pools them per row.

  Input: ids int64 [batch] (one id per row), or tf.RaggedTensor [batch, None] with
  optional weights, tf.RaggedTensor float32 [batch, None] of the same row lengths.
  Output: float32 [batch, output_dim]:
    scalar ids:     E[id]
    pooling "sum":  sum_j w_j E[id_j]                     (w_j = 1 when unweighted)
    pooling "mean": sum_j w_j E[id_j] / sum_j w_j
  A row with no ids (or zero total weight, for "mean") gives zeros, never NaN.
  """

  def __init__(self, input_dim: int, output_dim: int, pooling: str = "mean",
               embeddings_initializer="uniform", **kwargs):
    super().__init__(**kwargs)
    if pooling not in spec_lib.POOLINGS:
      raise ValueError(f"pooling {pooling!r} not in {spec_lib.POOLINGS}")
    self.input_dim = int(input_dim)
    self.output_dim = int(output_dim)
    self.pooling = pooling
    self.embeddings_initializer = tf_keras.initializers.get(embeddings_initializer)
    self.embedding = tf_keras.layers.Embedding(
        self.input_dim, self.output_dim, embeddings_initializer=self.embeddings_initializer,
        name="embedding")

  def call(self, ids, weights=None):
    if not isinstance(ids, tf.RaggedTensor):
      return self.embedding(ids)
    vectors = self.embedding(ids.flat_values)  # [total ids, output_dim]
    if weights is None:
      row_weights = tf.ones_like(vectors[:, 0])
    else:
      row_weights = tf.cast(weights.flat_values, vectors.dtype)
    row_ids = ids.value_rowids()
    rows = ids.nrows()
    pooled = tf.math.unsorted_segment_sum(vectors * row_weights[:, None], row_ids, rows)
    if self.pooling == "sum":
      return pooled
    total_weight = tf.math.unsorted_segment_sum(row_weights, row_ids, rows)
    return tf.math.divide_no_nan(pooled, total_weight[:, None])

  def get_config(self):
    config = super().get_config()
    config.update(input_dim=self.input_dim, output_dim=self.output_dim,
                  pooling=self.pooling,
                  embeddings_initializer=tf_keras.initializers.serialize(
                      self.embeddings_initializer))
    return config


@tf_keras.saving.register_keras_serializable(package="cvr")
class Standardize(tf_keras.layers.Layer):
  """z-score of a numeric feature, with statistics fixed at build time.

  Input: int64 or float32 [batch]. Output: float32 [batch, 1],
  (t(x) - mean) / sqrt(variance) with t(x) = log1p(max(x, 0)) when `log1p` else x.
  A zero variance (a constant feature on train) divides by 1 instead.
  """

  def __init__(self, mean: float, variance: float, log1p: bool = False, **kwargs):
    super().__init__(**kwargs)
    self.mean = float(mean)
    self.variance = float(variance)
    self.log1p = bool(log1p)
    self._std = math.sqrt(self.variance) if self.variance > 0 else 1.0

  def call(self, values):
    values = tf.cast(values, tf.float32)
    if self.log1p:
      values = tf.math.log1p(tf.maximum(values, 0.0))
    return ((values - self.mean) / self._std)[:, None]

  def get_config(self):
    config = super().get_config()
    config.update(mean=self.mean, variance=self.variance, log1p=self.log1p)
    return config


@tf_keras.saving.register_keras_serializable(package="cvr")
class FeatureEncoder(tf_keras.layers.Layer):
  """Raw features dict -> one dense vector per example.

  Input: the raw features dict of `feature_inputs` (extra keys are ignored).
  Output: float32 [batch, output_dim], the per-feature vectors concatenated in spec
  order: an embedding [batch, embedding_dim] per categorical feature and one z-score
  column [batch, 1] per normalize feature. With `return_dict=True` the per-feature
  vectors are returned as a dict name -> [batch, d] instead.

  Build it with `FeatureEncoder.from_artifacts(spec, artifacts, embedding_dim)`; the
  constructor takes the baked per-feature configs (see `bake_feature`).

  embedding_l2 > 0 adds, on every call, the loss
    embedding_l2 * (1 / batch) * sum_rows sum_features ||v_f(row)||^2
  over each categorical feature's vector v_f (the embedding of its id, or the pooled
  embedding of a list; not the z-scores): a penalty on the embeddings a batch uses,
  weighted by how often it uses them (each use of an id costs the same), so rows a batch
  does not touch get no (dense) gradient.
  """

  def __init__(self, features: Sequence[Mapping[str, Any]], return_dict: bool = False,
               embedding_l2: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    self.features = [dict(f) for f in features]
    self.return_dict = bool(return_dict)
    if embedding_l2 < 0:
      raise ValueError(f"embedding_l2 must be >= 0, got {embedding_l2}")
    self.embedding_l2 = float(embedding_l2)
    self.lookups = {}
    self.embeddings = {}
    self.standardizers = {}
    for baked in self.features:
      name = baked["name"]
      if baked["transform"] == "normalize":
        self.standardizers[name] = Standardize(
            baked["mean"], baked["variance"], baked["log1p"], name=name + "_standardize")
      else:
        self.lookups[name] = make_lookup(baked)
        self.embeddings[name] = PooledEmbedding(
            num_ids(baked), baked["embedding_dim"], pooling=baked["pooling"],
            name=name + "_embedding")

  @classmethod
  def from_artifacts(cls, spec: spec_lib.FeatureSpec,
                     artifacts: artifacts_lib.TransformArtifacts, embedding_dim: int,
                     **kwargs) -> "FeatureEncoder":
    """Bakes every spec feature's statistics in; `embedding_dim` is the model default."""
    return cls([bake_feature(f, artifacts, embedding_dim) for f in spec], **kwargs)

  @property
  def feature_dims(self) -> Dict[str, int]:
    """name -> width of that feature's vector in the output."""
    return {f["name"]: 1 if f["transform"] == "normalize" else f["embedding_dim"]
            for f in self.features}

  @property
  def output_dim(self) -> int:
    return sum(self.feature_dims.values())

  def _get(self, features, key):
    if key not in features:
      raise KeyError(f"FeatureEncoder {self.name!r}: input feature {key!r} is missing; "
                     f"got {sorted(features)}")
    return features[key]

  def encode(self, features) -> Dict[str, tf.Tensor]:
    """name -> float32 [batch, d] for every feature (see the class docstring)."""
    encoded = {}
    for baked in self.features:
      name = baked["name"]
      values = self._get(features, name)
      if name in self.standardizers:
        encoded[name] = self.standardizers[name](values)
        continue
      lookup = self.lookups[name]
      if baked["multivalent"] and not isinstance(values, tf.RaggedTensor):
        raise TypeError(f"FeatureEncoder {self.name!r}: multivalent feature {name!r} must "
                        f"be a tf.RaggedTensor [batch, None]; convert padded tensors with "
                        f"features.parsing.dense_to_model_inputs")
      if isinstance(values, tf.RaggedTensor):
        ids = values.with_flat_values(lookup(values.flat_values))
      else:
        ids = lookup(values)
      weights = None
      if baked["weighted"]:
        weights = self._get(features, name + spec_lib.WEIGHT_SUFFIX)
      encoded[name] = self.embeddings[name](ids, weights)
    return encoded

  def call(self, features):
    encoded = self.encode(features)
    if self.embedding_l2 > 0 and self.embeddings:
      squares = tf.add_n([tf.reduce_sum(tf.square(encoded[name]), axis=-1)
                          for name in self.embeddings])  # [batch]
      self.add_loss(self.embedding_l2 * tf.reduce_mean(squares))
    if self.return_dict:
      return encoded
    return tf.concat([encoded[f["name"]] for f in self.features], axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update(features=_plain(self.features), return_dict=self.return_dict,
                  embedding_l2=self.embedding_l2)
    return config
