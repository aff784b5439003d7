"""Scores raw impression records (the log contract) with an exported SavedModel.

Flow position: after training; the same path a production caller takes. Each record is
checked against the input limits (serving/raw_input.py, with the feature spec's value
limits), validated and encoded by the Beam job's own codec (features/example_codec.py), a
value over an `on_too_long: cut` limit is cut as the Beam job cuts it, then the batch goes
through the SavedModel's `serving_default` signature, so the transformations applied are
exactly the ones in the graph. A bad record gets an error naming its field; the other
records of the batch are still scored.

A record missing a field the raw log contract requires (`user_id`, `item_id`, when the
feature spec uses them) is an error, not scored through defaults. A scored record says what
it was scored with besides its own values, in `input_notes`:
  {"defaulted": [feature, ...],          # missing, served as the spec's default / []
   "unknown_values": {feature: value},   # vocabulary features: a value (scalar) or the
                                         # values (list, multivalent) outside the
                                         # exported vocabulary, served as the OOV id
   "cut": {feature: original_length}}    # on_too_long: cut in the spec: the value was cut
                                         # to max_length (elements of a list, characters
                                         # of a string); original_length is before the cut
The vocabularies are exported from the SavedModel's own lookup tables (`load_vocabularies`),
not read from files beside it, so they are the ones the graph applies. Hashed features
have no notion of unknown (every value has a bucket) and are never listed.

`predict_raw` calls the `predict_raw` signature (one dense tensor per feature) after
checking the inputs' names, dtypes and ranks against the signature, so a caller's
mistake is an error naming the feature rather than TensorFlow's positional
"input #8 was expected to be a int64 tensor".
"""

import collections
import dataclasses
from typing import (Any, Dict, FrozenSet, Iterable, Iterator, List, Mapping, Optional,
                    Sequence, Tuple)

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.python.saved_model import loader_impl  # pylint: disable=g-direct-tensorflow-import

from features import example_codec
from features import parsing
from features import spec as spec_lib
from serving import raw_input
from training import export as export_lib

# The raw log contract's required ids (features.spec.REQUIRED_ID_KEYS; the Beam job checks
# the same two). Required here when the feature spec uses them: a model that reads no
# user_id cannot be misled by a missing one.
REQUIRED_FIELDS = spec_lib.REQUIRED_ID_KEYS

# Error reasons besides the codec's (bad_type, bad_value) and serving.raw_input's.
MISSING_FIELD = "missing_field"
NOT_AN_OBJECT = "not_an_object"

# Where features.preprocessing's encoder keeps a feature's lookup layer, and where the
# Keras lookup layer keeps its table: <...>/lookups/<feature>/lookup_table.
_ENCODER_LOOKUPS = "lookups"
_LOOKUP_TABLE = "lookup_table"


@dataclasses.dataclass
class Scored:
  """The result for one input record: probabilities and input notes, or an error.

  index: 0-based position among the records scored.
  line: 1-based line of the input file, when the record came from one.
  record: what is echoed back: the input record, or (refused for its size, depth, bytes
    or syntax) the line's text cut to serving.raw_input.ECHO_CHARS characters.
  predictions: output name -> probability.
  input_notes: {"defaulted": [...], "unknown_values": {...}, "cut": {...}} (module
    docstring).
  error: {"field", "reason", "detail"}.
  """

  index: int
  record: Any
  line: Optional[int] = None
  predictions: Optional[Dict[str, float]] = None
  input_notes: Optional[Dict[str, Any]] = None
  error: Optional[Dict[str, str]] = None

  def to_json(self) -> Dict[str, Any]:
    out = {"record": self.record}
    if self.line is not None:
      out["line"] = self.line
    if self.error is not None:
      out["error"] = self.error
    else:
      out["predictions"] = self.predictions
      out["input_notes"] = self.input_notes
    return out


class _RecordRefused(ValueError):
  """A record is not scored: the error dict and what to echo instead of the record."""

  def __init__(self, field: str, reason: str, detail: str, echo: Any):
    super().__init__(detail)
    self.error = {"field": field, "reason": reason, "detail": detail}
    self.echo = echo


def _object_paths(object_graph) -> Dict[int, Tuple[str, ...]]:
  """SavedObjectGraph node id -> the child names leading to it from the root (BFS)."""
  paths = {0: ()}
  queue = collections.deque([0])
  while queue:
    node_id = queue.popleft()
    for child in object_graph.nodes[node_id].children:
      if child.node_id not in paths:
        paths[child.node_id] = paths[node_id] + (child.local_name,)
        queue.append(child.node_id)
  return paths


def _follow(loaded: Any, path: Sequence[str]) -> Any:
  """The restored object at `path` (attributes, or keys of restored dicts)."""
  obj = loaded
  for name in path:
    obj = getattr(obj, name) if hasattr(obj, name) else obj[name]
  return obj


def load_vocabularies(saved_model_dir: str, loaded: Any,
                      spec: spec_lib.FeatureSpec) -> Dict[str, FrozenSet[Any]]:
  """Vocabulary feature name -> the values its lookup table in the SavedModel knows.

  The tables are the model's own: features.preprocessing's encoder keeps one lookup layer
  per categorical feature in its `lookups` dict, and each StringLookup / IntegerLookup
  holds its vocabulary in a `lookup_table` resource; the table's keys are exported from
  the loaded SavedModel (a value not among them gets the OOV id). A SavedModel without
  such tables (e.g. a hand-written tf.Module) gives {}.

  Args:
    saved_model_dir: the version directory `loaded` came from.
    loaded: `tf.saved_model.load(saved_model_dir)`.
    spec: the export's feature spec (the features and key dtypes to look for).
  """
  key_dtypes = {feature.name: parsing.TF_DTYPES[feature.dtype] for feature in spec
                if feature.transform == "vocabulary"}
  object_graph = loader_impl.parse_saved_model(saved_model_dir).meta_graphs[0].object_graph_def
  vocabularies = {}
  for path in _object_paths(object_graph).values():
    if (len(path) < 3 or path[-1] != _LOOKUP_TABLE or path[-3] != _ENCODER_LOOKUPS
        or path[-2] not in key_dtypes or path[-2] in vocabularies):
      continue
    feature = path[-2]
    try:
      keys, _ = tf.raw_ops.LookupTableExportV2(
          table_handle=_follow(loaded, path).resource_handle, Tkeys=key_dtypes[feature],
          Tvalues=tf.int64)
    except (AttributeError, KeyError, TypeError, tf.errors.OpError) as e:
      logging.warning("%s: cannot read the vocabulary of %r at %s: %s", saved_model_dir,
                      feature, "/".join(path), e)
      continue
    vocabularies[feature] = frozenset(
        key.decode("utf-8", errors="replace") if isinstance(key, bytes) else int(key)
        for key in keys.numpy().tolist())
  return {name: vocabularies[name] for name in key_dtypes if name in vocabularies}


class RawInputError(ValueError):
  """A `predict_raw` input is missing, unknown, or of the wrong dtype or rank."""


def predict_raw(signature, inputs: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """Calls a loaded `predict_raw` signature after checking its inputs.

  Args:
    signature: `tf.saved_model.load(export_dir).signatures["predict_raw"]`.
    inputs: feature name -> tensor or array: scalar features [batch], multivalent
      [batch, max_len] padded at the end with the feature's default.

  Returns:
    output name -> float32 numpy array [batch].

  Raises:
    RawInputError: naming the feature, for a missing or unknown input or a dtype or
      rank that differs from the signature's.
  """
  _, expected = signature.structured_input_signature
  missing = sorted(set(expected) - set(inputs))
  unknown = sorted(set(inputs) - set(expected))
  if missing or unknown:
    raise RawInputError(f"predict_raw: missing inputs {missing}, unknown inputs {unknown}")
  tensors = {}
  for name, tensor_spec in expected.items():
    value = tf.convert_to_tensor(inputs[name])
    if value.dtype != tensor_spec.dtype:
      raise RawInputError(f"predict_raw input {name!r}: expected {tensor_spec.dtype.name}, "
                          f"got {value.dtype.name}")
    if value.shape.rank != tensor_spec.shape.rank:
      raise RawInputError(f"predict_raw input {name!r}: expected rank {tensor_spec.shape.rank} "
                          f"{tensor_spec.shape}, got shape {value.shape}")
    tensors[name] = value
  return {name: value.numpy() for name, value in signature(**tensors).items()}


class Predictor:
  """Loads a SavedModel export once and scores raw records in batches."""

  def __init__(self, saved_model_dir: str, batch_size: int = 512):
    self.saved_model_dir = saved_model_dir
    self.spec = export_lib.load_export_spec(saved_model_dir)
    self._codec = example_codec.ExampleCodec(self.spec)
    self.limits = raw_input.RecordLimits(self.spec)  # the spec's value limits (features.spec)
    loaded = tf.saved_model.load(saved_model_dir)
    self._signature = loaded.signatures[export_lib.SERVING_DEFAULT]
    self.batch_size = batch_size
    self.required_fields = [name for name in REQUIRED_FIELDS if name in self.spec.names]
    self.vocabularies = load_vocabularies(saved_model_dir, loaded, self.spec)
    unchecked = [f.name for f in self.spec
                 if f.transform == "vocabulary" and f.name not in self.vocabularies]
    if unchecked:
      logging.warning("%s: no vocabulary found for %s; their unknown values are not listed "
                      "in input_notes", saved_model_dir, unchecked)

  def _encode(self, record: Any, line: Optional[raw_input.InputLine]):
    """(Example, input notes) of one record (`line`: where it came from, if a file).

    Raises:
      _RecordRefused: the record is not scored; with the error and what to echo.
    """
    text = line.text if line is not None else None
    if line is not None and line.error is not None:
      raise _RecordRefused(line.error.field, line.error.reason, line.error.detail, text)
    if not isinstance(record, Mapping):
      raise _RecordRefused("<record>", NOT_AN_OBJECT, f"expected a JSON object, got "
                           f"{type(record).__name__}", text if line is not None else record)
    if line is None:  # raw_input.read_jsonl checked the lines it parsed
      try:
        raw_input.check_limits(record, self.limits)
      except raw_input.LimitError as e:
        raise _RecordRefused(e.field, e.reason, e.detail, None) from None
    for name in self.required_fields:
      if record.get(name) is None:
        raise _RecordRefused(name, MISSING_FIELD, f"field {name!r} is missing; the raw log "
                             f"contract requires it", record)
    try:
      features = self._codec.coerce(record)
      cut = raw_input.fit_features(features, self.limits)  # in place; too_long when refused
    except (example_codec.RecordError, raw_input.LimitError) as e:
      raise _RecordRefused(e.field, e.reason, e.detail, record) from None
    impression_id = str(record.get(spec_lib.IMPRESSION_ID_KEY, ""))
    return (self._codec.encode(features, {}, impression_id, 0),
            dict(self.input_notes(features), cut=cut))

  def input_notes(self, features: Mapping[str, Any]) -> Dict[str, Any]:
    """What a record was scored with besides its own values (module docstring).

    Args:
      features: the record's features as `ExampleCodec.coerce` returns them.

    Returns:
      {"defaulted": spec features absent from `features`, in spec order,
       "unknown_values": vocabulary feature -> its value outside the vocabulary, or
       (multivalent) the list of such values, each once, in input order}.
    """
    defaulted = [name for name in self.spec.names if name not in features]
    unknown = {}
    for name, vocabulary in self.vocabularies.items():
      if name not in features:
        continue
      value = features[name]
      if isinstance(value, list):
        outside = [item for item in dict.fromkeys(value) if item not in vocabulary]
        if outside:
          unknown[name] = outside
      elif value not in vocabulary:
        unknown[name] = value
    return {"defaulted": defaulted, "unknown_values": unknown}

  def score(self, records: Iterable[Any]) -> Iterator[Scored]:
    """Yields one Scored per record, in input order.

    Args:
      records: raw records (any JSON value; objects are scored), or
        serving.raw_input.InputLine items as `raw_input.read_jsonl` yields them.
    """
    pending: List[Scored] = []
    encoded: List[bytes] = []
    for index, item in enumerate(records):
      line = item if isinstance(item, raw_input.InputLine) else None
      record = line.record if line is not None else item
      result = Scored(index=index, record=record, line=line.line if line else None)
      try:
        example, result.input_notes = self._encode(record, line)
      except _RecordRefused as refused:
        result.error, result.record = refused.error, refused.echo
        yield from self._flush(pending, encoded)
        pending, encoded = [], []
        yield result
        continue
      encoded.append(example.SerializeToString())
      pending.append(result)
      if len(encoded) >= self.batch_size:
        yield from self._flush(pending, encoded)
        pending, encoded = [], []
    yield from self._flush(pending, encoded)

  def _flush(self, pending: List[Scored], encoded: List[bytes]) -> Iterator[Scored]:
    if not pending:
      return
    outputs = self._signature(examples=tf.constant(encoded, dtype=tf.string))
    arrays = {name: np.asarray(value) for name, value in outputs.items()}
    for row, result in enumerate(pending):
      result.predictions = {name: float(values[row]) for name, values in sorted(arrays.items())}
      yield result
