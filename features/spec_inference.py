"""A starter feature spec and experiment config inferred from a sample of raw logs.

Flow: the user's raw logs (the raw log contract, docs/COMMANDS.md "The raw log contract") ->
**this module** (pipeline.init is its entry point) -> DIR/features.yaml + DIR/config.yaml
-> pipeline.preprocess --config DIR/config.yaml -> pipeline.train -> ...

The steps, each a function a test can call alone:
  * `scan_log`: reads every impression and event file once. The key columns (the
    impressions' `timestamp`, the events' `event`) are tallied over every row with
    pyarrow, so the last day and every event name are those of the whole log; a uniform
    sample of `sample_rows` records (the rows with the smallest hash of (file, row), so
    it spreads over every file and every part of each, however the rows are ordered)
    is kept for the feature statistics.
  * `field_statistics` + `infer_feature`: per impression field, its type (string, int,
    float; scalar or list) and a transform chosen from the sample's statistics:
      - strings, lists, user_id / item_id and ints named as ids (`*_id`): `vocabulary`
        when the estimated number of distinct values in the whole log is at most
        `max_vocabulary`, else `hash` with buckets = the power of two at or above twice
        that estimate (capped by `max_hash_buckets`);
      - other ints with at most MAX_INT_CATEGORIES values (hour, position, ...): the
        same (a vocabulary, in practice);
      - other numbers: `normalize` (dtype float, which takes ints too), with `log1p`
        when they are non-negative and heavy-tailed (skewness > LOG1P_MIN_SKEW, and
        log1p lowers it);
      - booleans, objects, mixed types, constants, bad names: not features (listed).
    The distinct-value estimate is Chao1 (d + f1^2 / (2 f2), f1 / f2 = values seen once /
    twice), exact when the sample is the whole log.
  * `map_event`: event names to the labels click / micro / action / purchase where the
    name says it (click, clk; cart, add_to_cart, fav; buy, order, purchase, conversion;
    ...); the others are listed for the user to map.
  * `split_dates`: data.eval_from = the last UTC day of the impressions,
    train.validation_from = the last day before it.
`render_feature_spec` and `render_config` write the two YAML files, with a comment giving
the reason for every choice; `features.spec.load_feature_spec` and
`configs.config.load_config` load them unchanged.
"""

import collections
import dataclasses
import json
import math
import re
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from absl import logging
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import numpy as np
import pyarrow as pa
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from configs import config as config_lib
from features import spec as spec_lib
from transforms import parse as parse_lib
from transforms import read as read_lib

USER_ID_KEY = spec_lib.USER_ID_KEY
ITEM_ID_KEY = spec_lib.ITEM_ID_KEY
EVENT_KEY = parse_lib.EVENT_KEY

MIN_HASH_BUCKETS = 1 << 10
# An int field with at most this many distinct values (and not an id) is a category.
MAX_INT_CATEGORIES = 64
# A non-negative number whose skewness is above this (and whose log1p is less skewed)
# is heavy-tailed: normalize after log1p.
LOG1P_MIN_SKEW = 2.0
# Timestamps above this are not unix seconds (2286-11-20); milliseconds are ~1.7e12.
MAX_UNIX_SECONDS = 10_000_000_000
# Feature names become Example keys, Keras layer names and signature arguments.
FEATURE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SCAN_BATCH_ROWS = 65536

# The labels pipeline.preprocess derives (configs/config.py LabelConfig), in order, and
# the event names that clearly mean each (compared after `normalize_event_name`).
LABEL_ORDER = ("click", "micro", "action", "purchase")
LABEL_EVENT_NAMES = {
    "click": ("click", "clk", "clicked", "tap", "ad_click", "item_click", "product_click"),
    "micro": ("view_reviews", "view_review", "read_reviews", "view_specs", "view_spec",
              "chat_seller", "chat", "view_images", "zoom_image"),
    "action": ("cart", "add_to_cart", "addtocart", "add_cart", "atc", "basket",
               "add_to_basket", "fav", "favorite", "favourite", "favorited", "wishlist",
               "add_to_wishlist", "like", "save", "bookmark", "collect"),
    "purchase": ("buy", "bought", "order", "ordered", "purchase", "purchased", "conversion",
                 "convert", "converted", "pay", "paid", "payment", "transaction"),
}
# The models of configs/ that need a label beyond click and purchase.
MODELS_NEEDING = {"micro": "hm3", "action": "esm2, esmc, esms, esmg and aitm_action"}
_LABEL_OF_NAME = {name: label for label, names in LABEL_EVENT_NAMES.items() for name in names}


class InferenceError(ValueError):
  """The logs cannot give a starter config; the message names the file or field."""


# ---------------------------------------------------------------------------------------
# Reading: every row's key column, a uniform sample of whole records.


@dataclasses.dataclass
class LogScan:
  """One log (impressions or events) read once.

  Attributes:
    files: the matched files, sorted.
    rows: records read (non-blank lines, Parquet rows).
    unreadable: lines that are not a JSON object (pipeline.preprocess dead-letters them).
    key_counts: value -> rows over every row, of the key column (the impressions' UTC day
      as "YYYY-MM-DD", the events' name); rows whose key is missing or of the wrong type
      are not counted (pipeline.preprocess dead-letters them).
    sample: up to sample_rows records (dicts), uniformly drawn, in a fixed order.
  """

  files: List[str]
  rows: int = 0
  unreadable: int = 0
  key_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  sample: List[Dict[str, Any]] = dataclasses.field(default_factory=list)


def _match_files(patterns: Sequence[str], flag: str) -> List[str]:
  files = []
  for pattern in patterns:
    matched = [m.path for m in FileSystems.match([pattern])[0].metadata_list]
    if not matched:
      raise InferenceError(f"{flag} {pattern}: no file matches")
    files.extend(matched)
  return sorted(set(files))


def _row_keys(file_index: int, rows: np.ndarray, seed: int) -> np.ndarray:
  """uint64 [n]: splitmix64 of (seed, file index, row number), the sample's order."""
  with np.errstate(over="ignore"):
    x = (np.uint64(seed) * np.uint64(0x9E3779B97F4A7C15)
         + (np.uint64(file_index) << np.uint64(40)) + rows.astype(np.uint64))
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


class _BottomK:
  """The k items with the smallest keys among all offered (a uniform sample)."""

  def __init__(self, k: int):
    self.k = k
    self.keys = np.empty(0, dtype=np.uint64)
    self.items: List[Any] = []

  def offer(self, keys: np.ndarray, items_at: Callable[[np.ndarray], List[Any]]) -> None:
    """keys: uint64 [n]; items_at(indices) -> the items at those indices (only called
    for candidates, so the caller builds few)."""
    if self.k <= 0 or not keys.size:
      return
    candidates = (np.flatnonzero(keys < self.keys.max()) if len(self.keys) >= self.k
                  else np.arange(keys.size))
    if not candidates.size:
      return
    all_keys = np.concatenate([self.keys, keys[candidates]])
    all_items = self.items + list(items_at(candidates))
    if all_keys.size > self.k:
      keep = np.argpartition(all_keys, self.k - 1)[:self.k]
      all_keys, all_items = all_keys[keep], [all_items[i] for i in keep]
    self.keys, self.items = all_keys, all_items

  def sorted_items(self) -> List[Any]:
    return [self.items[i] for i in np.argsort(self.keys, kind="stable")]


def _typed_values(values: Iterable[Any], arrow_type: pa.DataType) -> pa.Array:
  """Python values as an int64 / string array, null where missing or of another type
  (what pipeline.preprocess dead-letters)."""
  wanted = int if pa.types.is_integer(arrow_type) else str
  return pa.array([value if isinstance(value, wanted) and not isinstance(value, bool)
                   else None for value in values], type=arrow_type)


def _json_key_column(texts: List[str], key: str, arrow_type: pa.DataType
                     ) -> Tuple[pa.Array, int]:
  """(key column, unreadable lines) of JSON lines: pyarrow's reader, or per line when a
  line is malformed or the key mistyped."""
  options = pa_json.ParseOptions(explicit_schema=pa.schema([(key, arrow_type)]),
                                 unexpected_field_behavior="ignore")
  data = "\n".join(texts).encode("utf-8")
  try:
    table = pa_json.read_json(pa.BufferReader(data), parse_options=options,
                              read_options=pa_json.ReadOptions(block_size=len(data) + 1))
    if table.num_rows == len(texts):
      return table.column(key).combine_chunks(), 0
  except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
    pass
  records = []
  for text in texts:
    try:
      records.append(json.loads(text))
    except ValueError:
      records.append(None)
  unreadable = sum(1 for record in records if not isinstance(record, dict))
  return _typed_values([record.get(key) if isinstance(record, dict) else None
                       for record in records], arrow_type), unreadable


def _tally_in(path: str, tally, column: pa.Array, counts: collections.Counter) -> None:
  """tally(column, counts), its InferenceError prefixed with the file."""
  try:
    tally(column, counts)
  except InferenceError as e:
    raise InferenceError(f"{path}: {e}") from e


def scan_log(patterns: Sequence[str], key: str, arrow_type: pa.DataType,
             tally: Callable[[pa.Array, collections.Counter], None], sample_rows: int,
             seed: int = 0, flag: str = "--impressions") -> LogScan:
  """Reads every file the globs match (JSON Lines, .gz or not, or Parquet; local or gs://).

  Args:
    patterns: globs.
    key: the column tallied over every row; arrow_type: its type (int64 / string).
    tally: adds a batch of the key column (nulls = missing or mistyped) to a Counter.
    sample_rows: records kept for the statistics.
    seed: seeds the sample's row hash.
    flag: the command-line flag the globs came from, for errors.
  """
  scan = LogScan(files=_match_files(patterns, flag))
  sample = _BottomK(sample_rows)
  for file_index, path in enumerate(scan.files):
    if read_lib.is_parquet(path):
      handle = FileSystems.open(path, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED)
      with handle:
        first_row = 1
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=SCAN_BATCH_ROWS):
          rows = np.arange(first_row, first_row + batch.num_rows)
          first_row += batch.num_rows
          scan.rows += batch.num_rows
          index = batch.schema.get_field_index(key)
          column = (batch.column(index) if index >= 0
                    else pa.nulls(batch.num_rows, arrow_type))
          if column.type != arrow_type:
            column = _typed_values(column.to_pylist(), arrow_type)
          _tally_in(path, tally, column, scan.key_counts)
          sample.offer(_row_keys(file_index, rows, seed),
                       lambda picked, b=batch: b.take(pa.array(picked)).to_pylist())
    else:
      with FileSystems.open(path, compression_type=CompressionTypes.AUTO) as handle:
        for lines, texts, _ in read_lib.json_line_batches(handle, SCAN_BATCH_ROWS):
          scan.rows += len(texts)
          column, unreadable = _json_key_column(texts, key, arrow_type)
          scan.unreadable += unreadable
          _tally_in(path, tally, column, scan.key_counts)
          sample.offer(_row_keys(file_index, np.asarray(lines), seed),
                       lambda picked, t=texts: [t[i] for i in picked])
    logging.info("Read %s: %d records so far", path, scan.rows)
  for item in sample.sorted_items():
    if isinstance(item, str):
      try:
        item = json.loads(item)
      except ValueError:
        continue
    if isinstance(item, dict):
      scan.sample.append(item)
  return scan


def tally_days(timestamps: pa.Array, counts: collections.Counter) -> None:
  """Adds impressions per UTC day ("YYYY-MM-DD") of int64 unix-second timestamps.

  Timestamps before 2000-01-01 (parse.MIN_TIMESTAMP, negative ones included) are not
  counted: the job dead-letters them (bad_value), so they must not choose the dates.
  """
  values = timestamps.drop_null().to_numpy(zero_copy_only=False)
  values = values[values >= parse_lib.MIN_TIMESTAMP]
  if values.size and values.max() > MAX_UNIX_SECONDS:
    raise InferenceError(
        f"impression timestamps go up to {int(values.max())}: the raw log contract's "
        f"timestamp is unix seconds (this looks like milliseconds: divide by 1000)")
  days, per_day = np.unique(values // config_lib.DAY_S, return_counts=True)
  for day, count in zip(days.tolist(), per_day.tolist()):
    counts[config_lib.utc_day(day * config_lib.DAY_S)] += count


def tally_values(values: pa.Array, counts: collections.Counter) -> None:
  """Adds rows per distinct non-null value."""
  for entry in values.drop_null().value_counts().to_pylist():
    counts[entry["values"]] += entry["counts"]


# ---------------------------------------------------------------------------------------
# Field statistics and the transform each implies.


@dataclasses.dataclass
class FieldStats:
  """What a sample says about one impression field.

  Attributes:
    name: the field.
    rows: sampled records.
    present: records where the field is present and not null.
    kinds: Counter of the value kinds: "string", "int", "float", "bool", "list", "object".
    element_kinds: the same for list elements (lists only).
    value_counts: Counter of the values (of scalars, or of list elements).
    numbers: the numeric scalar values (float64), for the moments.
    list_lengths: lengths of the list values.
  """

  name: str
  rows: int = 0
  present: int = 0
  kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  element_kinds: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  value_counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  numbers: List[float] = dataclasses.field(default_factory=list)
  list_lengths: List[int] = dataclasses.field(default_factory=list)

  @property
  def distinct(self) -> int:
    return len(self.value_counts)

  @property
  def values_seen(self) -> int:
    return sum(self.value_counts.values())


def _kind(value: Any) -> str:
  if isinstance(value, bool):
    return "bool"
  if isinstance(value, int):
    return "int"
  if isinstance(value, float):
    return "float"
  if isinstance(value, str):
    return "string"
  if isinstance(value, (list, tuple)):
    return "list"
  return "object"


def field_statistics(records: Sequence[Dict[str, Any]]) -> Dict[str, FieldStats]:
  """Per field name (in first-seen order), its statistics over the records."""
  stats: Dict[str, FieldStats] = {}
  for record in records:
    for name, value in record.items():
      field = stats.setdefault(name, FieldStats(name))
      if value is None:
        continue
      field.present += 1
      kind = _kind(value)
      field.kinds[kind] += 1
      if kind == "list":
        field.list_lengths.append(len(value))
        for element in value:
          element_kind = _kind(element)
          field.element_kinds[element_kind] += 1
          if element_kind in ("string", "int", "float"):
            field.value_counts[element] += 1
      elif kind in ("string", "int", "float"):
        field.value_counts[value] += 1
        if kind != "string":
          field.numbers.append(float(value))
  for field in stats.values():
    field.rows = len(records)
  return stats


def estimate_distinct(value_counts: collections.Counter, sample_fraction: float,
                      values_in_log: float) -> int:
  """Distinct values expected in the whole log from a sample's value counts.

  Exact (the sample's count) when the sample is the whole log; else Chao1, d + f1^2 /
  (2 f2) (d + f1 (f1 - 1) / 2 when no value was seen twice), at most the log's values.
  """
  distinct = len(value_counts)
  if sample_fraction >= 1.0:
    return distinct
  seen_once = sum(1 for count in value_counts.values() if count == 1)
  seen_twice = sum(1 for count in value_counts.values() if count == 2)
  if seen_twice:
    estimate = distinct + seen_once * seen_once / (2.0 * seen_twice)
  else:
    estimate = distinct + seen_once * (seen_once - 1) / 2.0
  return int(math.ceil(min(estimate, max(values_in_log, distinct))))


def next_power_of_two(n: float) -> int:
  return 1 << max(0, int(math.ceil(math.log2(max(n, 1)))))


def skewness(values: np.ndarray) -> float:
  """Sample skewness E[(x - mean)^3] / std^3 (0 for a constant), float64."""
  values = np.asarray(values, dtype=np.float64)
  std = values.std()
  if not values.size or std == 0:
    return 0.0
  return float(np.mean(((values - values.mean()) / std) ** 3))


@dataclasses.dataclass(frozen=True)
class FeatureChoice:
  """A field made a feature: its spec entry (a features/spec.py Feature mapping) and why."""

  entry: Dict[str, Any]
  reason: str


@dataclasses.dataclass(frozen=True)
class SkippedField:
  """A field that is not a feature, and why."""

  name: str
  reason: str


@dataclasses.dataclass(frozen=True)
class InferenceOptions:
  """Sizes of the choices (pipeline.init's flags).

  Attributes:
    max_vocabulary: at most this many estimated distinct values -> vocabulary, else hash.
    max_hash_buckets: cap of hash_buckets.
    sample_fraction: sampled records / records in the log (1 = the whole log).
    log_rows: records in the log.
  """

  max_vocabulary: int = config_lib.DEFAULT_MAX_VOCABULARY
  max_hash_buckets: int = config_lib.DEFAULT_MAX_HASH_BUCKETS
  sample_fraction: float = 1.0
  log_rows: int = 0


def _is_id_name(name: str) -> bool:
  """id, user_id, sku_id, userId: a name that says the values are identifiers."""
  return name.lower() == "id" or name.lower().endswith("_id") or name.endswith("Id")


def _dtype(kinds: collections.Counter) -> Optional[str]:
  """The spec dtype that accepts every kind (features/example_codec's coercions: a
  string feature takes ints, a float feature takes ints), or None."""
  present = set(kinds)
  if present <= {"int"}:
    return "int"
  if present <= {"int", "float"}:
    return "float"
  if present <= {"string", "int"}:
    return "string"
  return None


def _group(name: str) -> Optional[str]:
  return {USER_ID_KEY: "user", ITEM_ID_KEY: "item"}.get(name)


def _categorical(field: FieldStats, dtype: str, multivalent: bool,
                 options: InferenceOptions, why: str) -> FeatureChoice:
  """vocabulary or hash, sized from the estimated distinct values in the whole log."""
  values_per_row = field.values_seen / max(field.rows, 1)
  estimate = estimate_distinct(field.value_counts, options.sample_fraction,
                               values_per_row * options.log_rows)
  seen = (f"{field.distinct:,} distinct values in {field.rows:,} sampled rows"
          + ("" if options.sample_fraction >= 1.0 else
             f" (Chao1 estimate {estimate:,} in all {options.log_rows:,} rows)"))
  entry: Dict[str, Any] = {"name": field.name, "dtype": dtype}
  size = next_power_of_two(2 * estimate)
  if estimate <= options.max_vocabulary:
    entry.update(transform="vocabulary", max_tokens=size)
    reason = f"{why}{seen} -> vocabulary, max_tokens {size:,} (2x room)"
  else:
    buckets = min(max(size, MIN_HASH_BUCKETS), options.max_hash_buckets)
    entry.update(transform="hash", hash_buckets=buckets)
    capped = " (capped by --max_hash_buckets)" if buckets < size else ""
    reason = (f"{why}{seen} > {options.max_vocabulary:,} -> hashed, "
              f"2^{buckets.bit_length() - 1} buckets{capped}")
  if multivalent:
    entry.update(multivalent=True, pooling="mean")
    lengths = np.asarray(field.list_lengths)
    reason += (f"; a list (length {lengths.min()}-{lengths.max()}, mean "
               f"{lengths.mean():.1f}), mean-pooled")
  group = _group(field.name)
  if group:
    entry["group"] = group
  return FeatureChoice(entry, reason)


def _numeric(field: FieldStats, dtype: str) -> FeatureChoice:
  """normalize (after log1p when heavy-tailed); dtype float even for ints: a float
  feature takes int values too, while an int one would dead-letter a later 12.5."""
  values = np.asarray(field.numbers, dtype=np.float64)
  skew = skewness(values)
  summary = (("ints in the sample, declared float (takes both); " if dtype == "int" else "")
             + f"min {_number(values.min())}, median {_number(np.median(values))}, "
             f"max {_number(values.max())}, skewness {skew:.1f}")
  entry: Dict[str, Any] = {"name": field.name, "dtype": "float", "transform": "normalize"}
  if values.min() >= 0 and skew > LOG1P_MIN_SKEW:
    log_skew = skewness(np.log1p(values))
    if abs(log_skew) < abs(skew):
      entry["log1p"] = True
      return FeatureChoice(entry, f"{summary} (after log1p {log_skew:.1f}): heavy-tailed "
                                  f"-> normalize after log1p")
  why = ("has negative values" if values.min() < 0 and skew > LOG1P_MIN_SKEW
         else "not heavy-tailed")
  return FeatureChoice(entry, f"{summary}: {why} -> normalize (z-score)")


def _number(value: float) -> str:
  return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def infer_feature(field: FieldStats, options: InferenceOptions,
                  weight_of: Optional[FieldStats] = None):
  """One field -> a FeatureChoice, or a SkippedField saying why it is not a feature.

  Args:
    field: its statistics.
    options: sizes.
    weight_of: the statistics of `<name>__weight` when the sample has that field (a
      list of floats beside a list feature makes it `weighted: true`).
  """
  name = field.name
  coverage = ("" if field.present == field.rows else
              f"present in {field.present:,} of {field.rows:,} sampled rows; ")
  if not FEATURE_NAME.match(name):
    return SkippedField(name, "the name is not [A-Za-z_][A-Za-z0-9_]* (it becomes a Keras "
                              "layer and signature argument name): rename it to use it")
  if not field.present:
    return SkippedField(name, "always null or missing in the sample")
  kinds = field.kinds
  if "object" in kinds:
    return SkippedField(name, "holds JSON objects; features are strings, ints, floats or "
                              "lists of them: flatten it to use it")
  if "bool" in kinds or "bool" in field.element_kinds:
    return SkippedField(name, "holds booleans, not a feature dtype: write 0/1 ints to use it")
  if "list" in kinds and len(kinds) > 1:
    return SkippedField(name, f"a list in {kinds['list']:,} rows and a scalar in "
                              f"{field.present - kinds['list']:,}: make it one or the other")
  multivalent = "list" in kinds
  dtype = _dtype(field.element_kinds if multivalent else kinds)
  if multivalent and not field.element_kinds:
    return SkippedField(name, "every sampled list is empty")
  if dtype is None:
    mixed = ", ".join(sorted(field.element_kinds if multivalent else kinds))
    return SkippedField(name, f"mixes value types ({mixed}): a feature has one dtype")
  if field.distinct == 1:
    only = next(iter(field.value_counts))
    return SkippedField(name, f"one value ({only!r}) in every sampled row: no information")
  if dtype == "float" and multivalent:
    return SkippedField(name, "a list of floats: normalize is for scalars; bucketize it "
                              "or use it as weights (`<list feature>__weight`)")
  if dtype == "string" or multivalent or name in (USER_ID_KEY, ITEM_ID_KEY):
    choice = _categorical(field, dtype, multivalent, options, coverage)
  elif dtype == "int" and (_is_id_name(name) or field.distinct <= MAX_INT_CATEGORIES):
    why = ("an id" if _is_id_name(name) else
           f"an int with at most {MAX_INT_CATEGORIES} values, a category")
    choice = _categorical(field, dtype, multivalent, options, f"{coverage}{why}: ")
  else:
    choice = _numeric(field, dtype)
    choice = FeatureChoice(choice.entry, coverage + choice.reason)
  if weight_of is not None and multivalent:
    weight_kinds = set(weight_of.element_kinds)
    if weight_of.kinds.keys() <= {"list"} and weight_kinds and weight_kinds <= {"int", "float"}:
      entry = dict(choice.entry, weighted=True)
      return FeatureChoice(entry, choice.reason + f"; weighted by {weight_of.name}")
  return choice


def infer_features(stats: Dict[str, FieldStats], options: InferenceOptions,
                   label_names: Sequence[str] = LABEL_ORDER
                   ) -> Tuple[List[FeatureChoice], List[SkippedField]]:
  """Every sampled impression field -> (features in field order, skipped fields)."""
  chosen: List[FeatureChoice] = []
  skipped: List[SkippedField] = []
  for name, field in stats.items():
    if name in (spec_lib.IMPRESSION_ID_KEY, spec_lib.TIMESTAMP_KEY):
      skipped.append(SkippedField(name, "the log contract's key, kept in every Example as "
                                        "metadata"))
      continue
    if name in label_names:
      skipped.append(SkippedField(name, "a label name (labels come from the events)"))
      continue
    if name.endswith(spec_lib.WEIGHT_SUFFIX):
      partner = stats.get(name[:-len(spec_lib.WEIGHT_SUFFIX)])
      if partner is not None and "list" in partner.kinds:
        continue  # The weights of a list feature (`weighted: true` there).
    weight = stats.get(name + spec_lib.WEIGHT_SUFFIX)
    choice = infer_feature(field, options, weight)
    (chosen if isinstance(choice, FeatureChoice) else skipped).append(choice)
  weighted = {c.entry["name"] + spec_lib.WEIGHT_SUFFIX for c in chosen if c.entry.get("weighted")}
  accounted = weighted | {c.entry["name"] for c in chosen} | {s.name for s in skipped}
  for name in stats:
    if name not in accounted:  # `<list>__weight` beside a list that is not weighted
      skipped.append(SkippedField(name, "not the numbers-list weights of a list feature "
                                        f"{name[:-len(spec_lib.WEIGHT_SUFFIX)]}"))
  return chosen, skipped


# ---------------------------------------------------------------------------------------
# Events -> labels.


def normalize_event_name(name: str) -> str:
  """"addToCart" / "Add-To-Cart" / "add to cart" -> "add_to_cart"."""
  snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name.strip())
  return re.sub(r"[^a-z0-9]+", "_", snake.lower()).strip("_")


def map_event(name: str) -> Optional[str]:
  """The label an event name clearly means (LABEL_EVENT_NAMES; a plural "s" dropped), or
  None."""
  normalized = normalize_event_name(name)
  for candidate in (normalized, normalized[:-1] if normalized.endswith("s") else None):
    if candidate in _LABEL_OF_NAME:
      return _LABEL_OF_NAME[candidate]
  return None


@dataclasses.dataclass(frozen=True)
class EventMapping:
  """Event names per label (in LABEL_ORDER, labels without events left out), the names
  mapped to no label, and how many events each name has."""

  events_of: Dict[str, Tuple[str, ...]]
  unmapped: Tuple[str, ...]
  counts: Dict[str, int]
  by_user: Tuple[str, ...] = ()


def map_events(event_counts: Dict[str, int], user_map: Optional[Dict[str, str]] = None
               ) -> EventMapping:
  """Maps every event name: the user's mapping first (name -> label), then `map_event`.

  Raises:
    InferenceError: a user mapping names an unknown label.
  """
  user_map = dict(user_map or {})
  for name, label in user_map.items():
    if label not in LABEL_ORDER:
      raise InferenceError(f"--map_event {name}={label}: the label must be one of "
                           f"{', '.join(LABEL_ORDER)}")
  events_of: Dict[str, List[str]] = collections.defaultdict(list)
  unmapped = []
  for name in sorted(event_counts, key=lambda n: (-event_counts[n], n)):
    label = user_map.get(name) or map_event(name)
    if label is None:
      unmapped.append(name)
    else:
      events_of[label].append(name)
  return EventMapping({label: tuple(events_of[label]) for label in LABEL_ORDER
                       if events_of.get(label)}, tuple(unmapped), dict(event_counts),
                      tuple(sorted(set(user_map) & set(event_counts))))


# ---------------------------------------------------------------------------------------
# Dates.


@dataclasses.dataclass(frozen=True)
class Dates:
  """The split dates from the impressions' days.

  Attributes:
    eval_from: the last day present (data.eval_from).
    validation_from: the last day before it (train.validation_from; the day before
      unless the logs skip it), or None with two days (then validation is a fraction of
      the training day).
    days: impressions per day, in day order.
  """

  eval_from: str
  validation_from: Optional[str]
  days: Tuple[Tuple[str, int], ...]


def split_dates(day_counts: Dict[str, int]) -> Dates:
  """The last day is the eval split, the last day before it validation.

  Raises:
    InferenceError: fewer than two days (a split by time needs a training day).
  """
  days = tuple(sorted(day_counts.items()))
  if len(days) < 2:
    found = days[0][0] if days else "none"
    raise InferenceError(f"the impressions span {len(days)} day(s) (found: {found}); "
                         f"pipeline.preprocess splits by day (the last day is the eval "
                         f"split), so the logs need at least two UTC days")
  # The validation day must leave earlier training days: with two days it would be all.
  return Dates(eval_from=days[-1][0], validation_from=days[-2][0] if len(days) >= 3 else None,
               days=days)


# ---------------------------------------------------------------------------------------
# The two YAML files.


def _yaml_scalar(value: Any) -> str:
  if isinstance(value, bool):
    return "true" if value else "false"
  if isinstance(value, str) and not re.match(r"^[A-Za-z_][A-Za-z0-9_.\-]*$", value):
    return json.dumps(value)  # A JSON string is a YAML flow scalar.
  if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off",
                                                  "null", "y", "n"):
    return json.dumps(value)
  return str(value)


def _flow_mapping(entry: Dict[str, Any]) -> str:
  parts = []
  for key, value in entry.items():
    if isinstance(value, (list, tuple)):
      value = "[" + ", ".join(_yaml_scalar(v) for v in value) + "]"
    else:
      value = _yaml_scalar(value)
    parts.append(f"{key}: {value}")
  return "{" + ", ".join(parts) + "}"


def _comment_block(text_lines: Iterable[str], indent: str = "") -> List[str]:
  return [f"{indent}# {line}".rstrip() for line in text_lines]


def render_feature_spec(features: Sequence[FeatureChoice], skipped: Sequence[SkippedField],
                        header: Sequence[str]) -> str:
  """The feature spec YAML (features/spec.py's layout), a comment above every entry.

  Raises:
    InferenceError: no field could be a feature.
  """
  if not features:
    reasons = "; ".join(f"{s.name}: {s.reason}" for s in skipped)
    raise InferenceError(f"no impression field can be a feature ({reasons})")
  lines = _comment_block(header)
  lines.append("features:")
  for choice in features:
    lines.extend(_comment_block([choice.reason], "  "))
    lines.append(f"  - {_flow_mapping(choice.entry)}")
  if skipped:
    lines.append("")
    lines.extend(_comment_block(["Fields of the impressions that are not features:"]))
    lines.extend(_comment_block([f"  {s.name}: {s.reason}" for s in skipped]))
  return "\n".join(lines) + "\n"


def render_config(spec_file: str, mapping: EventMapping, dates: Dates,
                  header: Sequence[str]) -> str:
  """The experiment config YAML (configs/config.py's sections), an ESMM to start with.

  Raises:
    InferenceError: no event name maps to click or to purchase (ESMM needs both).
  """
  for needed in ("click", "purchase"):
    if needed not in mapping.events_of:
      found = ", ".join(f"{name} ({mapping.counts[name]:,})" for name in mapping.unmapped)
      raise InferenceError(
          f"no event name is clearly a {needed} (unmapped names: {found or 'none'}): "
          f"name it with --map_event NAME={needed}")
  lines = _comment_block(header)
  lines.append(f"feature_spec: {_yaml_scalar(spec_file)}  # beside this file")
  lines.append("data:")
  lines.append("  labels:  # which events set each label (transforms/label.py)")
  for label in LABEL_ORDER:
    names = mapping.events_of.get(label)
    if not names:
      continue
    entry: Dict[str, Any] = {"name": label, "events": list(names)}
    if label == "click":
      entry["after_click"] = False
    how = ", ".join(
        f"{name} ({mapping.counts[name]:,} events"
        f"{', your --map_event' if name in mapping.by_user else ''})" for name in names)
    lines.append(f"    - {_flow_mapping(entry)}  # {how}")
  for label in LABEL_ORDER:
    if label not in mapping.events_of:
      lines.extend(_comment_block([f"No event name is clearly a {label}: add "
                                   f"{{name: {label}, events: [...]}} for "
                                   f"{MODELS_NEEDING[label]}."], "  "))
  if mapping.unmapped:
    lines.extend(_comment_block(
        ["Event names mapped to no label: pipeline.preprocess dead-letters these events",
         "(unknown_event_type). Add a name to a label's events (or rerun pipeline.init",
         "with --map_event NAME=LABEL) to use it:"]
        + [f"  {name}: {mapping.counts[name]:,} events" for name in mapping.unmapped], "  "))
  lines.append("  attribution_window_s: 86400      # events later than 1 day after their "
               "impression are not attributed")
  lines.append("  orphan_event_policy: dead_letter # an action/purchase with no click before "
               "it is a dead letter")
  first_day, last_count = dates.days[0][0], dates.days[-1][1]
  lines.append(f'  eval_from: "{dates.eval_from}"  # the last day in the logs '
               f"({last_count:,} impressions; the logs span {first_day} to "
               f"{dates.eval_from}) is the eval split")
  lines.append("  train_shards: 4")
  lines.append("  eval_shards: 2")
  lines.append("model:  # ESMM (configs/esmm.yaml): ctcvr = ctr * cvr over all exposures")
  lines.append("  name: esmm")
  lines.append("  loss_weights: {ctr: 1.0, ctcvr: 1.0}")
  lines.append("  embedding_dim: 16")
  lines.append("  tower_units: [128, 64]")
  lines.append("train:")
  lines.append("  batch_size: 1024")
  lines.append("  epochs: 3")
  lines.append("  learning_rate: 0.002")
  lines.append("  optimizer: adam")
  lines.append("  shuffle_buffer: 20000")
  lines.append("  seed: 42")
  lines.append("  checkpoint_every_steps: 200")
  if dates.validation_from is not None:
    day_before = config_lib.day_before(dates.eval_from)
    which = ("the day before eval_from" if dates.validation_from == day_before
             else f"the last day before eval_from in the logs (none on {day_before})")
    lines.append(f'  validation_from: "{dates.validation_from}"  # {which}, the last training '
                 f"day ({dates.days[-2][1]:,} impressions), is validation")
  else:
    lines.append("  validation_fraction: 0.1  # only one training day: 10% of it (by a hash "
                 "of impression_id) is validation")
  lines.append("  early_stopping_patience: 1       # stop at the first epoch without a lower "
               "validation loss")
  lines.append("  restore_best_weights: true       # ... and keep the best epoch's weights")
  lines.append("  calibration: ips_ctr             # fitted on the validation split, exported "
               "with the model")
  return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------
# Everything at once (pipeline.init's work).


@dataclasses.dataclass(frozen=True)
class Starter:
  """The two files' texts and what they were made from.

  Attributes:
    spec_yaml, config_yaml: the YAML texts.
    features, skipped: the field choices.
    mapping: the events' labels.
    dates: eval_from / validation_from and impressions per day.
    impressions, events: the two scans (rows read, sample).
  """

  spec_yaml: str
  config_yaml: str
  features: Tuple[FeatureChoice, ...]
  skipped: Tuple[SkippedField, ...]
  mapping: EventMapping
  dates: Dates
  impressions: LogScan = dataclasses.field(repr=False)
  events: LogScan = dataclasses.field(repr=False)


def _check_contract_fields(stats: Dict[str, FieldStats], scan: LogScan) -> None:
  """user_id and item_id must be in the impressions (the raw log contract)."""
  missing = [key for key in (spec_lib.IMPRESSION_ID_KEY, USER_ID_KEY, ITEM_ID_KEY)
             if key not in stats or not stats[key].present]
  if not missing:
    return
  candidates = sorted((f for f in stats.values() if f.name not in (
      spec_lib.IMPRESSION_ID_KEY, spec_lib.TIMESTAMP_KEY) and set(f.kinds) <= {"string", "int"}
      and f.present), key=lambda f: -f.distinct)[:4]
  hint = ", ".join(f"{f.name} ({f.distinct:,} distinct)" for f in candidates)
  raise InferenceError(
      f"{scan.files[0]}: the impressions have no {' / '.join(missing)} field (the raw log "
      f"contract, docs/COMMANDS.md 'The raw log contract', requires impression_id, timestamp, "
      f"user_id, item_id): rename your columns to these names"
      + (f" (the fields with the most distinct values: {hint})" if hint else ""))


def infer_starter(impression_patterns: Sequence[str], event_patterns: Sequence[str],
                  sample_rows: int = config_lib.DEFAULT_SAMPLE_ROWS,
                  max_vocabulary: int = config_lib.DEFAULT_MAX_VOCABULARY,
                  max_hash_buckets: int = config_lib.DEFAULT_MAX_HASH_BUCKETS,
                  user_event_map: Optional[Dict[str, str]] = None, seed: int = 0,
                  spec_file: str = "features.yaml") -> Starter:
  """Reads the logs and writes (in memory) a starter feature spec and config.

  Args:
    impression_patterns, event_patterns: globs of the raw logs.
    sample_rows: impressions sampled for the feature statistics.
    max_vocabulary, max_hash_buckets: InferenceOptions.
    user_event_map: event name -> label, before the automatic mapping.
    seed: seeds the sample.
    spec_file: the feature spec's path relative to the config.

  Raises:
    InferenceError: the logs break the contract, or cannot give labels or dates.
  """
  impressions = scan_log(impression_patterns, spec_lib.TIMESTAMP_KEY, pa.int64(),
                         tally_days, sample_rows, seed, flag="--impressions")
  if not impressions.sample:
    raise InferenceError(f"{impressions.files[0]}: no impression record read "
                         f"({impressions.rows:,} lines, {impressions.unreadable:,} not JSON "
                         f"objects)")
  if not impressions.key_counts:
    raise InferenceError(f"{impressions.files[0]}: no impression has an int 'timestamp' "
                         f"(unix seconds, the raw log contract)")
  events = scan_log(event_patterns, EVENT_KEY, pa.string(), tally_values, 0, seed,
                    flag="--events")  # Only the names are needed: no sample.
  if not events.key_counts:
    raise InferenceError(f"{events.files[0]}: no event has a string 'event' field (the raw "
                         f"log contract: impression_id, timestamp, event)")
  stats = field_statistics(impressions.sample)
  _check_contract_fields(stats, impressions)
  options = InferenceOptions(max_vocabulary=max_vocabulary, max_hash_buckets=max_hash_buckets,
                             sample_fraction=len(impressions.sample) / impressions.rows,
                             log_rows=impressions.rows)
  features, skipped = infer_features(stats, options)
  mapping = map_events(events.key_counts, user_event_map)
  dates = split_dates(impressions.key_counts)
  sampled = (f"all {impressions.rows:,}" if len(impressions.sample) == impressions.rows
             else f"{len(impressions.sample):,} (a uniform sample) of {impressions.rows:,}")
  source = [f"  impressions: {', '.join(impression_patterns)} ({impressions.rows:,} records, "
            f"{len(impressions.files)} file(s))",
            f"  events: {', '.join(event_patterns)} ({events.rows:,} records, "
            f"{len(events.files)} file(s))"]
  spec_yaml = render_feature_spec(features, skipped, [
      "Feature spec written by pipeline.init from your logs:", *source,
      f"Statistics from {sampled} impressions. Each choice is a starting point: the comment",
      "above an entry says what the sample showed. Keys: features/spec.py."])
  config_yaml = render_config(spec_file, mapping, dates, [
      "Experiment config written by pipeline.init from your logs:", *source,
      "Next: python -m pipeline.preprocess --config THIS_FILE --impressions ... --events ... "
      "--output DATA", "      python -m pipeline.train --config THIS_FILE --data DATA "
      "--model_dir MODEL"])
  return Starter(spec_yaml, config_yaml, tuple(features), tuple(skipped), mapping, dates,
                 impressions, events)
