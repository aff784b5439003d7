"""training.export stores the serving signatures, not the Keras layers' traced calls.

The oracle: the SavedModel's own function library (saved_model.pb) names no Keras layer
call function, and the exported signatures still score exactly as the in-memory model.
"""

import os

import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

from tests.test_esmm import SPEC, build, make_batch, randomize
from training import export as export_lib


def _function_names(export_dir):
  proto = saved_model_pb2.SavedModel()
  with open(os.path.join(export_dir, "saved_model.pb"), "rb") as f:
    proto.ParseFromString(f.read())
  return [function.signature.name
          for function in proto.meta_graphs[0].graph_def.library.function]


def test_export_holds_no_keras_layer_traces_and_scores_the_same(tmp_path):
  model = build("esmm", tmp_path)
  randomize(model, seed=8)
  features, _ = make_batch(20, seed=9)
  export_dir = export_lib.export_saved_model(model.scorer, SPEC, str(tmp_path / "export"),
                                             version=1)
  names = _function_names(export_dir)
  assert names and not [n for n in names if "layer_call" in n], [
      n for n in names if "layer_call" in n][:5]
  loaded = tf.saved_model.load(export_dir)
  padded = dict(features)
  padded["recent_categories"] = features["recent_categories"].to_tensor(default_value="")
  padded["recent_categories__weight"] = features["recent_categories__weight"].to_tensor()
  served = loaded.signatures["predict_raw"](**padded)
  for name, value in model.scorer(features).items():
    np.testing.assert_allclose(served[name].numpy(), value.numpy()[:, 0], atol=1e-6)


def test_export_traces_each_signature_once(tmp_path, monkeypatch):
  """The saver does not trace the serving functions again (it re-derived the concrete
  functions of tf.function attributes of the module: a second trace of each, 3.4 of the
  10 CPU s of an Ali-CCP ESMM export). Counted: the parses and raw-input conversions
  that tracing runs, one of each; and the export still names both signatures."""
  from features import parsing  # pylint: disable=g-import-not-at-top
  model = build("esmm", tmp_path)
  calls = {"parse_examples": 0, "dense_to_model_inputs": 0}
  for name in calls:
    original = getattr(parsing, name)

    def counted(*args, original=original, name=name, **kwargs):
      calls[name] += 1
      return original(*args, **kwargs)

    monkeypatch.setattr(parsing, name, counted)
  export_dir = export_lib.export_saved_model(model.scorer, SPEC, str(tmp_path / "export"),
                                             version=1)
  assert calls == {"parse_examples": 1, "dense_to_model_inputs": 1}
  assert set(tf.saved_model.load(export_dir).signatures) == {
      export_lib.SERVING_DEFAULT, export_lib.PREDICT_RAW}
