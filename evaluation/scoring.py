"""Scores TFRecord files with an exported SavedModel, exactly as TF Serving would.

Flow position: SavedModel (training.export) + OUTPUT/<split>/ TFRecords -> **scoring**
-> evaluation.report. The raw serialized Examples go through the model's
`serving_default` signature (examples: tf.string [batch] -> {output: float32 [batch]}),
so the evaluated graph is the served graph, parser included. Labels, `impression_id`,
`timestamp` and `user_id` are parsed from the same serialized batch with
features.parsing; nothing else is parsed outside the model.
"""

import time
from typing import Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from features import parsing
from features import spec as spec_lib
from training import data

SERVING_SIGNATURE = "serving_default"
USER_ID = "user_id"


def _side_parse_spec(spec: spec_lib.FeatureSpec, label_names: Sequence[str],
                     extra_features: Sequence[str] = ()) -> dict:
  """Labels, metadata, (when a scalar feature) user_id, and the scalar `extra_features`.

  Raises:
    ValueError: an extra feature is not in the spec or is multivalent (no single value
      to slice by).
  """
  parse = dict(parsing.label_parse_spec(label_names))
  parse.update(parsing.metadata_parse_spec())
  feature_specs = parsing.feature_parse_spec(spec)
  if USER_ID in spec.names and not spec[USER_ID].multivalent:
    parse[USER_ID] = feature_specs[USER_ID]
  for name in extra_features:
    if name not in spec.names:
      raise ValueError(f"feature {name!r} is not in the feature spec {spec.source}; "
                       f"scalar features: {[f.name for f in spec if not f.multivalent]}")
    if spec[name].multivalent:
      raise ValueError(f"feature {name!r} is multivalent: it has no single value to slice by")
    parse[name] = feature_specs[name]
  return parse


def _column(chunks: List[np.ndarray], dtype=None) -> np.ndarray:
  column = np.concatenate(chunks) if chunks else np.zeros(0)
  if column.dtype.kind in ("S", "O"):
    return np.array([value.decode("utf-8") for value in column], dtype=object)
  return column.astype(dtype) if dtype is not None else column


def score_saved_model(saved_model_dir: str, file_pattern: str, spec: spec_lib.FeatureSpec,
                      label_names: Sequence[str], batch_size: int = 4096,
                      signature: str = SERVING_SIGNATURE,
                      extra_features: Sequence[str] = (),
                      keep: Optional[data.RecordPredicate] = None) -> Dict[str, np.ndarray]:
  """Runs every record of `file_pattern` (that `keep` accepts) through the signature.

  Args:
    saved_model_dir: an exported SavedModel version directory.
    file_pattern: glob of GZIP TFRecord files (the TFRecord contract).
    spec: the feature spec (for `user_id`, when it is a scalar feature).
    label_names: labels to read from the Examples (absent labels read as 0, so pass
      only labels the data has; see training.data.read_label_names).
    batch_size: records per signature call.
    signature: the signature to call; it must take one tf.string [batch] input.
    extra_features: scalar features to return too (e.g. the slices of the report).
    keep: optional predicate tf.string [n] -> tf.bool [n] over serialized records; only
      records it accepts are scored (e.g. `ValidationSplit.is_validation`).

  Returns:
    column -> [n] numpy array in file order (sorted files, records in file order):
    "impression_id" (object, str), "timestamp" (int64), "user_id" (object str, or int64,
    if a scalar feature), each label (float32 0/1), every output of the signature
    (float32), and each extra feature (object str, int64 or float32, as the spec says).

  Raises:
    ValueError: the signature's input is not a single string tensor, or an output is
      named like a label or metadata column.
  """
  loaded = tf.saved_model.load(saved_model_dir)
  if signature not in loaded.signatures:
    raise ValueError(f"{saved_model_dir}: no signature {signature!r}; has "
                     f"{sorted(loaded.signatures)}")
  serve = loaded.signatures[signature]
  inputs = serve.structured_input_signature[1]
  if len(inputs) != 1 or next(iter(inputs.values())).dtype != tf.string:
    raise ValueError(f"{saved_model_dir}: signature {signature!r} must take one tf.string "
                     f"input, takes {inputs}")
  input_name = next(iter(inputs))
  side_spec = _side_parse_spec(spec, label_names, extra_features)
  clash = sorted(set(serve.structured_outputs) & set(side_spec))
  if clash:
    raise ValueError(f"{saved_model_dir}: outputs {clash} clash with label/metadata names")

  files = data.list_files(file_pattern)
  dataset = tf.data.TFRecordDataset(files, compression_type=data.COMPRESSION)
  if keep is not None:
    dataset = data.keep_records(dataset, keep)
  dataset = (dataset.batch(batch_size)
             .map(lambda serialized: (serialized, tf.io.parse_example(serialized, side_spec)))
             .prefetch(tf.data.AUTOTUNE))
  chunks = {name: [] for name in list(side_spec) + sorted(serve.structured_outputs)}
  start, rows = time.time(), 0
  for serialized, side in dataset:
    outputs = serve(**{input_name: serialized})
    for name, value in side.items():
      chunks[name].append(value.numpy())
    for name, value in outputs.items():
      chunks[name].append(tf.reshape(value, [-1]).numpy())
    rows += int(serialized.shape[0])
  seconds = time.time() - start
  logging.info("Scored %d examples from %d files with %s in %.1fs (%.0f examples/s)", rows,
               len(files), saved_model_dir, seconds, rows / max(seconds, 1e-9))
  result = {}
  for name, values in chunks.items():
    dtype = np.float32 if name in label_names or name in serve.structured_outputs else None
    result[name] = _column(values, dtype)
  return result
