"""Named world profiles and the knobs of the entire-space regime (issue 32).

Flow: pipeline.simulate flags -> **simulation.profiles** (a named profile's settings, then
the knobs `target_purchase_per_click` and `click_signal_share`) -> WorldConfig ->
simulation.world.

A profile fixes what a published data set fixes and leaves the rest to the default world:
  * "default": today's world (WorldConfig's defaults; nothing changes).
  * "aliccp": the marginals of Ali-CCP, the public data set of the ESMM paper (Ma et al.,
    SIGIR 2018, Table 1; the same figures in DeepCVR's data notes, github.com/
    john-james-ai/DeepCVR): 0.4M users, 4.3M items, 84M impressions, 3.4M clicks and 18k
    conversions. Matched: the click rate 3.4M / 84M = 4.05% (`target_ctr`), the
    conversion rate after the click 18k / 3.4M = 0.53% (`target_purchase_per_click`),
    impressions per user 84M / 0.4M = 210 and per item 84M / 4.3M = 19.5 (the catalog
    scales with the impressions in these proportions). Not published, so not matched:
    the number of categories and brands (the default rules: 48 categories, a brand per
    10 items) and the shape of item popularity (the default Zipf(1.0) over items: with
    19.5 impressions per item most of the catalog is a long tail seen a few times).

The knobs (each overrides the profile's value when given):
  * target_purchase_per_click: E[P(buy | click)] over clicks, the post-click sparsity
    (default world 0.07, Ali-CCP 0.0053).
  * click_signal_share s in [0, 1]: how much of the click's signal is the purchase's.
    The click logit's item terms are  m * match + q * quality + a * attractiveness,
    with factors of about unit scale (simulation.population); match and quality raise
    the purchase too, attractiveness ("clickbait") lowers it. With s the weights become
      m^2 + q^2 = s * r^2,  a^2 = (1 - s) * r^2,  m : q as in the default world,
    where r^2 = m^2 + q^2 + a^2 of the default world (1.10), so the click logit's spread
    from these terms is unchanged and only its make-up moves. The default world has
    s = 0.10 / 1.10 = 0.091 (`click_signal_share_of`).
"""

import dataclasses
import math
from typing import Dict, Optional

from simulation import world_config as config_lib

PROFILES = ("default", "aliccp")

# Ali-CCP's published counts (ESMM paper, Table 1): the training set.
ALICCP_COUNTS = {"users": 400_000, "items": 4_300_000, "impressions": 84_000_000,
                 "clicks": 3_400_000, "conversions": 18_000}


@dataclasses.dataclass(frozen=True)
class Profile:
  """What a named profile sets; None = the default world's value.

  Attributes:
    name: one of PROFILES.
    impressions_per_user, impressions_per_item: the catalog as a share of the
      impressions (users = impressions / impressions_per_user, likewise items).
    target_ctr: mean P(click) over exposures.
    target_purchase_per_click: E[P(buy | click) | click].
  """

  name: str
  impressions_per_user: Optional[float] = None
  impressions_per_item: Optional[float] = None
  target_ctr: Optional[float] = None
  target_purchase_per_click: Optional[float] = None


def _aliccp() -> Profile:
  counts = ALICCP_COUNTS
  return Profile(
      name="aliccp",
      impressions_per_user=counts["impressions"] / counts["users"],
      impressions_per_item=counts["impressions"] / counts["items"],
      target_ctr=counts["clicks"] / counts["impressions"],
      target_purchase_per_click=counts["conversions"] / counts["clicks"])


def profile(name: str) -> Profile:
  """The Profile of a name in PROFILES; ValueError naming the known ones otherwise."""
  if name == "default":
    return Profile(name="default")
  if name == "aliccp":
    return _aliccp()
  raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")


def catalog(prof: Profile, impressions: int) -> Dict[str, int]:
  """{"users", "items"} of a profile's world of `impressions` (0 = the default rule)."""
  return {
      "users": (max(1, round(impressions / prof.impressions_per_user))
                if prof.impressions_per_user else 0),
      "items": (max(1, round(impressions / prof.impressions_per_item))
                if prof.impressions_per_item else 0)}


def click_signal_share_of(params: config_lib.BehaviourParams) -> float:
  """(m^2 + q^2) / (m^2 + q^2 + a^2) of the click logit's match, quality and
  attractiveness weights: the share of its item spread that the purchase shares."""
  signal = params.click_match ** 2 + params.click_quality ** 2
  return signal / (signal + params.click_attractiveness ** 2)


def with_click_signal_share(params: config_lib.BehaviourParams, share: float
                            ) -> config_lib.BehaviourParams:
  """`params` with the click weights of `share` (see the module docstring).

  The total r^2 and the match : quality ratio are the default world's, whatever
  `params` holds; attractiveness keeps a non-negative weight (clickbait raises clicks).
  """
  if not 0.0 <= share <= 1.0:
    raise ValueError(f"click_signal_share must be in [0, 1], got {share}")
  base = config_lib.BehaviourParams()
  signal = base.click_match ** 2 + base.click_quality ** 2
  total = signal + base.click_attractiveness ** 2
  scale = math.sqrt(share * total / signal)
  return dataclasses.replace(
      params, click_match=base.click_match * scale, click_quality=base.click_quality * scale,
      click_attractiveness=math.sqrt((1.0 - share) * total))


def apply(config: config_lib.WorldConfig, name: str = "default",
          target_ctr: Optional[float] = None,
          target_purchase_per_click: Optional[float] = None,
          click_signal_share: Optional[float] = None) -> config_lib.WorldConfig:
  """`config` shaped by the profile `name`, then by the knobs given (not None).

  The profile's catalog applies only where `config` leaves users / items at 0
  (automatic): an explicit --users or --items wins. ValueError on an unknown profile
  or a share out of [0, 1].
  """
  prof = profile(name)
  sizes = catalog(prof, config.num_impressions)
  config = dataclasses.replace(config, num_users=config.num_users or sizes["users"],
                               num_items=config.num_items or sizes["items"])
  behaviour = config.behaviour
  ctr = target_ctr if target_ctr is not None else prof.target_ctr
  if ctr is not None:
    behaviour = dataclasses.replace(behaviour, target_ctr=ctr)
  purchase = (target_purchase_per_click if target_purchase_per_click is not None
              else prof.target_purchase_per_click)
  if purchase is not None:
    behaviour = dataclasses.replace(behaviour, target_purchase_per_click=purchase)
  if click_signal_share is not None:
    behaviour = with_click_signal_share(behaviour, click_signal_share)
  return dataclasses.replace(config, behaviour=behaviour)
