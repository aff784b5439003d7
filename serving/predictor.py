"""Scores raw impression records (the log contract) with an exported SavedModel.

Flow position: after training; the same path a production caller takes. Each record is
validated and encoded by the Beam job's own codec (features/example_codec.py), then the
batch goes through the SavedModel's `serving_default` signature, so the transformations
applied are exactly the ones in the graph. A bad record gets an error naming its field;
the other records of the batch are still scored.

`predict_raw` calls the `predict_raw` signature (one dense tensor per feature) after
checking the inputs' names, dtypes and ranks against the signature, so a caller's
mistake is an error naming the feature rather than TensorFlow's positional
"input #8 was expected to be a int64 tensor".
"""

import dataclasses
import json
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional

import numpy as np
import tensorflow as tf

from features import example_codec
from training import export as export_lib


@dataclasses.dataclass
class Scored:
  """The result for one input record: probabilities, or an error naming the field."""

  index: int
  record: Any
  predictions: Optional[Dict[str, float]] = None
  error: Optional[Dict[str, str]] = None

  def to_json(self) -> Dict[str, Any]:
    out = {"record": self.record}
    if self.error is not None:
      out["error"] = self.error
    else:
      out["predictions"] = self.predictions
    return out


@dataclasses.dataclass
class BadLine:
  """An input line that is not JSON; scored as an error naming the line."""

  line: int
  text: str
  detail: str


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
    self._signature = tf.saved_model.load(saved_model_dir).signatures[
        export_lib.SERVING_DEFAULT]
    self.batch_size = batch_size

  def _encode(self, index: int, record: Any):
    if isinstance(record, BadLine):
      raise example_codec.RecordError("<line>", "unparseable_json",
                                      f"line {record.line}: not valid JSON: {record.detail}")
    if not isinstance(record, Mapping):
      raise example_codec.RecordError("<record>", "not_an_object",
                                      f"record {index}: expected a JSON object")
    impression_id = str(record.get("impression_id", ""))
    return self._codec.encode(self._codec.coerce(record), {}, impression_id, 0)

  def score(self, records: Iterable[Any]) -> Iterator[Scored]:
    """Yields one Scored per record, in input order."""
    pending: List[Scored] = []
    encoded: List[bytes] = []
    for index, record in enumerate(records):
      shown = record.text if isinstance(record, BadLine) else record
      result = Scored(index=index, record=shown)
      try:
        encoded.append(self._encode(index, record).SerializeToString())
        pending.append(result)
      except example_codec.RecordError as e:
        result.error = {"field": e.field, "reason": e.reason, "detail": e.detail}
        yield from self._flush(pending, encoded)
        pending, encoded = [], []
        yield result
        continue
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


def read_jsonl(path: str) -> Iterator[Any]:
  """Yields parsed JSON lines; an unparseable line yields a `BadLine` marker."""
  with tf.io.gfile.GFile(path) as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        yield json.loads(line)
      except json.JSONDecodeError as e:
        yield BadLine(line_number, line.rstrip("\n"), str(e))
