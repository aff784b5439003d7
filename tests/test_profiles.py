"""simulation.profiles: the Ali-CCP-shaped world and the knobs of issue 32.

Oracles: Ali-CCP's published counts written out here (ESMM paper, Table 1), the rates of
the world's own truth (the intercepts are solved to hit the targets), sampled behaviour
within 3 standard errors, and the click weights' algebra in float64.
"""

import dataclasses
import math

import numpy as np
import pytest

from simulation import behaviour as behaviour_lib
from simulation import profiles
from simulation import world as world_lib
from simulation import world_config as config_lib

# ESMM paper, Table 1 (Ali-CCP, training set): users, items, impressions, clicks, buys.
USERS, ITEMS, IMPRESSIONS, CLICKS, CONVERSIONS = 0.4e6, 4.3e6, 84e6, 3.4e6, 18e3


@pytest.fixture(scope="module")
def aliccp_world():
  config = profiles.apply(config_lib.WorldConfig(num_impressions=120_000, seed=11),
                          "aliccp")
  config.validate()
  return world_lib.build_world(config)


def test_aliccp_world_has_the_published_marginals(aliccp_world):
  world = aliccp_world
  n = len(world.exposures)
  assert len(world.population.users.ids) == round(n * USERS / IMPRESSIONS) == 571
  assert len(world.population.items.ids) == round(n * ITEMS / IMPRESSIONS) == 6143
  truth = world.truth
  # The truth's expected rates hit the published ones (intercepts solved per world).
  assert truth["p_click"].mean() == pytest.approx(CLICKS / IMPRESSIONS, rel=1e-9)
  per_click = (truth["p_click"] * truth["p_purchase_given_click"]).sum() / truth[
      "p_click"].sum()
  assert per_click == pytest.approx(CONVERSIONS / CLICKS, rel=1e-9)
  # One draw of behaviour: the click rate within 3 standard errors of Ali-CCP's.
  behaviour = behaviour_lib.sample_behaviour(world)
  ctr = CLICKS / IMPRESSIONS
  assert abs(behaviour.click.mean() - ctr) < 3 * math.sqrt(ctr * (1 - ctr) / n)
  # Sparse after the click, as in Ali-CCP: about 0.5% of clicks buy (default world: 7%).
  expected = truth["p_ctcvr"].sum()
  assert abs(behaviour.purchase.sum() - expected) < 3 * math.sqrt(expected)


def test_default_profile_and_no_knobs_change_nothing():
  config = config_lib.WorldConfig(num_impressions=5000, seed=3)
  assert profiles.apply(config) == config
  assert profiles.apply(config, "default", None, None, None) == config
  explicit = dataclasses.replace(config, num_users=77)
  shaped = profiles.apply(explicit, "aliccp", target_ctr=0.02)
  assert shaped.num_users == 77                       # an explicit --users wins
  assert shaped.num_items == round(5000 * ITEMS / IMPRESSIONS)
  assert shaped.behaviour.target_ctr == 0.02          # an explicit knob wins
  assert shaped.behaviour.target_purchase_per_click == pytest.approx(CONVERSIONS / CLICKS)
  with pytest.raises(ValueError, match="unknown profile 'criteo'; known: default, aliccp"):
    profiles.apply(config, "criteo")
  with pytest.raises(ValueError, match=r"click_signal_share must be in \[0, 1\], got 1.5"):
    profiles.apply(config, click_signal_share=1.5)


def test_click_signal_share_moves_the_make_up_of_the_click_not_its_spread():
  base = config_lib.BehaviourParams()
  total = base.click_match ** 2 + base.click_quality ** 2 + base.click_attractiveness ** 2
  assert profiles.click_signal_share_of(base) == pytest.approx(0.1 / 1.1, rel=1e-12)
  for share in (0.0, 0.25, 0.5, 1.0):
    params = profiles.with_click_signal_share(base, share)
    assert profiles.click_signal_share_of(params) == pytest.approx(share, abs=1e-12)
    assert (params.click_match ** 2 + params.click_quality ** 2
            + params.click_attractiveness ** 2) == pytest.approx(total, rel=1e-12)
    if share > 0:
      assert params.click_match / params.click_quality == pytest.approx(3.0, rel=1e-12)
    assert params.click_attractiveness >= 0.0
  # The default share gives back the default weights.
  again = profiles.with_click_signal_share(base, profiles.click_signal_share_of(base))
  assert again.click_match == pytest.approx(base.click_match, rel=1e-12)
  assert again.click_attractiveness == pytest.approx(base.click_attractiveness, rel=1e-12)


def test_a_larger_click_signal_share_ties_the_click_to_the_purchase():
  """On the world's truth: the correlation over exposures of logit P(click | x) with
  logit P(buy | click, x) rises with the share; clickbait alone makes it negative (it
  lowers the purchase), signal alone positive."""

  def correlation(share):
    config = profiles.apply(config_lib.WorldConfig(num_impressions=20_000, seed=5),
                            click_signal_share=share)
    truth = world_lib.build_world(config).truth
    logit = lambda p: np.log(p) - np.log1p(-p)
    return np.corrcoef(logit(truth["p_click"]),
                       logit(truth["p_purchase_given_click"]))[0, 1]

  low, default, high = (correlation(s) for s in (0.0, 0.1 / 1.1, 1.0))
  assert low < 0.0 < high
  assert low < default < high
