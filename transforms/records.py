"""Labelled records (the file-split sources' line parsers' dicts) -> labelled RecordBatches.

Flow: aliccp_join / derived parse lines in columns, or with the line parsers' own code
(`layouts.aliccp`, `layouts.derived`: every dead letter worded there), and gather
the kept rows here into RecordBatches, the element the rest of the job (encode,
statistics, analyzers, shard writer) reads.

Labelled schema: `parse.impression_schema(spec)` (file, line, record,
impression_id, timestamp, the spec's features with `<name>__weight` after each weighted
one), one int64 0/1 column per label, then one string column per metadata key (Example
bytes keys outside the spec, e.g. AliExpress `search_id`).
"""

from typing import Any, Dict, List, Mapping, Sequence, Tuple

import numpy as np
import pyarrow as pa

from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import parse


def labelled_schema(spec: spec_lib.FeatureSpec, label_names: Sequence[str],
                    metadata_keys: Sequence[str] = ()) -> pa.Schema:
  """The schema of labelled batches (module docstring)."""
  return pa.schema(list(parse.impression_schema(spec))
                   + [pa.field(name, pa.int64()) for name in label_names]
                   + [pa.field(key, pa.string()) for key in metadata_keys])


def _value(record: Mapping[str, Any], name: str, kind: str) -> Any:
  if kind == "features":
    return record["features"].get(name)
  if kind == "labels":
    return record["labels"][name]
  if kind == "metadata":
    return record.get("metadata", {}).get(name)
  return record.get(name)


class RecordBatcher:
  """Labelled records ({"impression_id", "timestamp", "features", "labels", "file",
  "line", optional "record" and "metadata"}) -> one RecordBatch of `labelled_schema`.

  A record whose values an Arrow column cannot hold (an int outside int64, a lone
  surrogate) becomes a bad_value dead letter here.
  """

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str],
               metadata_keys: Sequence[str] = ()):
    self.schema = labelled_schema(spec, label_names, metadata_keys)
    labels, metadata = set(label_names), set(metadata_keys)
    features = set(parse.impression_schema(spec).names) - {
        "file", "line", "record", spec_lib.IMPRESSION_ID_KEY, spec_lib.TIMESTAMP_KEY}
    self._columns: List[Tuple[str, str]] = [
        (name, "labels" if name in labels else "metadata" if name in metadata
         else "features" if name in features else "meta") for name in self.schema.names]

  def batch(self, records: Sequence[Mapping[str, Any]], source: str = dl.IMPRESSIONS
            ) -> Tuple[pa.RecordBatch, List[Dict[str, Any]]]:
    """(the records as one batch, dead letters (of `source`) of those it cannot hold)."""
    try:
      return self._batch(records), []
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
      pass
    kept, dead = [], []
    for record in records:
      try:
        self._batch([record])
      except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError) as e:
        dead.append(dl.make_dead_letter(
            source, record["file"], record["line"], dl.BAD_VALUE,
            f"encoding {record['impression_id']!r}: a value no Arrow column holds ({e})",
            record["features"]))
        continue
      kept.append(record)
    return self._batch(kept), dead

  def with_records(self, path: str, lines: np.ndarray, columns: Mapping[str, pa.Array],
                   records: Sequence[Mapping[str, Any]], timestamp: int,
                   source: str = dl.IMPRESSIONS
                   ) -> Tuple[List[pa.RecordBatch], List[Dict[str, Any]]]:
    """Rows a columnar parser took and records a line parser made, as batches of `schema`
    (+ dead letters of the records no column holds).

    Args:
      path, lines: the file and line of each columnar row.
      columns: the columnar rows' other values by name ("record" null unless given).
      records, source: as for `batch`.
      timestamp: the columnar rows' timestamp.
    """
    tables, dead = [], []
    n = len(lines)
    if n:
      named = {"record": pa.nulls(n, pa.string()), **columns,
               "file": pa.array([path] * n, pa.string()), "line": pa.array(lines, pa.int64()),
               spec_lib.TIMESTAMP_KEY: pa.array(np.full(n, timestamp, dtype=np.int64))}
      tables.append(pa.Table.from_arrays([named[name] for name in self.schema.names],
                                         schema=self.schema))
    if records:
      batch, dead = self.batch(records, source)
      tables.append(pa.Table.from_batches([batch], schema=self.schema))
    if not tables:
      return [], dead
    return [batch for batch in pa.concat_tables(tables).combine_chunks().to_batches()
            if batch.num_rows], dead

  def _batch(self, records: Sequence[Mapping[str, Any]]) -> pa.RecordBatch:
    return pa.RecordBatch.from_pydict(
        {name: [_value(record, name, kind) for record in records]
         for name, kind in self._columns}, schema=self.schema)
