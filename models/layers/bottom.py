"""Bottoms: how the towers see the shared input: shared-bottom, MMoE, PLE.

Flow position: feature encoder -> [cross network] -> **bottom** -> one input per tower
-> towers. The heads (which probabilities, which losses) are orthogonal to the bottom,
so a model asks `make_bottom(setting, num_towers)` for whichever bottom the config
names and never changes when a bottom is added. To add one: subclass `Bottom`
(call: [batch, d] -> list of `num_towers` tensors [batch, d_k], plus get_config) and
add it to `BOTTOMS`.

Config form (model.params.bottom): a name (`shared`, `mmoe`, `ple`), or a mapping with
`name` and the bottom's own constructor arguments, e.g.
`{name: mmoe, num_experts: 4, expert_units: [64]}` or
`{name: ple, num_levels: 2, num_shared_experts: 2, num_task_experts: 1}`.

  shared  every tower sees the shared input itself.
  mmoe    Ma et al., KDD 2018: `num_experts` expert MLPs on the shared input; tower k
          sees sum_e g_k(x)_e * expert_e(x), g_k = softmax(W_k x) its own gate.
  ple     Tang et al., RecSys 2020 (Progressive Layered Extraction): `num_levels`
          extraction levels, each with `num_shared_experts` shared experts and
          `num_task_experts` experts per tower; tower k's gate mixes its own and the
          shared experts, a shared gate (all experts) feeds the next level's shared
          experts. One level is CGC (Customized Gate Control).
Gate weights are softmax outputs (each row sums to 1); `gate_weights(x)` returns them.
"""

from typing import Any, Dict, List, Mapping, Sequence, Union

import tensorflow as tf
import tf_keras


@tf_keras.saving.register_keras_serializable(package="cvr")
class Bottom(tf_keras.layers.Layer):
  """Base class: shared input [batch, d] -> list of `num_towers` tower inputs."""

  def __init__(self, num_towers: int, **kwargs):
    super().__init__(**kwargs)
    if num_towers < 1:
      raise ValueError(f"{type(self).__name__} needs num_towers >= 1, got {num_towers}")
    self.num_towers = int(num_towers)

  def call(self, inputs, training=None) -> List[tf.Tensor]:
    raise NotImplementedError

  def get_config(self):
    config = super().get_config()
    config.update(num_towers=self.num_towers)
    return config


@tf_keras.saving.register_keras_serializable(package="cvr")
class SharedBottom(Bottom):
  """Every tower sees the shared input itself (identity): [batch, d] -> [batch, d] each."""

  def call(self, inputs, training=None) -> List[tf.Tensor]:
    return [tf.identity(inputs) for _ in range(self.num_towers)]


def _expert(units: Sequence[int], activation: str, name: str) -> tf_keras.Sequential:
  """An expert MLP: Dense layers of `units` with `activation`, [batch, d] -> [batch, units[-1]]."""
  return tf_keras.Sequential(
      [tf_keras.layers.Dense(u, activation=activation, name=f"{name}_dense_{i}")
       for i, u in enumerate(units)], name=name)


def _gate(num_experts: int, name: str) -> tf_keras.layers.Dense:
  """A gate: [batch, d] -> softmax weights [batch, num_experts] (rows sum to 1)."""
  return tf_keras.layers.Dense(num_experts, activation="softmax", name=name)


def _mix(gate: tf.Tensor, experts: Sequence[tf.Tensor]) -> tf.Tensor:
  """sum_e gate[:, e] * experts[e]: [batch, E] and E x [batch, u] -> [batch, u]."""
  stacked = tf.stack(experts, axis=1)  # [batch, E, u]
  return tf.reduce_sum(stacked * gate[:, :, tf.newaxis], axis=1)


class GatedBottom(Bottom):
  """Base of the expert bottoms: `_forward(x) -> (tower inputs, gates)`."""

  def _forward(self, inputs):
    raise NotImplementedError

  def call(self, inputs, training=None) -> List[tf.Tensor]:
    return self._forward(inputs)[0]

  def gate_weights(self, inputs) -> List[tf.Tensor]:
    """Per tower, float32 [batch, experts it mixes] softmax weights (PLE: the last
    level's gates); each row sums to 1."""
    return self._forward(inputs)[1]


@tf_keras.saving.register_keras_serializable(package="cvr")
class MMoEBottom(GatedBottom):
  """Multi-gate Mixture-of-Experts: [batch, d] -> `num_towers` x [batch, expert_units[-1]].

  Args:
    num_towers: towers fed (one gate each).
    num_experts: expert MLPs shared by all towers.
    expert_units: hidden sizes of each expert (its output width is the last).
    activation: expert activation.
  """

  def __init__(self, num_towers: int, num_experts: int = 4,
               expert_units: Sequence[int] = (64,), activation: str = "relu", **kwargs):
    super().__init__(num_towers, **kwargs)
    if num_experts < 1 or not expert_units:
      raise ValueError(f"MMoEBottom needs num_experts >= 1 and expert_units, got "
                       f"{num_experts}, {expert_units}")
    self.num_experts = int(num_experts)
    self.expert_units = tuple(int(u) for u in expert_units)
    self.activation = activation
    self.experts = [_expert(self.expert_units, activation, f"expert_{e}")
                    for e in range(self.num_experts)]
    self.gates = [_gate(self.num_experts, f"gate_{k}") for k in range(self.num_towers)]

  def _forward(self, inputs):
    experts = [expert(inputs) for expert in self.experts]
    gates = [gate(inputs) for gate in self.gates]
    return [_mix(g, experts) for g in gates], gates

  def get_config(self):
    config = super().get_config()
    config.update(num_experts=self.num_experts, expert_units=list(self.expert_units),
                  activation=self.activation)
    return config


@tf_keras.saving.register_keras_serializable(package="cvr")
class PLEBottom(GatedBottom):
  """Progressive Layered Extraction: [batch, d] -> `num_towers` x [batch, expert_units[-1]].

  Level l has `num_shared_experts` shared experts and `num_task_experts` experts per
  tower. Tower k's gate (over its own + the shared experts, on tower k's previous-level
  output) gives its output; a shared gate (over all experts, on the previous shared
  output) feeds the next level's shared path (not on the last level).

  Args:
    num_towers: towers fed.
    num_levels: extraction levels (1 = CGC).
    num_shared_experts, num_task_experts: experts per level.
    expert_units: hidden sizes of each expert (output width is the last).
    activation: expert activation.
  """

  def __init__(self, num_towers: int, num_levels: int = 2, num_shared_experts: int = 2,
               num_task_experts: int = 1, expert_units: Sequence[int] = (64,),
               activation: str = "relu", **kwargs):
    super().__init__(num_towers, **kwargs)
    if num_levels < 1 or num_shared_experts < 0 or num_task_experts < 1 or not expert_units:
      raise ValueError(f"PLEBottom needs num_levels >= 1, num_shared_experts >= 0, "
                       f"num_task_experts >= 1 and expert_units; got {num_levels}, "
                       f"{num_shared_experts}, {num_task_experts}, {expert_units}")
    self.num_levels = int(num_levels)
    self.num_shared_experts = int(num_shared_experts)
    self.num_task_experts = int(num_task_experts)
    self.expert_units = tuple(int(u) for u in expert_units)
    self.activation = activation
    self.levels = []
    for level in range(self.num_levels):
      last = level == self.num_levels - 1
      own = self.num_task_experts + self.num_shared_experts
      everything = self.num_towers * self.num_task_experts + self.num_shared_experts
      self.levels.append({
          "task_experts": [[_expert(self.expert_units, activation, f"l{level}_t{k}_e{e}")
                            for e in range(self.num_task_experts)]
                           for k in range(self.num_towers)],
          "shared_experts": [_expert(self.expert_units, activation, f"l{level}_s_e{e}")
                             for e in range(self.num_shared_experts)],
          "task_gates": [_gate(own, f"l{level}_t{k}_gate") for k in range(self.num_towers)],
          "shared_gate": None if last else _gate(everything, f"l{level}_s_gate"),
      })

  def _forward(self, inputs):
    task_inputs = [inputs] * self.num_towers
    shared_input = inputs
    gates = []
    for level in self.levels:
      shared = [expert(shared_input) for expert in level["shared_experts"]]
      own = [[expert(x) for expert in experts]
             for experts, x in zip(level["task_experts"], task_inputs)]
      gates = [gate(x) for gate, x in zip(level["task_gates"], task_inputs)]
      outputs = [_mix(g, experts + shared) for g, experts in zip(gates, own)]
      if level["shared_gate"] is not None:
        everything = [e for experts in own for e in experts] + shared
        shared_input = _mix(level["shared_gate"](shared_input), everything)
      task_inputs = outputs
    return task_inputs, gates

  def get_config(self):
    config = super().get_config()
    config.update(num_levels=self.num_levels, num_shared_experts=self.num_shared_experts,
                  num_task_experts=self.num_task_experts,
                  expert_units=list(self.expert_units), activation=self.activation)
    return config


BOTTOMS: Dict[str, type] = {"shared": SharedBottom, "mmoe": MMoEBottom, "ple": PLEBottom}


def make_bottom(setting: Union[str, Mapping[str, Any], None], num_towers: int,
                name: str = "bottom") -> Bottom:
  """The bottom a config names (see the module docstring); None means shared."""
  if setting is None:
    setting = "shared"
  if isinstance(setting, str):
    setting = {"name": setting}
  if not isinstance(setting, Mapping) or "name" not in setting:
    raise ValueError(f"bottom setting must be a name or a mapping with 'name', "
                     f"got {setting!r}")
  kwargs = dict(setting)
  kind = kwargs.pop("name")
  if kind not in BOTTOMS:
    raise ValueError(f"unknown bottom {kind!r}; known bottoms: {sorted(BOTTOMS)}")
  try:
    return BOTTOMS[kind](num_towers=num_towers, name=name, **kwargs)
  except TypeError as e:
    raise ValueError(f"bottom {kind!r}: bad parameters {sorted(kwargs)}: {e}") from e
