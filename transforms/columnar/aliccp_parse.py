"""Parse Ali-CCP release lines in columns (pyarrow compute), leaving odd lines to the row code.

Flow: columnar.aliccp's reader -> **ReleaseLineParser.parse** (a batch of stripped lines)
-> parsed rows as columns + the indices of the lines the row functions must decide
(`aliccp.parse_skeleton_line` / `parse_common_line`, which word every dead letter).

A line is parsed here only when it is plain, so that the columns are exactly what the
row functions would return (tests/test_columnar_aliccp.py compares them line by line):
  * ids (sample_id, md5) are printable ASCII without commas (Python's strip() is then a
    no-op), click and buy are "0" / "1" and not (buy and not click), feature_num is
    1-18 ASCII digits equal to the number of items;
  * every item is `field \\x02 id \\x03 value` with no separator inside field or id and
    value a plain decimal (an optional sign, digits, optional fraction and exponent)
    whose float64 is finite: Arrow's cast and Python's float() both round correctly, so
    they agree;
  * a field the spec names as an int feature has a 1-18 digit id (fits int64), and a
    scalar feature has at most one item.
Every other line (malformed, a dead letter, or just unusual) goes to the row functions.
Items are then grouped per spec feature in columns, as `FieldFeatures.from_items` does:
a scalar feature takes its item's id (int: as an integer; float: the item's value), a
multivalent one every id in item order and, if weighted, the values as weights.
"""

from typing import Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import spec as spec_lib
from transforms import aliccp

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
_LINE_COLUMNS = {SKELETON: aliccp.SKELETON_COLUMNS, COMMON: aliccp.COMMON_COLUMNS}


def _rows_with(item_rows: np.ndarray, item_mask: np.ndarray, n: int) -> np.ndarray:
  """bool [n]: rows with at least one item where item_mask."""
  return np.bincount(item_rows[item_mask], minlength=n)[:n] > 0


def as_bool(array) -> np.ndarray:
  """A boolean array (or ChunkedArray) as numpy, null as False."""
  return pc.fill_null(array, False).to_numpy(zero_copy_only=False)


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
    self._fields = aliccp.FieldFeatures(spec)
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
    in `columnar.parse.impression_schema` order (weights after their feature), then
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
      ok = (as_bool(pc.match_substring_regex(sample_id, "^" + _ID + "$"))
            & as_bool(pc.match_substring_regex(click, "^[01]$"))
            & as_bool(pc.match_substring_regex(buy, "^[01]$")))
      ok &= ~(pc.equal(buy, "1").to_numpy(zero_copy_only=False)
              & pc.equal(click, "0").to_numpy(zero_copy_only=False))
    else:
      md5, count, feature_list = (cell(i) for i in range(3))
      sample_id = None
      ok = np.ones(len(keep), dtype=bool)
    ok &= as_bool(pc.match_substring_regex(md5, "^" + _ID + "$"))
    ok &= as_bool(pc.match_substring_regex(count, _COUNT))
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
        bad_int = mine & ~as_bool(pc.match_substring_regex(feature_id, INT_ID))
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
      names += [aliccp.CLICK_LABEL, aliccp.PURCHASE_LABEL]
    arrays.append(md5.filter(pa.array(ok)))
    names.append("md5")
    ignored = int((feature_of_item < 0).sum())
    odd = np.setdiff1d(np.arange(n, dtype=np.int64), plain_rows, assume_unique=True)
    return pa.Table.from_arrays(arrays, names=names), plain_rows, odd, ignored
