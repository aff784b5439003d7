"""The parameters of a simulated world: sizes, time span, logit weights, event delays.

Flow: **simulation.world_config** (this module: `WorldConfig`, filled from the flags of
pipeline.simulate) -> simulation.population + simulation.world (hidden factors, exposures,
true probabilities) -> simulation.behaviour (sampled events) -> simulation.writer (raw
logs, truth, world.json, which records the whole config).
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
RNG_STREAMS = ("population", "exposures", "behaviour", "corruption", "layout")


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
      window (the truth stays the generative probability; Beam labels miss them).
    attribution_window_s: the label pipeline's window (data.attribution_window_s).
    behaviour: target rates and logit weights of the post-click graph.
    timing: event delays.
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
