"""Tests of ESMG (models.esmc.build_esmg): global-domain heads, checked per exposure
against numpy formulas of the tower logits (tests/test_model_zoo.py's ORACLES)."""

import numpy as np
import tf_keras

from tests.test_esmm import randomize, tower_gradients
from tests.test_model_zoo import ORACLES, build_zoo, make_labelled_batch, outputs_of, sigmoid


def tower_logits(model, features, towers):
  """Each tower's logit (float64 [batch, 1]) on `features`, read from the scorer's graph."""
  probe = tf_keras.Model(model.scorer.inputs,
                         {t: model.scorer.get_layer(f"{t}_tower").output for t in towers})
  return {name: value.numpy().astype(np.float64) for name, value in probe(features).items()}


def test_global_heads_are_the_formulas_of_the_tower_logits(tmp_path):
  """Per exposure: ctr = s(l_ctr), ctavr = ctr * s(l_action), ctcvr = ctr * s(l_cvr), ..."""
  model = build_zoo("esmg", tmp_path)
  randomize(model, seed=1)
  features = make_labelled_batch(300, seed=2)[0]
  outputs = outputs_of(model, features)
  towers, _ = ORACLES["esmg"]
  logits = tower_logits(model, features, towers)
  assert np.std(logits["ctr"]) > 0.1 and np.std(logits["cvr"]) > 0.1  # rows differ
  expected = ORACLES["esmg"][1]({name: sigmoid(value) for name, value in logits.items()})
  assert set(outputs) == set(expected) == {"ctr", "cvr", "ctcvr", "ctavr",
                                           "p_action_given_click"}
  for name, value in expected.items():
    np.testing.assert_allclose(outputs[name], value, rtol=1e-5, atol=1e-7, err_msg=name)


def test_only_global_domain_losses(tmp_path):
  model = build_zoo("esmg", tmp_path)
  assert model.task_loss_weights == {"ctr": 1.0, "ctcvr": 1.0, "cvr": 0.0, "ctavr": 1.0}
  assert model.required_labels == {"click", "action", "purchase"}
  assert not model.parameter_ties
  grads = tower_gradients(model, make_labelled_batch(128, seed=3), "cvr_tower")
  assert all(g is None for g in grads["ctr"] + grads["ctavr"])
  assert all(np.any(g.numpy() != 0) for g in grads["ctcvr"])
