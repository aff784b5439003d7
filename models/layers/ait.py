"""AITM's Adaptive Information Transfer and its behavioural expectation calibrator.

Flow position: feature encoder -> bottom -> per-task vector towers (q_t) -> **AIT chain**
-> one logit per step -> probability heads (models/aitm.py wires them).

Xi et al., KDD 2021 [paper]: for a chain of T conversion steps, z_1 = q_1 and for t >= 2
  p_{t-1} = g_{t-1}(z_{t-1})                         (transfer MLP of the previous step)
  z_t     = sum_{u in {p_{t-1}, q_t}} w_u * h1(u)
  w_u     = softmax_u( <h2(u), h3(u)> / sqrt(k) )    (each vector scores itself)
with h1, h2, h3 bias-free k x k projections; yhat_t = sigmoid(Dense(1)(z_t)).
"""

import math

import tensorflow as tf
import tf_keras


@tf_keras.saving.register_keras_serializable(package="cvr")
class AdaptiveInformationTransfer(tf_keras.layers.Layer):
  """[p, q] -> z = w_p h1(p) + w_q h1(q), the attention of AITM's AIT module.

  Inputs: p (the transferred previous-step vector) and q (this step's tower vector), each
  float32 [batch, k]. Output: z, float32 [batch, k]. `attention(p, q)` returns the
  weights [batch, 2] (columns: p, q), which sum to 1 per row.

  Args:
    units: k, the size of the vectors (the towers' last hidden layer).
  """

  def __init__(self, units: int, **kwargs):
    super().__init__(**kwargs)
    self.units = int(units)
    self.h1 = tf_keras.layers.Dense(self.units, use_bias=False, name="h1")
    self.h2 = tf_keras.layers.Dense(self.units, use_bias=False, name="h2")
    self.h3 = tf_keras.layers.Dense(self.units, use_bias=False, name="h3")

  def attention(self, transferred, own):
    """Softmax over the two vectors of <h2(u), h3(u)> / sqrt(k): float32 [batch, 2]."""
    scores = [tf.reduce_sum(self.h2(u) * self.h3(u), axis=-1) / math.sqrt(self.units)
              for u in (transferred, own)]
    return tf.nn.softmax(tf.stack(scores, axis=-1), axis=-1)

  def call(self, inputs):
    transferred, own = inputs
    weights = self.attention(transferred, own)
    return weights[:, 0:1] * self.h1(transferred) + weights[:, 1:2] * self.h1(own)

  def get_config(self):
    config = super().get_config()
    config.update(units=self.units)
    return config


@tf_keras.saving.register_keras_serializable(package="cvr")
class ExpectationCalibratorPenalty(tf_keras.layers.Layer):
  """Per-exposure sum_{t>=2} max(yhat_t - yhat_{t-1}, 0) of a chain's step logits.

  Inputs: the steps' logits [l_1, ..., l_T], each float [batch, 1]; yhat_t =
  sigmoid(l_t) (unclipped). Output: float32 [batch, 1] >= 0, zero when every step is at
  most as likely as the one before (a later conversion step cannot be more likely).
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)

  def call(self, logits):
    if len(logits) < 2:
      raise ValueError(f"{self.name}: a chain needs >= 2 steps, got {len(logits)}")
    probabilities = [tf.sigmoid(tf.cast(l, tf.float32)) for l in logits]
    return tf.add_n([tf.nn.relu(later - earlier)
                     for earlier, later in zip(probabilities, probabilities[1:])])
