"""The parameters of a simulated world: sizes, time span, logit weights, event delays.

Flow: **simulation.world_config** (this module: `WorldConfig`, filled from the flags of
pipeline.simulate) -> simulation.population + simulation.dynamics + simulation.world
(hidden factors, arrivals and departures, exposures, true probabilities) ->
simulation.behaviour + simulation.delays (sampled events and their times) ->
simulation.writer (raw logs, truth, world.json, which records the config).

A world is *static* (today's worlds: one population, fixed popularity) unless one of the
rates of `DYNAMIC_FIELDS` is > 0, and its purchases follow the *legacy* delay model unless
`delay_model` is "heavy_tailed". A static legacy world draws nothing from the streams added
for the dynamic and delay features and writes exactly the files it wrote before them
(world.json leaves the added settings out while they are at their defaults).
"""

import dataclasses
import datetime
from typing import Tuple

import numpy as np

# Device vocabulary; the device effects of BehaviourParams are aligned with it.
DEVICES = ("android", "ios", "web", "tablet")
DEVICE_SHARES = (0.46, 0.34, 0.15, 0.05)

# Independent random streams, so that e.g. turning corruption on leaves the clean world
# unchanged.
# SeedSequence.spawn keys its children by index, so names are only ever appended: the
# first five streams are the same whatever follows them.
RNG_STREAMS = ("population", "exposures", "behaviour", "corruption", "layout",
               "arrivals", "churn", "drift", "delays")
DELAY_MODELS = ("legacy", "heavy_tailed")
# The settings that make a world dynamic (simulation.dynamics); all 0 = a static world.
DYNAMIC_FIELDS = ("new_users_per_day", "new_items_per_day", "user_churn_per_day",
                  "item_churn_per_day", "popularity_drift")
# Settings added with the dynamic world and the heavy-tailed delays: world.json leaves
# them out of a static legacy world's config, so its bytes are the ones written before.
ADDED_FIELDS = DYNAMIC_FIELDS + ("delay_model", "conversion_delay")


def rng_stream(seed: int, name: str) -> np.random.Generator:
  """The numpy Generator of one named stream (see RNG_STREAMS) of a seed."""
  children = np.random.SeedSequence(seed).spawn(len(RNG_STREAMS))
  return np.random.default_rng(children[RNG_STREAMS.index(name)])


@dataclasses.dataclass(frozen=True)
class BehaviourParams:
  """Target rates and weights of the logits of the post-click graph (simulation.world).

  Factor weights multiply hidden factors of about unit scale; `*_lift_*` are logit gaps
  (> 0); device effects are aligned with DEVICES; hour effects are
  amplitude * cos(2 pi (hour - peak) / 24). The intercepts are not parameters: each is
  solved so that the world's mean rates hit the targets (`simulation.world.calibrate_intercept`),
  whatever the seed and the size:
    target_ctr                = mean p_click over exposures
    target_micro_per_click    = E[p_micro_given_click | click]
    target_action_per_click   = E[p_action_given_click | click]
    target_purchase_per_click = E[p_purchase_given_click | click]   (naive CVR)
  """

  target_ctr: float = 0.045
  target_micro_per_click: float = 0.30
  target_action_per_click: float = 0.12
  target_purchase_per_click: float = 0.07
  click_match: float = 0.3
  click_attractiveness: float = 1.0
  click_quality: float = 0.1
  click_activity: float = 0.3
  click_log_position: float = -0.35
  micro_match: float = 0.35
  micro_quality: float = 0.3
  micro_attractiveness: float = -0.6
  micro_research: float = 0.45
  macro_match: float = 0.35
  macro_quality: float = 0.3
  macro_attractiveness: float = -0.6
  macro_intent: float = 0.45
  macro_price: float = -0.25
  macro_lift_from_micro: float = 1.3
  purchase_match: float = 0.25
  purchase_quality: float = 0.35
  purchase_attractiveness: float = -0.6
  purchase_intent: float = 0.45
  purchase_price: float = -0.45
  purchase_lift_from_macro: float = 2.6
  price_sensitivity_spread: float = 0.4
  device_click: Tuple[float, ...] = (0.0, 0.1, -0.2, 0.05)
  device_micro: Tuple[float, ...] = (0.0, 0.05, 0.4, 0.25)
  device_purchase: Tuple[float, ...] = (0.0, 0.2, -0.1, 0.1)
  hour_click_amplitude: float = 0.15
  hour_click_peak: int = 21
  hour_purchase_amplitude: float = 0.2
  hour_purchase_peak: int = 20


@dataclasses.dataclass(frozen=True)
class EventTiming:
  """Delays of the behaviour events, log-normal: median seconds and log-space sigma.

  Click follows the impression, micro events the click, macro events the last micro
  event (or the click), the purchase the last macro event (or the click). A purchase is
  "late" with probability `WorldConfig.late_purchase_fraction`: it lands 1 minute to 2
  days after the attribution window has closed; every other event lands inside it.
  """

  click_median_s: float = 12.0
  click_sigma: float = 1.0
  micro_median_s: float = 40.0
  micro_sigma: float = 1.0
  macro_median_s: float = 120.0
  macro_sigma: float = 1.2
  purchase_median_s: float = 1800.0
  purchase_sigma: float = 1.3
  late_min_s: int = 60
  late_max_s: int = 2 * 86400


@dataclasses.dataclass(frozen=True)
class ConversionDelay:
  """The heavy-tailed purchase delay (delay_model "heavy_tailed", simulation.delays).

  The delay D from the click to the purchase is log-normal with a per-exposure median:
    median(x) = median_s * exp(price_weight * price_z(item) + intent_weight * intent(user))
    log D ~ Normal(log median(x), sigma^2)
  price_z is the item's standardised log price and intent the user's hidden purchase
  intent (both about unit scale, simulation.population): dearer items take longer, keen
  buyers are quicker. With the defaults (purchase-weighted over a default world, from the
  CDF) about 67% of purchases land after 1 hour, 10-11% after 1 day and 1% after 7 days;
  `sigma` is the tail's knob: 0.8 / 1.2 / 2.4 / 3.0 give 0.4% / 3% / 16% / 22% after a day.
  """

  median_s: float = 3 * 3600.0
  sigma: float = 1.8
  price_weight: float = 0.3
  intent_weight: float = -0.3


@dataclasses.dataclass(frozen=True)
class WorldConfig:
  """Everything that defines a simulated world; same config -> same world.

  Attributes:
    num_impressions: exposures to generate.
    seed: seeds every random stream (see RNG_STREAMS).
    num_users, num_items, num_brands: population sizes; 0 = scale with num_impressions
      (see `users`, `items`, `brands`).
    num_categories: item categories (the first 60 have names, then category_NNN).
    latent_dim: size of the user and item taste vectors.
    days: impressions are spread uniformly over this many UTC days ...
    start_date: ... from this date's midnight (YYYY-MM-DD, UTC).
    max_position: positions are 1..max_position.
    user_zipf_exponent, item_zipf_exponent: popularity skew, weight ~ 1 / rank^exponent.
    preferred_category_share: share of exposures drawn from the user's preferred
      categories (the rest by global item popularity).
    late_purchase_fraction: probability that a purchase lands after the attribution
      window (the truth stays the generative probability; Beam labels miss them). Legacy
      delay model only: must be 0 with "heavy_tailed".
    attribution_window_s: the label pipeline's window (data.attribution_window_s).
    behaviour: target rates and logit weights of the post-click graph.
    timing: event delays.
    new_users_per_day, new_items_per_day: expected arrivals on each day after the first,
      as a share of the initial population (Poisson counts; simulation.dynamics).
    user_churn_per_day, item_churn_per_day: daily probability that an active user / item
      stops appearing for good (after each of its days).
    popularity_drift: std of the daily Gaussian step of a random walk on each item's log
      popularity.
    delay_model: "legacy" (purchases within the window but for a `late_purchase_fraction`
      that lands after it) or "heavy_tailed" (`conversion_delay`; a purchase lands after
      the window when its delay says so).
    conversion_delay: the heavy-tailed delay's median, sigma and feature weights.
  """

  num_impressions: int = 200_000
  seed: int = 42
  num_users: int = 0
  num_items: int = 0
  num_categories: int = 48
  num_brands: int = 0
  latent_dim: int = 8
  days: int = 8
  start_date: str = "2026-01-01"
  max_position: int = 30
  user_zipf_exponent: float = 0.8
  item_zipf_exponent: float = 1.0
  preferred_category_share: float = 0.6
  late_purchase_fraction: float = 0.02
  attribution_window_s: int = 86400
  behaviour: BehaviourParams = dataclasses.field(default_factory=BehaviourParams)
  timing: EventTiming = dataclasses.field(default_factory=EventTiming)
  new_users_per_day: float = 0.0
  new_items_per_day: float = 0.0
  user_churn_per_day: float = 0.0
  item_churn_per_day: float = 0.0
  popularity_drift: float = 0.0
  delay_model: str = "legacy"
  conversion_delay: ConversionDelay = dataclasses.field(default_factory=ConversionDelay)

  @property
  def is_dynamic(self) -> bool:
    """True when users or items arrive or leave, or popularity drifts."""
    return any(getattr(self, name) > 0 for name in DYNAMIC_FIELDS)

  @property
  def heavy_tailed(self) -> bool:
    """True with the heavy-tailed purchase delays."""
    return self.delay_model == "heavy_tailed"

  def as_record(self) -> dict:
    """The config as world.json records it: every field, but ADDED_FIELDS only when the
    world is dynamic or heavy-tailed (a reader takes their defaults when absent)."""
    record = dataclasses.asdict(self)
    if not (self.is_dynamic or self.heavy_tailed):
      for name in ADDED_FIELDS:
        del record[name]
    return record

  @property
  def users(self) -> int:
    """Number of users: `num_users`, else max(200, num_impressions // 40)."""
    return self.num_users or max(200, self.num_impressions // 40)

  @property
  def items(self) -> int:
    """Number of items: `num_items`, else max(2 * num_categories, 100, impressions // 100)."""
    return self.num_items or max(2 * self.num_categories, 100, self.num_impressions // 100)

  @property
  def brands(self) -> int:
    """Number of brands: `num_brands`, else max(num_categories, items // 10)."""
    return self.num_brands or max(self.num_categories, self.items // 10)

  @property
  def start_timestamp(self) -> int:
    """`start_date` midnight UTC as unix seconds."""
    day = datetime.date.fromisoformat(self.start_date)
    return int(datetime.datetime(day.year, day.month, day.day,
                                 tzinfo=datetime.timezone.utc).timestamp())

  def validate(self) -> None:
    """Raises ValueError naming the first invalid setting."""
    checks = (
        (self.num_impressions > 0, "num_impressions must be > 0"),
        (min(self.num_users, self.num_items, self.num_brands) >= 0,
         "num_users, num_items and num_brands must be >= 0 (0 = automatic)"),
        (self.num_categories >= 2, "num_categories must be >= 2"),
        (self.items >= self.num_categories, "num_items must be >= num_categories"),
        (self.brands >= self.num_categories, "num_brands must be >= num_categories"),
        (self.users >= 1, "num_users must be >= 1"),
        (self.latent_dim >= 1, "latent_dim must be >= 1"),
        (self.days >= 1, "days must be >= 1"),
        (self.max_position >= 1, "max_position must be >= 1"),
        (0.0 <= self.preferred_category_share <= 1.0,
         "preferred_category_share must be in [0, 1]"),
        (0.0 <= self.late_purchase_fraction <= 1.0,
         "late_purchase_fraction must be in [0, 1]"),
        (self.attribution_window_s > 0, "attribution_window_s must be > 0"),
        (all(0.0 < rate < 1.0 for rate in (
            self.behaviour.target_ctr, self.behaviour.target_micro_per_click,
            self.behaviour.target_action_per_click,
            self.behaviour.target_purchase_per_click)),
         "behaviour target rates must be in (0, 1)"),
        (all(getattr(self, name) >= 0 for name in DYNAMIC_FIELDS),
         f"{', '.join(DYNAMIC_FIELDS)} must be >= 0"),
        (self.user_churn_per_day < 1 and self.item_churn_per_day < 1,
         "user_churn_per_day and item_churn_per_day must be < 1"),
        (self.delay_model in DELAY_MODELS,
         f"delay_model must be one of {DELAY_MODELS}, got {self.delay_model!r}"),
        (not self.heavy_tailed or self.late_purchase_fraction == 0,
         "late_purchase_fraction must be 0 with delay_model heavy_tailed (its delays decide "
         f"which purchases land after the window), got {self.late_purchase_fraction}"),
        (self.conversion_delay.median_s > 0 and self.conversion_delay.sigma > 0,
         "conversion_delay median_s and sigma must be > 0"),
        (len(self.behaviour.device_click) == len(DEVICES)
         and len(self.behaviour.device_micro) == len(DEVICES)
         and len(self.behaviour.device_purchase) == len(DEVICES),
         f"device effects need one value per device {DEVICES}"),
    )
    for ok, message in checks:
      if not ok:
        raise ValueError(f"WorldConfig: {message}")
    try:
      self.start_timestamp  # pylint: disable=pointless-statement
    except ValueError as e:
      raise ValueError(f"WorldConfig: start_date must be YYYY-MM-DD: {e}") from e
