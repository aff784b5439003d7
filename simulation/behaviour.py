"""Sampled behaviour: clicks, micro and macro behaviours, purchases and their events.

Flow: simulation.world (true probabilities) -> **simulation.behaviour** (one draw of the
post-click graph per impression, and the timestamped events it emits) ->
simulation.writer (events files) -> pipeline.preprocess (labels).

Per impression, walking the graph with the world's probabilities:
  click    ~ Bernoulli(p_click)
  micro    ~ click and Bernoulli(p_micro_given_click); emits one or more of view_reviews /
             view_specs / chat_seller / view_images (a first one by MICRO_EVENT_SHARES,
             each other one with probability EXTRA_MICRO_EVENT_PROBABILITY)
  action   ~ click and Bernoulli(p_macro_given_micro if micro else p_macro_given_no_micro);
             emits cart, favorite or both (MACRO_EVENT_SHARES)
  purchase ~ click and Bernoulli(p_purchase_given_macro if action else
             p_purchase_given_no_macro); emits purchase
  late     ~ purchase and Bernoulli(late_purchase_fraction): the purchase event lands after
             the attribution window (see `EventTiming`); delay model "legacy" only.
With delay_model "heavy_tailed" the purchase lands a log-normal, feature-dependent delay
after the click (simulation.delays, its own "delays" stream), and it is late when that
puts it after the window; every draw before it (clicks, purchases, micro and macro
events) is the legacy world's of the same seed.
Event timestamps follow the graph: impression < click < micro events < macro events <=
purchase (ties possible only when a delay is clipped to the window's end).
"""

import dataclasses

from absl import logging
import numpy as np

from simulation import delays as delays_lib
from simulation import world as world_lib
from simulation import world_config as config_lib

EVENT_TYPES = ("click", "view_reviews", "view_specs", "chat_seller", "view_images",
               "cart", "favorite", "purchase")
CLICK_EVENTS = ("click",)
MICRO_EVENTS = ("view_reviews", "view_specs", "chat_seller", "view_images")
MACRO_EVENTS = ("cart", "favorite")
PURCHASE_EVENTS = ("purchase",)
MICRO_EVENT_SHARES = (0.30, 0.20, 0.10, 0.40)     # the first micro event's type
EXTRA_MICRO_EVENT_PROBABILITY = 0.25              # each further micro event type
MACRO_EVENT_SHARES = (0.55, 0.30, 0.15)           # cart only, favorite only, both


@dataclasses.dataclass
class Behaviour:
  """One draw of the post-click graph for every exposure of a World.

  Attributes:
    click, micro, action, purchase: [n] bool, per exposure (row order of the world's
      exposures); micro, action and purchase imply click.
    late_purchase: [n] bool, purchases whose event lands after the attribution window.
    click_timestamp, purchase_timestamp: [n] int64 unix seconds of the exposure's click
      and purchase event, 0 where there is none.
    event_row: [e] int64, the exposure (row) each event belongs to.
    event_timestamp: [e] int64 unix seconds.
    event_type: [e] int64 index into EVENT_TYPES.
    Events are sorted by (timestamp, row, type).
  """

  click: np.ndarray
  micro: np.ndarray
  action: np.ndarray
  purchase: np.ndarray
  late_purchase: np.ndarray
  click_timestamp: np.ndarray
  purchase_timestamp: np.ndarray
  event_row: np.ndarray
  event_timestamp: np.ndarray
  event_type: np.ndarray

  def event_counts(self) -> dict:
    """Event type -> number of events."""
    counts = np.bincount(self.event_type, minlength=len(EVENT_TYPES))
    return {name: int(count) for name, count in zip(EVENT_TYPES, counts)}


def _delays(rng: np.random.Generator, size: int, median_s: float, sigma: float) -> np.ndarray:
  """[size] int64 log-normal delays in whole seconds, at least 1."""
  return np.maximum(np.ceil(rng.lognormal(np.log(median_s), sigma, size)), 1).astype(np.int64)


def _type_code(name: str) -> int:
  return EVENT_TYPES.index(name)


def sample_behaviour(world: world_lib.World) -> Behaviour:
  """Samples clicks, micro/macro behaviours and purchases and their events.

  Deterministic given the world's config (its own random stream).
  """
  config, truth = world.config, world.truth
  timing = config.timing
  rng = config_lib.rng_stream(config.seed, "behaviour")
  n = len(world.exposures)
  impression_ts = world.exposures.timestamp
  window_end = impression_ts + config.attribution_window_s

  click = rng.random(n) < truth["p_click"]
  micro = click & (rng.random(n) < truth["p_micro_given_click"])
  p_action = np.where(micro, truth["p_macro_given_micro"], truth["p_macro_given_no_micro"])
  action = click & (rng.random(n) < p_action)
  p_purchase = np.where(action, truth["p_purchase_given_macro"],
                        truth["p_purchase_given_no_macro"])
  purchase = click & (rng.random(n) < p_purchase)
  late = purchase & (rng.random(n) < config.late_purchase_fraction)

  rows, stamps, types = [], [], []

  def emit(event_rows, event_stamps, event_types):
    rows.append(event_rows)
    stamps.append(event_stamps)
    types.append(np.broadcast_to(event_types, event_rows.shape).astype(np.int64))

  # Click.
  click_rows = np.flatnonzero(click)
  click_ts = np.zeros(n, dtype=np.int64)
  click_ts[click_rows] = np.minimum(
      impression_ts[click_rows] + _delays(rng, len(click_rows), timing.click_median_s,
                                          timing.click_sigma), window_end[click_rows])
  emit(click_rows, click_ts[click_rows], _type_code("click"))

  # Micro: a first type plus independent extra types, each after the click.
  micro_rows = np.flatnonzero(micro)
  first = rng.choice(len(MICRO_EVENTS), len(micro_rows), p=MICRO_EVENT_SHARES)
  chosen = rng.random((len(micro_rows), len(MICRO_EVENTS))) < EXTRA_MICRO_EVENT_PROBABILITY
  chosen[np.arange(len(micro_rows)), first] = True
  micro_delays = np.stack([_delays(rng, len(micro_rows), timing.micro_median_s,
                                   timing.micro_sigma) for _ in MICRO_EVENTS], axis=1)
  micro_ts = np.minimum(click_ts[micro_rows, None] + micro_delays,
                        window_end[micro_rows, None])
  before_macro = click_ts.copy()
  before_macro[micro_rows] = np.where(chosen, micro_ts, 0).max(axis=1)
  for k, name in enumerate(MICRO_EVENTS):
    emit(micro_rows[chosen[:, k]], micro_ts[chosen[:, k], k], _type_code(name))

  # Macro: cart, favorite or both, after the last micro event (or the click).
  action_rows = np.flatnonzero(action)
  kind = rng.choice(len(MACRO_EVENT_SHARES), len(action_rows), p=MACRO_EVENT_SHARES)
  has_cart, has_favorite = kind != 1, kind != 0
  macro_delays = np.stack([_delays(rng, len(action_rows), timing.macro_median_s,
                                   timing.macro_sigma) for _ in MACRO_EVENTS], axis=1)
  macro_ts = np.minimum(before_macro[action_rows, None] + macro_delays,
                        window_end[action_rows, None])
  chosen_macro = np.stack([has_cart, has_favorite], axis=1)
  before_purchase = click_ts.copy()
  before_purchase[action_rows] = np.where(chosen_macro, macro_ts, 0).max(axis=1)
  for k, name in enumerate(MACRO_EVENTS):
    emit(action_rows[chosen_macro[:, k]], macro_ts[chosen_macro[:, k], k], _type_code(name))

  purchase_rows = np.flatnonzero(purchase)
  purchase_ts = np.zeros(n, dtype=np.int64)
  if config.heavy_tailed:
    # A feature-dependent delay after the click, no earlier than the last macro event;
    # late when that is after the window (simulation.delays).
    median = delays_lib.purchase_delay_median(
        config, world.population, world.exposures.user[purchase_rows],
        world.exposures.item[purchase_rows])
    delay = np.maximum(np.ceil(config_lib.rng_stream(config.seed, "delays").lognormal(
        np.log(median), config.conversion_delay.sigma)), 1).astype(np.int64)
    purchase_ts[purchase_rows] = np.maximum(click_ts[purchase_rows] + delay,
                                            before_purchase[purchase_rows])
    late = purchase & (purchase_ts - impression_ts > config.attribution_window_s)
  else:
    # After the last macro event (or the click); late ones after the window.
    on_time_ts = np.minimum(
        before_purchase[purchase_rows] + _delays(rng, len(purchase_rows),
                                                 timing.purchase_median_s,
                                                 timing.purchase_sigma),
        window_end[purchase_rows])
    late_ts = window_end[purchase_rows] + rng.integers(
        timing.late_min_s, timing.late_max_s + 1, len(purchase_rows))
    purchase_ts[purchase_rows] = np.where(late[purchase_rows], late_ts, on_time_ts)
  emit(purchase_rows, purchase_ts[purchase_rows], _type_code("purchase"))

  event_row = np.concatenate(rows)
  event_timestamp = np.concatenate(stamps)
  event_type = np.concatenate(types)
  order = np.lexsort((event_type, event_row, event_timestamp))
  behaviour = Behaviour(click=click, micro=micro, action=action, purchase=purchase,
                        late_purchase=late, click_timestamp=click_ts,
                        purchase_timestamp=purchase_ts, event_row=event_row[order],
                        event_timestamp=event_timestamp[order], event_type=event_type[order])
  clicks = max(int(click.sum()), 1)
  logging.info("Behaviour: %d impressions, %d clicks (CTR %.4f), micro %.3f / action %.3f "
               "/ purchase %.4f per click, %d purchases (%.4f per exposure, %d late), "
               "%d events", n, click.sum(), click.mean(), micro.sum() / clicks,
               action.sum() / clicks, purchase.sum() / clicks, purchase.sum(),
               purchase.mean(), late.sum(), len(event_row))
  return behaviour
