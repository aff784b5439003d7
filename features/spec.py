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
        max_length: 50            # at most 50 elements (a string feature: characters)
        on_too_long: cut          # keep the first 50 (counted); default dead_letter
    limits:                       # optional spec-wide defaults (these are the defaults)
      max_list_length: 10000      # elements of a list feature without max_length
      max_string_chars: 100000    # characters of a string (a scalar, or each list element)
      on_too_long: dead_letter    # dead_letter (reason too_long) | cut

Representation (the contract shared by Beam, tf.data, the model and serving):
  * scalar feature: one value per example; model input shape [batch], dtype as below.
  * multivalent feature: a variable-length list; model input is a tf.RaggedTensor
    [batch, None]; in the `predict_raw` signature a dense [batch, max_len] tensor padded
    (at the end) with the feature's `default`.
  * weighted multivalent feature (`weighted: true`): a parallel float list named
    `<name>__weight` (see `weight_key`), same length as the values.
  * dtypes: string -> tf.string, int -> tf.int64, float -> tf.float32.
  * a feature missing from a record takes its `default` (scalar) or the empty list.

Value limits (the raw log contract's bound on one value, `ValueLimit`): a list feature
holds at most `max_length` elements, a string feature at most `max_length` characters
(each string of a list feature at most `limits.max_string_chars`). A longer value is,
per `on_too_long`, either refused (`dead_letter`: the Beam job dead-letters the record
as too_long, pipeline.predict returns a too_long error for it) or `cut` to its first
max_length elements / characters, which is never silent: the job counts it in
counts.json (`impressions.cut.<feature>`), pipeline.predict lists it in the record's
`input_notes.cut`. Fields outside the spec (impression_id, event, ...) have FIXED_LIMIT,
the defaults, refused when over.
"""

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

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

# What a value over its limit gets (`on_too_long`), and the spec-wide default limits.
DEAD_LETTER = "dead_letter"
CUT = "cut"
ON_TOO_LONG = (DEAD_LETTER, CUT)
DEFAULT_MAX_LIST_LENGTH = 10_000  # Elements of a list value.
DEFAULT_MAX_STRING_CHARS = 100_000  # Characters of a string value (or of a list's string).


class SpecError(ValueError):
  """A feature spec or config file is invalid; the message names file and key."""


class TooLongError(ValueError):
  """A value over its limit whose `on_too_long` is dead_letter: `field` is its key,
  `detail` a sentence naming the field, the length and the limit."""

  def __init__(self, field: str, detail: str):
    super().__init__(detail)
    self.field = field
    self.detail = detail


@dataclasses.dataclass(frozen=True)
class ValueLimit:
  """How long one field's value may be.

  Attributes:
    max_elements: elements of a list value.
    max_chars: characters of a string value, or of each string of a list value.
    on_too_long: "dead_letter" (the record is refused, reason too_long) or "cut" (the
      first max_elements elements, each string's first max_chars characters, are kept).
    follows: for the weight list of a weighted feature, that feature's name: the list is
      cut with the feature's values and reported under the feature's name.
  """

  max_elements: int = DEFAULT_MAX_LIST_LENGTH
  max_chars: int = DEFAULT_MAX_STRING_CHARS
  on_too_long: str = DEAD_LETTER
  follows: Optional[str] = None

  def excess(self, value: Any) -> Optional[str]:
    """None when `value` (a scalar or a list) keeps the limit, else how it is over it
    ("12 elements, more than the limit of 10")."""
    items = value
    if isinstance(value, (list, tuple)):
      if len(value) > self.max_elements:
        return f"{len(value)} elements, more than the limit of {self.max_elements}"
    else:
      items = (value,)
    for item in items:
      if isinstance(item, str) and len(item) > self.max_chars:
        return (f"a string of {len(item)} characters, more than the limit of "
                f"{self.max_chars}")
    return None

  def cut(self, value: Any) -> Any:
    """`value` held to the limit: a list's first max_elements elements, each string's
    first max_chars characters."""
    if isinstance(value, (list, tuple)):
      return [item[:self.max_chars] if isinstance(item, str) else item
              for item in value[:self.max_elements]]
    return value[:self.max_chars] if isinstance(value, str) else value


# The limit of every field the spec does not name (impression_id, event, ...).
FIXED_LIMIT = ValueLimit()


def fit_lengths(values: Dict[str, Any], limits: Mapping[str, ValueLimit]) -> Dict[str, int]:
  """Holds every value of `values` (key -> scalar or list) to its limit, in place.

  Args:
    values: a record's values; modified: a value over a `cut` limit is replaced by its cut.
    limits: key -> its ValueLimit; a key not in it has FIXED_LIMIT.

  Returns:
    {key: original length (elements of a list, characters of a string)} of the values
    cut, weight lists left out (their feature is listed).

  Raises:
    TooLongError: for the first value over a dead_letter limit.
  """
  cut = {}
  for key, value in values.items():
    limit = limits.get(key, FIXED_LIMIT)
    excess = limit.excess(value)
    if excess is None:
      continue
    if limit.on_too_long == DEAD_LETTER:
      raise TooLongError(key, f"field {key!r}: {excess}")
    values[key] = limit.cut(value)
    if limit.follows is None:
      cut[key] = len(value)
  return cut


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
    max_length: most elements of a list feature, most characters of a string feature;
      None = the spec's `limits` (max_list_length / max_string_chars).
    on_too_long: "dead_letter" or "cut" (module docstring); None = the spec's `limits`.
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
  max_length: Optional[int] = None
  on_too_long: Optional[str] = None

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
  limits: ValueLimit = FIXED_LIMIT  # The spec-wide defaults (`limits:` in the YAML).

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

  def value_limit(self, feature: Feature) -> ValueLimit:
    """The limit of one feature's values: its max_length / on_too_long, else the spec's."""
    defaults = self.limits
    max_elements, max_chars = defaults.max_elements, defaults.max_chars
    if feature.max_length is not None:
      if feature.multivalent:
        max_elements = feature.max_length
      else:
        max_chars = feature.max_length
    return ValueLimit(max_elements, max_chars, feature.on_too_long or defaults.on_too_long)

  def value_limits(self) -> Dict[str, ValueLimit]:
    """Example key -> its ValueLimit, for every feature and weight list (`fit_lengths`)."""
    limits = {}
    for feature in self.features:
      limit = limits[feature.name] = self.value_limit(feature)
      if feature.weighted:
        limits[feature.weight_key] = dataclasses.replace(limit, follows=feature.name)
    return limits

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
  if feature.max_length is not None:
    _check_positive_int(source, where, "max_length", feature.max_length)
    if not feature.multivalent and feature.dtype != "string":
      _fail(source, where, "max_length bounds the elements of a list feature (multivalent) "
            "or the characters of a string feature; this is a scalar "
            f"{feature.dtype} feature")
  if feature.on_too_long is not None and feature.on_too_long not in ON_TOO_LONG:
    _fail(source, where, f"on_too_long {feature.on_too_long!r} not in {ON_TOO_LONG}")
  return feature


def _check_positive_int(source: str, where: str, key: str, value: Any) -> None:
  if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
    _fail(source, where, f"{key} must be an integer > 0, got {value!r}")


_LIMIT_KEYS = {"max_list_length": "max_elements", "max_string_chars": "max_chars",
               "on_too_long": "on_too_long"}


def limits_from_dict(entry: Any, source: str) -> ValueLimit:
  """The spec-wide default limits from the YAML mapping `limits:` (absent keys: defaults)."""
  if entry is None:
    return FIXED_LIMIT
  if not isinstance(entry, dict):
    _fail(source, "limits", f"expected a mapping, got {type(entry).__name__}")
  unknown = sorted(set(entry) - set(_LIMIT_KEYS))
  if unknown:
    _fail(source, "limits", f"unknown keys {unknown}; allowed: {sorted(_LIMIT_KEYS)}")
  for key in ("max_list_length", "max_string_chars"):
    if key in entry:
      _check_positive_int(source, "limits", key, entry[key])
  if entry.get("on_too_long", DEAD_LETTER) not in ON_TOO_LONG:
    _fail(source, "limits", f"on_too_long {entry['on_too_long']!r} not in {ON_TOO_LONG}")
  return ValueLimit(**{_LIMIT_KEYS[key]: value for key, value in entry.items()})


def limits_to_dict(limits: ValueLimit) -> Dict[str, Any]:
  """The YAML mapping `limits:` of spec-wide limits, keys at their defaults left out
  (empty for the defaults): what a copy of the spec must write to keep them."""
  return {key: getattr(limits, attribute) for key, attribute in _LIMIT_KEYS.items()
          if getattr(limits, attribute) != getattr(FIXED_LIMIT, attribute)}


def feature_spec_from_dict(data: Dict[str, Any], source: str = "<memory>") -> FeatureSpec:
  """Builds a FeatureSpec from the parsed YAML document `{features: [...], limits: {...}}`."""
  if not isinstance(data, dict) or "features" not in data:
    raise SpecError(f"{source}: expected a mapping with a 'features' list")
  unknown = sorted(set(data) - {"features", "limits"})
  if unknown:
    raise SpecError(f"{source}: unknown top-level keys {unknown}; allowed: ['features', "
                    "'limits']")
  limits = limits_from_dict(data.get("limits"), source)
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
  return FeatureSpec(features=features, source=source, limits=limits)


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
