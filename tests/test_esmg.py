"""Tests of ESMG (models.esmc.build_esmg): global-domain heads bounded by ctr."""

import numpy as np

from tests.test_esmm import randomize, tower_gradients
from tests.test_model_zoo import build_zoo, make_labelled_batch, outputs_of


def test_global_heads_are_bounded_by_ctr_and_cvr_is_their_ratio(tmp_path):
  model = build_zoo("esmg", tmp_path)
  randomize(model, seed=1)
  o = outputs_of(model, make_labelled_batch(300, seed=2)[0])
  assert np.all(o["ctavr"] <= o["ctr"]) and np.all(o["ctcvr"] <= o["ctr"])
  np.testing.assert_allclose(o["cvr"], o["ctcvr"] / o["ctr"], rtol=1e-5)
  np.testing.assert_array_equal(o["ctavr"], o["ctr"] * o["p_action_given_click"])
  assert set(o) == {"ctr", "cvr", "ctcvr", "ctavr", "p_action_given_click"}


def test_only_global_domain_losses(tmp_path):
  model = build_zoo("esmg", tmp_path)
  assert model.task_loss_weights == {"ctr": 1.0, "ctcvr": 1.0, "cvr": 0.0, "ctavr": 1.0}
  assert model.required_labels == {"click", "action", "purchase"}
  assert not model.parameter_ties
  grads = tower_gradients(model, make_labelled_batch(128, seed=3), "cvr_tower")
  assert all(g is None for g in grads["ctr"] + grads["ctavr"])
  assert all(np.any(g.numpy() != 0) for g in grads["ctcvr"])
