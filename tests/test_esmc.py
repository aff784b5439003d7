"""Tests of ESMC (models.esmc.build_esmc): the CVR tower tied to the buy|action tower."""

import numpy as np
import tensorflow as tf
import tf_keras

from models.layers import regularizers
from tests.test_esmm import randomize
from tests.test_model_zoo import build_zoo, make_labelled_batch, outputs_of


def _tower_distance(model):
  cvr = model.scorer.get_layer("cvr_tower").get_weights()
  buy = model.scorer.get_layer("purchase_given_action_tower").get_weights()
  return sum(np.sum((a - b) ** 2) for a, b in zip(cvr, buy))


def test_constraint_loss_is_lambda_times_the_tower_distance(tmp_path):
  model = build_zoo("esmc", tmp_path, params={"constraint_lambda": 0.01})
  randomize(model, seed=1)
  assert all(isinstance(r, regularizers.TowerTieRegularizer) for r, _ in model.parameter_ties)
  np.testing.assert_allclose(model.constraint_loss().numpy(), 0.01 * _tower_distance(model),
                             rtol=1e-5)
  buy = model.scorer.get_layer("purchase_given_action_tower")
  model.scorer.get_layer("cvr_tower").set_weights(buy.get_weights())
  assert model.constraint_loss().numpy() == 0.0


def test_loss_adds_the_constraint_and_logs_it(tmp_path):
  model = build_zoo("esmc", tmp_path, params={"constraint_lambda": 0.05}, l2=0.01)
  randomize(model, seed=2)
  batch = make_labelled_batch(64, seed=3)
  losses = model.task_losses(batch)
  constraint = model.constraint_loss().numpy()
  regularization = model.regularization_loss().numpy()
  assert constraint > 0 and regularization > 0
  expected = (sum(losses[t].numpy() for t in ("ctr", "ctavr", "ctcvr", "purchase_given_action"))
              + regularization + constraint)
  np.testing.assert_allclose(model.compute_loss(batch).numpy(), expected, rtol=1e-5)
  model.compile(tf_keras.optimizers.Adam(0.01))
  logs = model.evaluate(tf.data.Dataset.from_tensors(batch), return_dict=True, verbose=0)
  np.testing.assert_allclose(logs["constraint_loss"], constraint, rtol=1e-5)
  np.testing.assert_allclose(logs["regularization_loss"], regularization, rtol=1e-5)
  history = model.fit(tf.data.Dataset.from_tensors(batch), epochs=1, verbose=0)
  assert "constraint_loss" in history.history


def test_buy_given_action_is_supervised_on_click_and_action(tmp_path):
  model = build_zoo("esmc", tmp_path)
  assert model.required_labels == {"click", "action", "purchase"}
  features, labels = make_labelled_batch(200, seed=4)
  loss = model.task_losses((features, labels))["purchase_given_action"].numpy()
  y3 = model(features)["p_purchase_given_action"].numpy()[:, 0]
  weight = (labels["click"] * labels["action"]).numpy()
  z = labels["purchase"].numpy()
  total = -np.sum(weight * (z * np.log(y3) + (1 - z) * np.log(1 - y3)))
  assert 0 < weight.sum() < len(z)
  # Default normalisation: the mean over the click & action exposures.
  np.testing.assert_allclose(loss, total / weight.sum(), rtol=1e-4)
  # The older convention, kept as an option: divided by the batch size.
  batch_model = build_zoo("esmc", tmp_path / "batch", params={"loss_normalization": "batch"})
  batch_model.set_weights(model.get_weights())
  batch_loss = batch_model.task_losses((features, labels))["purchase_given_action"].numpy()
  np.testing.assert_allclose(batch_loss, total / len(z), rtol=1e-4)


def test_the_tie_pulls_the_towers_together(tmp_path):
  model = build_zoo("esmc", tmp_path, params={"constraint_lambda": 1.0},
                    loss_weights={"ctr": 0.0, "ctavr": 0.0, "ctcvr": 1e-6,
                                  "purchase_given_action": 0.0})
  randomize(model, seed=5)
  before = _tower_distance(model)
  model.compile(tf_keras.optimizers.SGD(0.1))
  model.fit(tf.data.Dataset.from_tensors(make_labelled_batch(32, seed=6)).repeat(5),
            epochs=1, verbose=0)
  assert _tower_distance(model) < 0.5 * before
  o = outputs_of(model, make_labelled_batch(20, seed=7)[0])
  np.testing.assert_array_equal(o["ctcvr"], o["ctr"] * o["cvr"])
