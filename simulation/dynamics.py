"""A world that changes: users and items arrive and leave, item popularity drifts.

Flow: simulation.world_config -> simulation.population (the initial users and items) ->
**simulation.dynamics** (arrivals appended to the population, each entity's active days,
the items' popularity walk) -> simulation.world (day d's exposures draw only among the
users and items active on day d, with day d's popularity) -> simulation.summary
(`population_by_day` in world.json).

Only a dynamic world (`WorldConfig.is_dynamic`) comes here; a static one draws nothing
from the streams below. Days are numbered 0 .. days - 1 from `start_date`.

  arrivals ("arrivals" stream)  on each day d >= 1, Poisson(new_users_per_day * U0) users
      and Poisson(new_items_per_day * I0) items arrive (U0, I0 the initial sizes), drawn
      from the initial population's generative model (simulation.population: new items
      take a category by the catalogue shares and the rest from it; their price_z is on the
      initial items' scale; the popularity weight of each is the weight of a uniformly
      drawn initial rank, see population.zipf_arrival_weights). Their ids continue the
      numbering: user u{U0 + k}, item i{I0 + k}, in arrival order.
  departures ("churn" stream)   after each of its days an active entity leaves for good
      with probability user_churn_per_day / item_churn_per_day: it is active on
      arrival .. departure - 1, departure - arrival ~ Geometric(churn) >= 1 (departure =
      days when it stays to the end, or when churn is 0).
  drift ("drift" stream)        item i's log popularity on day d is
      log(popularity_i) + W_i(d), W_i(arrival_i) = 0, W_i(d + 1) = W_i(d) + N(0, drift^2);
      day d's exposures use exp(log popularity) renormalised over the items active on d.
"""

import dataclasses
import datetime
from typing import Dict, List, Optional, Tuple

from absl import logging
import numpy as np

from simulation import population as population_lib
from simulation import world_config as config_lib


@dataclasses.dataclass
class Timeline:
  """When each user and item of a dynamic world can appear.

  Attributes:
    days: number of days of the world.
    user_arrival, user_departure: [users] int64 days: user u appears only on days
      user_arrival[u] <= d < user_departure[u] (departure = days: stays to the end).
    item_arrival, item_departure: [items] int64, likewise.
    item_log_drift: [items, days] float64 W_i(d) of the module docstring, or None
      without drift (all 0).
  """

  days: int
  user_arrival: np.ndarray
  user_departure: np.ndarray
  item_arrival: np.ndarray
  item_departure: np.ndarray
  item_log_drift: Optional[np.ndarray]

  def active_users(self, day: int) -> np.ndarray:
    """[k] int64 indices of the users active on `day`, ascending."""
    return np.flatnonzero((self.user_arrival <= day) & (day < self.user_departure))

  def active_items(self, day: int) -> np.ndarray:
    """[k] int64 indices of the items active on `day`, ascending."""
    return np.flatnonzero((self.item_arrival <= day) & (day < self.item_departure))

  def item_weights(self, day: int, popularity: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(active items [k] int64, their day-`day` popularity [k] float64 summing to 1)."""
    active = self.active_items(day)
    log_weight = np.log(popularity[active])
    if self.item_log_drift is not None:
      log_weight = log_weight + self.item_log_drift[active, day]
    weight = np.exp(log_weight - log_weight.max())
    return active, weight / weight.sum()

  def by_day(self, start_date: str) -> Dict[str, List]:
    """Per day: date, active / new / departed users and items (world.json's
    `population_by_day`; new = arrived that day, 0 on day 0; departed = active the day
    before and no longer)."""
    start = datetime.date.fromisoformat(start_date)
    result = {"date": [(start + datetime.timedelta(days=d)).isoformat()
                       for d in range(self.days)]}
    for kind, arrival, departure in (("users", self.user_arrival, self.user_departure),
                                     ("items", self.item_arrival, self.item_departure)):
      result[f"active_{kind}"] = [int(((arrival <= d) & (d < departure)).sum())
                                  for d in range(self.days)]
      new = np.bincount(arrival, minlength=self.days)
      new[0] = 0
      result[f"new_{kind}"] = new.tolist()
      result[f"departed_{kind}"] = np.bincount(
          departure[departure < self.days], minlength=self.days).tolist()
    return result


def _arrival_days(rate: float, initial: int, days: int, rng: np.random.Generator
                  ) -> np.ndarray:
  """[m] int64 arrival day of each entity arriving on days 1 .. days - 1, ascending."""
  counts = rng.poisson(rate * initial, days) if rate > 0 else np.zeros(days, np.int64)
  counts[0] = 0
  return np.repeat(np.arange(days), counts)


def _departures(arrival: np.ndarray, churn: float, days: int, rng: np.random.Generator
                ) -> np.ndarray:
  """[m] int64 departure day: arrival + Geometric(churn), at most `days`."""
  if churn <= 0:
    return np.full(len(arrival), days, np.int64)
  return np.minimum(arrival + rng.geometric(churn, len(arrival)), days).astype(np.int64)


def evolve(config: config_lib.WorldConfig, population: population_lib.Population
           ) -> Tuple[population_lib.Population, Timeline]:
  """Appends the arriving users and items to the population and draws the timeline.

  Args:
    config: a dynamic world's config.
    population: the initial population (simulation.population.make_population).

  Returns:
    (population with the arrivals appended, Timeline).

  Raises:
    ValueError: a day without any active user or item (churn too high for the arrivals).
  """
  days, users0, items0 = config.days, config.users, config.items
  rng = config_lib.rng_stream(config.seed, "arrivals")
  user_arrival = np.concatenate([np.zeros(users0, np.int64), _arrival_days(
      config.new_users_per_day, users0, days, rng)])
  item_arrival = np.concatenate([np.zeros(items0, np.int64), _arrival_days(
      config.new_items_per_day, items0, days, rng)])
  new_users, new_items = len(user_arrival) - users0, len(item_arrival) - items0
  users, items = population.users, population.items
  if new_users:
    users = population_lib.concat_rows(users, population_lib.make_users(
        config, population.categories, new_users, users0,
        lambda r: population_lib.zipf_arrival_weights(
            new_users, users0, config.user_zipf_exponent, r), rng))
  if new_items:
    category = rng.choice(config.num_categories, new_items, p=population.categories.share)
    items = population_lib.concat_rows(items, population_lib.make_items(
        config, population.categories, population.factors, category, items0,
        lambda r: population_lib.zipf_arrival_weights(
            new_items, items0, config.item_zipf_exponent, r), rng))

  churn_rng = config_lib.rng_stream(config.seed, "churn")
  user_departure = _departures(user_arrival, config.user_churn_per_day, days, churn_rng)
  item_departure = _departures(item_arrival, config.item_churn_per_day, days, churn_rng)

  item_log_drift = None
  if config.popularity_drift > 0:
    steps = config_lib.rng_stream(config.seed, "drift").normal(
        0.0, config.popularity_drift, (len(item_arrival), days))
    steps[:, 0] = 0.0
    walk = np.cumsum(steps, axis=1)
    item_log_drift = walk - walk[np.arange(len(item_arrival)), item_arrival][:, None]

  timeline = Timeline(days=days, user_arrival=user_arrival, user_departure=user_departure,
                      item_arrival=item_arrival, item_departure=item_departure,
                      item_log_drift=item_log_drift)
  for day in range(days):
    if not len(timeline.active_users(day)) or not len(timeline.active_items(day)):
      raise ValueError(
          f"WorldConfig: no active {'user' if not len(timeline.active_users(day)) else 'item'}"
          f" on day {day}: user_churn_per_day / item_churn_per_day too high for the "
          "arrivals")
  logging.info("Dynamic world: %d + %d users, %d + %d items arrived over %d days; "
               "%d users and %d items left before the end", users0, new_users, items0,
               new_items, days, int((user_departure < days).sum()),
               int((item_departure < days).sum()))
  return dataclasses.replace(population, users=users, items=items), timeline
