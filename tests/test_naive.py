"""Tests of models.naive: the CVR tower learns from clicked exposures only; the paper's
BASE (`naive`) shares no parameter between its CTR and CVR models, `shared_bottom` does."""

import numpy as np
import tensorflow as tf
import tf_keras

from tests.test_esmm import build, make_batch, make_dataset, tower_gradients


def _with_purchase(labels, purchase):
  return dict(labels, purchase=tf.constant(purchase, tf.float32))


def test_same_scorer_identities_as_esmm(tmp_path):
  model = build("naive", tmp_path)
  outputs = {k: v.numpy() for k, v in model(make_batch(64, seed=1)[0]).items()}
  assert set(outputs) == {"ctr", "cvr", "ctcvr"}
  np.testing.assert_array_equal(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"])
  assert model.task_loss_weights == {"ctr": 1.0, "cvr": 1.0, "ctcvr": 0.0}
  assert model.required_labels == {"click", "purchase"}


def test_cvr_loss_ignores_unclicked_exposures(tmp_path):
  model = build("naive", tmp_path)
  features, labels = make_batch(256, seed=2)
  click = labels["click"].numpy()
  purchase = labels["purchase"].numpy()
  assert 0 < click.sum() < len(click)
  loss = model.compute_loss((features, labels)).numpy()
  flipped_unclicked = np.where(click == 0, 1.0 - purchase, purchase)
  np.testing.assert_array_equal(
      model.compute_loss((features, _with_purchase(labels, flipped_unclicked))).numpy(),
      loss)
  flipped_clicked = np.where(click == 1, 1.0 - purchase, purchase)
  assert model.compute_loss((features, _with_purchase(labels, flipped_clicked))).numpy() \
      != loss


def test_cvr_tower_learns_from_its_own_loss(tmp_path):
  model = build("naive", tmp_path)
  grads = tower_gradients(model, make_batch(128, seed=3), "cvr_tower")
  assert all(g is None for g in grads["ctr"])
  for total, cvr in zip(grads["total"], grads["cvr"]):
    np.testing.assert_allclose(total.numpy(), cvr.numpy(), rtol=1e-5, atol=1e-8)


def test_fit_reduces_the_loss(tmp_path):
  tf_keras.utils.set_random_seed(0)  # initial weights and order: not the earlier tests'
  model = build("naive", tmp_path)
  model.compile(tf_keras.optimizers.Adam(0.01))
  batch = make_batch(512, seed=4)
  before = model.compute_loss(batch).numpy()
  history = model.fit(make_dataset(1024, 128, seed=4), epochs=2, verbose=0)
  assert model.compute_loss(batch).numpy() < 0.8 * before
  assert {"cvr_auc", "ctcvr_auc", "ctr_logloss"} <= set(history.history)


def _encoder_gradients(model, batch):
  """Gradients of each task loss w.r.t. each feature encoder's variables."""
  encoders = [layer for layer in model.scorer.layers if "feature_encoder" in layer.name]
  with tf.GradientTape(persistent=True) as tape:
    losses = model.task_losses(batch, training=True)
  return {(task, encoder.name): tape.gradient(losses[task], encoder.trainable_variables)
          for task in ("ctr", "cvr") for encoder in encoders}


def test_naive_ctr_and_cvr_models_share_no_parameter(tmp_path):
  model = build("naive", tmp_path)
  grads = _encoder_gradients(model, make_batch(128, seed=5))
  assert sorted({name for _, name in grads}) == ["ctr_model_feature_encoder",
                                                 "cvr_model_feature_encoder"]
  for task in ("ctr", "cvr"):
    own, other = (f"{task}_model_feature_encoder",
                  f"{'cvr' if task == 'ctr' else 'ctr'}_model_feature_encoder")
    assert all(g is None for g in grads[(task, other)])
    assert any(g is not None and np.any(tf.convert_to_tensor(g).numpy() != 0)
               for g in grads[(task, own)])
  ctr_vars = {id(v) for v in model.scorer.get_layer("ctr_model_feature_encoder").variables}
  cvr_vars = {id(v) for v in model.scorer.get_layer("cvr_model_feature_encoder").variables}
  assert ctr_vars and cvr_vars and not ctr_vars & cvr_vars


def test_shared_bottom_cvr_embeddings_also_learn_from_ctr(tmp_path):
  model = build("shared_bottom", tmp_path)
  assert model.task_loss_weights == {"ctr": 1.0, "cvr": 1.0, "ctcvr": 0.0}
  grads = _encoder_gradients(model, make_batch(128, seed=5))
  assert sorted({name for _, name in grads}) == ["feature_encoder"]
  for task in ("ctr", "cvr"):
    assert any(g is not None for g in grads[(task, "feature_encoder")])
