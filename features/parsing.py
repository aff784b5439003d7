"""Serialized tf.train.Example -> the model's input tensors (DESIGN.md sections 3 and 4).

Flow: Beam (writes TFRecords) -> **this parser** (training.data after batching; the
`serving_default` signature) -> model inputs + preprocessing layers. The `predict_raw`
signature takes dense tensors instead; `raw_input_signature` gives their TensorSpecs and
`dense_to_model_inputs` turns them into the same model inputs.

Parsed form (vectorised `tf.io.parse_example` over a [batch] vector of Examples):
  * scalar feature -> dense [batch] (tf.string / tf.int64 / tf.float32); a feature
    absent from an Example takes the feature's `default_value`.
  * multivalent feature -> tf.RaggedTensor [batch, None] with int64 row splits (the
    row-splits dtype of a ragged `tf_keras.Input`); absent -> an empty row.
  * weighted feature -> also `<name>__weight`, tf.RaggedTensor [batch, None] float32.
  * label -> float32 [batch] 0/1 (stored as int64; absent -> 0).
  * metadata (optional) -> `impression_id` tf.string [batch] (absent -> "") and
    `timestamp` tf.int64 [batch] (absent -> 0). Never a model input.
"""

from typing import Dict, Mapping, Sequence, Tuple, Union

import tensorflow as tf

from features import spec as spec_lib

TF_DTYPES = {"string": tf.string, "int": tf.int64, "float": tf.float32}
ROW_SPLITS_DTYPE = tf.int64
METADATA_KEYS = (spec_lib.IMPRESSION_ID_KEY, spec_lib.TIMESTAMP_KEY)

ParseSpec = Dict[str, Union[tf.io.FixedLenFeature, tf.io.RaggedFeature]]
Tensors = Dict[str, Union[tf.Tensor, tf.RaggedTensor]]


def _ragged_feature(dtype: tf.DType) -> tf.io.RaggedFeature:
  return tf.io.RaggedFeature(dtype=dtype, row_splits_dtype=ROW_SPLITS_DTYPE)


def feature_parse_spec(spec: spec_lib.FeatureSpec) -> ParseSpec:
  """The tf.io parse spec of the model input features only (weights included).

  Returns:
    Example key -> FixedLenFeature([], dtype, default_value) for scalar features,
    RaggedFeature(dtype, row_splits_dtype=int64) for multivalent ones and their
    `<name>__weight` lists (float32).
  """
  parse = {}
  for feature in spec:
    dtype = TF_DTYPES[feature.dtype]
    if feature.multivalent:
      parse[feature.name] = _ragged_feature(dtype)
      if feature.weighted:
        parse[feature.weight_key] = _ragged_feature(tf.float32)
    else:
      parse[feature.name] = tf.io.FixedLenFeature(
          [], dtype, default_value=feature.default_value)
  return parse


def label_parse_spec(label_names: Sequence[str]) -> ParseSpec:
  """Label name -> FixedLenFeature([], int64, default 0)."""
  return {name: tf.io.FixedLenFeature([], tf.int64, default_value=0) for name in label_names}


def metadata_parse_spec() -> ParseSpec:
  """`impression_id` (string, default "") and `timestamp` (int64, default 0)."""
  return {
      spec_lib.IMPRESSION_ID_KEY: tf.io.FixedLenFeature([], tf.string, default_value=""),
      spec_lib.TIMESTAMP_KEY: tf.io.FixedLenFeature([], tf.int64, default_value=0),
  }


def parse_spec(spec: spec_lib.FeatureSpec, label_names: Sequence[str],
               with_metadata: bool = False) -> ParseSpec:
  """The full tf.io parse spec of the TFRecord contract (DESIGN.md section 3).

  Args:
    spec: the feature spec.
    label_names: labels to parse (each an int64 0/1 in the Example).
    with_metadata: also parse `impression_id` and `timestamp`.

  Returns:
    Example key -> tf.io.FixedLenFeature or tf.io.RaggedFeature.

  Raises:
    ValueError: a label name is also a feature key or a metadata key.
  """
  parse = feature_parse_spec(spec)
  reserved = set(parse) | set(METADATA_KEYS)
  clash = sorted(reserved & set(label_names))
  if clash:
    raise ValueError(f"{spec.source}: labels {clash} clash with feature or metadata keys")
  parse.update(label_parse_spec(label_names))
  if with_metadata:
    parse.update(metadata_parse_spec())
  return parse


def parse_examples(serialized: tf.Tensor, spec: spec_lib.FeatureSpec,
                   label_names: Sequence[str], with_metadata: bool = False) -> Tuple:
  """Parses a batch of serialized Examples into model inputs, labels (and metadata).

  Args:
    serialized: tf.string [batch], serialized tf.train.Example.
    spec: the feature spec.
    label_names: labels to parse; may be empty (serving).
    with_metadata: also return the metadata dict.

  Returns:
    (features, labels) or (features, labels, metadata):
      features: name -> [batch] tensor (scalar features) or tf.RaggedTensor
        [batch, None] (multivalent features and `<name>__weight`).
      labels: name -> float32 [batch], 0. or 1.
      metadata: `impression_id` tf.string [batch], `timestamp` tf.int64 [batch].
  """
  parsed = tf.io.parse_example(serialized, parse_spec(spec, label_names, with_metadata))
  features = {key: parsed[key] for key in spec.example_keys()}
  labels = {name: tf.cast(parsed[name], tf.float32) for name in label_names}
  if not with_metadata:
    return features, labels
  metadata = {key: parsed[key] for key in METADATA_KEYS}
  return features, labels, metadata


def raw_input_signature(spec: spec_lib.FeatureSpec) -> Dict[str, tf.TensorSpec]:
  """TensorSpecs of the `predict_raw` serving signature, one per Example key.

  Returns:
    name -> tf.TensorSpec, in spec order: scalar features [None] of the feature's
    dtype; multivalent features [None, None] (dense, padded at the end with the
    feature's default); `<name>__weight` [None, None] float32.
  """
  signature = {}
  for feature in spec:
    dtype = TF_DTYPES[feature.dtype]
    if feature.multivalent:
      signature[feature.name] = tf.TensorSpec([None, None], dtype, name=feature.name)
      if feature.weighted:
        signature[feature.weight_key] = tf.TensorSpec(
            [None, None], tf.float32, name=feature.weight_key)
    else:
      signature[feature.name] = tf.TensorSpec([None], dtype, name=feature.name)
  return signature


def dense_to_model_inputs(raw: Mapping[str, tf.Tensor], spec: spec_lib.FeatureSpec) -> Tensors:
  """Turns `predict_raw` inputs into the parsed form `parse_examples` returns.

  A multivalent row's values are its leading entries up to the trailing run of the
  feature's default (the padding), so a list that itself ends in the default value
  loses that value; its weights are cut to the same row lengths (their padding value
  does not matter). Ragged inputs pass through unchanged.

  Args:
    raw: name -> tensor as in `raw_input_signature`: scalar features [batch];
      multivalent [batch, max_len]; weights [batch, max_len] float32.
    spec: the feature spec.

  Returns:
    name -> [batch] tensor or tf.RaggedTensor [batch, None] (int64 row splits), with
    exactly the keys of `spec.example_keys()`.
  """
  inputs = {}
  for feature in spec:
    values = raw[feature.name]
    if not feature.multivalent:
      inputs[feature.name] = values
      continue
    if not isinstance(values, tf.RaggedTensor):
      padding = tf.constant(feature.default_value, dtype=TF_DTYPES[feature.dtype])
      values = tf.RaggedTensor.from_tensor(values, padding=padding,
                                           row_splits_dtype=ROW_SPLITS_DTYPE)
    inputs[feature.name] = values
    if feature.weighted:
      weights = raw[feature.weight_key]
      if not isinstance(weights, tf.RaggedTensor):
        weights = tf.RaggedTensor.from_tensor(weights, lengths=values.row_lengths(),
                                              row_splits_dtype=ROW_SPLITS_DTYPE)
      inputs[feature.weight_key] = weights
  return inputs
