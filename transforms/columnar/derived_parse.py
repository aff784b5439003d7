"""Parse derived-layout CSV rows (rechub_csv, aliexpress) in columns, odd rows to the row code.

Flow: columnar.derived's reader -> **CsvLineParser.parse** (a batch of a file's stripped
data lines) -> parsed rows as columns + the indices of the lines the row parser
(`derived_sources.CsvRowParser`, built from the same header) must decide; it words every
dead letter.

A row is parsed here only when it is plain, so that its columns are exactly the row
parser's values (tests/test_columnar_derived.py compares them row by row): as many
cells as the header has columns (split on every comma, as the row parser does); labels
"0" / "1" and not a purchase without a click; an id column (AliExpress search_id) of
printable ASCII without edge spaces; every feature cell either empty (a missing
feature) or, by the feature's dtype, printable ASCII without edge spaces (string), 1-18
digits with an optional minus (int), or a plain decimal with a finite float64 (float;
Arrow's cast and Python's float() both round correctly). A file whose header feeds one
feature from two columns is left to the row parser whole.
"""

from typing import Sequence, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import spec as spec_lib
from transforms import aliccp
from transforms import derived_sources
from transforms.columnar import aliccp_parse as caparse

_ARROW_TYPES = {"string": pa.string(), "int": pa.int64(), "float": pa.float64()}
_CELL_PATTERNS = {"string": "^" + caparse.TEXT + "$", "int": caparse.INT_ID,
                  "float": "^" + caparse.NUMBER + "$"}


class CsvLineParser:
  """A CSV file's data lines -> columns of the plain rows + the other rows' indices.

  Args:
    row_parser: the file's `derived_sources.CsvRowParser` (header, labels, id column).
    spec: the feature spec.
  """

  def __init__(self, row_parser: derived_sources.CsvRowParser, spec: spec_lib.FeatureSpec):
    self._row = row_parser
    self._spec = spec
    by_feature = {}
    for index, column, feature in row_parser.feature_columns:
      by_feature.setdefault(feature.name, []).append(index)
    self._columnar = all(len(indices) == 1 for indices in by_feature.values())
    self._column_of = {name: indices[0] for name, indices in by_feature.items()}

  def parse(self, texts: Sequence[str]) -> Tuple[pa.Table, np.ndarray, np.ndarray]:
    """-> (columns of the plain rows, their indices in texts, the other rows' indices).

    Columns: the spec's features in `columnar.parse.impression_schema` order (weights
    after their feature: 1.0, or the value for a float feature), click, purchase, then
    the id column (if the file has one) under its name.
    """
    n = len(texts)
    if not self._columnar or n == 0:
      return pa.table({}), np.zeros(0, dtype=np.int64), np.arange(n, dtype=np.int64)
    columns = len(self._row.columns)
    cells = pc.split_pattern(pa.array(texts, pa.string()), ",")
    keep = np.flatnonzero(pc.equal(pc.list_value_length(cells), columns).to_numpy(
        zero_copy_only=False))
    cells = cells.take(pa.array(keep, pa.int64()))
    cell = lambda index: pc.list_element(cells, index)
    ok = np.ones(len(keep), dtype=bool)
    labels = {}
    for label, _, index in self._row.label_columns:
      labels[label] = cell(index)
      ok &= caparse.as_bool(pc.match_substring_regex(labels[label], "^[01]$"))
    ok &= ~(caparse.as_bool(pc.equal(labels[aliccp.PURCHASE_LABEL], "1"))
            & caparse.as_bool(pc.equal(labels[aliccp.CLICK_LABEL], "0")))
    metadata = None
    if self._row.id_column is not None:
      metadata = cell(self._row.id_column[1])
      ok &= caparse.as_bool(pc.match_substring_regex(metadata, "^" + caparse.TEXT + "$"))
    typed_values = {}
    for feature in self._spec:
      raw = cell(self._column_of[feature.name])
      matched = caparse.as_bool(pc.match_substring_regex(raw, _CELL_PATTERNS[feature.dtype]))
      ok &= matched | caparse.as_bool(pc.equal(raw, ""))
      # Only matched cells are cast (the others cannot fail it: they are null).
      typed = pc.cast(pc.if_else(pa.array(matched), raw, pa.scalar(None, pa.string())),
                      _ARROW_TYPES[feature.dtype])
      if feature.dtype == "float":
        ok &= ~(matched & ~np.isfinite(pc.fill_null(typed, 0.0).to_numpy(
            zero_copy_only=False)))
      typed_values[feature.name] = (typed, matched)
    select = pa.array(ok)
    arrays, names = [], []
    for feature in self._spec:
      typed, matched = typed_values[feature.name]
      typed, present = typed.filter(select), matched[ok]
      if feature.multivalent:
        offsets = np.r_[0, np.cumsum(present)].astype(np.int32)
        mask = np.r_[~present, False] if (~present).any() else None
        arrays.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32(), mask=mask),
                                               typed.filter(pa.array(present))))
        names.append(feature.name)
        if feature.weighted:
          weights = (typed if feature.dtype == "float"
                     else pa.array(np.ones(len(present)), pa.float64()))
          arrays.append(pa.ListArray.from_arrays(pa.array(offsets, pa.int32(), mask=mask),
                                                 weights.filter(pa.array(present))))
          names.append(feature.weight_key)
      else:
        arrays.append(typed)
        names.append(feature.name)
    for label in aliccp.SOURCE_LABELS:
      arrays.append(pc.cast(labels[label].filter(select), pa.int64()))
      names.append(label)
    if metadata is not None:
      arrays.append(metadata.filter(select))
      names.append(self._row.id_column[0])
    plain = keep[ok]
    odd = np.setdiff1d(np.arange(n, dtype=np.int64), plain, assume_unique=True)
    return pa.Table.from_arrays(arrays, names=names), plain, odd
