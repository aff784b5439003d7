"""Tests of the MMoE and PLE bottoms (models.layers.bottom): gates, shapes, configs."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from models.layers import bottom
from models.layers import tower


def _round_trip(layer):
  clone = type(layer).from_config(layer.get_config())
  assert clone.get_config() == layer.get_config()
  return clone


@pytest.mark.parametrize("setting, gate_width", [
    ({"name": "mmoe", "num_experts": 4, "expert_units": [8, 6]}, 4),
    ({"name": "ple", "num_levels": 2, "num_shared_experts": 2, "num_task_experts": 1,
      "expert_units": [6]}, 3),
    ({"name": "ple", "num_levels": 1, "num_shared_experts": 1, "num_task_experts": 2,
      "expert_units": [6]}, 3),
])
def test_gates_sum_to_one_and_outputs_have_the_expert_width(setting, gate_width):
  layer = bottom.make_bottom(setting, 3)
  x = tf.random.normal([7, 5], seed=1)
  outputs = layer(x)
  assert len(outputs) == 3
  assert all(o.shape == (7, 6) for o in outputs)
  gates = layer.gate_weights(x)
  assert len(gates) == 3
  for gate in gates:
    assert gate.shape == (7, gate_width)
    assert np.all(gate.numpy() >= 0)
    np.testing.assert_allclose(gate.numpy().sum(axis=1), 1.0, rtol=1e-6)
  clone = _round_trip(layer)
  clone(x)
  clone.set_weights(layer.get_weights())
  for a, b in zip(clone(x), outputs):
    np.testing.assert_allclose(a, b, rtol=1e-6)


def test_mmoe_output_is_the_gated_mix_of_the_experts():
  layer = bottom.MMoEBottom(2, num_experts=3, expert_units=(4,))
  x = tf.random.normal([5, 6], seed=2)
  outputs = layer(x)
  experts = np.stack([expert(x).numpy() for expert in layer.experts], axis=1)  # [5, 3, 4]
  for gate, output in zip(layer.gate_weights(x), outputs):
    np.testing.assert_allclose(output, np.einsum("be,beu->bu", gate.numpy(), experts),
                               rtol=1e-5, atol=1e-6)
  assert not np.allclose(outputs[0], outputs[1])  # each tower has its own gate


def test_ple_towers_see_their_own_experts():
  layer = bottom.PLEBottom(2, num_levels=2, num_shared_experts=1, num_task_experts=1,
                           expert_units=(4,))
  x = tf.random.normal([5, 6], seed=3)
  outputs = layer(x)
  # the last level's shared gate is not built: it would feed nothing
  assert layer.levels[-1]["shared_gate"] is None and layer.levels[0]["shared_gate"]
  with tf.GradientTape() as tape:
    first = layer(x)[0]
  own, other = layer.levels[-1]["task_experts"][0][0], layer.levels[-1]["task_experts"][1][0]
  grads = tape.gradient(first, own.trainable_variables + other.trainable_variables)
  assert all(g is not None for g in grads[:len(own.trainable_variables)])
  assert all(g is None for g in grads[len(own.trainable_variables):])
  assert outputs[0].shape == (5, 4)


def _dense(layer, x):
  """A Dense layer in numpy (float64): relu or softmax or linear of x W + b."""
  z = x @ layer.kernel.numpy().astype(np.float64) + layer.bias.numpy().astype(np.float64)
  if layer.activation is tf_keras.activations.relu:
    return np.maximum(z, 0.0)
  if layer.activation is tf_keras.activations.softmax:
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
  assert layer.activation is tf_keras.activations.linear
  return z


def _expert(sequential, x):
  for layer in sequential.layers:
    x = _dense(layer, x)
  return x


def _mix(gate, experts):
  """The einsum oracle: sum_e gate[b, e] * experts[e][b, u]."""
  return np.einsum("be,ebu->bu", gate, np.stack(experts))


def test_ple_shared_gate_mixes_every_expert_into_the_next_shared_level():
  """PLE in numpy: per level, tower k's gate (on its previous output) mixes its own then
  the shared experts; the shared gate (on the previous shared input) mixes all towers'
  experts, tower by tower, then the shared ones, and feeds the next level's shared
  experts."""
  layer = bottom.PLEBottom(2, num_levels=3, num_shared_experts=2, num_task_experts=2,
                           expert_units=(4,))
  x = tf.random.normal([6, 5], seed=4)
  outputs = layer(x)
  task_inputs = [x.numpy().astype(np.float64)] * 2
  shared_input = task_inputs[0]
  shared_gate_weights = []
  for level in layer.levels:
    shared = [_expert(e, shared_input) for e in level["shared_experts"]]
    own = [[_expert(e, task_input) for e in experts]
           for experts, task_input in zip(level["task_experts"], task_inputs)]
    next_inputs = [_mix(_dense(gate, task_input), experts + shared)
                   for gate, task_input, experts in zip(level["task_gates"], task_inputs, own)]
    if level["shared_gate"] is not None:
      gate = _dense(level["shared_gate"], shared_input)
      assert gate.shape == (6, 2 * 2 + 2)  # both towers' experts and the shared ones
      shared_gate_weights.append(gate)
      shared_input = _mix(gate, own[0] + own[1] + shared)
    task_inputs = next_inputs
  assert len(shared_gate_weights) == 2
  for output, expected in zip(outputs, task_inputs):
    np.testing.assert_allclose(output.numpy(), expected, rtol=1e-5, atol=1e-6)
  # The shared gate's weights are spread (not one-hot), so its order and mix matter.
  assert all(g.max() < 0.99 for g in shared_gate_weights)


def test_bottoms_in_a_functional_graph_and_errors():
  inputs = tf_keras.Input(shape=(4,))
  first, second = bottom.make_bottom({"name": "ple", "expert_units": [3]}, 2)(inputs)
  model = tf_keras.Model(inputs, [tower.MLPTower((3,))(first), tower.MLPTower((3,))(second)])
  assert [o.shape for o in model(tf.ones([2, 4]))] == [(2, 1), (2, 1)]
  clone = tf_keras.Model.from_config(model.get_config())
  assert isinstance(clone.layers[1], bottom.PLEBottom)
  with pytest.raises(ValueError, match="unknown bottom 'moe'.*'mmoe', 'ple', 'shared'"):
    bottom.make_bottom("moe", 2)
  with pytest.raises(ValueError, match="bad parameters"):
    bottom.make_bottom({"name": "mmoe", "num_gates": 2}, 2)
  with pytest.raises(ValueError, match="num_experts"):
    bottom.make_bottom({"name": "mmoe", "num_experts": 0}, 2)
