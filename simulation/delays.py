"""Heavy-tailed purchase delays: their per-exposure medians and the in-window probability.

Flow: simulation.world (exposures, population) -> **simulation.delays** ->
simulation.behaviour (draws each purchase's delay from `purchase_delay_median`) and
simulation.truth (the truth column `p_purchase_in_window`, which simulation.truth.label_truth
multiplies into the purchase probabilities) -> evaluation, delayed-feedback training.

Only with `WorldConfig.delay_model == "heavy_tailed"` (WorldConfig.conversion_delay):
  median(x) = median_s * exp(price_weight * price_z(item) + intent_weight * intent(user))
  purchase delay after the click D = max(ceil(exp(log median(x) + sigma * N(0, 1))), 1) s
  purchase timestamp = max(click timestamp + D, the last macro event's timestamp)
The purchase is labelled (its final label is 1) when it lands inside the attribution
window: purchase timestamp - impression timestamp <= W. The macro events are clipped to
the window (simulation.behaviour), so this holds exactly when C + D <= W, where C is the
click's delay after the impression (log-normal, EventTiming.click_median_s / click_sigma,
at least 1 s, clipped to W). Hence

  p_purchase_in_window(x) = P(C + D <= W | purchase, x)
                          = E_C[ Phi((log(W - C) - log median(x)) / sigma) ]   (0 if C >= W)

with the expectation over C taken by Gauss-Hermite quadrature (QUADRATURE_POINTS nodes of
its log-normal; the rounding of C to whole seconds is ignored, it moves W - C by < 1 s).
"""

import math

import numpy as np

from simulation import population as population_lib
from simulation import world_config as config_lib

QUADRATURE_POINTS = 24


def purchase_delay_median(config: config_lib.WorldConfig,
                          population: population_lib.Population, user: np.ndarray,
                          item: np.ndarray) -> np.ndarray:
  """[n] float64 median purchase delay in seconds of exposures of (user [n], item [n])
  (module docstring)."""
  delay = config.conversion_delay
  price_z = population.items.price_z[item]
  intent = population.users.intent[user]
  return delay.median_s * np.exp(delay.price_weight * price_z + delay.intent_weight * intent)


# erfc(x) = t exp(-x^2 + P(t)), t = 1 / (1 + |x| / 2), for x >= 0: Numerical Recipes'
# Chebyshev fit (erfcc), relative error < 1.2e-7 everywhere (scipy is not a dependency).
_ERFC_COEFFICIENTS = (-1.26551223, 1.00002368, 0.37409196, 0.09678418, -0.18628806,
                      0.27886807, -1.13520398, 1.48851587, -0.82215223, 0.17087277)


def normal_cdf(z: np.ndarray) -> np.ndarray:
  """Elementwise standard normal CDF, float64, relative error < 1.2e-7 in both tails."""
  x = -np.asarray(z, np.float64) / math.sqrt(2.0)
  t = 1.0 / (1.0 + 0.5 * np.abs(x))
  polynomial = np.zeros_like(t)
  for coefficient in reversed(_ERFC_COEFFICIENTS):
    polynomial = polynomial * t + coefficient
  tail = t * np.exp(-x * x + polynomial)
  return 0.5 * np.where(x >= 0, tail, 2.0 - tail)


def purchase_in_window_probability(config: config_lib.WorldConfig,
                                   population: population_lib.Population,
                                   user: np.ndarray, item: np.ndarray) -> np.ndarray:
  """[n] float64 P(a purchase lands inside the attribution window | purchase, x) of
  exposures of (user [n], item [n])."""
  window = float(config.attribution_window_s)
  nodes, weights = np.polynomial.hermite_e.hermegauss(QUADRATURE_POINTS)
  weights = weights / weights.sum()
  click_delay = np.clip(np.exp(np.log(config.timing.click_median_s)
                               + config.timing.click_sigma * nodes), 1.0, window)
  log_median = np.log(purchase_delay_median(config, population, user, item))
  sigma = config.conversion_delay.sigma
  probability = np.zeros(len(log_median))
  for click_s, weight in zip(click_delay, weights):
    if click_s < window:
      probability += weight * normal_cdf((np.log(window - click_s) - log_median) / sigma)
  return probability
