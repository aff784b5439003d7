"""Realised rates and truth statistics of a simulated world (the body of world.json).

Flow: simulation.world + simulation.behaviour -> **simulation.summary** ->
OUTPUT/world.json (written by simulation.writer) -> read by tests, evaluation and people
checking that the world has the properties the models are meant to face: sample
selection bias, data sparsity, micro -> macro -> purchase lift, learnable signal; in a
dynamic world the population per day (`population_by_day`), with heavy-tailed delays the
realised purchase delays (`purchase_delays`). A static legacy world's summary has neither.
"""

import datetime
from typing import Any, Dict, List

import numpy as np

from simulation import behaviour as behaviour_lib
from simulation import truth as truth_lib
from simulation import world as world_lib


def rank_auc(labels: np.ndarray, scores: np.ndarray) -> float:
  """ROC AUC by ranks (ties get their average rank); nan when a class is absent.

  Args:
    labels: [n] 0/1 or bool.
    scores: [n] float, higher = more likely positive.
  """
  labels = np.asarray(labels, dtype=bool)
  positives = int(labels.sum())
  negatives = len(labels) - positives
  if positives == 0 or negatives == 0:
    return float("nan")
  _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
  # Average 1-based rank of each distinct score.
  average_rank = np.cumsum(counts) - (counts - 1) / 2.0
  rank_sum = average_rank[inverse][labels].sum()
  return float((rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives))


def _ratio(numerator: float, denominator: float) -> float:
  return float(numerator) / float(denominator) if denominator else float("nan")


def summarize(world: world_lib.World, behaviour: behaviour_lib.Behaviour) -> Dict[str, Any]:
  """Sizes, realised rates, truth means, selection bias, lifts and Bayes-optimal AUCs.

  Labels here are the generative ones (late purchases included); `late` says how many
  purchases the Beam labels will miss because they land after the attribution window.
  """
  config, truth = world.config, world.truth
  n = len(world.exposures)
  click, micro, action, purchase = (behaviour.click, behaviour.micro, behaviour.action,
                                    behaviour.purchase)
  clicks, actions = int(click.sum()), int(action.sum())
  no_action_clicks = clicks - actions
  p_cvr = truth["p_purchase_given_click"]
  cvr_clicked = float(p_cvr[click].mean()) if clicks else float("nan")
  cvr_all = float(p_cvr.mean())
  days = (world.exposures.timestamp - config.start_timestamp) // 86400
  last_day = datetime.date.fromisoformat(config.start_date) + datetime.timedelta(
      days=config.days - 1)
  summary = {
      "sizes": {
          "impressions": n,
          "users": len(world.population.users.ids),
          "items": len(world.population.items.ids),
          "categories": config.num_categories,
          "brands": config.brands,
          "events": int(len(behaviour.event_type)),
          "events_by_type": behaviour.event_counts(),
          "impressions_per_day": np.bincount(days, minlength=config.days).tolist(),
          "last_day": last_day.isoformat(),
      },
      "rates": {
          "clicks": clicks,
          "ctr": _ratio(clicks, n),
          "micro_per_click": _ratio(micro.sum(), clicks),
          "action_per_click": _ratio(actions, clicks),
          "purchase_per_click": _ratio(purchase.sum(), clicks),
          "purchases": int(purchase.sum()),
          "purchase_per_exposure": _ratio(purchase.sum(), n),
          "action_per_exposure": _ratio(actions, n),
          "micro_per_exposure": _ratio(micro.sum(), n),
          "purchase_per_action": _ratio((purchase & action).sum(), actions),
          "purchase_per_no_action_click": _ratio((purchase & click & ~action).sum(),
                                                 no_action_clicks),
      },
      "truth_means": {name: float(truth[name].mean())
                      for name in truth_lib.PROBABILITY_COLUMNS},
      "selection_bias": {
          "mean_p_purchase_given_click_over_clicked": cvr_clicked,
          "mean_p_purchase_given_click_over_all": cvr_all,
          "relative_gap": _ratio(cvr_clicked - cvr_all, cvr_all),
          "naive_realised_cvr": _ratio(purchase.sum(), clicks),
      },
      "lifts": {
          "macro_given_micro_over_no_micro": _ratio(
              truth["p_macro_given_micro"].mean(), truth["p_macro_given_no_micro"].mean()),
          "purchase_given_macro_over_no_macro": _ratio(
              truth["p_purchase_given_macro"].mean(),
              truth["p_purchase_given_no_macro"].mean()),
      },
      "late": {
          "purchases": int(behaviour.late_purchase.sum()),
          "events": int(behaviour.late_purchase.sum()),
          "fraction_of_purchases": _ratio(behaviour.late_purchase.sum(), purchase.sum()),
          "attribution_window_s": config.attribution_window_s,
      },
      "bayes_auc": {
          "ctr": rank_auc(click, truth["p_click"]),
          "ctmicro": rank_auc(micro, truth["p_ctmicro"]),
          "ctavr": rank_auc(action, truth["p_ctavr"]),
          "ctcvr": rank_auc(purchase, truth["p_ctcvr"]),
          "cvr_over_clicked": rank_auc(purchase[click], p_cvr[click]),
      },
  }
  if world.timeline is not None:
    summary["population_by_day"] = _population_by_day(world, days)
  if config.heavy_tailed:
    summary["purchase_delays"] = _purchase_delays(world, behaviour)
  return summary


def _first_seen_per_day(ids: np.ndarray, days: np.ndarray, num_days: int) -> List[int]:
  """[num_days] how many distinct ids have their first exposure on each day."""
  first_day = np.full(ids.max() + 1, num_days)
  np.minimum.at(first_day, ids, days)
  return np.bincount(first_day[first_day < num_days], minlength=num_days).tolist()


def _population_by_day(world: world_lib.World, days: np.ndarray) -> Dict[str, Any]:
  """simulation.dynamics.Timeline.by_day, plus ids first exposed on each day and the
  distinct users and items exposed each day."""
  config, exposures = world.config, world.exposures
  result = world.timeline.by_day(config.start_date)
  result["first_seen_users"] = _first_seen_per_day(exposures.user, days, config.days)
  result["first_seen_items"] = _first_seen_per_day(exposures.item, days, config.days)
  result["exposed_users"] = [int(len(np.unique(exposures.user[days == d])))
                             for d in range(config.days)]
  result["exposed_items"] = [int(len(np.unique(exposures.item[days == d])))
                             for d in range(config.days)]
  return result


def _purchase_delays(world: world_lib.World, behaviour: behaviour_lib.Behaviour
                     ) -> Dict[str, Any]:
  """Realised purchase delays after the click (heavy-tailed delays): quantiles, shares
  beyond 1 hour / 1 day / 7 days, and the share outside the window (final label 0)
  against the truth's expectation (mean p_purchase_in_window over the purchases)."""
  rows = np.flatnonzero(behaviour.purchase)
  delay = (behaviour.purchase_timestamp - behaviour.click_timestamp)[rows]
  after_impression = (behaviour.purchase_timestamp - world.exposures.timestamp)[rows]
  outside = after_impression > world.config.attribution_window_s
  quantiles = (np.quantile(delay, [0.5, 0.9, 0.99]).tolist() if len(rows)
               else [float("nan")] * 3)
  return {
      "purchases": int(len(rows)),
      "median_s": quantiles[0], "p90_s": quantiles[1], "p99_s": quantiles[2],
      "share_after_1h": _ratio((delay > 3600).sum(), len(rows)),
      "share_after_1d": _ratio((delay > 86400).sum(), len(rows)),
      "share_after_7d": _ratio((delay > 7 * 86400).sum(), len(rows)),
      "share_outside_window": _ratio(outside.sum(), len(rows)),
      "expected_share_outside_window": float(
          1.0 - world.truth[truth_lib.IN_WINDOW_COLUMN][rows].mean()) if len(rows)
                                       else float("nan"),
      "attribution_window_s": world.config.attribution_window_s,
  }
