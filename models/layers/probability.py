"""Probability heads and compositions: logits -> the papers' named probabilities.

Flow position: towers -> **probability layers** -> the scorer's output dict
(`ctr`, `cvr`, `ctcvr`, ...). A head turns one tower's logit into a probability; a
composition multiplies probabilities along a behaviour path, e.g. ESMM's
pCTCVR = pCTR * pCVR. Name each layer after the probability it outputs. These are what
the scorer exports; the losses read their log-space twins (models.layers.heads).
"""

import tensorflow as tf
import tf_keras

# Heads clip to [EPSILON, 1 - EPSILON], the range Keras' binary cross-entropy clips to,
# so every exported output is strictly inside (0, 1) and a log loss computed on it is
# finite. The training losses do not read these clipped values: they are computed from
# the unclipped log-odds (models.layers.log_space), so a loss agrees with a BCE on the
# exported probabilities (to float32 rounding) only while no clipped probability
# (a head's sigmoid, a ratio) is within EPSILON of 0 or 1; beyond that the loss keeps
# its value and gradient and the exported probability stays clipped.
EPSILON = 1e-7


@tf_keras.saving.register_keras_serializable(package="cvr")
class ProbabilityHead(tf_keras.layers.Layer):
  """Sigmoid of a logit, clipped to [epsilon, 1 - epsilon].

  Input: float [batch, 1], a logit. Output: float32 [batch, 1], a probability in (0, 1),
  e.g. `ctr` = P(click=1 | x) when named "ctr".
  """

  def __init__(self, epsilon: float = EPSILON, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.epsilon = float(epsilon)

  def call(self, logits):
    probability = tf.sigmoid(tf.cast(logits, tf.float32))
    return tf.clip_by_value(probability, self.epsilon, 1.0 - self.epsilon)

  def get_config(self):
    config = super().get_config()
    config.update(epsilon=self.epsilon)
    return config


@tf_keras.saving.register_keras_serializable(package="cvr")
class ProbabilityProduct(tf_keras.layers.Layer):
  """Product of probabilities along a path, e.g. ctcvr = ctr * cvr.

  Input: a list of float32 [batch, 1] probabilities p_1..p_k. Output: float32
  [batch, 1], ((p_1 * p_2) * ...) * p_k, multiplied left to right in float32, so
  `ctcvr == ctr * cvr` holds bit-exactly for the tensors the scorer returns. It stays in
  (0, 1) when its factors do.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)

  def call(self, probabilities):
    if len(probabilities) < 2:
      raise ValueError(f"{self.name}: a product needs >= 2 probabilities, "
                       f"got {len(probabilities)}")
    product = tf.cast(probabilities[0], tf.float32)
    for probability in probabilities[1:]:
      product = product * tf.cast(probability, tf.float32)
    return product


@tf_keras.saving.register_keras_serializable(package="cvr")
class ProbabilityMixture(tf_keras.layers.Layer):
  """Total probability over a binary branch: p * a + (1 - p) * b.

  Inputs: [p, a, b], each float32 [batch, 1]: p = P(branch | .), a = P(target | branch),
  b = P(target | no branch). Output: float32 [batch, 1], P(target | .); e.g. ESM2's
  cvr = P(action|click) * P(buy|action) + (1 - P(action|click)) * P(buy|no action).
  A convex combination of a and b, so it stays in (0, 1) when a and b do.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)

  def call(self, inputs):
    if len(inputs) != 3:
      raise ValueError(f"{self.name}: a mixture takes [p, a, b], got {len(inputs)} inputs")
    branch, given, given_not = (tf.cast(x, tf.float32) for x in inputs)
    return branch * given + (1.0 - branch) * given_not


@tf_keras.saving.register_keras_serializable(package="cvr")
class ProbabilityAlias(tf_keras.layers.Layer):
  """The same probability under a second output name (e.g. HM3's ctmacro as ctavr).

  Input and output: float32 [batch, 1], unchanged.
  """

  def __init__(self, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)

  def call(self, probability):
    return tf.identity(tf.cast(probability, tf.float32))


@tf_keras.saving.register_keras_serializable(package="cvr")
class ProbabilityRatio(tf_keras.layers.Layer):
  """A conditional probability from two joint ones: num / den, clipped into (0, 1).

  Inputs: [num, den], each float32 [batch, 1], e.g. AITM's [ctcvr, ctr]. Output: float32
  [batch, 1], clip(num / den, epsilon, 1 - epsilon). The models that use it do not
  guarantee num <= den, so the clip is part of the definition, not only of serving.
  """

  def __init__(self, epsilon: float = EPSILON, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    self.epsilon = float(epsilon)

  def call(self, inputs):
    numerator, denominator = (tf.cast(x, tf.float32) for x in inputs)
    return tf.clip_by_value(tf.math.divide_no_nan(numerator, denominator), self.epsilon,
                            1.0 - self.epsilon)

  def get_config(self):
    config = super().get_config()
    config.update(epsilon=self.epsilon)
    return config
