"""Training-time AUC (models.multitask.LogitAUC) against the exact AUC on rare events."""

import numpy as np
import tensorflow as tf
import tf_keras

from models import multitask


def exact_auc(labels, scores):
  """Mann-Whitney AUC with ties counted half, in float64 (independent of Keras)."""
  labels = np.asarray(labels, bool)
  scores = np.asarray(scores, np.float64)
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  ranks = np.empty(len(scores), np.float64)
  _, first, counts = np.unique(sorted_scores, return_index=True, return_counts=True)
  mid = first + (counts + 1) / 2.0  # 1-based mid-ranks of tied groups
  ranks[order] = np.repeat(mid, counts)
  positives, negatives = labels.sum(), (~labels).sum()
  return (ranks[labels].sum() - positives * (positives + 1) / 2.0) / (positives * negatives)


def _rare_event_batch(n=200_000, seed=0):
  """CTCVR-like scores: log-odds ~ N(-8.5, 1.2) (p ~ 2e-4), labels drawn from them."""
  rng = np.random.default_rng(seed)
  log_odds = rng.normal(-8.5, 1.2, n)
  labels = rng.uniform(size=n) < 1.0 / (1.0 + np.exp(-log_odds))
  return labels.astype(np.float32), log_odds.astype(np.float32)


TOLERANCE = 0.002  # 10,000 thresholds over 32 units of log-odds: bins of 0.0032


def test_logged_auc_is_within_tolerance_of_the_exact_auc_on_rare_events():
  labels, log_odds = _rare_event_batch()
  assert 20 < labels.sum() < 200
  exact = exact_auc(labels, log_odds)
  metric = multitask.LogitAUC()
  for start in range(0, len(labels), 4096):  # as over training batches
    metric.update_state(labels[start:start + 4096, None], log_odds[start:start + 4096, None])
  assert abs(float(metric.result()) - exact) < TOLERANCE
  # The old metric (10,000 thresholds evenly spaced in probability) lumps every score
  # below 1e-4 into one bin and misses the bar on the same data.
  old = tf_keras.metrics.AUC(num_thresholds=10000)
  old.update_state(labels[:, None], tf.sigmoid(log_odds[:, None]))
  assert abs(float(old.result()) - exact) > TOLERANCE


def test_the_task_logs_the_auc_of_its_log_odds():
  labels, log_odds = _rare_event_batch(50_000, seed=1)
  task = multitask.make_ranking_task("ctcvr")
  task(labels=labels[:, None], predictions=log_odds[:, None])
  logs = {m.name: float(m.result()) for m in task.metrics}
  assert abs(logs["ctcvr_auc"] - exact_auc(labels, log_odds)) < TOLERANCE
  p = 1.0 / (1.0 + np.exp(-log_odds.astype(np.float64)))
  logloss = -np.mean(labels * np.log(p) + (1 - labels) * np.log1p(-p))
  np.testing.assert_allclose(logs["ctcvr_logloss"], logloss, rtol=1e-4)
