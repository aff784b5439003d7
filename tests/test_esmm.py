"""Tests of models.esmm (and models.multitask through it), on small synthetic data.

The helpers at the top (a small feature spec, hand-made transform artifacts, synthetic
batches where click depends on item_category and purchase on position) are shared
with tests/test_naive.py and tests/test_registry.py.
"""

import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import parsing
from features import preprocessing
from features import spec as spec_lib
from models import registry

SPEC = spec_lib.feature_spec_from_dict({"features": [
    {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 100},
    {"name": "item_category", "dtype": "string", "transform": "vocabulary",
     "max_tokens": 10},
    {"name": "position", "dtype": "int", "transform": "vocabulary", "max_tokens": 5},
    {"name": "user_age", "dtype": "int", "transform": "bucketize", "num_buckets": 4},
    {"name": "item_price", "dtype": "float", "transform": "normalize", "log1p": True},
    {"name": "recent_categories", "dtype": "string", "transform": "vocabulary",
     "max_tokens": 10, "multivalent": True, "weighted": True},
]})
NUM_TOKENS = 10  # vocabulary tokens: "c0".."c9" (string) or 0..9 (int)


def make_artifacts(directory, spec=SPEC) -> artifacts_lib.TransformArtifacts:
  """Hand-made artifacts for any spec: small vocabularies, fixed boundaries and stats."""
  os.makedirs(os.path.join(directory, "vocab"), exist_ok=True)
  stats = {}
  for feature in spec:
    entry = {"transform": feature.transform}
    if feature.transform == "vocabulary":
      count = min(feature.max_tokens, NUM_TOKENS)
      tokens = [f"c{i}" if feature.dtype == "string" else str(i) for i in range(count)]
      entry.update(vocabulary_file=f"vocab/{feature.name}.txt", vocabulary_size=count)
      with open(os.path.join(directory, entry["vocabulary_file"]), "w") as f:
        f.write("\n".join(tokens) + "\n")
    elif feature.transform == "bucketize":
      entry["boundaries"] = [10.0 * (i + 1) for i in range(feature.num_buckets - 1)]
    elif feature.transform == "normalize":
      entry.update(mean=1.0, variance=4.0)
    stats[feature.name] = entry
  return artifacts_lib.TransformArtifacts(directory=directory, features=stats)


def make_config(name="esmm", **model) -> config_lib.ExperimentConfig:
  """A small in-memory experiment config (4-d embeddings, one 16-unit hidden layer)."""
  model_section = {"name": name, "embedding_dim": 4, "tower_units": [16]}
  model_section.update(model)
  return config_lib.config_from_dict({"feature_spec": "unused.yaml", "model": model_section})


def build(name, tmp_path, **model):
  return registry.build_model(make_config(name, **model), SPEC,
                              make_artifacts(str(tmp_path / "transform")))


def make_batch(n, seed=0):
  """(features, labels) of n exposures.

  P(click) = 0.7 for item_category c5..c9 and 0.03 for c0..c4;
  P(purchase | click) = 0.8 at position 0, else 0.1; purchase = 0 without a click.
  """
  rng = np.random.default_rng(seed)
  category = rng.integers(0, NUM_TOKENS, n)
  position = rng.integers(0, 6, n)  # 5 is out of the vocabulary
  lengths = rng.integers(0, 4, n)
  recent = [[f"c{c}" for c in rng.integers(0, 12, k)] for k in lengths]
  features = {
      "user_id": tf.constant([f"u{u}" for u in rng.integers(0, 500, n)]),
      "item_category": tf.constant([f"c{c}" for c in category]),
      "position": tf.constant(position, tf.int64),
      "user_age": tf.constant(rng.integers(15, 60, n), tf.int64),
      "item_price": tf.constant(rng.lognormal(1.0, 1.0, n), tf.float32),
      "recent_categories": tf.ragged.constant(recent, dtype=tf.string,
                                              ragged_rank=1),
      "recent_categories__weight": tf.ragged.constant(
          [list(rng.uniform(0.1, 2.0, k)) for k in lengths], dtype=tf.float32,
          ragged_rank=1),
  }
  click = rng.uniform(size=n) < np.where(category >= 5, 0.7, 0.03)
  purchase = click & (rng.uniform(size=n) < np.where(position == 0, 0.8, 0.1))
  labels = {"click": tf.constant(click, tf.float32),
            "purchase": tf.constant(purchase, tf.float32)}
  return features, labels


def make_dataset(n, batch_size, seed=0):
  return tf.data.Dataset.from_tensor_slices(make_batch(n, seed)).batch(batch_size)


def tower_gradients(model, batch, tower_name):
  """Gradients w.r.t. one tower's variables of compute_loss and of each task loss."""
  variables = model.scorer.get_layer(tower_name).trainable_variables
  with tf.GradientTape(persistent=True) as tape:
    task_losses = model.task_losses(batch, training=True)
    total = model.compute_loss(batch, training=True)
  grads = {name: tape.gradient(loss, variables) for name, loss in task_losses.items()}
  grads["total"] = tape.gradient(total, variables)
  return grads


def randomize(model, seed=0):
  """Random trainable weights (a trained-looking model, without the cost of fit)."""
  rng = np.random.default_rng(seed)
  for variable in model.trainable_variables:
    variable.assign(rng.normal(0.0, 0.3, variable.shape).astype(np.float32))


def numpy_bce(target, probability):
  """Mean binary cross-entropy over all rows, in float64 (an oracle for the task losses)."""
  p = np.asarray(probability, np.float64).reshape(-1)
  t = np.asarray(target, np.float64).reshape(-1)
  return float(-np.mean(t * np.log(p) + (1 - t) * np.log(1 - p)))


def _outputs(model, features):
  return {name: value.numpy() for name, value in model(features).items()}


def test_probability_identities_on_random_inputs(tmp_path):
  model = build("esmm", tmp_path, cross_layers=1)
  features, _ = make_batch(257, seed=1)
  outputs = _outputs(model, features)
  assert set(outputs) == {"ctr", "cvr", "ctcvr"} == set(model.output_names)
  for name, value in outputs.items():
    assert value.shape == (257, 1) and value.dtype == np.float32, name
    assert np.all(value > 0.0) and np.all(value < 1.0), name
  np.testing.assert_array_equal(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"])


def test_tasks_and_loss_weights(tmp_path):
  model = build("esmm", tmp_path)
  assert model.task_loss_weights == {"ctr": 1.0, "ctcvr": 1.0, "cvr": 0.0}
  assert model.required_labels == {"click", "purchase"}
  metric_names = {m.name for m in model.metrics}
  assert {"ctr_auc", "ctr_logloss", "ctcvr_auc", "cvr_auc", "cvr_logloss"} <= metric_names
  weighted = build("esmm", tmp_path, loss_weights={"ctcvr": 2.0})
  assert weighted.task_loss_weights == {"ctr": 1.0, "ctcvr": 2.0, "cvr": 0.0}


def test_cvr_tower_learns_only_through_ctcvr(tmp_path):
  model = build("esmm", tmp_path)
  grads = tower_gradients(model, make_batch(128, seed=2), "cvr_tower")
  assert all(g is None for g in grads["ctr"])  # the CTR loss never reaches the CVR tower
  assert all(np.any(g.numpy() != 0) for g in grads["ctcvr"])
  for total, ctcvr in zip(grads["total"], grads["ctcvr"]):
    np.testing.assert_allclose(total.numpy(), ctcvr.numpy(), rtol=1e-5, atol=1e-8)
  # The monitor-only cvr task would change the gradient if it were counted.
  assert any(not np.allclose(t.numpy(), c.numpy() + m.numpy(), atol=1e-8)
             for t, c, m in zip(grads["total"], grads["ctcvr"], grads["cvr"]))


def test_loss_is_the_weighted_task_sum_plus_regularization_once(tmp_path):
  """ESMM's losses from numpy: BCE(click, ctr) and BCE(click * purchase, ctcvr) over all
  exposures, and l2 * sum ||tower kernel||^2 over the towers' Dense kernels."""
  l2 = 0.01
  model = build("esmm", tmp_path, l2=l2, loss_weights={"ctcvr": 3.0})
  randomize(model, seed=8)
  features, labels = batch = make_batch(64, seed=3)
  outputs = _outputs(model, features)
  click = labels["click"].numpy().astype(np.float64)
  target = click * labels["purchase"].numpy()
  assert 0 < target.sum() < click.sum() < len(click)
  ctr_loss = numpy_bce(click, outputs["ctr"])
  ctcvr_loss = numpy_bce(target, outputs["ctcvr"])
  losses = model.task_losses(batch)
  np.testing.assert_allclose(losses["ctr"].numpy(), ctr_loss, rtol=1e-5)
  np.testing.assert_allclose(losses["ctcvr"].numpy(), ctcvr_loss, rtol=1e-5)
  regularization = l2 * sum(
      float(np.sum(np.square(layer.kernel.numpy().astype(np.float64))))
      for name in ("ctr_tower", "cvr_tower")
      for layer in model.scorer.get_layer(name).dense_layers)
  assert regularization > 0
  np.testing.assert_allclose(model.regularization_loss().numpy(), regularization, rtol=1e-5)
  expected = ctr_loss + 3.0 * ctcvr_loss + regularization
  np.testing.assert_allclose(model.compute_loss(batch).numpy(), expected, rtol=1e-5)
  model.compile(tf_keras.optimizers.Adam(0.01))
  logs = model.evaluate(tf.data.Dataset.from_tensors(batch), return_dict=True, verbose=0)
  np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
  np.testing.assert_allclose(logs["regularization_loss"], regularization, rtol=1e-5)


def test_evaluate_logs_the_loss_over_every_batch_not_the_last(tmp_path):
  """val_loss (what early stopping reads) is the exposure-weighted mean of the batches'
  losses, over a fresh evaluation each time; the last partial batch alone differs."""
  model = build("esmm", tmp_path, l2=0.01)
  randomize(model, seed=2)
  model.compile(tf_keras.optimizers.Adam(0.01))
  features, labels = make_batch(300, seed=9)
  dataset = tf.data.Dataset.from_tensor_slices((features, labels)).batch(128)
  batches = list(dataset)  # 128, 128, 44 exposures
  values = [model.compute_loss(batch).numpy() for batch in batches]
  sizes = [int(batch[1]["click"].shape[0]) for batch in batches]
  expected = np.average(values, weights=sizes)
  assert abs(values[-1] - expected) > 1e-3  # the bug this guards against
  for _ in range(2):  # the trackers restart with each evaluation
    logs = model.evaluate(dataset, return_dict=True, verbose=0)
    np.testing.assert_allclose(logs["loss"], expected, rtol=1e-5)
    np.testing.assert_allclose(logs["regularization_loss"],
                               model.regularization_loss().numpy(), rtol=1e-5)
  # A fit's logged loss after evaluations: tests/test_multitask.py; of an l2-regularised
  # ESMM: test_fit_under_a_mirrored_strategy.


def test_fit_reduces_the_loss_and_learns_ctr(tmp_path):
  """Click depends on item_category only (Bayes CTR AUC about 0.86): CTR AUC > 0.75."""
  model = build("esmm", tmp_path)
  model.compile(tf_keras.optimizers.Adam(0.01))
  batch = make_batch(512, seed=4)
  before = model.compute_loss(batch).numpy()
  model.fit(make_dataset(4000, 128, seed=5), epochs=2, verbose=0)
  assert model.compute_loss(batch).numpy() < 0.8 * before
  logs = model.evaluate(make_dataset(2000, 500, seed=6), return_dict=True, verbose=0)
  assert logs["ctr_auc"] > 0.75, logs


def test_fit_under_a_mirrored_strategy(tmp_path):
  strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
  with strategy.scope():
    model = build("esmm", tmp_path, l2=0.001)
    model.compile(tf_keras.optimizers.Adam(0.01))
  history = model.fit(make_dataset(256, 64, seed=7), epochs=1, verbose=0)
  assert np.isfinite(history.history["loss"][-1])


class _Export(tf.Module):
  """The scorer with a `predict_raw` signature (padded) and a ragged `score` function."""

  def __init__(self, scorer, spec):
    super().__init__()
    self.scorer = scorer
    self.spec = spec
    self.predict_raw = tf.function(self._predict_raw,
                                   input_signature=[parsing.raw_input_signature(spec)])

  def _predict_raw(self, features):
    outputs = self.scorer(parsing.dense_to_model_inputs(features, self.spec))
    return {name: tf.reshape(value, [-1]) for name, value in outputs.items()}

  @tf.function
  def score(self, features):
    return self.scorer(features)


def test_saved_model_round_trip(tmp_path):
  model = build("esmm", tmp_path, cross_layers=1)
  randomize(model, seed=8)
  features, _ = make_batch(50, seed=9)
  expected = _outputs(model, features)

  export = _Export(model.scorer, SPEC)
  export.score(features)  # trace the ragged function once so it is saved
  path = str(tmp_path / "export")
  tf.saved_model.save(export, path, signatures={"predict_raw": export.predict_raw})
  loaded = tf.saved_model.load(path)
  padded = dict(features)
  padded["recent_categories"] = features["recent_categories"].to_tensor(default_value="")
  padded["recent_categories__weight"] = features["recent_categories__weight"].to_tensor()
  served = loaded.signatures["predict_raw"](**padded)
  ragged = loaded.score(features)
  for name, value in expected.items():
    np.testing.assert_allclose(served[name].numpy(), value[:, 0], atol=1e-6)
    np.testing.assert_allclose(ragged[name].numpy(), value, atol=1e-6)

  keras_path = str(tmp_path / "keras")
  model.scorer.save(keras_path)
  reloaded = tf_keras.models.load_model(keras_path)
  assert reloaded.get_layer("feature_encoder").__class__ is preprocessing.FeatureEncoder
  for name, value in _outputs(reloaded, features).items():
    np.testing.assert_allclose(value, expected[name], atol=1e-6)


def test_scorer_config_round_trip(tmp_path):
  model = build("esmm", tmp_path, cross_layers=1, dropout=0.1)
  features, _ = make_batch(20, seed=10)
  clone = tf_keras.Model.from_config(model.scorer.get_config())
  clone.set_weights(model.scorer.get_weights())
  for name, value in _outputs(clone, features).items():
    np.testing.assert_array_equal(value, model(features)[name].numpy())


def test_missing_label_fails_naming_it(tmp_path):
  model = build("esmm", tmp_path)
  features, labels = make_batch(8)
  with pytest.raises(KeyError, match="purchase"):
    model.compute_loss((features, {"click": labels["click"]}))
