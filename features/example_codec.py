"""Raw record <-> tf.train.Example, per the feature spec (DESIGN.md section 3).

Flow: raw logs -> pipeline.preprocess (Beam) -> **this codec** -> TFRecords -> tf.data.
The Beam job validates raw feature values with `ExampleCodec.coerce` (a bad value becomes
a dead letter naming the field) and writes each labelled impression with
`ExampleCodec.to_example`; tests and tools read Examples back with `example_to_dict`.

Coercion rules (raw JSON/Parquet value -> Example value):
  * string feature: str, or int -> its decimal str; stored utf-8 in bytes_list.
  * int feature: int only (not bool, not float), within int64; stored in int64_list.
  * float feature: int or float (not bool), finite; stored in float_list (float32).
  * multivalent feature: a list of such values, or a scalar -> a one-element list.
    A scalar feature given a list is an error. `None` (or an absent key) means missing,
    and a missing feature is absent from the Example.
  * weighted feature: the raw record may hold `<name>__weight`, a parallel list of
    numbers (same length as the values); without it every weight is 1.0.

Every Example also holds each label (int64 0/1) and the metadata `impression_id` (bytes)
and `timestamp` (int64).
"""

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

from tensorflow.core.example import example_pb2
from tensorflow.core.example import feature_pb2

from features import spec as spec_lib

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

# Dead-letter reasons raised by this codec.
BAD_TYPE = "bad_type"
BAD_VALUE = "bad_value"


class RecordError(ValueError):
  """A raw record holds a value the spec does not accept.

  Attributes:
    field: the offending key of the raw record.
    reason: a dead-letter reason, `bad_type` or `bad_value`.
    detail: a readable sentence that names the field.
  """

  def __init__(self, field: str, reason: str, detail: str):
    super().__init__(detail)
    self.field = field
    self.reason = reason
    self.detail = detail


def _type_name(value: Any) -> str:
  return "null" if value is None else type(value).__name__


def _to_string(name: str, value: Any) -> str:
  if isinstance(value, str):
    return value
  if isinstance(value, int) and not isinstance(value, bool):
    return str(value)
  raise RecordError(name, BAD_TYPE,
                    f"field {name!r}: expected a string (or int), got {_type_name(value)}")


def _to_int(name: str, value: Any) -> int:
  if isinstance(value, int) and not isinstance(value, bool):
    if value < INT64_MIN or value > INT64_MAX:
      raise RecordError(name, BAD_VALUE, f"field {name!r}: {value} does not fit in int64")
    return value
  raise RecordError(name, BAD_TYPE, f"field {name!r}: expected an int, got {_type_name(value)}")


def _to_float(name: str, value: Any) -> float:
  if isinstance(value, (int, float)) and not isinstance(value, bool):
    value = float(value)
    if not math.isfinite(value):
      raise RecordError(name, BAD_VALUE, f"field {name!r}: {value} is not a finite number")
    return value
  raise RecordError(name, BAD_TYPE,
                    f"field {name!r}: expected a number (int or float), got {_type_name(value)}")


_CONVERTERS = {"string": _to_string, "int": _to_int, "float": _to_float}


def _to_list(name: str, value: Any, convert: Callable[[str, Any], Any]) -> List[Any]:
  if not isinstance(value, (list, tuple)):
    return [convert(name, value)]
  values = []
  for index, item in enumerate(value):
    if item is None:
      raise RecordError(name, BAD_TYPE, f"field {name!r}: element {index} is null")
    values.append(convert(name, item))
  return values


class ExampleCodec:
  """Coerces raw records and converts them to and from tf.train.Example.

  Build one per spec and reuse it (a Beam DoFn builds it in `setup()`): the per-feature
  converters are resolved once here, not per record.
  """

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str] = ()):
    self.spec = spec
    self.label_names = tuple(label_names)
    # (name, dtype, converter, multivalent, weight_key or None), in spec order.
    self._plan: List[Tuple[str, str, Callable, bool, Optional[str]]] = [
        (f.name, f.dtype, _CONVERTERS[f.dtype], f.multivalent,
         f.weight_key if f.weighted else None) for f in spec]
    self._by_key: Dict[str, Tuple[str, bool]] = {}
    for feature in spec:
      self._by_key[feature.name] = (feature.dtype, feature.multivalent)
      if feature.weighted:
        self._by_key[feature.weight_key] = ("float", True)

  def coerce(self, record: Mapping[str, Any]) -> Dict[str, Any]:
    """Validates and coerces the spec features of a raw record.

    Args:
      record: a raw log record (other keys are ignored).

    Returns:
      feature name -> value (scalar, or list for multivalent features) and, for
      weighted features, `<name>__weight` -> list of floats. Missing features are
      left out.

    Raises:
      RecordError: naming the first bad field.
    """
    features = {}
    for name, _, convert, multivalent, weight_key in self._plan:
      value = record.get(name)
      if value is None:
        if weight_key is not None and record.get(weight_key) is not None:
          raise RecordError(weight_key, BAD_VALUE,
                            f"field {weight_key!r}: weights given but {name!r} is missing")
        continue
      if multivalent:
        values = _to_list(name, value, convert)
        features[name] = values
        if weight_key is not None:
          weights = record.get(weight_key)
          if weights is None:
            features[weight_key] = [1.0] * len(values)
          else:
            weights = _to_list(weight_key, weights, _to_float)
            if len(weights) != len(values):
              raise RecordError(weight_key, BAD_VALUE,
                                f"field {weight_key!r}: {len(weights)} weights for "
                                f"{len(values)} values of {name!r}")
            features[weight_key] = weights
      else:
        if isinstance(value, (list, tuple, dict)):
          raise RecordError(name, BAD_TYPE, f"field {name!r}: expected a scalar, got "
                            f"{_type_name(value)} (the spec does not mark it multivalent)")
        features[name] = convert(name, value)
    return features

  def to_example(self, record: Mapping[str, Any], labels: Mapping[str, int],
                 impression_id: str, timestamp: int) -> example_pb2.Example:
    """Builds the Example of one labelled impression (DESIGN.md section 3).

    Args:
      record: raw feature values (other keys are ignored).
      labels: label name -> 0/1; every name in `label_names` must be present.
      impression_id: metadata, stored as utf-8 bytes.
      timestamp: metadata, unix seconds.

    Raises:
      RecordError: a bad feature value, or a missing/non 0-1 label, naming the field.
    """
    return self.encode(self.coerce(record), labels, impression_id, timestamp)

  def encode(self, features: Mapping[str, Any], labels: Mapping[str, int],
             impression_id: str, timestamp: int) -> example_pb2.Example:
    """Like `to_example`, for features already returned by `coerce` (not re-validated)."""
    example = example_pb2.Example()
    feature_map = example.features.feature
    for name, dtype, _, multivalent, weight_key in self._plan:
      value = features.get(name)
      if value is None:
        continue
      if multivalent:
        _fill_list(feature_map[name], dtype, value)
        if weight_key is not None:
          feature_map[weight_key].float_list.value.extend(features[weight_key])
      elif dtype == "string":
        feature_map[name].bytes_list.value.append(value.encode("utf-8"))
      elif dtype == "int":
        feature_map[name].int64_list.value.append(value)
      else:
        feature_map[name].float_list.value.append(value)
    for name in self.label_names:
      value = labels.get(name)
      if value not in (0, 1) or isinstance(value, float):
        raise RecordError(name, BAD_VALUE, f"label {name!r}: expected 0 or 1, got {value!r}")
      feature_map[name].int64_list.value.append(int(value))
    feature_map[spec_lib.IMPRESSION_ID_KEY].bytes_list.value.append(
        _to_string(spec_lib.IMPRESSION_ID_KEY, impression_id).encode("utf-8"))
    feature_map[spec_lib.TIMESTAMP_KEY].int64_list.value.append(
        _to_int(spec_lib.TIMESTAMP_KEY, timestamp))
    return example

  def to_dict(self, example: Union[example_pb2.Example, bytes]) -> Dict[str, Any]:
    """Reads an Example back into Python values.

    Returns:
      spec features as in `coerce` (scalars unwrapped, multivalent as lists, floats
      rounded to float32 by the proto), weights as lists, labels and `timestamp` as int,
      `impression_id` as str. Keys the codec does not know are returned as raw lists.
    """
    if isinstance(example, (bytes, bytearray)):
      example = example_pb2.Example.FromString(bytes(example))
    result = {}
    for key, feature in example.features.feature.items():
      kind = feature.WhichOneof("kind")
      values = list(getattr(feature, kind).value) if kind else []
      if key in self._by_key:
        dtype, multivalent = self._by_key[key]
        if dtype == "string":
          values = [v.decode("utf-8") for v in values]
        result[key] = values if multivalent else (values[0] if values else None)
      elif key in self.label_names or key == spec_lib.TIMESTAMP_KEY:
        result[key] = int(values[0])
      elif key == spec_lib.IMPRESSION_ID_KEY:
        result[key] = values[0].decode("utf-8")
      else:
        result[key] = values
    return result


def _fill_list(feature: feature_pb2.Feature, dtype: str, values: Sequence[Any]) -> None:
  if dtype == "string":
    holder = feature.bytes_list
    holder.value.extend([v.encode("utf-8") for v in values])
  elif dtype == "int":
    holder = feature.int64_list
    holder.value.extend(values)
  else:
    holder = feature.float_list
    holder.value.extend(values)
  if not values:
    holder.SetInParent()  # An empty list is present with zero values, not absent.


def coerce_features(record: Mapping[str, Any], spec: spec_lib.FeatureSpec) -> Dict[str, Any]:
  """Validated and coerced spec features of a raw record (see `ExampleCodec.coerce`)."""
  return ExampleCodec(spec).coerce(record)


def record_to_example(record: Mapping[str, Any], spec: spec_lib.FeatureSpec,
                      labels: Mapping[str, int], impression_id: str,
                      timestamp: int) -> example_pb2.Example:
  """The Example of one labelled raw record; labels are written in `labels` order.

  Raises:
    RecordError: naming the field, on a value the spec does not accept.
  """
  return ExampleCodec(spec, list(labels)).to_example(record, labels, impression_id, timestamp)


def example_to_dict(example_or_bytes: Union[example_pb2.Example, bytes],
                    spec: spec_lib.FeatureSpec, label_names: Sequence[str]) -> Dict[str, Any]:
  """An Example (or its serialized bytes) as a dict (see `ExampleCodec.to_dict`)."""
  return ExampleCodec(spec, label_names).to_dict(example_or_bytes)
