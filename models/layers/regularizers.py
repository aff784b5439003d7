"""Parameter constraints between towers: ESMC's tie of the CVR tower to the buy|action tower.

Flow position: a training-time term of models.multitask.MultiTaskModel (logged as
`constraint_loss`, beside `regularization_loss`); it is not part of the scorer, so the
exported SavedModel is unaffected.

`TowerTieRegularizer` is a `tf_keras.regularizers.Regularizer` that holds a reference to
another tower's variable (its "target") and, called on a variable W of the same shape,
returns strength * ||W - target||^2 (sum of squares). `tie_towers` pairs the matching
Dense layers of two MLP towers (kernels and biases, layer by layer), so the sum of its
terms is lambda * sum_l ||W_a[l] - W_b[l]||^2.
"""

from typing import List, Optional, Sequence, Tuple, Union

import tensorflow as tf
import tf_keras


@tf_keras.saving.register_keras_serializable(package="cvr")
class TowerTieRegularizer(tf_keras.regularizers.Regularizer):
  """strength * ||x - target||^2, pulling a weight towards another tower's weight.

  Args:
    strength: lambda >= 0.
    target: the other tower's variable (same shape as the regularized one); may be
      bound later with `bind` (a regularizer rebuilt by `from_config` is unbound).
    pull_target: True: the gradient moves both weights towards each other; False: the
      target is a constant (stop_gradient) and only the regularized weight moves.
    target_name: the target variable's name (for get_config); taken from `target`.
  """

  def __init__(self, strength: float = 0.0, target: Optional[tf.Variable] = None,
               pull_target: bool = True, target_name: Optional[str] = None):
    if strength < 0:
      raise ValueError(f"TowerTieRegularizer strength must be >= 0, got {strength}")
    self.strength = float(strength)
    self.pull_target = bool(pull_target)
    self.target = None
    self.target_name = target_name
    if target is not None:
      self.bind(target)

  def bind(self, target: tf.Variable) -> "TowerTieRegularizer":
    """Holds a reference to `target` (the other tower's variable); returns self."""
    self.target = target
    self.target_name = target.name
    return self

  def __call__(self, x):
    if self.target is None:
      raise ValueError(f"TowerTieRegularizer (target {self.target_name!r}) is not bound to "
                       f"a target variable; call bind(variable) first")
    if tuple(x.shape) != tuple(self.target.shape):
      raise ValueError(f"TowerTieRegularizer: weight shape {tuple(x.shape)} differs from "
                       f"its target {self.target_name!r} {tuple(self.target.shape)}")
    target = tf.convert_to_tensor(self.target)
    if not self.pull_target:
      target = tf.stop_gradient(target)
    return self.strength * tf.reduce_sum(tf.square(tf.convert_to_tensor(x) - target))

  def get_config(self):
    return {"strength": self.strength, "pull_target": self.pull_target,
            "target_name": self.target_name}


ParameterTie = Tuple[TowerTieRegularizer, tf.Variable]


def tie_towers(tower, target_tower, strength: float, pull_target: bool = True,
               layers: Union[str, Sequence[int]] = "all", tie_bias: bool = True
               ) -> List[ParameterTie]:
  """(regularizer, variable) pairs tying `tower`'s weights to `target_tower`'s.

  Both are built MLP towers (models.layers.tower.MLPTower) with the same layer sizes;
  layer l's kernel (and bias, when `tie_bias`) of `tower` is tied to the same of
  `target_tower`, for the Dense layers `layers` selects: "all", or indices into
  `dense_layers` (hidden layers then the logit layer; -1 is the logit layer).
  The loss is sum(regularizer(variable) for the pairs).
  """
  own, targets = tower.dense_layers, target_tower.dense_layers
  if len(own) != len(targets):
    raise ValueError(f"cannot tie {tower.name} ({len(own)} Dense layers) to "
                     f"{target_tower.name} ({len(targets)})")
  indices = select_layers(layers, len(own))
  ties = []
  for index in indices:
    layer, target = own[index], targets[index]
    if not layer.built or not target.built:
      raise ValueError(f"tie_towers: build {tower.name} and {target_tower.name} first")
    for variable, other in zip(_weights(layer, tie_bias), _weights(target, tie_bias)):
      ties.append((TowerTieRegularizer(strength, other, pull_target=pull_target), variable))
  return ties


def select_layers(layers: Union[str, Sequence[int]], count: int) -> List[int]:
  """Sorted distinct indices in [0, count) of the Dense layers a tie covers."""
  if isinstance(layers, str):
    if layers != "all":
      raise ValueError(f"tie layers {layers!r}: use 'all' or a list of layer indices")
    return list(range(count))
  indices = set()
  for index in layers:
    if not isinstance(index, int) or not -count <= index < count:
      raise ValueError(f"tie layer index {index!r} is out of range for {count} Dense "
                       f"layers (hidden layers then the logit layer; -1 = logit)")
    indices.add(index % count)
  if not indices:
    raise ValueError("tie layers: the list is empty; give 'all' or >= 1 index")
  return sorted(indices)


def copy_tower_weights(tower, source_tower) -> None:
  """Sets every Dense kernel and bias of `tower` to `source_tower`'s (same shapes)."""
  for layer, source in zip(tower.dense_layers, source_tower.dense_layers, strict=True):
    for variable, value in zip(_weights(layer, True), _weights(source, True), strict=True):
      variable.assign(value)


def _weights(dense, with_bias: bool) -> Sequence[tf.Variable]:
  return [dense.kernel] + ([dense.bias] if dense.use_bias and with_bias else [])


def tie_loss(ties: Sequence[ParameterTie]) -> tf.Tensor:
  """sum over the ties of regularizer(variable): the constraint loss (0 when none)."""
  if not ties:
    return tf.constant(0.0)
  return tf.add_n([regularizer(variable) for regularizer, variable in ties])
