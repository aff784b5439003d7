"""Tests of the exported SavedModel's serving contract and serving.predictor.

A tiny ESMM is trained once per session (pipeline.simulate -> pipeline.preprocess through
the real CLIs, 5000 impressions; then 1 epoch of what pipeline.train's main calls,
trainer.train_and_export, in this process, which already holds TensorFlow) and shared with
tests/test_predict_cli.py and tests/test_benchmarks.py via the same scratch directory.
"""

import math
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow_serving.apis import prediction_log_pb2

from benchmarks import common
from benchmarks import serving_latency
from features import artifacts as artifacts_lib
from features import example_codec
from serving import predictor as predictor_lib
from serving import raw_input
from training import export as export_lib

pytestmark = pytest.mark.slow

IMPRESSIONS = 5000
OUTPUTS = {"ctr", "cvr", "ctcvr"}
A_RECORD = {
    "impression_id": "imp-test-1", "user_id": "u0000028", "user_age": 37,
    "user_gender": "f", "user_segment": "casual",
    "user_recent_categories": ["outdoor", "books"], "item_id": "i0000141",
    "item_category": "bags", "item_brand": "b00013", "item_price": 37.43,
    "item_rating": 3.2, "device": "ios", "hour_of_day": 17, "position": 20,
}


def shared_workdir(tmp_path_factory) -> str:
  """One scratch directory per session, so the data and model are built once."""
  return str(tmp_path_factory.getbasetemp() / "serving_shared")


def shared_data_dir(tmp_path_factory) -> str:
  """The session's IMPRESSIONS-impression Beam output (made once, in this process)."""
  return common.ensure_data(shared_workdir(tmp_path_factory), IMPRESSIONS, in_process=True)


def shared_export_dir(tmp_path_factory) -> str:
  """The session's ESMM SavedModel trained on shared_data_dir (made once, in this process)."""
  return common.ensure_model(shared_workdir(tmp_path_factory),
                             shared_data_dir(tmp_path_factory), in_process=True)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return shared_data_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return shared_export_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def loaded(export_dir):
  return tf.saved_model.load(export_dir)


@pytest.fixture(scope="module")
def predictor(export_dir):
  return predictor_lib.Predictor(export_dir, batch_size=4)


def _assert_probabilities(predictions):
  assert set(predictions) == OUTPUTS
  for name, value in predictions.items():
    assert math.isfinite(value) and 0.0 < value < 1.0, (name, value)
  assert predictions["ctcvr"] == pytest.approx(predictions["ctr"] * predictions["cvr"],
                                               rel=1e-5)


def test_warmup_file_holds_prediction_logs_the_model_answers(export_dir, loaded):
  path = os.path.join(export_dir, "assets.extra", export_lib.WARMUP_FILE)
  assert os.path.exists(path)
  records = [record.numpy() for record in tf.data.TFRecordDataset(path)]
  assert len(records) == 2  # batch 1 and the full warm-up batch
  signature = loaded.signatures[export_lib.SERVING_DEFAULT]
  batch_sizes = []
  for record in records:
    log = prediction_log_pb2.PredictionLog.FromString(record)
    request = log.predict_log.request
    assert request.model_spec.signature_name == export_lib.SERVING_DEFAULT
    examples = tf.make_ndarray(request.inputs[export_lib.EXAMPLES_INPUT])
    outputs = signature(examples=tf.constant(examples))
    assert set(outputs) == OUTPUTS
    for value in outputs.values():
      value = value.numpy()
      assert value.shape == (len(examples),)
      assert np.all(np.isfinite(value)) and np.all((value > 0) & (value < 1))
    batch_sizes.append(len(examples))
  assert batch_sizes[0] == 1 and batch_sizes[1] > 1


IDS_ONLY = {"user_id": "u-ids-only", "item_id": "i-ids-only"}  # the required fields


def test_unknown_missing_and_empty_values_are_served(predictor):
  records = [
      dict(A_RECORD, user_id="a-user-never-seen", item_id="an-item-never-seen"),
      dict(A_RECORD, item_category="no-such-category", device="toaster", position=999),
      dict(A_RECORD, user_recent_categories=[]),
      dict(IDS_ONLY, impression_id="only-the-ids"),
      IDS_ONLY,
  ]
  results = list(predictor.score(records))
  assert [r.index for r in results] == list(range(len(records)))
  for result in results:
    assert result.error is None, result.error
    _assert_probabilities(result.predictions)


def test_missing_features_score_as_their_defaults(predictor):
  defaults = {f.name: ([] if f.multivalent else f.default_value) for f in predictor.spec}
  missing, explicit = list(predictor.score([IDS_ONLY, dict(defaults, **IDS_ONLY)]))
  for name in OUTPUTS:
    assert missing.predictions[name] == pytest.approx(explicit.predictions[name], abs=1e-7)
  others = [name for name in predictor.spec.names if name not in IDS_ONLY]
  assert missing.input_notes["defaulted"] == others
  assert explicit.input_notes["defaulted"] == []


def test_vocabularies_read_from_the_saved_model_are_the_transform_artifacts(
    predictor, data_dir):
  """Oracle: the Beam job's vocabulary files (most frequent first), cut to max_tokens."""
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(data_dir))
  vocabulary_features = [f for f in predictor.spec if f.transform == "vocabulary"]
  assert list(predictor.vocabularies) == [f.name for f in vocabulary_features]
  for feature in vocabulary_features:
    tokens = artifacts.vocabulary(feature)
    if feature.dtype == "int":
      tokens = [int(token) for token in tokens]
    assert predictor.vocabularies[feature.name] == set(tokens[:feature.max_tokens]), feature


def test_input_notes_name_defaulted_features_and_unknown_values(predictor):
  category = sorted(predictor.vocabularies["item_category"])[0]
  position = sorted(predictor.vocabularies["position"])[0]
  partial = {key: value for key, value in A_RECORD.items()
             if key not in ("item_price", "device", "user_recent_categories")}
  records = [
      dict(A_RECORD, item_category=category, position=position),
      dict(A_RECORD, item_category="c999", position=10_000, device="toaster",
           user_recent_categories=[category, "zzz", "zzz", ""]),
      partial,
      dict(A_RECORD, item_category="", user_recent_categories=[]),
  ]
  known, unknown, missing, empty = list(predictor.score(records))
  assert known.input_notes == {"defaulted": [], "unknown_values": {}, "cut": {}}
  assert unknown.input_notes == {"defaulted": [], "unknown_values": {
      "user_recent_categories": ["zzz", ""], "item_category": "c999", "device": "toaster",
      "position": 10_000}, "cut": {}}
  assert missing.input_notes == {
      "defaulted": ["user_recent_categories", "item_price", "device"], "unknown_values": {},
      "cut": {}}
  # An empty string is outside every vocabulary; an empty list is given, not defaulted.
  assert empty.input_notes == {"defaulted": [], "unknown_values": {"item_category": ""},
                               "cut": {}}
  assert unknown.to_json()["input_notes"] == unknown.input_notes
  # Hashed features have no vocabulary: an unseen user_id is not "unknown".
  (new_user,) = predictor.score([dict(A_RECORD, user_id="never-seen-user")])
  assert new_user.input_notes == {"defaulted": [], "unknown_values": {}, "cut": {}}


def test_a_missing_required_id_is_an_error_not_a_default(predictor):
  without_user = {key: value for key, value in A_RECORD.items() if key != "user_id"}
  without_item = {key: value for key, value in A_RECORD.items() if key != "item_id"}
  results = list(predictor.score([without_user, A_RECORD, dict(A_RECORD, user_id=None),
                                  without_item, {}]))
  assert [r.error["field"] if r.error else None for r in results] == [
      "user_id", None, "user_id", "item_id", "user_id"]
  for result in results[0], results[2], results[3]:
    assert result.error["reason"] == predictor_lib.MISSING_FIELD
    assert result.error["field"] in result.error["detail"]
    assert result.predictions is None and "predictions" not in result.to_json()
  assert results[0].record == without_user  # echoed back as given
  _assert_probabilities(results[1].predictions)


def test_hostile_records_are_refused_and_the_others_score_as_alone(predictor):
  deep = {"x": 1}
  for _ in range(5_000):  # deeper than Python's recursion limit
    deep = {"x": [deep]}
  hostile = [dict(A_RECORD, extra=deep), dict(A_RECORD, item_category="c" * 5_000_000),
             dict(A_RECORD, user_recent_categories=["books"] * 2_000_000),
             dict(A_RECORD, item_price=float("nan")), dict(A_RECORD, item_rating=float("inf")),
             dict(A_RECORD, user_id="\ud800"), [A_RECORD]]
  good = [dict(A_RECORD, position=position) for position in (1, 2, 3, 4, 5, 6, 7, 8)]
  mixed = [record for pair in zip(good, hostile + [A_RECORD]) for record in pair]
  results = list(predictor.score(mixed))
  reasons = [r.error["reason"] for r in results[1::2][:len(hostile)]]
  assert reasons == [raw_input.TOO_DEEP, raw_input.TOO_LONG, raw_input.TOO_LONG,
                     raw_input.BAD_VALUE, raw_input.BAD_VALUE, raw_input.BAD_VALUE,
                     predictor_lib.NOT_AN_OBJECT]
  assert [r.error["field"] for r in results[1::2][:len(hostile)]] == [
      "extra", "item_category", "user_recent_categories", "item_price", "item_rating",
      "user_id", "<record>"]
  assert all(r.record is None for r in results[1:12:2])  # too big or unsafe to echo
  alone = [next(iter(predictor.score([record]))) for record in good]
  assert [r.predictions for r in results[0::2]] == [r.predictions for r in alone]


def test_wrong_dtype_is_a_record_error_naming_the_feature(predictor):
  records = [A_RECORD, dict(A_RECORD, user_age="old"), dict(A_RECORD, item_price=[1.0, 2.0]),
             A_RECORD, dict(A_RECORD, user_recent_categories=["ok", None])]
  results = list(predictor.score(records))
  assert [r.index for r in results] == list(range(len(records)))
  assert results[1].error["field"] == "user_age" and "user_age" in results[1].error["detail"]
  assert results[2].error["field"] == "item_price"
  assert results[4].error["field"] == "user_recent_categories"
  for good in (results[0], results[3]):
    assert good.error is None
    _assert_probabilities(good.predictions)
  # Scoring does not depend on the batch a record lands in.
  assert results[0].predictions == pytest.approx(results[3].predictions, abs=1e-6)


def test_predict_raw_agrees_with_serving_default(loaded, predictor, data_dir):
  examples = serving_latency.read_examples(data_dir, 16)
  by_examples = loaded.signatures[export_lib.SERVING_DEFAULT](examples=tf.constant(examples))
  raw = serving_latency.raw_inputs(examples, predictor.spec)
  by_raw = loaded.signatures[export_lib.PREDICT_RAW](**raw)
  for name in OUTPUTS:
    np.testing.assert_allclose(by_raw[name].numpy(), by_examples[name].numpy(), atol=1e-6)


def test_predict_raw_serves_unknown_values_and_all_padding_rows(loaded, predictor):
  codec = example_codec.ExampleCodec(predictor.spec)
  records = [dict(A_RECORD, user_id="nobody", item_category="nothing"),
             dict(A_RECORD, user_recent_categories=[])]
  examples = [codec.encode(codec.coerce(r), {}, "x", 0).SerializeToString() for r in records]
  raw = serving_latency.raw_inputs(examples, predictor.spec)
  assert raw["user_recent_categories"].shape[0] == 2
  outputs = loaded.signatures[export_lib.PREDICT_RAW](**raw)
  for value in outputs.values():
    value = value.numpy()
    assert np.all(np.isfinite(value)) and np.all((value > 0) & (value < 1))


def test_predict_raw_rejects_a_wrong_dtype_tensor(loaded, predictor, data_dir):
  signature = loaded.signatures[export_lib.PREDICT_RAW]
  raw = serving_latency.raw_inputs(serving_latency.read_examples(data_dir, 2), predictor.spec)
  outputs = predictor_lib.predict_raw(signature, raw)
  assert set(outputs) == OUTPUTS and outputs["ctr"].shape == (2,)
  raw["user_age"] = tf.constant([30.5, 40.5], tf.float32)  # the signature wants int64
  # The bare signature fails (TensorFlow names the input only by position) ...
  with pytest.raises((TypeError, ValueError, tf.errors.InvalidArgumentError)):
    signature(**raw)
  # ... the checked call names the feature and the dtypes.
  with pytest.raises(predictor_lib.RawInputError, match="'user_age': expected int64, got float32"):
    predictor_lib.predict_raw(signature, raw)
  raw["user_age"] = tf.constant([[30], [40]], tf.int64)
  with pytest.raises(predictor_lib.RawInputError, match="'user_age': expected rank 1"):
    predictor_lib.predict_raw(signature, raw)
  del raw["user_age"]
  with pytest.raises(predictor_lib.RawInputError, match="missing inputs \\['user_age'\\]"):
    predictor_lib.predict_raw(signature, raw)
