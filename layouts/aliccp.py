"""The raw Ali-CCP release (ESMM paper's data set): its line rules and columnar line parser.

Flow: sample_skeleton_*.csv + common_features_*.csv -> aliccp_join.ReadParseRelease
(lines parsed by **this module's rules**: `ReleaseLineParser` in columns where a line is
plain, `parse_skeleton_line` / `parse_common_line` for every other line, which decide
and word every dead letter) -> aliccp_join.BucketedJoinCommonFeatures -> labelled
batches -> job.write_outputs. docs/ALI_CCP.md documents the layout (sample_skeleton /
common_features lines, `field \\x02 feature_id \\x03 value` items joined by `\\x01`), the
feature mapping (`field_feature_name`; dtype string / int takes the feature id, float the
item's value), the labels and every dead-letter reason.

A line is parsed in columns (`ReleaseLineParser`) only when it is plain, so that the
columns are exactly what the line functions return (tests/test_aliccp.py compares them
line by line): printable-ASCII ids without commas, click/buy "0"/"1" and not a purchase
without a click, feature_num of 1-18 digits equal to the number of items, every item
`field \\x02 id \\x03 value` with a plain decimal value whose float64 is finite (Arrow's
cast and Python's float() agree), a 1-18 digit id for an int feature and at most one
item for a scalar one. Items are then grouped per spec feature in columns, as
`FieldFeatures.from_items` does.
"""

import math
from typing import Any, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import example_codec
from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import parse

SKELETON = "skeleton"
COMMON = "common"
_ID = r"[\x21-\x2b\x2d-\x7e]+"  # Printable ASCII, no comma, no space.
# Printable ASCII without a comma or an edge space (Python's strip() leaves it as it is).
TEXT = r"[\x21-\x2b\x2d-\x7e](?:[\x20-\x2b\x2d-\x7e]*[\x21-\x2b\x2d-\x7e])?"
NUMBER = r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?"
_ITEM = (r"^(?P<field>[^\x01\x02\x03]+)\x02(?P<id>[^\x01\x02\x03]+)\x03"
         r"(?P<value>" + NUMBER + r")$")
_COUNT = r"^[0-9]{1,18}$"
INT_ID = r"^-?[0-9]{1,18}$"



ITEM_SEPARATOR = "\x01"
ID_SEPARATOR = "\x02"
VALUE_SEPARATOR = "\x03"
SKELETON_COLUMNS = 6
COMMON_COLUMNS = 3
CLICK_LABEL = "click"
PURCHASE_LABEL = "purchase"
SOURCE_LABELS = (CLICK_LABEL, PURCHASE_LABEL)
TIMESTAMP = 0  # The release has no time; see the module docstring.

Item = Tuple[str, str, float]  # (field, feature id, value)


def field_feature_name(field: str) -> str:
  """The spec feature name of a raw field or CSV column: itself when it is a Python
  identifier (`D109_14`), else "f" + it (`101` -> `f101`, `109_14` -> `f109_14`).

  Feature names must be identifiers: they are keyword arguments of the `predict_raw`
  serving signature.
  """
  return field if field.isidentifier() else "f" + field


def check_source_labels(label_names: Sequence[str], source: str) -> None:
  """Sources with click/purchase columns only support exactly those two labels."""
  if tuple(label_names) != SOURCE_LABELS:
    raise ValueError(f"--source {source} has click and purchase labels only; the config's "
                     f"data.labels are {list(label_names)} (use configs/ali_ccp.yaml or "
                     "a config with labels [click, purchase])")


def source_labels(click: int, purchase: int, infer_click: bool) -> Dict[str, int]:
  """{"click", "purchase"} from 0/1 columns, enforcing purchase => click.

  Raises:
    parse.FieldError: purchase_without_click (unless `infer_click`, which sets click).
  """
  if purchase and not click:
    if not infer_click:
      raise parse.FieldError(dl.PURCHASE_WITHOUT_CLICK,
                                 "purchase is 1 but click is 0 (orphan_event_policy: "
                                 "dead_letter)")
    click = 1
  return {CLICK_LABEL: click, PURCHASE_LABEL: purchase}


def parse_label(text: str, column: str) -> int:
  if text.strip() not in ("0", "1"):
    raise parse.FieldError(dl.BAD_LABEL, f"column {column!r}: expected 0 or 1, got "
                               f"{text!r}")
  return int(text)


def parse_feature_list(text: str) -> List[Item]:
  """`field\\x02id\\x03value` items joined by `\\x01` -> [(field, id, value)].

  Raises:
    parse.FieldError: malformed_item, naming the item's index and text.
  """
  if not text:
    return []
  items = []
  for index, item in enumerate(text.split(ITEM_SEPARATOR)):
    field, has_id, rest = item.partition(ID_SEPARATOR)
    feature_id, has_value, value_text = rest.partition(VALUE_SEPARATOR)
    if not has_id or not has_value:
      raise parse.FieldError(dl.MALFORMED_ITEM, f"item {index} {item!r}: expected "
                                 "field\\x02feature_id\\x03value")
    if not field or not feature_id or VALUE_SEPARATOR in value_text or ID_SEPARATOR in (
        feature_id + value_text):
      raise parse.FieldError(dl.MALFORMED_ITEM, f"item {index} {item!r}: empty field or "
                                 "feature id, or a separator too many")
    try:
      value = float(value_text)
    except ValueError:
      value = float("nan")
    if not math.isfinite(value):
      raise parse.FieldError(dl.MALFORMED_ITEM, f"item {index} {item!r}: value "
                                 f"{value_text!r} is not a finite number")
    items.append((field, feature_id, value))
  return items


def parse_feature_count(text: str) -> int:
  try:
    count = int(text)
  except ValueError:
    count = -1
  if count < 0:
    raise parse.FieldError(dl.MALFORMED_LINE, f"feature_num {text!r} is not a count")
  return count


def check_feature_count(items: Sequence[Item], count: int) -> None:
  if len(items) != count:
    raise parse.FieldError(dl.FEATURE_COUNT_MISMATCH, f"feature_num says {count} items, "
                               f"the feature list holds {len(items)}")


class FieldFeatures:
  """Raw (field, id, value) items or CSV cells -> coerced spec features.

  Args:
    spec: the feature spec; a feature named `field_feature_name(field)` takes that field.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._features = {feature.name: feature for feature in spec}
    self._codec = example_codec.ExampleCodec(spec)

  def feature_of(self, field: str) -> Optional[spec_lib.Feature]:
    return self._features.get(field_feature_name(field))

  def token(self, feature: spec_lib.Feature, feature_id: str, value: float) -> Any:
    """One raw value as the feature's dtype (string id, int id, or the float value)."""
    if feature.dtype == "string":
      return feature_id
    if feature.dtype == "float":
      return value
    try:
      return int(feature_id)
    except ValueError:
      raise example_codec.RecordError(
          feature.name, dl.BAD_TYPE, f"field {feature.name!r}: feature id {feature_id!r} is "
          "not an integer") from None

  def from_items(self, items: Iterable[Item]) -> Tuple[Dict[str, Any], int]:
    """Items -> (coerced features, number of items of fields the spec does not name).

    Raises:
      example_codec.RecordError: repeated_single_valued_field, bad_type or bad_value.
    """
    raw: Dict[str, Any] = {}
    ignored = 0
    for field, feature_id, value in items:
      feature = self.feature_of(field)
      if feature is None:
        ignored += 1
        continue
      token = self.token(feature, feature_id, value)
      if feature.multivalent:
        raw.setdefault(feature.name, []).append(token)
        if feature.weighted:
          raw.setdefault(feature.weight_key, []).append(value)
      elif feature.name in raw:
        raise example_codec.RecordError(
            feature.name, dl.REPEATED_SINGLE_VALUED_FIELD,
            f"field {field!r} ({feature.name!r}) holds several items but the spec declares "
            "it single-valued (mark it multivalent to keep them all)")
      else:
        raw[feature.name] = token
    return self._codec.coerce(raw), ignored

  def merge(self, skeleton: Mapping[str, Any], common: Mapping[str, Any]) -> Dict[str, Any]:
    """Skeleton features + common features; lists of a field on both sides are joined.

    Raises:
      example_codec.RecordError: repeated_single_valued_field for a scalar on both sides.
    """
    merged = dict(common)
    for name, value in skeleton.items():
      if name not in merged:
        merged[name] = value
      elif isinstance(value, list):
        merged[name] = list(value) + list(merged[name])
      else:
        raise example_codec.RecordError(
            name, dl.REPEATED_SINGLE_VALUED_FIELD, f"field {name!r} is set by both the "
            "skeleton and the common features but the spec declares it single-valued")
    return merged


def line_features(fields: FieldFeatures, feature_list: str, feature_num: str
                  ) -> Tuple[Dict[str, Any], int]:
  """A line's feature list -> (coerced features, items of fields the spec does not name).

  Raises:
    parse.FieldError / example_codec.RecordError: the line's dead-letter reason.
  """
  count = parse_feature_count(feature_num)
  items = parse_feature_list(feature_list)
  check_feature_count(items, count)
  return fields.from_items(items)


SkeletonRow = Tuple[str, str, Dict[str, int], Dict[str, Any], int]


def parse_skeleton_line(text: str, fields: FieldFeatures, infer_click: bool) -> SkeletonRow:
  """A sample_skeleton line -> (sample_id, md5, labels, features, ignored items).

  Raises:
    parse.FieldError / example_codec.RecordError: the line's dead-letter reason.
  """
  columns = text.split(",", SKELETON_COLUMNS - 1)
  if len(columns) != SKELETON_COLUMNS:
    raise parse.FieldError(dl.MALFORMED_LINE, f"{len(columns)} columns, expected "
                               "sample_id,click,buy,md5,feature_num,feature_list")
  sample_id, click, buy, md5, feature_num, feature_list = columns
  if not sample_id.strip() or not md5.strip():
    raise parse.FieldError(dl.MALFORMED_LINE, "empty sample_id or md5")
  labels = source_labels(parse_label(click, "click"), parse_label(buy, "buy"), infer_click)
  features, ignored = line_features(fields, feature_list, feature_num)
  return sample_id.strip(), md5.strip(), labels, features, ignored


def common_md5(text: str) -> str:
  """The md5 of a common_features line ("" when it has none)."""
  return text.split(",", 1)[0].strip()


def parse_common_line(text: str, fields: FieldFeatures) -> Tuple[str, Dict[str, Any], int]:
  """A common_features line -> (md5, features, ignored items).

  Raises:
    parse.FieldError / example_codec.RecordError: the line's dead-letter reason (the
      line's md5, if any, is `common_md5(text)`: a join tombstone).
  """
  columns = text.split(",", COMMON_COLUMNS - 1)
  md5 = columns[0].strip()
  if len(columns) != COMMON_COLUMNS or not md5:
    raise parse.FieldError(dl.MALFORMED_LINE, f"{len(columns)} columns (or an empty "
                               "md5), expected md5,feature_num,feature_list")
  features, ignored = line_features(fields, columns[2], columns[1])
  return md5, features, ignored


def line_dead_letter(source: str, split: str, file: str, line: int, error, text: str
                     ) -> Dict[str, Any]:
  """The dead letter of a release line whose parse raised `error`."""
  return dl.make_dead_letter(source, file, line, error.reason,
                             f"{split} {source}: {error.detail}", text)


def duplicate_md5_letter(split: str, md5: str, kept: Mapping[str, Any],
                         duplicate: Mapping[str, Any]) -> Dict[str, Any]:
  """The dead letter of a common-features row whose (split, md5) was already kept."""
  return dl.make_dead_letter(
      dl.COMMON_FEATURES, duplicate["file"], duplicate["line"], dl.DUPLICATE_MD5,
      f"{split} md5 {md5!r} already kept from {kept['file']} line {kept['line']}",
      duplicate["record"])


def unjoined_reason(split: str, md5: str, rejected: Sequence[Tuple[str, int, str]]
                    ) -> Tuple[str, str]:
  """(reason, detail) for skeleton rows whose md5 has no valid common-features row;
  `rejected`: (file, line, reason) of its dead-lettered rows (the first is named)."""
  if rejected:
    file, line, reason = sorted(rejected)[0]
    return (dl.COMMON_FEATURES_REJECTED,
            f"{split} md5 {md5!r}: its common-features row ({file} line {line}) was "
            f"dead-lettered ({reason})")
  return (dl.MISSING_COMMON_FEATURES,
          f"{split} md5 {md5!r} has no common-features row in the {split} files")


_LINE_COLUMNS = {SKELETON: SKELETON_COLUMNS, COMMON: COMMON_COLUMNS}


def _rows_with(item_rows: np.ndarray, item_mask: np.ndarray, n: int) -> np.ndarray:
  """bool [n]: rows with at least one item where item_mask."""
  return np.bincount(item_rows[item_mask], minlength=n)[:n] > 0


class ReleaseLineParser:
  """Stripped lines of one kind ("skeleton" or "common") -> columns + odd lines.

  Args:
    spec: the feature spec.
    kind: "skeleton" or "common". (A purchase without a click is always left to the
      row function, which applies data.orphan_event_policy.)
  """

  def __init__(self, spec: spec_lib.FeatureSpec, kind: str):
    if kind not in _LINE_COLUMNS:
      raise ValueError(f"kind {kind!r} not in {tuple(_LINE_COLUMNS)}")
    self._kind = kind
    self._fields = FieldFeatures(spec)
    self._features = list(spec)
    self._feature_index = {}  # raw field -> index in self._features, or -1.

  def _index_of(self, field: str) -> int:
    if field not in self._feature_index:
      feature = self._fields.feature_of(field)
      self._feature_index[field] = -1 if feature is None else next(
          i for i, f in enumerate(self._features) if f.name == feature.name)
    return self._feature_index[field]

  def parse(self, texts: Sequence[str]
            ) -> Tuple[pa.Table, np.ndarray, np.ndarray, int]:
    """-> (columns of the plain lines, their indices in texts, the other lines' indices,
    items of fields the spec does not name on the plain lines).

    Columns: impression_id (sample_id; "" for common lines), then the spec's features
    in `parse.impression_schema` order (weights after their feature), then
    click and purchase (skeleton only), then md5.
    """
    n = len(texts)
    lines = pa.array(texts, pa.string())
    columns = _LINE_COLUMNS[self._kind]
    parts = pc.split_pattern(lines, ",", max_splits=columns - 1)
    plain = pc.equal(pc.list_value_length(parts), columns).to_numpy(zero_copy_only=False)
    # Only lines with the layout's column count go on (list_element needs every cell).
    keep = np.flatnonzero(plain)
    parts = parts.take(pa.array(keep, pa.int64()))
    cell = lambda index: pc.list_element(parts, index)
    if self._kind == SKELETON:
      sample_id, click, buy, md5, count, feature_list = (cell(i) for i in range(6))
      ok = (parse.as_bool(pc.match_substring_regex(sample_id, "^" + _ID + "$"))
            & parse.as_bool(pc.match_substring_regex(click, "^[01]$"))
            & parse.as_bool(pc.match_substring_regex(buy, "^[01]$")))
      ok &= ~(pc.equal(buy, "1").to_numpy(zero_copy_only=False)
              & pc.equal(click, "0").to_numpy(zero_copy_only=False))
    else:
      md5, count, feature_list = (cell(i) for i in range(3))
      sample_id = None
      ok = np.ones(len(keep), dtype=bool)
    ok &= parse.as_bool(pc.match_substring_regex(md5, "^" + _ID + "$"))
    ok &= parse.as_bool(pc.match_substring_regex(count, _COUNT))
    items = pc.split_pattern(feature_list, "\x01")
    item_counts = pc.list_value_length(items).to_numpy(zero_copy_only=False).astype(np.int64)
    counts = pc.cast(pc.if_else(pa.array(ok), count, "0"), pa.int64()).to_numpy(
        zero_copy_only=False)
    ok &= counts == item_counts
    item_rows = np.repeat(np.arange(len(keep), dtype=np.int64), item_counts)
    parsed = pc.extract_regex(items.flatten(), _ITEM)
    item_ok = parsed.is_valid().to_numpy(zero_copy_only=False)
    field = pc.struct_field(parsed, [0])
    feature_id = pc.struct_field(parsed, [1])
    value_text = pc.fill_null(pc.struct_field(parsed, [2]), "0")
    value = pc.cast(value_text, pa.float64()).to_numpy(zero_copy_only=False)
    item_ok &= np.isfinite(value)
    ok &= ~_rows_with(item_rows, ~item_ok, len(keep))
    unique_fields = pc.unique(field)
    codes = pc.index_in(field, value_set=unique_fields)
    mapping = np.array([self._index_of(f) if f is not None else -1
                        for f in unique_fields.to_pylist()] + [-1], dtype=np.int64)
    feature_of_item = mapping[pc.fill_null(codes, len(mapping) - 1).to_numpy(
        zero_copy_only=False)]
    for index, feature in enumerate(self._features):
      mine = feature_of_item == index
      if not mine.any():
        continue
      if feature.dtype == "int":
        bad_int = mine & ~parse.as_bool(pc.match_substring_regex(feature_id, INT_ID))
        ok &= ~_rows_with(item_rows, bad_int, len(keep))
      if not feature.multivalent:
        per_row = np.bincount(item_rows[mine], minlength=len(keep))
        ok &= per_row <= 1
    # The plain rows and their items.
    plain_rows = keep[ok]
    item_keep = ok[item_rows]
    row_of_item = (np.cumsum(ok) - 1)[item_rows[item_keep]]
    feature_of_item = feature_of_item[item_keep]
    feature_id = feature_id.filter(pa.array(item_keep))
    value = value[item_keep]
    m = len(plain_rows)
    arrays, names = [], []
    if sample_id is not None:
      arrays.append(sample_id.filter(pa.array(ok)))
    else:
      arrays.append(pa.array([""] * m, pa.string()))
    names.append(spec_lib.IMPRESSION_ID_KEY)
    for index, feature in enumerate(self._features):
      mine = np.flatnonzero(feature_of_item == index)
      rows = row_of_item[mine]
      if feature.dtype == "string":
        values = feature_id.take(pa.array(mine, pa.int64()))
      elif feature.dtype == "int":
        values = pc.cast(feature_id.take(pa.array(mine, pa.int64())), pa.int64())
      else:
        values = pa.array(value[mine], pa.float64())
      if feature.multivalent:
        per_row = np.bincount(rows, minlength=m)[:m] if m else np.zeros(0, dtype=np.int64)
        offsets = np.zeros(m + 1, dtype=np.int64)
        np.cumsum(per_row, out=offsets[1:])
        null = per_row == 0
        mask = np.r_[null, False] if null.any() else None
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32(), mask=mask),
                                               values))
        names.append(feature.name)
        if feature.weighted:
          arrays.append(pa.ListArray.from_arrays(
              pa.array(offsets, pa.int32(), mask=mask), pa.array(value[mine], pa.float64())))
          names.append(feature.weight_key)
      else:
        position = np.full(m, -1, dtype=np.int64)
        position[rows] = np.arange(len(mine), dtype=np.int64)
        arrays.append(values.take(pa.array(position, pa.int64(), mask=position < 0)))
        names.append(feature.name)
    if self._kind == SKELETON:
      arrays.append(pc.cast(click.filter(pa.array(ok)), pa.int64()))
      arrays.append(pc.cast(buy.filter(pa.array(ok)), pa.int64()))
      names += [CLICK_LABEL, PURCHASE_LABEL]
    arrays.append(md5.filter(pa.array(ok)))
    names.append("md5")
    ignored = int((feature_of_item < 0).sum())
    odd = np.setdiff1d(np.arange(n, dtype=np.int64), plain_rows, assume_unique=True)
    return pa.Table.from_arrays(arrays, names=names), plain_rows, odd, ignored
