"""Exact offline metrics on numpy arrays: AUC, GAUC, log loss, calibration, ECE.

Flow position: SavedModel scores (evaluation.scoring) -> **these metrics** ->
evaluation.report (the per-task table) -> pipeline.evaluate's metrics JSON.
Conventions are those of /work/shared/papers.md ("Evaluation conventions"). Every
function takes 1-D arrays of equal length; labels are 0/1; scores are probabilities.
No TensorFlow here: the numbers are exact (no histogram approximations as in
tf.keras.metrics.AUC), sums are float64.
"""

from typing import Tuple

import numpy as np

LOG_LOSS_EPSILON = 1e-7
BINNINGS = ("mass", "width")


def _vector(values, name: str) -> np.ndarray:
  """`values` as a 1-D float64 array; NaN is an error (it has no rank)."""
  array = np.asarray(values, dtype=np.float64).reshape(-1)
  if np.isnan(array).any():
    raise ValueError(f"{name} holds NaN")
  return array


def _binary_labels(labels) -> np.ndarray:
  labels = _vector(labels, "labels")
  if not np.isin(labels, (0.0, 1.0)).all():
    raise ValueError("labels must be 0 or 1")
  return labels


def _pair_counts(scores: np.ndarray, positive_weight: np.ndarray,
                 negative_weight: np.ndarray) -> Tuple[float, float]:
  """Weighted count of correctly ordered (positive, negative) pairs, ties counting 1/2.

  Returns:
    (numerator, denominator): sum over pairs of w_pos(i) w_neg(j) [s_i > s_j] + 1/2
    [s_i == s_j], and sum(w_pos) * sum(w_neg). Their ratio is the (weighted)
    Mann-Whitney AUC; with unit weights it equals the average-rank formula.
  """
  if scores.size == 0:
    return 0.0, 0.0
  order = np.argsort(scores, kind="mergesort")
  sorted_scores = scores[order]
  starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_scores)) + 1])
  positives = np.add.reduceat(positive_weight[order], starts)
  negatives = np.add.reduceat(negative_weight[order], starts)
  negatives_below = np.cumsum(negatives) - negatives
  numerator = float(np.sum(positives * (negatives_below + 0.5 * negatives)))
  return numerator, float(positive_weight.sum() * negative_weight.sum())


def auc(labels, scores, weights=None) -> float:
  """Exact ROC AUC (Mann-Whitney U / (P N)), tied scores counting one half.

  Args:
    labels: [n] 0/1.
    scores: [n] real; only their order matters.
    weights: optional [n] non-negative example weights.

  Returns:
    P(score of a random positive > score of a random negative) + 1/2 P(tie), pairs
    weighted by the product of their weights; NaN when one class is absent (or the
    input is empty).
  """
  labels = _binary_labels(labels)
  scores = _vector(scores, "scores")
  weights = np.ones_like(labels) if weights is None else _vector(weights, "weights")
  if not labels.shape == scores.shape == weights.shape:
    raise ValueError(f"shapes differ: labels {labels.shape}, scores {scores.shape}, "
                     f"weights {weights.shape}")
  numerator, denominator = _pair_counts(scores, weights * labels, weights * (1.0 - labels))
  return numerator / denominator if denominator > 0 else float("nan")


def expected_auc(probabilities, scores) -> float:
  """The AUC of `scores` expected when each label is an independent Bernoulli(p).

  Every row is a positive with weight p and a negative with weight 1 - p; pairs of a
  row with itself are excluded. The result is E[correctly ordered pairs] /
  E[positive-negative pairs] (a ratio of expectations, the limit of the AUC on many
  label draws). With `scores = probabilities` it is the Bayes-optimal AUC of that
  population.

  Args:
    probabilities: [n] true P(label = 1 | x) in [0, 1].
    scores: [n] real.
  """
  probabilities = _vector(probabilities, "probabilities")
  scores = _vector(scores, "scores")
  if probabilities.shape != scores.shape:
    raise ValueError(f"shapes differ: {probabilities.shape} vs {scores.shape}")
  if ((probabilities < 0) | (probabilities > 1)).any():
    raise ValueError("probabilities must lie in [0, 1]")
  numerator, denominator = _pair_counts(scores, probabilities, 1.0 - probabilities)
  self_pairs = float(np.sum(probabilities * (1.0 - probabilities)))
  numerator -= 0.5 * self_pairs
  denominator -= self_pairs
  return numerator / denominator if denominator > 0 else float("nan")


def grouped_auc(labels, scores, groups) -> Tuple[np.ndarray, np.ndarray]:
  """Exact AUC within each group (vectorised; one sort of all rows).

  Args:
    labels: [n] 0/1.
    scores: [n] real.
    groups: [n] group keys (e.g. user ids), any sortable dtype.

  Returns:
    (auc [g], exposures [g]) over the distinct groups in sorted key order: the AUC of
    each group (NaN for a group with a single class) and its number of rows.
  """
  labels = _binary_labels(labels)
  scores = _vector(scores, "scores")
  _, group_index = np.unique(np.asarray(groups).reshape(-1), return_inverse=True)
  group_index = group_index.reshape(-1)
  if not labels.shape == scores.shape == group_index.shape:
    raise ValueError("labels, scores and groups must have the same length")
  num_groups = int(group_index.max()) + 1 if group_index.size else 0
  if num_groups == 0:
    return np.zeros(0), np.zeros(0, dtype=np.int64)
  order = np.lexsort((scores, group_index))
  sorted_groups, sorted_scores = group_index[order], scores[order]
  # A block: the rows of one group with one score (a run of ties), in sorted order.
  new_block = np.ones(len(order), dtype=bool)
  new_block[1:] = (np.diff(sorted_groups) != 0) | (np.diff(sorted_scores) != 0)
  starts = np.flatnonzero(new_block)
  block_group = sorted_groups[starts]
  positives = np.add.reduceat(labels[order], starts)
  negatives = np.add.reduceat(1.0 - labels[order], starts)
  # Negatives in lower-scored blocks of the same group: running total minus the
  # running total at the group's first block.
  negatives_before = np.cumsum(negatives) - negatives
  block_number = np.arange(len(starts))
  group_first = np.maximum.accumulate(
      np.where(np.diff(block_group, prepend=-1) != 0, block_number, 0))
  negatives_below = negatives_before - negatives_before[group_first]
  pairs = positives * (negatives_below + 0.5 * negatives)
  numerator = np.bincount(block_group, weights=pairs, minlength=num_groups)
  group_positives = np.bincount(block_group, weights=positives, minlength=num_groups)
  group_negatives = np.bincount(block_group, weights=negatives, minlength=num_groups)
  denominator = group_positives * group_negatives
  with np.errstate(invalid="ignore", divide="ignore"):
    group_auc = np.where(denominator > 0, numerator / denominator, np.nan)
  return group_auc, np.bincount(group_index, minlength=num_groups)


def gauc(labels, scores, groups) -> float:
  """Group AUC: per-group AUC averaged with weights = exposures (rows) per group.

  Groups with a single class (no positive or no negative) are skipped (papers.md).

  Returns:
    sum_g n_g AUC_g / sum_g n_g over the groups with both classes; NaN if none.
  """
  group_auc, exposures = grouped_auc(labels, scores, groups)
  valid = ~np.isnan(group_auc)
  if not valid.any():
    return float("nan")
  return float(np.sum(group_auc[valid] * exposures[valid]) / np.sum(exposures[valid]))


def log_loss(labels, scores, weights=None, epsilon: float = LOG_LOSS_EPSILON) -> float:
  """Mean binary cross-entropy (natural log), scores clipped to [eps, 1 - eps].

  Returns:
    -sum w (y log p + (1 - y) log(1 - p)) / sum w; NaN on empty input.
  """
  labels = _binary_labels(labels)
  scores = np.clip(_vector(scores, "scores"), epsilon, 1.0 - epsilon)
  weights = np.ones_like(labels) if weights is None else _vector(weights, "weights")
  if weights.sum() <= 0:
    return float("nan")
  losses = -(labels * np.log(scores) + (1.0 - labels) * np.log1p(-scores))
  return float(np.sum(weights * losses) / np.sum(weights))


def calibration(labels, scores) -> float:
  """Sum of predictions / sum of labels (1 = calibrated on aggregate); NaN if no positive."""
  labels = _binary_labels(labels)
  positives = labels.sum()
  if positives <= 0:
    return float("nan")
  return float(_vector(scores, "scores").sum() / positives)


def expected_calibration_error(labels, scores, bins: int = 10, binning: str = "mass") -> float:
  """Expected calibration error: sum_b (n_b / n) |mean score_b - mean label_b|.

  Args:
    labels: [n] 0/1.
    scores: [n] probabilities.
    bins: number of bins.
    binning: "mass" (default): equal-mass bins, rows sorted by score (stable sort, so
      ties at a boundary split by row order) and cut into `bins` runs of n/bins rows
      (sizes differ by at most one). Suits the small, skewed rates of CTR/CVR, where
      equal-width bins put almost every row in the first bin. "width": equal-width bins
      [k/bins, (k+1)/bins) over [0, 1] (the last includes 1), empty bins skipped.

  Returns:
    The ECE in [0, 1]; NaN on empty input.
  """
  if binning not in BINNINGS:
    raise ValueError(f"binning {binning!r} not in {BINNINGS}")
  labels = _binary_labels(labels)
  scores = _vector(scores, "scores")
  n = len(labels)
  if n == 0:
    return float("nan")
  if binning == "mass":
    order = np.argsort(scores, kind="mergesort")
    bin_index = np.empty(n, dtype=np.int64)
    bin_index[order] = (np.arange(n) * bins) // n
  else:
    bin_index = np.clip(np.floor(scores * bins).astype(np.int64), 0, bins - 1)
  score_sums = np.bincount(bin_index, weights=scores, minlength=bins)
  label_sums = np.bincount(bin_index, weights=labels, minlength=bins)
  return float(np.sum(np.abs(score_sums - label_sums)) / n)


def average_ranks(values) -> np.ndarray:
  """1-based ranks of `values`, tied values sharing the average of their ranks."""
  values = _vector(values, "values")
  if values.size == 0:
    return np.zeros(0)
  order = np.argsort(values, kind="mergesort")
  sorted_values = values[order]
  starts = np.concatenate([[0], np.flatnonzero(np.diff(sorted_values)) + 1])
  ends = np.concatenate([starts[1:], [len(values)]])
  block_rank = (starts + ends + 1) / 2.0  # mean of starts+1 .. ends
  ranks = np.empty(len(values))
  ranks[order] = np.repeat(block_rank, ends - starts)
  return ranks


def pearson(x, y) -> float:
  """Pearson correlation; NaN when either side is constant or has < 2 values."""
  x, y = _vector(x, "x"), _vector(y, "y")
  if len(x) < 2:
    return float("nan")
  x, y = x - x.mean(), y - y.mean()
  norm = np.sqrt(np.sum(x * x) * np.sum(y * y))
  return float(np.sum(x * y) / norm) if norm > 0 else float("nan")


def spearman(x, y) -> float:
  """Spearman rank correlation (Pearson of average ranks, so ties are handled)."""
  return pearson(average_ranks(x), average_ranks(y))
