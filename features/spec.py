"""The feature spec: the one place that names the model's input features.

Flow: raw logs -> Beam (writes raw values + transform artifacts) -> TFRecords ->
tf.data parser -> model input + preprocessing layers -> SavedModel signatures.
Every one of those steps reads the same `FeatureSpec`, loaded from a YAML file under
`configs/features/`. Adding a feature is one YAML entry:

    features:
      - name: item_price          # key in the raw log record and in the tf.train.Example
        dtype: float              # string | int | float
        transform: normalize      # hash | vocabulary | normalize | bucketize
        log1p: true               # normalize only: log(1 + x) before standardising
      - name: user_recent_categories
        dtype: string
        multivalent: true         # a list per record; pooled inside the model
        pooling: mean             # mean | sum
        transform: vocabulary
        max_tokens: 1000          # vocabulary size cap (most frequent on train)

Representation (the contract shared by Beam, tf.data, the model and serving):
  * scalar feature: one value per example; model input shape [batch], dtype as below.
  * multivalent feature: a variable-length list; model input is a tf.RaggedTensor
    [batch, None]; in the `predict_raw` signature a dense [batch, max_len] tensor padded
    (at the end) with the feature's `default`.
  * weighted multivalent feature (`weighted: true`): a parallel float list named
    `<name>__weight` (see `weight_key`), same length as the values.
  * dtypes: string -> tf.string, int -> tf.int64, float -> tf.float32.
  * a feature missing from a record takes its `default` (scalar) or the empty list.
"""

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence

import yaml

DTYPES = ("string", "int", "float")
TRANSFORMS = ("hash", "vocabulary", "normalize", "bucketize")
POOLINGS = ("mean", "sum")
WEIGHT_SUFFIX = "__weight"

# Keys every raw impression record must have and which are not model features
# unless the spec names them (user_id and item_id usually are).
IMPRESSION_ID_KEY = "impression_id"
TIMESTAMP_KEY = "timestamp"
# The raw log contract's required ids of an impression (docs/DESIGN.md section 2): the Beam
# job dead-letters an impression without them, pipeline.predict refuses such a record.
USER_ID_KEY = "user_id"
ITEM_ID_KEY = "item_id"
REQUIRED_ID_KEYS = (USER_ID_KEY, ITEM_ID_KEY)


class SpecError(ValueError):
  """A feature spec or config file is invalid; the message names file and key."""


@dataclasses.dataclass(frozen=True)
class Feature:
  """One model input feature.

  Attributes:
    name: key in raw records and in tf.train.Example.
    dtype: "string", "int" or "float".
    transform: "hash" (Hashing into `hash_buckets`), "vocabulary" (lookup in a
      vocabulary computed on the train split, at most `max_tokens`, plus one OOV
      bucket), "normalize" (z-score with mean/variance from train; float only), or
      "bucketize" (quantile boundaries from train, `num_buckets` buckets).
    multivalent: the value is a list (pooled to one vector in the model).
    weighted: multivalent only; a parallel `<name>__weight` float list weights the
      pooled embeddings.
    pooling: "mean" or "sum" for multivalent features.
    embedding_dim: per-feature override of the model's embedding size.
    hash_buckets, max_tokens, num_buckets: sizes for the transforms above.
    log1p: normalize only; apply log(1 + max(x, 0)) before standardising.
    default: value for a missing scalar, and the padding value of multivalent
      features in the `predict_raw` signature.
    group: free-form tag (user / item / context / cross) for documentation and for
      models that treat groups differently.
  """

  name: str
  dtype: str
  transform: str
  multivalent: bool = False
  weighted: bool = False
  pooling: str = "mean"
  embedding_dim: Optional[int] = None
  hash_buckets: int = 0
  max_tokens: int = 0
  num_buckets: int = 0
  log1p: bool = False
  default: Any = None
  group: str = "other"

  @property
  def weight_key(self) -> str:
    """Example key of the parallel weight list of a weighted multivalent feature."""
    return self.name + WEIGHT_SUFFIX

  @property
  def is_categorical(self) -> bool:
    """True when the feature becomes an embedding (all transforms but normalize)."""
    return self.transform != "normalize"

  @property
  def default_value(self) -> Any:
    """The default as a Python value of the feature's dtype."""
    if self.default is not None:
      return self.default
    return {"string": "", "int": -1, "float": 0.0}[self.dtype]


@dataclasses.dataclass(frozen=True)
class FeatureSpec:
  """All model input features, in a fixed order."""

  features: tuple
  source: str = "<memory>"

  def __iter__(self):
    return iter(self.features)

  def __len__(self):
    return len(self.features)

  @property
  def names(self) -> List[str]:
    return [f.name for f in self.features]

  def __getitem__(self, name: str) -> Feature:
    for feature in self.features:
      if feature.name == name:
        return feature
    raise KeyError(f"{self.source}: no feature named {name!r}; have {self.names}")

  def example_keys(self) -> List[str]:
    """Every tf.train.Example key the features occupy (weights included)."""
    keys = []
    for feature in self.features:
      keys.append(feature.name)
      if feature.weighted:
        keys.append(feature.weight_key)
    return keys


_FEATURE_FIELDS = {f.name for f in dataclasses.fields(Feature)}


def _fail(source: str, where: str, message: str):
  raise SpecError(f"{source}: {where}: {message}")


def feature_from_dict(entry: Dict[str, Any], source: str, index: int) -> Feature:
  """Builds and validates one Feature from its YAML mapping."""
  where = f"features[{index}]"
  if not isinstance(entry, dict):
    _fail(source, where, f"expected a mapping, got {type(entry).__name__}")
  unknown = sorted(set(entry) - _FEATURE_FIELDS)
  if unknown:
    _fail(source, where, f"unknown keys {unknown}; allowed: {sorted(_FEATURE_FIELDS)}")
  for required in ("name", "dtype", "transform"):
    if required not in entry:
      _fail(source, where, f"missing required key {required!r}")
  name = entry["name"]
  where = f"features[{index}] ({name})"
  feature = Feature(**entry)
  if feature.dtype not in DTYPES:
    _fail(source, where, f"dtype {feature.dtype!r} not in {DTYPES}")
  if feature.transform not in TRANSFORMS:
    _fail(source, where, f"transform {feature.transform!r} not in {TRANSFORMS}")
  if feature.pooling not in POOLINGS:
    _fail(source, where, f"pooling {feature.pooling!r} not in {POOLINGS}")
  if feature.transform == "hash" and feature.hash_buckets <= 0:
    _fail(source, where, "transform 'hash' needs hash_buckets > 0")
  if feature.transform == "hash" and feature.dtype == "float":
    _fail(source, where, "transform 'hash' needs dtype string or int")
  if feature.transform == "vocabulary" and feature.max_tokens <= 0:
    _fail(source, where, "transform 'vocabulary' needs max_tokens > 0")
  if feature.transform == "vocabulary" and feature.dtype == "float":
    _fail(source, where, "transform 'vocabulary' needs dtype string or int")
  if feature.transform == "bucketize" and feature.num_buckets < 2:
    _fail(source, where, "transform 'bucketize' needs num_buckets >= 2")
  if feature.transform in ("normalize", "bucketize") and feature.dtype == "string":
    _fail(source, where, f"transform {feature.transform!r} needs dtype int or float")
  if feature.transform == "normalize" and feature.multivalent:
    _fail(source, where, "transform 'normalize' is for scalar features only")
  if feature.log1p and feature.transform != "normalize":
    _fail(source, where, "log1p applies to transform 'normalize' only")
  if feature.weighted and not feature.multivalent:
    _fail(source, where, "weighted: true needs multivalent: true")
  if feature.embedding_dim is not None and feature.embedding_dim <= 0:
    _fail(source, where, "embedding_dim must be > 0")
  return feature


def feature_spec_from_dict(data: Dict[str, Any], source: str = "<memory>") -> FeatureSpec:
  """Builds a FeatureSpec from the parsed YAML document `{features: [...]}`."""
  if not isinstance(data, dict) or "features" not in data:
    raise SpecError(f"{source}: expected a mapping with a 'features' list")
  unknown = sorted(set(data) - {"features"})
  if unknown:
    raise SpecError(f"{source}: unknown top-level keys {unknown}; allowed: ['features']")
  entries = data["features"]
  if not isinstance(entries, list) or not entries:
    raise SpecError(f"{source}: 'features' must be a non-empty list")
  features = tuple(feature_from_dict(e, source, i) for i, e in enumerate(entries))
  reserved = {IMPRESSION_ID_KEY, TIMESTAMP_KEY}
  seen = set()
  for feature in features:
    keys = [feature.name] + ([feature.weight_key] if feature.weighted else [])
    for key in keys:
      if key in seen:
        raise SpecError(f"{source}: feature key {key!r} declared twice")
      if key in reserved:
        raise SpecError(f"{source}: {key!r} is reserved (kept in every Example as metadata)")
      seen.add(key)
  return FeatureSpec(features=features, source=source)


def load_feature_spec(path: str) -> FeatureSpec:
  """Loads a feature spec YAML file (see the module docstring for its layout)."""
  if not os.path.exists(path):
    raise SpecError(f"{path}: feature spec file not found")
  with open(path) as f:
    try:
      data = yaml.safe_load(f)
    except yaml.YAMLError as e:
      raise SpecError(f"{path}: not valid YAML: {e}") from e
  return feature_spec_from_dict(data, source=path)


def check_labels_not_features(spec: FeatureSpec, label_names: Sequence[str]) -> None:
  """Fails when a label name is also declared as a feature (a label leak)."""
  clash = sorted(set(spec.example_keys()) & set(label_names))
  if clash:
    raise SpecError(f"{spec.source}: {clash} are labels and cannot be features")
