"""Tests of models.layers: towers, cross network, probability heads and bottoms."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers import bottom
from models.layers import cross
from models.layers import probability
from models.layers import tower


def _round_trip(layer):
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  return clone


def test_mlp_tower_outputs_one_logit_and_exposes_its_dense_layers():
  mlp = tower.MLPTower((8, 4), dropout=0.5, l2=0.01, name="ctr_tower")
  x = tf.random.normal([5, 6], seed=1)
  assert mlp(x).shape == (5, 1)
  assert [d.units for d in mlp.dense_layers] == [8, 4, 1]
  assert len(mlp.losses) == 3  # an L2 term per kernel
  np.testing.assert_array_equal(mlp(x, training=False), mlp(x, training=False))
  assert not np.array_equal(mlp(x, training=True), mlp(x, training=False))
  clone = _round_trip(mlp)
  clone(x)
  clone.set_weights(mlp.get_weights())
  np.testing.assert_array_equal(clone(x), mlp(x))


def test_linear_tower_without_hidden_layers():
  mlp = tower.MLPTower(())
  assert mlp(tf.ones([2, 3])).shape == (2, 1)
  assert len(mlp.dense_layers) == 1 and not mlp.losses


def test_cross_network_keeps_the_width():
  network = cross.CrossNetwork(2, projection_dim=2, l2=0.1)
  x = tf.random.normal([4, 6], seed=2)
  assert network(x).shape == (4, 6)
  assert len(network.crosses) == 2 and network.losses
  _round_trip(network)
  with pytest.raises(ValueError, match="num_layers"):
    cross.CrossNetwork(0)


def test_probability_head_stays_inside_the_open_interval():
  head = probability.ProbabilityHead(name="ctr")
  logits = tf.constant([[-1000.0], [-3.0], [0.0], [3.0], [1000.0]])
  p = head(logits).numpy()
  assert p.dtype == np.float32 and p.shape == (5, 1)
  assert np.all(p > 0.0) and np.all(p < 1.0)
  np.testing.assert_allclose(p[1:4, 0], 1 / (1 + np.exp(-np.array([-3.0, 0.0, 3.0]))),
                             rtol=1e-6)
  assert head.name == "ctr"
  _round_trip(head)


def test_probability_product_is_exact_in_float32():
  rng = np.random.default_rng(0)
  ctr = rng.uniform(1e-6, 1.0, size=(1000, 1)).astype(np.float32)
  cvr = rng.uniform(1e-6, 1.0, size=(1000, 1)).astype(np.float32)
  ctcvr = probability.ProbabilityProduct(name="ctcvr")([ctr, cvr]).numpy()
  assert ctcvr.dtype == np.float32
  np.testing.assert_array_equal(ctcvr, ctr * cvr)
  three = probability.ProbabilityProduct()([ctr, cvr, ctr]).numpy()
  np.testing.assert_array_equal(three, (ctr * cvr) * ctr)
  _round_trip(probability.ProbabilityProduct(name="ctcvr"))
  with pytest.raises(ValueError, match=">= 2"):
    probability.ProbabilityProduct()([ctr])


def test_shared_bottom_gives_every_tower_the_shared_input():
  shared = bottom.make_bottom("shared", 3)
  x = tf.random.normal([4, 5], seed=3)
  outputs = shared(x)
  assert len(outputs) == 3
  for output in outputs:
    np.testing.assert_array_equal(output, x)
  assert isinstance(bottom.make_bottom(None, 2), bottom.SharedBottom)
  assert isinstance(bottom.make_bottom({"name": "shared"}, 2), bottom.SharedBottom)
  assert _round_trip(shared).num_towers == 3


def test_shared_bottom_in_a_functional_graph():
  inputs = tf_keras.Input(shape=(4,))
  first, second = bottom.make_bottom("shared", 2)(inputs)
  model = tf_keras.Model(inputs, [tower.MLPTower((3,))(first), tower.MLPTower((3,))(second)])
  assert [o.shape for o in model(tf.ones([2, 4]))] == [(2, 1), (2, 1)]


def test_make_bottom_errors_name_the_choices():
  with pytest.raises(ValueError, match=r"unknown bottom 'hydra'.*\['mmoe', 'ple', 'shared'\]"):
    bottom.make_bottom("hydra", 2)
  with pytest.raises(ValueError, match="bad parameters"):
    bottom.make_bottom({"name": "shared", "num_experts": 4}, 2)
  with pytest.raises(ValueError, match="'name'"):
    bottom.make_bottom({"num_experts": 4}, 2)
  with pytest.raises(ValueError, match="num_towers"):
    bottom.make_bottom("shared", 0)
