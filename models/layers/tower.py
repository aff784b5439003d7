"""MLP tower: one task's network from its (bottom's) input to a single logit.

Flow position: feature encoder -> [cross network] -> bottom -> **towers** -> probability
heads. Every paper's model builds its towers from this layer, so no two models copy a
tower; `dense_layers` exposes the Dense layers so a model can regularise or tie their
weights (e.g. ESMC's parameter constraint between two towers).
"""

from typing import List, Sequence

import tensorflow as tf
import tf_keras


@tf_keras.saving.register_keras_serializable(package="cvr")
class MLPTower(tf_keras.layers.Layer):
  """Hidden Dense layers (each optionally followed by dropout) and a 1-unit logit.

  Input: float32 [batch, d]. Output: float32 [batch, 1], a logit (no activation); with
  output_logit=False the last hidden layer's activations, float32 [batch, units[-1]]
  (a task vector, e.g. AITM's q_t).

  Args:
    units: hidden layer sizes, e.g. (128, 64); empty means a linear (logistic) tower.
    activation: hidden activation.
    dropout: dropout rate after every hidden layer (training only); 0 disables it.
    l2: L2 penalty on every kernel (hidden and logit); 0 disables it.
    output_logit: False: no logit layer; the tower outputs its last hidden layer.
  """

  def __init__(self, units: Sequence[int] = (128, 64), activation: str = "relu",
               dropout: float = 0.0, l2: float = 0.0, output_logit: bool = True, **kwargs):
    super().__init__(**kwargs)
    if not output_logit and not units:
      raise ValueError(f"{self.name}: a vector tower (output_logit=False) needs >= 1 "
                       f"hidden layer")
    self.output_logit = bool(output_logit)
    self.units = tuple(int(u) for u in units)
    self.activation = activation
    self.dropout = float(dropout)
    self.l2 = float(l2)
    regularizer = tf_keras.regularizers.L2(self.l2) if self.l2 > 0 else None
    self.hidden = [
        tf_keras.layers.Dense(u, activation=activation, kernel_regularizer=regularizer,
                              name=f"hidden_{i}")
        for i, u in enumerate(self.units)]
    self.dropouts = [tf_keras.layers.Dropout(self.dropout, name=f"dropout_{i}")
                     for i in range(len(self.units))] if self.dropout > 0 else []
    self.logit = (tf_keras.layers.Dense(1, kernel_regularizer=regularizer, name="logit")
                  if self.output_logit else None)

  @property
  def dense_layers(self) -> List[tf_keras.layers.Dense]:
    """The tower's Dense layers in order: hidden layers, then the logit layer (if any)."""
    return list(self.hidden) + ([self.logit] if self.logit is not None else [])

  def call(self, inputs, training=None):
    x = inputs
    for i, dense in enumerate(self.hidden):
      x = dense(x)
      if self.dropouts:
        x = self.dropouts[i](x, training=training)
    return self.logit(x) if self.logit is not None else x

  def get_config(self):
    config = super().get_config()
    config.update(units=list(self.units), activation=self.activation,
                  dropout=self.dropout, l2=self.l2, output_logit=self.output_logit)
    return config


@tf_keras.saving.register_keras_serializable(package="cvr")
class PathContext(tf_keras.layers.Layer):
  """Appends a learned context vector (one per path) to a tower's input.

  When one (Siamese) tower serves several paths, e.g. ESMS's P(buy | click) and
  P(buy | action), each path's input gets its own learned vector, so the shared weights
  can still tell the paths apart. Input float32 [batch, d]; output [batch, d + dim].

  Args:
    dim: size of the context vector; 0 passes the input through unchanged.
  """

  def __init__(self, dim: int = 8, **kwargs):
    super().__init__(**kwargs)
    if dim < 0:
      raise ValueError(f"PathContext dim must be >= 0, got {dim}")
    self.dim = int(dim)

  def build(self, input_shape):
    if self.dim:
      self.context = self.add_weight(
          name="context", shape=(self.dim,),
          initializer=tf_keras.initializers.RandomNormal(stddev=0.1), trainable=True)
    super().build(input_shape)

  def call(self, inputs):
    if not self.dim:
      return inputs
    batch = tf.shape(inputs)[0]
    context = tf.tile(tf.cast(self.context, inputs.dtype)[tf.newaxis, :], [batch, 1])
    return tf.concat([inputs, context], axis=-1)

  def get_config(self):
    config = super().get_config()
    config.update(dim=self.dim)
    return config
