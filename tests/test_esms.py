"""Tests of ESMS (models.esmc.build_esms): one Siamese tower for two paths."""

import numpy as np
import pytest

from tests.test_esmm import randomize
from tests.test_model_zoo import build_zoo, make_labelled_batch, outputs_of


def test_cvr_and_buy_given_action_share_one_tower(tmp_path):
  model = build_zoo("esms", tmp_path)
  names = [layer.name for layer in model.scorer.layers]
  assert "purchase_given_action_tower" in names and "cvr_tower" not in names
  assert {"cvr_context", "purchase_given_action_context"} <= set(names)
  shared = model.scorer.get_layer("purchase_given_action_tower")
  assert len(shared.inbound_nodes) == 2  # applied once per path
  assert not model.parameter_ties
  assert model.task_loss_weights["purchase_given_action"] == 1.0
  randomize(model, seed=1)
  o = outputs_of(model, make_labelled_batch(100, seed=2)[0])
  assert not np.allclose(o["cvr"], o["p_purchase_given_action"])  # contexts differ


def test_without_context_the_shared_bottom_paths_coincide(tmp_path):
  model = build_zoo("esms", tmp_path, params={"path_context_dim": 0})
  randomize(model, seed=3)
  o = outputs_of(model, make_labelled_batch(50, seed=4)[0])
  np.testing.assert_array_equal(o["cvr"], o["p_purchase_given_action"])


def test_unknown_param_is_rejected(tmp_path):
  with pytest.raises(ValueError, match="constraint_lambda"):
    build_zoo("esms", tmp_path, params={"constraint_lambda": 1.0})
