"""Tests of ESMC's tie options: tie_layers, tie_bias, init_cvr_from_buy_tower."""

import numpy as np
import pytest

from tests.test_model_zoo import build_zoo


def _tied_variable_names(model):
  return sorted(variable.name.split("/", 1)[1] for _, variable in model.parameter_ties)


def _dense_weights(model, tower):
  return [w.numpy() for layer in model.scorer.get_layer(tower).dense_layers
          for w in (layer.kernel, layer.bias)]


def test_default_ties_every_kernel_and_bias(tmp_path):
  model = build_zoo("esmc", tmp_path)
  layers = model.scorer.get_layer("cvr_tower").dense_layers
  assert len(model.parameter_ties) == 2 * len(layers)


def test_tie_layers_and_tie_bias_select_the_tied_weights(tmp_path):
  model = build_zoo("esmc", tmp_path, params={"tie_layers": [-1], "tie_bias": False})
  (regularizer, variable), = model.parameter_ties
  logit = model.scorer.get_layer("cvr_tower").logit
  assert variable is logit.kernel
  assert regularizer.target is model.scorer.get_layer("purchase_given_action_tower").logit.kernel
  expected = regularizer.strength * np.sum(
      (logit.kernel.numpy() - regularizer.target.numpy()) ** 2)
  np.testing.assert_allclose(model.constraint_loss().numpy(), expected, rtol=1e-5)


def test_bad_tie_layers_are_rejected(tmp_path):
  with pytest.raises(ValueError, match="out of range"):
    build_zoo("esmc", tmp_path, params={"tie_layers": [7]})


def test_init_from_the_buy_tower_starts_the_towers_equal(tmp_path):
  model = build_zoo("esmc", tmp_path, params={"init_cvr_from_buy_tower": True})
  for a, b in zip(_dense_weights(model, "cvr_tower"),
                  _dense_weights(model, "purchase_given_action_tower")):
    np.testing.assert_array_equal(a, b)
  assert model.constraint_loss().numpy() == 0.0
  default = build_zoo("esmc", tmp_path / "default")
  assert default.constraint_loss().numpy() > 0.0
