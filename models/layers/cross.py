"""DCN-v2 cross network (Wang et al. 2021) over the encoded features, before the bottom.

Flow position: feature encoder -> **cross network** (when model.cross_layers > 0) ->
bottom -> towers. A stack of `tfrs.layers.dcn.Cross` layers:
x_{l+1} = x_0 * (W_l x_l + b_l) + x_l, with x_0 the encoder output.
"""

from typing import Optional

import tensorflow_recommenders as tfrs
import tf_keras


@tf_keras.saving.register_keras_serializable(package="cvr")
class CrossNetwork(tf_keras.layers.Layer):
  """`num_layers` DCN-v2 Cross layers.

  Input: float32 [batch, d]. Output: float32 [batch, d] (same width as the input).

  Args:
    num_layers: number of Cross layers (>= 1).
    projection_dim: low-rank size of each W (U V with inner size projection_dim);
      None for full-rank d x d matrices.
    l2: L2 penalty on the cross kernels; 0 disables it.
  """

  def __init__(self, num_layers: int, projection_dim: Optional[int] = None,
               l2: float = 0.0, **kwargs):
    super().__init__(**kwargs)
    if num_layers < 1:
      raise ValueError(f"CrossNetwork needs num_layers >= 1, got {num_layers}")
    self.num_layers = int(num_layers)
    self.projection_dim = projection_dim
    self.l2 = float(l2)
    regularizer = tf_keras.regularizers.L2(self.l2) if self.l2 > 0 else None
    self.crosses = [
        tfrs.layers.dcn.Cross(projection_dim=projection_dim, kernel_regularizer=regularizer,
                              name=f"cross_{i}")
        for i in range(self.num_layers)]

  def call(self, inputs):
    x = inputs
    for cross in self.crosses:
      x = cross(inputs, x)
    return x

  def get_config(self):
    config = super().get_config()
    config.update(num_layers=self.num_layers, projection_dim=self.projection_dim,
                  l2=self.l2)
    return config
