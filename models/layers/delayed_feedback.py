"""Delayed-feedback losses in log space: the weight of each sample of a method's stream.

Flow position: a method's training stream (training/feedback_streams.py: which samples
enter when, with which label) -> the conversion head's log pair (models.layers.log_space)
-> **a weighted cross-entropy whose minimiser is the final-label probability** -> the
training step. shared/papers.md, "Delayed feedback", has the methods; the weights below
are derived from the streams as feedback_streams.py defines them, and checked by
simulation (tests/test_delayed_feedback.py).

Notation, per clicked exposure with features x: p = P(final conversion | click, x), the
conversion delay d, the attribution window W, the elapsed-time window c;
f_dp = P(delayed positive | click, x) = P(converted, c < d <= W | click, x) and
f_rn = P(real negative | observed negative at c, click, x) = (1 - p) / (1 - p + f_dp).

Count weights. A stream holds, per clicked exposure, an expected number of samples of each
label; the weight of a label is (its expected count in the final labels) / (its expected
count in the stream), so that the weighted sum over the stream has the expectation of the
plain sum over the final labels:

  method          stream per clicked exposure             weight of 1  weight of 0
  vanilla/oracle  one sample                              1            1
  fnw             a 0 at once, a duplicate 1 at d <= W    1            1 - p
  esdfm           1[d <= c] at c, a duplicate 1 if c < d  1            f_rn
  defer           the esdfm samples, then y again at W    1/2          (1 - p) / (2 (1 - p) + f_dp)

(2p positives and 2(1 - p) + f_dp negatives per click for defer.) The papers' weights are
these times the stream's samples per click: FNW's (1 + p) and (1 - p)(1 + p) (Ktena et
al.), ES-DFM's (1 + f_dp) and (1 + f_dp) f_rn, DEFER's (1 + f_dp / 2) and
(1 - p)(2 + f_dp) / (2(1 - p) + f_dp): the weights of the stream's label distribution
q(y | x). Per x that factor changes nothing in the click space (the minimiser is the same),
but on the entire space it does: an unclicked exposure is a real negative at once (weight
1, one sample), so scaling the clicked exposures of an x by their samples per click would
move the CTCVR minimiser away from P(click, convert | x). Count weights keep it (the
unbiasedness test on a cell with clicked and unclicked exposures shows both).

p in the weights is the model's own estimate (FNW, DEFER: stop-gradient, so the final rate
is the fixed point), f_dp and f_rn come from auxiliary classifiers trained on older data
whose labels are complete (ES-DFM, DEFER). Every weight is applied with stop_gradient.

FNC trains a plain cross-entropy on the FNW stream, whose label rate per click is
q = p / (1 + p), and serves p = q / (1 - q) (`fnc_final_pair`). DFM (Chapelle 2014)
learns p and an exponential delay rate lambda jointly (`dfm_loss`) and serves p.
"""

import math

import tensorflow as tf

from models.layers import log_space

_LOG_HALF = -math.log(2.0)


def _column(x) -> tf.Tensor:
  """x as float32 [batch] (a [batch, 1] column is flattened)."""
  return tf.reshape(tf.cast(x, tf.float32), [-1])


def weighted_log_loss(labels, pair, positive_weight=1.0, negative_weight=1.0) -> tf.Tensor:
  """-(w1 * y * log p + w0 * (1 - y) * log(1 - p)) per sample, float32 [batch].

  Args:
    labels: float or int [batch] or [batch, 1], 0 or 1 (the label as the stream ingested
      it).
    pair: log pair [batch, 2] of the conversion head (column 0 log p, column 1 log(1 - p)).
    positive_weight, negative_weight: scalars or [batch] weights of a label 1 and a label
      0; held constant (stop_gradient).
  """
  labels = _column(labels)
  pair = tf.cast(pair, tf.float32)
  positive_weight = tf.stop_gradient(tf.cast(positive_weight, tf.float32))
  negative_weight = tf.stop_gradient(tf.cast(negative_weight, tf.float32))
  return -(labels * positive_weight * pair[:, 0]
           + (1.0 - labels) * negative_weight * pair[:, 1])


def fnw_weights(p):
  """FNW's count weights (module docstring): (1, 1 - p), p the model's rate (stop-gradient)."""
  p = tf.stop_gradient(_column(p))
  return tf.ones_like(p), 1.0 - p


def esdfm_weights(f_rn):
  """ES-DFM's count weights: (1, f_rn), f_rn = P(real negative | observed negative at c)."""
  f_rn = tf.stop_gradient(_column(f_rn))
  return tf.ones_like(f_rn), f_rn


def defer_weights(p, f_dp):
  """DEFER's count weights on its stream (feedback_streams "defer"): (1/2,
  (1 - p) / (2 (1 - p) + f_dp)); p the model's rate, f_dp = P(delayed positive)."""
  p = tf.stop_gradient(_column(p))
  f_dp = tf.stop_gradient(_column(f_dp))
  return tf.fill(tf.shape(p), 0.5), (1.0 - p) / (2.0 * (1.0 - p) + f_dp)


def real_negative_rate(p, f_dp):
  """f_rn = (1 - p) / (1 - p + f_dp) from the final rate and the delayed-positive rate."""
  p, f_dp = _column(p), _column(f_dp)
  return (1.0 - p) / (1.0 - p + f_dp)


def fnc_final_pair(stream_pair, epsilon: float = 1e-7) -> tf.Tensor:
  """The log pair of p = q / (1 - q) from the log pair of FNC's stream rate q.

  log p = log q - log(1 - q); log(1 - p) = log(1 - 2q) - log(1 - q), with
  log(1 - 2q) = log1mexp(log 2 + log q). q is clipped to <= (1 - epsilon) / 2 (a
  well-trained q is <= 1/2: q = p / (1 + p)). [batch, 2] -> [batch, 2].
  """
  stream_pair = tf.cast(stream_pair, tf.float32)
  log_q = tf.minimum(stream_pair[:, 0:1], _LOG_HALF + math.log1p(-epsilon))
  log_not_q = log_space.log1mexp(log_q)
  log_p = log_q - log_not_q
  log_not_p = log_space.log1mexp(log_q - _LOG_HALF) - log_not_q
  return tf.concat([log_p, log_not_p], axis=-1)


def dfm_loss(converted, pair, log_rate, time) -> tf.Tensor:
  """DFM's negative log-likelihood per clicked sample, float32 [batch].

  converted (delay d = time): -(log p + log lambda - lambda d);
  not converted yet (elapsed e = time): -log(1 - p + p exp(-lambda e)), computed as
  -log_add_exp(log(1 - p), log p - lambda e).

  Args:
    converted: [batch] 0/1, whether the conversion has been seen.
    pair: log pair [batch, 2] of p = P(conversion | click, x).
    log_rate: [batch] or [batch, 1], log lambda(x) of the exponential delay (per unit of
      `time`).
    time: [batch] or [batch, 1], the delay (converted) or the elapsed time, >= 0.
  """
  converted = _column(converted)
  pair = tf.cast(pair, tf.float32)
  log_p, log_not_p = pair[:, 0], pair[:, 1]
  log_rate, time = _column(log_rate), _column(time)
  hazard = tf.exp(log_rate) * time
  positive = -(log_p + log_rate - hazard)
  negative = -log_space.log_add_exp(log_not_p, log_p - hazard)
  return converted * positive + (1.0 - converted) * negative
