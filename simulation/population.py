"""The population of a simulated world: categories, brands, items and users.

Flow: simulation.world_config -> **simulation.population** (observable attributes and
hidden factors of users and items) -> simulation.world (exposures and true
probabilities) -> simulation.behaviour -> simulation.writer.

Every hidden factor has roughly unit scale; the observable features carry part of each:
  * categories: a taste centre in R^latent_dim, a mean attractiveness, a mean quality, a
    price level and a gender skew; Zipf-like shares of the catalogue.
  * brands: one category each, a quality and a log-price premium.
  * items: category, brand, quality q (category + brand + noise), attractiveness a
    ("clickbait": category + noise), price (log-normal around the category level, up with
    q and the brand premium), rating (1..5, up with q, slightly down with a), taste
    (category centre + noise). Popularity Zipf(item_zipf_exponent) over a random order.
  * users: segment (observable) -> hidden traits intent, activity, price_sensitivity,
    research (segment archetype + noise; age shifts intent up and price sensitivity
    down); gender; five preferred categories (gender-skewed) with weights; taste (weighted
    preferred centres + noise); `user_recent_categories` (0..5, mostly preferred ones);
    a primary device. Popularity Zipf(user_zipf_exponent) over a random order.
Users and items that arrive later in a dynamic world (simulation.dynamics) come from the
same functions, `make_users` and `make_items` (the catalogue's hidden factors are kept in
`CatalogueFactors` for them), with popularity weights from `zipf_arrival_weights`.
"""

import dataclasses
from typing import Callable, List

import numpy as np

from simulation import world_config as config_lib

GENDERS = ("f", "m", "u")
GENDER_SHARES = (0.50, 0.42, 0.08)
SEGMENTS = ("new", "casual", "bargain_hunter", "loyal", "premium", "window_shopper",
            "impulse", "researcher")
SEGMENT_SHARES = (0.12, 0.22, 0.15, 0.12, 0.07, 0.14, 0.08, 0.10)
# Segment archetypes: mean of the traits (intent, activity, price_sensitivity, research).
SEGMENT_TRAITS = (
    (-0.6, -0.2, 0.4, 0.0),
    (-0.3, -0.4, 0.0, -0.3),
    (0.2, 0.4, 1.2, 0.4),
    (0.9, 0.3, -0.3, -0.2),
    (0.7, -0.2, -1.2, 0.3),
    (-0.9, 0.8, 0.3, 0.6),
    (0.4, 0.8, -0.4, -0.8),
    (0.2, -0.3, 0.4, 1.2),
)
TRAIT_NOISE = 0.7                 # std of a user's traits around the segment archetype
CATEGORY_NAMES = (
    "phones", "laptops", "tablets", "headphones", "cameras", "smart_home", "tv_audio",
    "gaming", "wearables", "computer_accessories", "womens_clothing", "mens_clothing",
    "shoes", "bags", "jewelry", "watches", "beauty", "skincare", "fragrance", "hair_care",
    "baby", "toys", "books", "stationery", "sports", "outdoor", "fitness", "cycling",
    "home_decor", "furniture", "kitchen", "bedding", "lighting", "tools", "garden",
    "pet_supplies", "groceries", "snacks", "beverages", "health", "personal_care",
    "cleaning", "auto_parts", "car_electronics", "musical_instruments", "office", "party",
    "crafts", "luggage", "eyewear", "underwear", "socks", "phone_cases", "chargers",
    "storage", "appliances", "coffee", "tea", "supplements", "software")
PREFERRED_CATEGORIES = 5          # preferred categories per user
RECENT_COUNT_SHARES = (0.10, 0.15, 0.20, 0.20, 0.20, 0.15)  # P(0..5 recent categories)
RECENT_FROM_PREFERRED = 0.75      # share of recent categories drawn from preferred ones


@dataclasses.dataclass
class Categories:
  """Category table; index = category number.

  Attributes:
    names: [categories] object str.
    share: [categories] float64, share of the catalogue (sums to 1).
    centre: [categories, latent_dim] float64 taste centres (hidden).
    gender_skew: [categories] float64 in [-1, 1], > 0 leans "f", < 0 leans "m" (hidden).
  """

  names: np.ndarray
  share: np.ndarray
  centre: np.ndarray
  gender_skew: np.ndarray


@dataclasses.dataclass
class Items:
  """Item table; index = item number. Observable columns first, hidden factors after.

  Attributes:
    ids: [items] object str, "i0001234".
    category: [items] int64 index into Categories.
    brand: [items] int64 index into `Population.brand_names`.
    price: [items] float64 > 0, rounded to cents.
    rating: [items] float64 in [1, 5], one decimal.
    popularity: [items] float64, global share of exposures (sums to 1 over the initial
      items; items arriving later, simulation.dynamics, are appended on the same scale).
    quality, attractiveness: [items] float64 hidden factors.
    price_z: [items] float64, standardised log price.
    taste: [items, latent_dim] float64.
  """

  ids: np.ndarray
  category: np.ndarray
  brand: np.ndarray
  price: np.ndarray
  rating: np.ndarray
  popularity: np.ndarray
  quality: np.ndarray
  attractiveness: np.ndarray
  price_z: np.ndarray
  taste: np.ndarray


@dataclasses.dataclass
class Users:
  """User table; index = user number. Observable columns first, hidden factors after.

  Attributes:
    ids: [users] object str, "u0001234".
    age: [users] int64.
    gender: [users] int64 index into GENDERS.
    segment: [users] int64 index into SEGMENTS.
    recent_categories: per user a list of 0..5 distinct category indices.
    primary_device: [users] int64 index into world_config.DEVICES.
    popularity: [users] float64, share of exposures (sums to 1 over the initial users;
      arrivals appended on the same scale).
    intent, activity, price_sensitivity, research: [users] float64 hidden traits.
    preferred_categories: [users, 5] int64 category indices.
    preferred_weights: [users, 5] float64, rows sum to 1, descending.
    taste: [users, latent_dim] float64.
  """

  ids: np.ndarray
  age: np.ndarray
  gender: np.ndarray
  segment: np.ndarray
  recent_categories: List[List[int]]
  primary_device: np.ndarray
  popularity: np.ndarray
  intent: np.ndarray
  activity: np.ndarray
  price_sensitivity: np.ndarray
  research: np.ndarray
  preferred_categories: np.ndarray
  preferred_weights: np.ndarray
  taste: np.ndarray


@dataclasses.dataclass
class CatalogueFactors:
  """The hidden per-category and per-brand parameters items are drawn from; kept so that
  items arriving later (simulation.dynamics) come from the same model.

  Attributes:
    category_attractiveness, category_quality, category_log_price: [categories] float64.
    brand_category: [brands] int64 category of each brand.
    brand_quality, brand_premium: [brands] float64.
    log_price_mean, log_price_std: the initial items' log price moments (price_z scale).
  """

  category_attractiveness: np.ndarray
  category_quality: np.ndarray
  category_log_price: np.ndarray
  brand_category: np.ndarray
  brand_quality: np.ndarray
  brand_premium: np.ndarray
  log_price_mean: float = 0.0
  log_price_std: float = 1.0


@dataclasses.dataclass
class Population:
  """Everything that exists before the first exposure (and, in a dynamic world, the
  users and items arriving later, appended with the next ids: simulation.dynamics)."""

  categories: Categories
  brand_names: np.ndarray
  items: Items
  users: Users
  factors: CatalogueFactors


def concat_rows(first, second):
  """Two Items (or two Users) tables as one: arrays concatenated, lists joined."""
  fields = {}
  for field in dataclasses.fields(first):
    a, b = getattr(first, field.name), getattr(second, field.name)
    fields[field.name] = a + b if isinstance(a, list) else np.concatenate([a, b])
  return type(first)(**fields)


def zipf_weights(n: int, exponent: float, rng: np.random.Generator) -> np.ndarray:
  """[n] float64 weights ~ 1 / rank^exponent over a random order, summing to 1."""
  ranks = rng.permutation(n) + 1.0
  weights = ranks ** -exponent
  return weights / weights.sum()


def zipf_arrival_weights(n: int, population: int, exponent: float,
                         rng: np.random.Generator) -> np.ndarray:
  """[n] float64 weights of entities arriving into a population of `population` initial
  ones: each takes the weight of a uniformly drawn initial rank, on the initial scale
  (rank^-exponent / sum_{k <= population} k^-exponent), so it is as popular as a random
  initial entity."""
  norm = np.sum(np.arange(1.0, population + 1.0) ** -exponent)
  return (rng.integers(1, population + 1, n) + 0.0) ** -exponent / norm


def categorical_rows(weights: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """One draw per row of [n, k] weights (rows sum to 1) -> [n] int64 column index."""
  cumulative = np.cumsum(weights, axis=1)
  draws = rng.random(len(weights))[:, None]
  return np.minimum((draws > cumulative).sum(axis=1), weights.shape[1] - 1)


def _category_names(num_categories: int) -> np.ndarray:
  names = list(CATEGORY_NAMES[:num_categories])
  names += [f"category_{k:03d}" for k in range(len(names), num_categories)]
  return np.array(names, dtype=object)


def _make_catalogue(config: config_lib.WorldConfig, rng: np.random.Generator):
  """Categories, brand names and the hidden catalogue factors (module docstring)."""
  num_categories, num_brands = config.num_categories, config.brands
  categories = Categories(
      names=_category_names(num_categories),
      share=zipf_weights(num_categories, 0.7, rng),
      centre=rng.normal(size=(num_categories, config.latent_dim)),
      gender_skew=rng.uniform(-1.0, 1.0, num_categories))
  category_attractiveness = rng.normal(0.0, 0.6, num_categories)
  category_quality = rng.normal(0.0, 0.5, num_categories)
  category_log_price = rng.normal(3.4, 0.8, num_categories)
  # Every category has at least one brand; the rest follow the shares.
  brand_category = np.concatenate([
      np.arange(num_categories),
      rng.choice(num_categories, num_brands - num_categories, p=categories.share)])
  factors = CatalogueFactors(
      category_attractiveness=category_attractiveness, category_quality=category_quality,
      category_log_price=category_log_price, brand_category=brand_category,
      brand_quality=rng.normal(0.0, 0.6, num_brands),
      brand_premium=rng.normal(0.0, 0.3, num_brands))
  brand_names = np.array([f"b{k:05d}" for k in range(num_brands)], dtype=object)
  return categories, brand_names, factors


def make_items(config: config_lib.WorldConfig, categories: Categories,
               factors: CatalogueFactors, category: np.ndarray, first_id: int,
               popularity: Callable[[np.random.Generator], np.ndarray],
               rng: np.random.Generator, initial: bool = False) -> Items:
  """Items of the given categories (module docstring), ids from `first_id` on.

  Args:
    category: [m] int64 category of each new item.
    popularity: rng -> [m] popularity weights, drawn after the rating, before the taste.
    factors: the catalogue; price_z is standardised with its log price moments ...
    initial: ... or, for the initial items, with their own (which define those moments).
  """
  num_items = len(category)
  brand_category = factors.brand_category
  brands_by_category = np.argsort(brand_category, kind="stable")
  brands_per_category = np.bincount(brand_category, minlength=config.num_categories)
  first_brand = np.concatenate([[0], np.cumsum(brands_per_category)[:-1]])
  # Brand inside the category, skewed toward the category's first brands.
  slot = np.floor(rng.random(num_items) ** 1.5 * brands_per_category[category])
  brand = brands_by_category[first_brand[category] + slot.astype(np.int64)]

  quality = (factors.category_quality[category] + factors.brand_quality[brand]
             + rng.normal(0.0, 0.7, num_items))
  attractiveness = factors.category_attractiveness[category] + rng.normal(0.0, 0.8,
                                                                          num_items)
  log_price = (factors.category_log_price[category] + factors.brand_premium[brand]
               + 0.25 * quality + rng.normal(0.0, 0.45, num_items))
  price = np.maximum(np.round(np.exp(log_price), 2), 0.5)
  log_price = np.log(price)
  rating = np.clip(np.round(3.9 + 0.45 * quality - 0.15 * attractiveness
                            + rng.normal(0.0, 0.35, num_items), 1), 1.0, 5.0)
  if initial:
    price_mean, price_std = log_price.mean(), max(log_price.std(), 1e-12)
  else:
    price_mean, price_std = factors.log_price_mean, factors.log_price_std
  return Items(
      ids=np.array([f"i{k:07d}" for k in range(first_id, first_id + num_items)],
                   dtype=object),
      category=category, brand=brand, price=price, rating=rating,
      popularity=popularity(rng),
      quality=quality, attractiveness=attractiveness,
      price_z=(log_price - price_mean) / price_std,
      taste=0.8 * categories.centre[category] + 0.6 * rng.normal(
          size=(num_items, config.latent_dim)))


def _make_items(config: config_lib.WorldConfig, rng: np.random.Generator):
  """Categories, brand names, catalogue factors and the initial items."""
  categories, brand_names, factors = _make_catalogue(config, rng)
  num_categories = config.num_categories
  # Every category has at least one item; the rest follow the shares.
  category = rng.permutation(np.concatenate([
      np.arange(num_categories),
      rng.choice(num_categories, config.items - num_categories, p=categories.share)]))
  items = make_items(config, categories, factors, category, 0,
                     lambda r: zipf_weights(config.items, config.item_zipf_exponent, r),
                     rng, initial=True)
  log_price = np.log(items.price)
  factors.log_price_mean, factors.log_price_std = (float(log_price.mean()),
                                                   max(float(log_price.std()), 1e-12))
  return categories, brand_names, factors, items


def make_users(config: config_lib.WorldConfig, categories: Categories, num_users: int,
               first_id: int, popularity: Callable[[np.random.Generator], np.ndarray],
               rng: np.random.Generator) -> Users:
  """Users with segments, traits, preferred categories and taste (module docstring).

  Args:
    num_users: how many; ids from `first_id` on.
    popularity: rng -> [num_users] popularity weights, drawn after the primary device.
  """
  num_categories = config.num_categories
  segment = rng.choice(len(SEGMENTS), num_users, p=SEGMENT_SHARES)
  traits = np.asarray(SEGMENT_TRAITS)[segment] + rng.normal(
      0.0, TRAIT_NOISE, (num_users, 4))
  age = np.clip(np.round(17 + rng.gamma(4.0, 5.0, num_users)), 16, 75).astype(np.int64)
  age_z = (age - 37.0) / 12.0
  gender = rng.choice(len(GENDERS), num_users, p=GENDER_SHARES)
  gender_sign = np.array([1.0, -1.0, 0.0])[gender]

  # Preferred categories: Gumbel top-k on log share + gender skew.
  keys = (np.log(categories.share)[None, :]
          + 0.7 * gender_sign[:, None] * categories.gender_skew[None, :]
          + rng.gumbel(size=(num_users, num_categories)))
  top = min(PREFERRED_CATEGORIES, num_categories)
  preferred = np.argsort(-keys, axis=1, kind="stable")[:, :top]
  preferred_weights = -np.sort(-rng.dirichlet(np.full(top, 0.8), num_users), axis=1)
  taste = (np.einsum("uk,ukd->ud", preferred_weights, categories.centre[preferred])
           + 0.5 * rng.normal(size=(num_users, config.latent_dim)))

  # Recent categories: mostly preferred ones (by weight), some by catalogue share.
  max_recent = len(RECENT_COUNT_SHARES) - 1
  counts = rng.choice(len(RECENT_COUNT_SHARES), num_users, p=RECENT_COUNT_SHARES)
  slots = np.stack([categorical_rows(preferred_weights, rng) for _ in range(max_recent)],
                   axis=1)
  from_preferred = np.take_along_axis(preferred, slots, axis=1)
  from_all = rng.choice(num_categories, (num_users, max_recent), p=categories.share)
  use_preferred = rng.random((num_users, max_recent)) < RECENT_FROM_PREFERRED
  candidates = np.where(use_preferred, from_preferred, from_all).tolist()
  recent = [list(dict.fromkeys(row[:count])) for row, count in zip(candidates, counts)]

  return Users(
      ids=np.array([f"u{k:07d}" for k in range(first_id, first_id + num_users)],
                   dtype=object),
      age=age, gender=gender, segment=segment, recent_categories=recent,
      primary_device=rng.choice(len(config_lib.DEVICES), num_users,
                                p=config_lib.DEVICE_SHARES),
      popularity=popularity(rng),
      intent=traits[:, 0] + 0.25 * age_z, activity=traits[:, 1],
      price_sensitivity=traits[:, 2] - 0.25 * age_z, research=traits[:, 3],
      preferred_categories=preferred, preferred_weights=preferred_weights, taste=taste)


def make_population(config: config_lib.WorldConfig) -> Population:
  """Categories, brands, items and users; deterministic given the config's seed."""
  rng = config_lib.rng_stream(config.seed, "population")
  categories, brand_names, factors, items = _make_items(config, rng)
  users = make_users(config, categories, config.users, 0,
                     lambda r: zipf_weights(config.users, config.user_zipf_exponent, r), rng)
  return Population(categories=categories, brand_names=brand_names, items=items,
                    users=users, factors=factors)
