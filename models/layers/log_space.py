"""Probabilities in log space: what every training loss is computed from.

Flow position: towers' logits -> **log-space twins of the probability layers** -> the
log-odds each task's loss and metrics read (models.multitask), beside the exported
probabilities (models.layers.probability), which are clipped for serving only.

Why: a composed probability such as ESMM's ctcvr = ctr * cvr, computed as a product of
clipped sigmoids and fed to a clipping binary cross-entropy, has zero gradient once a
factor saturates (a logit beyond about +-16) and caps the loss of a surprising positive
(ctr = cvr = 1e-4 gives loss 15.4 and no gradient). In log space nothing saturates:

  sigmoid head:  log p = log_sigmoid(z),          log(1 - p) = log_sigmoid(-z)
  product:       log p = sum_i log p_i,
                 1 - p_1 ... p_k = (1 - p_1) + p_1 (1 - p_2 ... p_k)   (all terms >= 0)
  mixture:       p = b * a + (1 - b) * c,
                 log p     = logaddexp(log b + log a,     log(1-b) + log c)
                 log(1 - p) = logaddexp(log b + log(1-a), log(1-b) + log(1-c))
  log-odds:      logit(p) = log p - log(1 - p)

and BCE(y, p) = sigmoid_cross_entropy_with_logits(y, logit(p)) exactly, since
log_sigmoid(logit(p)) = log p. A "log pair" is float32 [batch, 2]: column 0 = log p,
column 1 = log(1 - p), both <= 0.

Precision. Each composite computes both logs from sums of non-negative terms (no
cancellation), with a log1p-accurate log-add-exp, and then keeps the smaller one of the
two (<= -log 2, where a sum's log is accurate to float32 rounding relative to itself)
and derives the other as log1mexp(smaller). So p near 1 (a negative's loss -log(1 - p)
when every factor's logit is large) and p near 0 (a rare positive's -log p) are both
exact to float32 rounding, with no clamp: at logits beyond ~88, where log_sigmoid(z)
underflows to 0, log(1 - p) still comes from the factors' complements (~ -z).
"""

import math

import numpy as np
import tensorflow as tf
import tf_keras

_LOG_HALF = -math.log(2.0)
# log1mexp(a) for a = 0 would be log(0) = -inf. The composites below never pass it an
# a > -log 2 (nor LogPairRatio one > log(1 - epsilon)), so this clamp only keeps a
# direct call finite: at the float32 limit (its smallest normal number, 1.2e-38), i.e. a
# value of log(1.2e-38) = -87.3.
_MAX_LOG_P = -float(np.finfo(np.float32).tiny)


def log1mexp(log_p: tf.Tensor) -> tf.Tensor:
  """log(1 - exp(a)) for a <= 0, stable at both ends (Maechler 2012).

  a > -log 2: log(-expm1(a)); else log1p(-exp(a)). Each branch gets a safe input so
  neither produces inf/NaN gradients through tf.where. a is clamped to <= -1.2e-38 (see
  _MAX_LOG_P).
  """
  a = tf.minimum(log_p, _MAX_LOG_P)
  near_zero = a > _LOG_HALF
  a_near = tf.where(near_zero, a, _LOG_HALF)
  a_far = tf.where(near_zero, 2.0 * _LOG_HALF, a)
  return tf.where(near_zero, tf.math.log(-tf.math.expm1(a_near)),
                  tf.math.log1p(-tf.exp(a_far)))


def log_add_exp(x: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
  """log(exp(x) + exp(y)), accurate to float32 rounding when one term is tiny.

  max + softplus(min - max): softplus(t) = log1p(exp(t)), which keeps exp(t) of a tiny t
  (reduce_logsumexp's log(1 + exp(t)) rounds 1 + exp(t) to 1 for t < -16.6). Written
  per ordering with tf.where, so the gradient is sigmoid(x - y), sigmoid(y - x) at ties
  too (a max would give all of it to one side).
  """
  x_larger = x >= y
  return tf.where(x_larger, x + tf.math.softplus(y - x), y + tf.math.softplus(x - y))


def _accurate_pair(log_p, log_not_p):
  """The log pair from two estimates of log p and log(1 - p), each the log of a sum of
  non-negative terms (so accurate to float32 rounding in absolute terms).

  The smaller of the two (<= -log 2) is therefore accurate relative to itself; the
  larger, which can be close to 0 (e.g. log p = -2e-9 at p = 1 - 2e-9) and then only
  absolutely accurate, is replaced by log1mexp(smaller). [batch, 1] each -> [batch, 2].
  """
  p_is_smaller = log_p <= log_not_p
  smaller = tf.minimum(log_p, log_not_p)
  larger = log1mexp(smaller)
  return _pair(tf.where(p_is_smaller, smaller, larger),
               tf.where(p_is_smaller, larger, smaller))


def sigmoid_log_pair(logits: tf.Tensor) -> tf.Tensor:
  """Logit z, float [batch, 1] -> log pair [batch, 2] = [log_sigmoid(z), log_sigmoid(-z)]
  (the sigmoid head's pair, as a function for losses that start from log-odds)."""
  logits = tf.cast(logits, tf.float32)
  return _pair(tf.math.log_sigmoid(logits), tf.math.log_sigmoid(-logits))


def _pair(log_p, log_not_p):
  return tf.concat([log_p, log_not_p], axis=-1)


def _split(pair):
  pair = tf.cast(pair, tf.float32)
  return pair[:, 0:1], pair[:, 1:2]


class _LogSpaceLayer(tf_keras.layers.Layer):
  """Base: float32, no weights."""

  def __init__(self, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)


@tf_keras.saving.register_keras_serializable(package="cvr")
class SigmoidLogPair(_LogSpaceLayer):
  """Logit z, float [batch, 1] -> log pair [batch, 2] = [log_sigmoid(z), log_sigmoid(-z)]."""

  def call(self, logits):
    return sigmoid_log_pair(logits)


@tf_keras.saving.register_keras_serializable(package="cvr")
class LogPairProduct(_LogSpaceLayer):
  """Log pairs of p_1..p_k -> the log pair of p = p_1 * ... * p_k.

  log p = sum_i log p_i; log(1 - p) from the factors' complements, folded left:
  1 - P_j p_{j+1} = (1 - P_j) + P_j (1 - p_{j+1}), P_j = p_1 ... p_j, each step a
  log_add_exp of non-negative terms; then _accurate_pair. Inputs and output [batch, 2].
  """

  def call(self, pairs):
    if len(pairs) < 2:
      raise ValueError(f"{self.name}: a product needs >= 2 log pairs, got {len(pairs)}")
    log_p, log_not_p = _split(pairs[0])
    for pair in pairs[1:]:
      log_factor, log_not_factor = _split(pair)
      log_not_p = log_add_exp(log_not_p, log_p + log_not_factor)
      log_p = log_p + log_factor
    return _accurate_pair(log_p, log_not_p)


@tf_keras.saving.register_keras_serializable(package="cvr")
class LogPairMixture(_LogSpaceLayer):
  """Log pairs of [b, a, c] -> the log pair of p = b * a + (1 - b) * c (each [batch, 2]).

  log p and log(1 - p) = log(b (1 - a) + (1 - b)(1 - c)) each a log_add_exp of
  non-negative terms, then _accurate_pair.
  """

  def call(self, pairs):
    if len(pairs) != 3:
      raise ValueError(f"{self.name}: a mixture takes [branch, given, given_not], "
                       f"got {len(pairs)} log pairs")
    (log_b, log_not_b), (log_a, log_not_a), (log_c, log_not_c) = (_split(p) for p in pairs)
    return _accurate_pair(log_add_exp(log_b + log_a, log_not_b + log_c),
                          log_add_exp(log_b + log_not_a, log_not_b + log_not_c))


@tf_keras.saving.register_keras_serializable(package="cvr")
class LogPairLogit(_LogSpaceLayer):
  """Log pair [batch, 2] -> log-odds [batch, 1] = log p - log(1 - p)."""

  def call(self, pair):
    log_p, log_not_p = _split(pair)
    return log_p - log_not_p


@tf_keras.saving.register_keras_serializable(package="cvr")
class LogPairRatio(_LogSpaceLayer):
  """Log pairs of [num, den] -> the log pair of clip(num / den, eps, 1 - eps).

  log r = clip(log num - log den, log eps, log(1 - eps)); log(1 - r) = log1mexp(log r).
  The same clip as models.layers.probability.ProbabilityRatio, applied in log space.
  """

  def __init__(self, epsilon: float = 1e-7, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = float(epsilon)

  def call(self, pairs):
    (log_num, _), (log_den, _) = (_split(p) for p in pairs)
    log_r = tf.clip_by_value(log_num - log_den, math.log(self.epsilon),
                             math.log1p(-self.epsilon))
    return _pair(log_r, log1mexp(log_r))

  def get_config(self):
    config = super().get_config()
    config.update(epsilon=self.epsilon)
    return config
