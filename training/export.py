"""SavedModel export with serving signatures and TF Serving warm-up records.

Flow position: the last step of pipeline.train; its output is what pipeline.evaluate,
pipeline.predict and TF Serving load.

Layout of `MODEL_DIR/export/<version>/` (a TF Serving model base path's version dir):
  saved_model.pb, variables/, assets/          the graph, weights, vocabularies
  assets.extra/tf_serving_warmup_requests      PredictionLog records (serving_default)
  assets.extra/feature_spec.yaml               the feature spec the model was built with
  assets.extra/export_metadata.json            model name, outputs, labels, config source

Signatures (all outputs float32 [batch], named as in the papers: ctr, cvr, ctcvr, ...):
  serving_default(examples: tf.string [batch])   serialized tf.train.Example in the
      TFRecord contract (labels and metadata are ignored if present).
  predict_raw(<feature>: ...)                    one tensor per feature, batch-first:
      scalar features [batch]; multivalent [batch, max_len] padded at the end with the
      feature's default; weights `<name>__weight` [batch, max_len] float32.
The feature transformations (hashing, vocabulary lookup, normalisation, pooling) are
layers of the model, so both signatures take raw values.
"""

import contextlib
import json
import os
import time
from typing import Dict, List, Optional, Sequence

from absl import logging
import tensorflow as tf
import tf_keras
import yaml

from features import parsing
from features import spec as spec_lib

SERVING_DEFAULT = "serving_default"
PREDICT_RAW = "predict_raw"
EXAMPLES_INPUT = "examples"
WARMUP_FILE = "tf_serving_warmup_requests"
METADATA_FILE = "export_metadata.json"
SPEC_FILE = "feature_spec.yaml"


class ServingModule(tf.Module):
  """Wraps the scorer with the two serving functions.

  The functions are traced once, by `signatures`, into concrete functions that
  tf.saved_model.save stores as the signatures. They are not tf.function attributes of
  the module: the saver re-derives the concrete functions of every tf.function attribute
  from their input structures and, for these two, traced them all over again (3.4 of the
  10 CPU s of exporting ESMM on the Ali-CCP spec).
  """

  def __init__(self, scorer, spec: spec_lib.FeatureSpec):
    super().__init__()
    self.scorer = scorer
    self._spec = spec

  def _score(self, features: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    outputs = self.scorer(features, training=False)
    return {name: tf.reshape(value, [-1]) for name, value in outputs.items()}

  def serve_examples(self, examples):
    features, _ = parsing.parse_examples(examples, self._spec, label_names=[])
    return self._score(features)

  def serve_raw(self, **raw_features):
    return self._score(parsing.dense_to_model_inputs(raw_features, self._spec))

  def signatures(self) -> Dict[str, tf.types.experimental.ConcreteFunction]:
    """The two signatures, traced anew at each call."""
    return {
        SERVING_DEFAULT: tf.function(self.serve_examples).get_concrete_function(
            tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)),
        PREDICT_RAW: tf.function(self.serve_raw).get_concrete_function(
            **parsing.raw_input_signature(self._spec)),
    }


def _write_warmup_requests(export_dir: str, examples: Sequence[bytes]) -> None:
  """Writes TF Serving warm-up PredictionLogs that call serving_default."""
  # Imported here: tensorflow-serving-api is only needed at export time.
  from tensorflow_serving.apis import model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import predict_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=g-import-not-at-top

  extra = os.path.join(export_dir, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
    for batch_size in (1, len(examples)):
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(signature_name=SERVING_DEFAULT))
      request.inputs[EXAMPLES_INPUT].CopyFrom(
          tf.make_tensor_proto(list(examples[:batch_size]), dtype=tf.string))
      log = prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request))
      writer.write(log.SerializeToString())


def export_saved_model(scorer, spec: spec_lib.FeatureSpec, export_base: str, *,
                       warmup_examples: Sequence[bytes] = (),
                       metadata: Optional[dict] = None,
                       version: Optional[int] = None) -> str:
  """Exports `scorer` to `export_base/<version>/` and returns that directory.

  Args:
    scorer: functional tf_keras.Model, raw features dict -> {name: [batch, 1]}.
    spec: the feature spec the scorer was built from.
    export_base: TF Serving model base path; a numeric version directory is made in it.
    warmup_examples: serialized tf.Example for the TF Serving warm-up file.
    metadata: extra JSON-able facts stored in assets.extra/export_metadata.json.
    version: version number (default: unix time in seconds).
  """
  version = version if version is not None else int(time.time())
  export_dir = os.path.join(export_base, str(version))
  tmp_dir = export_dir + ".tmp"
  if tf.io.gfile.exists(tmp_dir):
    tf.io.gfile.rmtree(tmp_dir)
  module = ServingModule(scorer, spec)
  signatures = module.signatures()
  with _without_keras_traces():
    tf.saved_model.save(module, tmp_dir, signatures=signatures)
  extra = os.path.join(tmp_dir, "assets.extra")
  tf.io.gfile.makedirs(extra)
  if warmup_examples:
    _write_warmup_requests(tmp_dir, list(warmup_examples))
  with tf.io.gfile.GFile(os.path.join(extra, SPEC_FILE), "w") as f:
    yaml.safe_dump(spec_document(spec), f, sort_keys=False)
  outputs = sorted(signatures[SERVING_DEFAULT].structured_outputs)
  with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
    json.dump({"outputs": outputs, "version": version, **(metadata or {})}, f, indent=1)
  # Rename last so a TF Serving poller never sees a half-written version.
  if tf.io.gfile.exists(export_dir):
    tf.io.gfile.rmtree(export_dir)
  tf.io.gfile.rename(tmp_dir, export_dir)
  logging.info("Exported SavedModel to %s (outputs %s)", export_dir, outputs)
  return export_dir


def _without_keras_traces():
  """A scope in which tf.saved_model.save stores no traced Keras layer functions.

  Saving a module that holds a Keras model also traces and stores every Keras layer's
  call functions ("Found untraced functions such as ..._layer_call_fn"), which only
  `tf_keras.models.load_model` uses; serving, evaluation and the benchmarks read the
  signatures (`tf.saved_model.load`). Without them an export takes about 40% of the CPU
  and a load about half (hm3, idle machine: 3.5-4.1 -> 1.4 s and 1.1 -> 0.4-0.7 s). The
  switch is the scope tf_keras' own `Model.save(save_traces=False)` uses, private in
  tf_keras 2.16 (constraints.txt pins it); with another version, or if it moved, the
  export keeps the traces as before.
  """
  if tf_keras.__version__.startswith("2.16."):
    try:
      # pylint: disable-next=g-import-not-at-top
      from tf_keras.src.saving.legacy.saved_model import utils
      return utils.keras_option_scope(save_traces=False, in_tf_saved_model_scope=True)
    except (ImportError, AttributeError):
      pass
  return contextlib.nullcontext()


def spec_document(spec: spec_lib.FeatureSpec) -> dict:
  """The YAML document of a feature spec as the export stores it (assets.extra/).

  `{features: [...]}`, plus `limits:` when the spec-wide value limits are not the
  defaults, so serving applies the same limits as the Beam job (features.spec).
  `spec_lib.spec_from_dict` of it gives back an equal spec.
  """
  document = {"features": [_feature_entry(feature) for feature in spec]}
  limits = spec_lib.limits_to_dict(spec.limits)  # {} at the defaults: file unchanged
  if limits:
    document["limits"] = limits
  return document


def _feature_entry(feature: spec_lib.Feature) -> dict:
  """The YAML mapping of a feature, without keys left at their defaults."""
  defaults = spec_lib.Feature(name="", dtype="", transform="")
  entry = {}
  for key, value in vars(feature).items():
    if key in ("name", "dtype", "transform") or value != getattr(defaults, key):
      entry[key] = value
  return entry


def load_export_spec(export_dir: str) -> spec_lib.FeatureSpec:
  """The feature spec stored beside an exported SavedModel."""
  return spec_lib.load_feature_spec(os.path.join(export_dir, "assets.extra", SPEC_FILE))


def latest_export(export_base: str) -> str:
  """The newest complete version directory under `export_base` (serving.versions: a
  half-written or emptied version is skipped with a warning, as TF Serving would)."""
  from serving import versions  # pylint: disable=g-import-not-at-top
  return versions.newest_complete_version(export_base)
