"""Tests of models.layers.regularizers: the tower tie of ESMC."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers import regularizers
from models.layers import tower


def test_value_is_lambda_times_the_squared_distance():
  target = tf.Variable([[1.0, 2.0], [3.0, 4.0]])
  weight = tf.Variable([[0.0, 2.0], [5.0, 3.0]])
  tie = regularizers.TowerTieRegularizer(0.5, target)
  assert isinstance(tie, tf_keras.regularizers.Regularizer)
  np.testing.assert_allclose(tie(weight).numpy(), 0.5 * (1 + 0 + 4 + 1))
  np.testing.assert_allclose(tie(tf.Variable(target)).numpy(), 0.0)
  assert regularizers.TowerTieRegularizer(0.0, target)(weight).numpy() == 0.0


def test_gradient_pulls_both_or_only_the_regularized_weight():
  target = tf.Variable([1.0, 1.0])
  weight = tf.Variable([3.0, 0.0])
  for pull_target, expected_target_grad in ((True, [-4.0, 2.0]), (False, None)):
    tie = regularizers.TowerTieRegularizer(1.0, target, pull_target=pull_target)
    with tf.GradientTape() as tape:
      value = tie(weight)
    grad_weight, grad_target = tape.gradient(value, [weight, target])
    np.testing.assert_allclose(grad_weight.numpy(), [4.0, -2.0])
    if expected_target_grad is None:
      assert grad_target is None
    else:
      np.testing.assert_allclose(grad_target.numpy(), expected_target_grad)


def test_config_round_trip_and_binding():
  target = tf.Variable(tf.ones([2, 2]), name="buy_kernel")
  tie = regularizers.TowerTieRegularizer(0.25, target, pull_target=False)
  config = tie.get_config()
  assert config == {"strength": 0.25, "pull_target": False, "target_name": target.name}
  clone = regularizers.TowerTieRegularizer.from_config(config)
  assert clone.get_config() == config
  with pytest.raises(ValueError, match="not bound"):
    clone(tf.zeros([2, 2]))
  np.testing.assert_allclose(clone.bind(target)(tf.zeros([2, 2])).numpy(), 1.0)
  serialized = tf_keras.regularizers.serialize(tie)
  assert tf_keras.regularizers.deserialize(serialized).get_config() == config
  with pytest.raises(ValueError, match="shape"):
    tie(tf.zeros([3, 2]))
  with pytest.raises(ValueError, match=">= 0"):
    regularizers.TowerTieRegularizer(-1.0)


def test_tie_towers_covers_every_matching_weight():
  first, second = tower.MLPTower((4, 3), name="cvr_tower"), tower.MLPTower((4, 3))
  x = tf.random.normal([2, 5], seed=1)
  first(x), second(x)
  ties = regularizers.tie_towers(first, second, strength=0.1)
  assert len(ties) == 6  # kernel and bias of 2 hidden + 1 logit layer
  expected = 0.1 * sum(np.sum((a - b) ** 2) for a, b in
                       zip(first.get_weights(), second.get_weights()))
  np.testing.assert_allclose(regularizers.tie_loss(ties).numpy(), expected, rtol=1e-5)
  second.set_weights(first.get_weights())
  assert regularizers.tie_loss(ties).numpy() == 0.0
  assert regularizers.tie_loss([]).numpy() == 0.0
  other = tower.MLPTower((4,))
  other(x)
  with pytest.raises(ValueError, match="cannot tie"):
    regularizers.tie_towers(first, other, 0.1)
