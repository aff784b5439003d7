"""Bottoms: how the towers see the shared input (shared-bottom now; MMoE, PLE later).

Flow position: feature encoder -> [cross network] -> **bottom** -> one input per tower
-> towers. The heads (which probabilities, which losses) are orthogonal to the bottom,
so a model asks `make_bottom(setting, num_towers)` for whichever bottom the config
names and never changes when a bottom is added. To add one: subclass `Bottom`
(call: [batch, d] -> list of `num_towers` tensors [batch, d_k], plus get_config) and
add it to `BOTTOMS`.

Config form (model.params.bottom): a name, `shared`, or a mapping with `name` and the
bottom's own constructor arguments, e.g. `{name: mmoe, num_experts: 4}`.
"""

from typing import Any, Dict, List, Mapping, Union

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


BOTTOMS: Dict[str, type] = {"shared": SharedBottom}


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
