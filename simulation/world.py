"""The simulated e-commerce world: exposures and the true probability of every step.

Flow: simulation.world_config -> simulation.population (users, items) ->
[simulation.dynamics (arrivals, departures, drifting popularity) when the world is
dynamic] -> **simulation.world** (who sees what, when, where; the true probabilities of
the post-click graph) -> simulation.behaviour (sampled events) -> simulation.writer (raw logs in the
contract of docs/DESIGN.md section 2, the truth file, world.json) -> pipeline.preprocess.

Exposures: user by popularity; item from one of the user's preferred categories (share
`preferred_category_share`, by item popularity inside the category) or by global item
popularity; device (the user's primary one 85% of the time); UTC day (uniform over
`days`), hour (HOUR_WEIGHTS) and second; position 1..max_position with P(pos) ~ pos^-0.5,
independent of everything else (a pure exposure bias). In a dynamic world the day comes
first and the user and item of an exposure of day d are drawn as above among the users
and items active on day d, with day d's item popularity (simulation.dynamics). Match m = user taste . item taste
/ sqrt(latent_dim), standardised over the exposures.

The post-click graph (HM3; ESM2 and ESMC read its macro node as the in-shop action), each
node a logistic function s() of the hidden factors, with the signed weights of
BehaviourParams (node_factor, e.g. click_match, purchase_price):
  p_click                   = s(b_click + match m + attractiveness a + quality q
                                + activity + log_position log(pos) + device + hour)
  p_micro_given_click       = s(b_micro + match m + quality q + attractiveness a + research
                                + device)
  p_macro_given_micro       = s(b_macro + match m + quality q + attractiveness a + intent
                                + price price_term)
  p_macro_given_no_micro    = s(that logit - macro_lift_from_micro)       (micro raises macro)
  p_purchase_given_macro    = s(b_purchase + match m + quality q + attractiveness a + intent
                                + price price_term + device + hour)
  p_purchase_given_no_macro = s(that logit - purchase_lift_from_macro)    (macro raises buy)
where a is the item's attractiveness, q its quality, price_term = (1 +
price_sensitivity_spread * price_sensitivity) * z(log price), and the attractiveness
weight is > 0 for click and < 0 after it, the price weights < 0. Purchase depends on the
past only through macro. The intercepts b_* are solved so that the mean rates hit
BehaviourParams' targets. The derived probabilities (CVR, CTCVR, ...) are composed in
`simulation.truth`.

Attractiveness ("clickbait") raises click and lowers every later step while match and
quality raise all of them, so clicked exposures are a biased sample for CVR (sample
selection bias: E[p_cvr | click] is well below E[p_cvr]); `simulation.summary` measures it.
"""

import dataclasses
from typing import Dict, Optional, Sequence, Tuple

from absl import logging
import numpy as np

from simulation import delays as delays_lib
from simulation import dynamics as dynamics_lib
from simulation import population as population_lib
from simulation import truth as truth_lib
from simulation import world_config as config_lib

# Share of exposures per UTC hour: a diurnal profile peaking in the evening.
HOUR_WEIGHTS = (0.020, 0.012, 0.008, 0.006, 0.006, 0.008, 0.015, 0.028, 0.040, 0.045,
                0.047, 0.050, 0.055, 0.050, 0.047, 0.047, 0.050, 0.055, 0.062, 0.070,
                0.078, 0.080, 0.065, 0.040)
PRIMARY_DEVICE_SHARE = 0.85       # exposures on the user's primary device
POSITION_EXPONENT = 0.5           # P(position) ~ position^-exponent


@dataclasses.dataclass
class Exposures:
  """One row per impression, in time order.

  Attributes:
    impression_id: [n] object str, unique, "imp000000123" (numbered in time order).
    timestamp: [n] int64 unix seconds (UTC), ascending.
    user: [n] int64 index into Users.
    item: [n] int64 index into Items.
    device: [n] int64 index into world_config.DEVICES.
    hour_of_day: [n] int64, the UTC hour of `timestamp`.
    position: [n] int64 in 1..max_position.
    match: [n] float64 standardised user-item taste match (hidden).
  """

  impression_id: np.ndarray
  timestamp: np.ndarray
  user: np.ndarray
  item: np.ndarray
  device: np.ndarray
  hour_of_day: np.ndarray
  position: np.ndarray
  match: np.ndarray

  def __len__(self) -> int:
    return len(self.timestamp)


@dataclasses.dataclass
class World:
  """A generated world: population, exposures and the true probabilities.

  Attributes:
    config: the WorldConfig it was generated from.
    population: categories, brands, items and users.
    exposures: one row per impression.
    truth: each name of `simulation.truth.PROBABILITY_COLUMNS` -> [n] float64, the true
      probabilities of each exposure (row order of `exposures`); with heavy-tailed
      delays also `simulation.truth.IN_WINDOW_COLUMN` (simulation.delays).
    intercepts: the solved logit intercepts, keys click, micro, macro, purchase.
    timeline: when each user and item is active (a dynamic world), else None.
  """

  config: config_lib.WorldConfig
  population: population_lib.Population
  exposures: Exposures
  truth: Dict[str, np.ndarray]
  intercepts: Dict[str, float]
  timeline: Optional[dynamics_lib.Timeline] = None


def impression_id_width(num_impressions: int) -> int:
  """Digits of impression ids: room for 10x the clean ids (corruption numbers above)."""
  return max(9, len(str(10 * num_impressions)))


def impression_id(number: int, width: int) -> str:
  """The impression id of a number, e.g. "imp000000123"."""
  return f"imp{number:0{width}d}"


def sigmoid(logit: np.ndarray) -> np.ndarray:
  """Elementwise 1 / (1 + exp(-logit))."""
  return 1.0 / (1.0 + np.exp(-logit))


def _draw_items(config: config_lib.WorldConfig, population: population_lib.Population,
                user: np.ndarray, rng: np.random.Generator, candidates: np.ndarray,
                weight: np.ndarray) -> np.ndarray:
  """[n] int64 item per exposure: from a preferred category (by popularity) or globally.

  Args:
    user: [n] int64 user of each exposure.
    candidates: [k] int64 the items that can be drawn, ascending.
    weight: [k] float64 > 0, their popularity, summing to 1.
  A preferred category without any candidate falls back to the global draw.
  """
  items, users = population.items, population.users
  n = len(user)
  # Item popularity inside each category as stacked CDFs: category c occupies [c, c + 1),
  # so a draw from category c is searchsorted(cdf, c + uniform).
  by_category = np.lexsort((candidates, items.category[candidates]))
  order = candidates[by_category]
  sorted_weight = weight[by_category]
  category_of = items.category[order]
  category_total = np.bincount(category_of, weights=sorted_weight,
                               minlength=config.num_categories)
  category_start = np.concatenate([[0.0], np.cumsum(category_total)])[category_of]
  stacked_cdf = category_of + (np.cumsum(sorted_weight) - category_start) / category_total[
      category_of]
  is_last = np.r_[category_of[1:] != category_of[:-1], True]
  stacked_cdf[is_last] = category_of[is_last] + 1.0  # exact, against rounding

  slot = population_lib.categorical_rows(users.preferred_weights[user], rng)
  category = users.preferred_categories[user, slot]
  in_category = order[np.minimum(
      np.searchsorted(stacked_cdf, category + rng.random(n), side="right"),
      len(order) - 1)]
  global_draw = candidates[rng.choice(len(candidates), n, p=weight)]
  use_preferred = ((rng.random(n) < config.preferred_category_share)
                   & (category_total > 0)[category])
  return np.where(use_preferred, in_category, global_draw)


def _draw_dynamic(config: config_lib.WorldConfig, population: population_lib.Population,
                  timeline: dynamics_lib.Timeline, rng: np.random.Generator
                  ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(day, user, item) [n] int64 of a dynamic world's exposures, grouped by day: the day
  uniform over `days`, then user and item among those active that day (module docstring)."""
  per_day = np.bincount(rng.integers(0, config.days, config.num_impressions),
                        minlength=config.days)
  users, items = [], []
  for day, count in enumerate(per_day.tolist()):
    active_users = timeline.active_users(day)
    user_weight = population.users.popularity[active_users]
    user = active_users[rng.choice(len(active_users), count,
                                   p=user_weight / user_weight.sum())]
    active_items, item_weight = timeline.item_weights(day, population.items.popularity)
    users.append(user)
    items.append(_draw_items(config, population, user, rng, active_items, item_weight))
  return (np.repeat(np.arange(config.days), per_day), np.concatenate(users),
          np.concatenate(items))


def _make_exposures(config: config_lib.WorldConfig, population: population_lib.Population,
                    timeline: Optional[dynamics_lib.Timeline] = None) -> Exposures:
  """Who sees which item, when, where and on which device (module docstring)."""
  rng = config_lib.rng_stream(config.seed, "exposures")
  users, items = population.users, population.items
  n = config.num_impressions
  if timeline is None:
    user = rng.choice(config.users, n, p=users.popularity)
    item = _draw_items(config, population, user, rng, np.arange(config.items),
                       items.popularity)
    day = None
  else:
    day, user, item = _draw_dynamic(config, population, timeline, rng)
  device = np.where(rng.random(n) < PRIMARY_DEVICE_SHARE, users.primary_device[user],
                    rng.choice(len(config_lib.DEVICES), n, p=config_lib.DEVICE_SHARES))
  if day is None:
    day = rng.integers(0, config.days, n)
  hour = rng.choice(24, n, p=np.asarray(HOUR_WEIGHTS) / np.sum(HOUR_WEIGHTS))
  timestamp = (config.start_timestamp + day * 86400 + hour * 3600
               + rng.integers(0, 3600, n)).astype(np.int64)
  positions = np.arange(1, config.max_position + 1)
  position_weights = positions ** -POSITION_EXPONENT
  position = rng.choice(positions, n, p=position_weights / position_weights.sum())

  order = np.argsort(timestamp, kind="stable")
  user, item, device, hour, timestamp, position = (
      column[order] for column in (user, item, device, hour, timestamp, position))
  raw_match = np.einsum("nd,nd->n", users.taste[user], items.taste[item]) / np.sqrt(
      config.latent_dim)
  width = impression_id_width(n)
  return Exposures(
      impression_id=np.array([impression_id(k, width) for k in range(n)], dtype=object),
      timestamp=timestamp, user=user, item=item, device=device.astype(np.int64),
      hour_of_day=hour.astype(np.int64), position=position.astype(np.int64),
      match=(raw_match - raw_match.mean()) / max(raw_match.std(), 1e-12))


def calibrate_intercept(terms: Sequence[Tuple[np.ndarray, np.ndarray]],
                        weights: np.ndarray, target: float) -> float:
  """Solves b in sum_i weights_i * sum_k share_ik * s(b + logit_ik) / sum_i weights_i = target.

  Newton's method on a function increasing in b (steps clipped to +-2).

  Args:
    terms: (share [n], logit [n]) pairs: a mixture of logistic nodes per exposure, e.g.
      (p_micro, macro logit) and (1 - p_micro, macro logit - lift).
    weights: [n] non-negative, e.g. p_click for a mean over clicked exposures.
    target: the wanted weighted mean, in (0, 1).
  """
  total_weight = weights.sum()
  mean_logit = sum(np.sum(weights * share * logit) for share, logit in terms) / total_weight
  intercept = float(np.log(target / (1.0 - target)) - mean_logit)
  for _ in range(50):
    value, slope = 0.0, 0.0
    for share, logit in terms:
      p = sigmoid(intercept + logit)
      value += np.sum(weights * share * p)
      slope += np.sum(weights * share * p * (1.0 - p))
    value, slope = value / total_weight, slope / total_weight
    if abs(value - target) <= 1e-12 * target:
      break
    intercept -= float(np.clip((value - target) / max(slope, 1e-300), -2.0, 2.0))
  return intercept


def true_probabilities(config: config_lib.WorldConfig,
                       population: population_lib.Population,
                       exposures: Exposures) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
  """The post-click graph's probabilities of every exposure (module docstring).

  Returns:
    (truth, intercepts): truth maps each name of `simulation.truth.PROBABILITY_COLUMNS`
    to [n] float64 in (0, 1); intercepts maps click, micro, macro, purchase to the solved
    logit intercepts.
  """
  params = config.behaviour
  users, items = population.users, population.items
  user, item, device = exposures.user, exposures.item, exposures.device
  match = exposures.match
  quality = items.quality[item]
  attractiveness = items.attractiveness[item]
  intent = users.intent[user]
  price_term = ((1.0 + params.price_sensitivity_spread * users.price_sensitivity[user])
                * items.price_z[item])
  hour_angle = 2.0 * np.pi * exposures.hour_of_day / 24.0

  def hour_effect(amplitude: float, peak: int) -> np.ndarray:
    return amplitude * np.cos(hour_angle - 2.0 * np.pi * peak / 24.0)

  click_logit = (params.click_match * match
                 + params.click_attractiveness * attractiveness
                 + params.click_quality * quality
                 + params.click_activity * users.activity[user]
                 + params.click_log_position * np.log(exposures.position)
                 + np.asarray(params.device_click)[device]
                 + hour_effect(params.hour_click_amplitude, params.hour_click_peak))
  micro_logit = (params.micro_match * match
                 + params.micro_quality * quality
                 + params.micro_attractiveness * attractiveness
                 + params.micro_research * users.research[user]
                 + np.asarray(params.device_micro)[device])
  macro_logit = (params.macro_match * match
                 + params.macro_quality * quality
                 + params.macro_attractiveness * attractiveness
                 + params.macro_intent * intent + params.macro_price * price_term)
  purchase_logit = (params.purchase_match * match
                    + params.purchase_quality * quality
                    + params.purchase_attractiveness * attractiveness
                    + params.purchase_intent * intent
                    + params.purchase_price * price_term
                    + np.asarray(params.device_purchase)[device]
                    + hour_effect(params.hour_purchase_amplitude, params.hour_purchase_peak))

  ones = np.ones(len(exposures))
  intercepts = {}
  intercepts["click"] = calibrate_intercept([(ones, click_logit)], ones, params.target_ctr)
  p_click = sigmoid(intercepts["click"] + click_logit)
  intercepts["micro"] = calibrate_intercept([(ones, micro_logit)], p_click,
                                            params.target_micro_per_click)
  p_micro = sigmoid(intercepts["micro"] + micro_logit)
  intercepts["macro"] = calibrate_intercept(
      [(p_micro, macro_logit), (1.0 - p_micro, macro_logit - params.macro_lift_from_micro)],
      p_click, params.target_action_per_click)
  macro_logit = intercepts["macro"] + macro_logit
  p_action = (p_micro * sigmoid(macro_logit)
              + (1.0 - p_micro) * sigmoid(macro_logit - params.macro_lift_from_micro))
  intercepts["purchase"] = calibrate_intercept(
      [(p_action, purchase_logit),
       (1.0 - p_action, purchase_logit - params.purchase_lift_from_macro)],
      p_click, params.target_purchase_per_click)
  purchase_logit = intercepts["purchase"] + purchase_logit
  truth = truth_lib.compose_truth({
      "p_click": p_click,
      "p_micro_given_click": p_micro,
      "p_macro_given_micro": sigmoid(macro_logit),
      "p_macro_given_no_micro": sigmoid(macro_logit - params.macro_lift_from_micro),
      "p_purchase_given_macro": sigmoid(purchase_logit),
      "p_purchase_given_no_macro": sigmoid(
          purchase_logit - params.purchase_lift_from_macro),
  })
  return truth, intercepts


ORACLE_FIELDS = ("oracle_match", "oracle_quality", "oracle_attractiveness", "oracle_intent",
                 "oracle_activity", "oracle_research", "oracle_price_term")


def oracle_features(world: World) -> Dict[str, np.ndarray]:
  """The hidden factors every true logit is a function of, per exposure.

  Returns ORACLE_FIELDS -> [n] float64 (row order of world.exposures): the user-item
  match, the item's quality and attractiveness, the user's intent, activity and research
  traits, and the price term (1 + spread * price_sensitivity) * z(log price). With these
  and the observable device, hour and position, every node of the post-click graph is a
  logistic function of the inputs, so a model given them can reach the Bayes-optimal AUC:
  the "oracle run" that tests the training and evaluation machinery.
  """
  params = world.config.behaviour
  users, items = world.population.users, world.population.items
  user, item = world.exposures.user, world.exposures.item
  price_term = ((1.0 + params.price_sensitivity_spread * users.price_sensitivity[user])
                * items.price_z[item])
  values = (world.exposures.match, items.quality[item], items.attractiveness[item],
            users.intent[user], users.activity[user], users.research[user], price_term)
  return {name: np.asarray(v, np.float64) for name, v in zip(ORACLE_FIELDS, values)}


def build_world(config: config_lib.WorldConfig) -> World:
  """Generates the population, the exposures and their true probabilities.

  Deterministic: the same config (seed included) gives the same arrays.
  """
  config.validate()
  population = population_lib.make_population(config)
  timeline = None
  if config.is_dynamic:
    population, timeline = dynamics_lib.evolve(config, population)
  exposures = _make_exposures(config, population, timeline)
  truth, intercepts = true_probabilities(config, population, exposures)
  if config.heavy_tailed:
    truth[truth_lib.IN_WINDOW_COLUMN] = delays_lib.purchase_in_window_probability(
        config, population, exposures.user, exposures.item)
  logging.info("World: %d impressions, %d users, %d items, %d categories, %d brands; "
               "mean p_click %.4f, mean p_ctcvr %.5f; intercepts %s", len(exposures),
               len(population.users.ids), len(population.items.ids),
               config.num_categories, config.brands,
               truth["p_click"].mean(), truth["p_ctcvr"].mean(),
               {name: round(value, 3) for name, value in intercepts.items()})
  return World(config=config, population=population, exposures=exposures, truth=truth,
               intercepts=intercepts, timeline=timeline)
