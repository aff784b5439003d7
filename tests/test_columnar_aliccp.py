"""transforms.columnar.aliccp: list concatenation and the in-bucket md5 join.

`BucketJoiner.join` is checked against the row join's own code (`aliccp._JoinFn`) on the
tests/test_aliccp.py release (every join case: duplicates, missing and rejected md5s,
lists on both sides, a scalar on both sides); the whole job against the row job's golden
digest in tests/test_file_sources_golden.py.
"""

import numpy as np
import pyarrow as pa
import pytest

from configs import config as config_lib
from tests import test_aliccp
from transforms import aliccp
from transforms import dead_letter as dl
from transforms import parse as parse_lib
from features import example_codec
from transforms.columnar import aliccp as caliccp
from transforms.columnar import records as crecords


def test_concat_lists_joins_rows_and_keeps_nulls_of_both():
  first = pa.array([["a"], None, ["b", "c"], None, []], pa.list_(pa.string()))
  second = pa.array([["x", "y"], ["z"], None, None, ["w"]], pa.list_(pa.string()))
  assert caliccp.concat_lists(first, second).to_pylist() == [
      ["a", "x", "y"], ["z"], ["b", "c"], None, ["w"]]
  # Sliced inputs (offsets not starting at 0), as a take or a filter leaves them.
  sliced = caliccp.concat_lists(first.slice(2, 3), second.slice(1, 3))
  assert sliced.to_pylist() == [["b", "c", "z"], None, []]


def _parsed(lines, split, kind, fields, batcher):
  records, tombstones, dead = [], [], []
  for line, text in enumerate(lines, start=1):
    if not text:
      continue
    try:
      if kind == caliccp.SKELETON:
        sample_id, md5, labels, features, _ = aliccp.parse_skeleton_line(text, fields, False)
      else:
        (md5, features, _), sample_id, labels = aliccp.parse_common_line(text, fields), "", {}
    except (parse_lib.FieldError, example_codec.RecordError) as e:
      dead.append((kind, line, e.reason))
      if kind == caliccp.COMMON and aliccp.common_md5(text):
        tombstones.append((aliccp.common_md5(text), f"{split}_{kind}", line, e.reason))
      continue
    records.append({"impression_id": sample_id, "timestamp": 0, "features": features,
                    "labels": labels, "file": f"{split}_{kind}", "line": line,
                    "record": text, "metadata": {caliccp.MD5: md5}})
  batch, _ = batcher.batch(records)
  return pa.Table.from_batches([batch]), records, tombstones


JOIN_CASES = [  # Beyond test_aliccp's release: the two merge cases of the join.
    test_aliccp.skeleton(13, 0, 0, "mdA", [("205", "i13", "1.0"), ("101", "me", "1.0")]),
    test_aliccp.skeleton(14, 1, 0, "mdB", [("205", "i14", "1.0"), ("150_14", "s1", "2.0")]),
]


@pytest.mark.parametrize("split, skeleton_lines, common_lines", [
    ("train", test_aliccp.TRAIN_SKELETON + JOIN_CASES, test_aliccp.TRAIN_COMMON),
    ("eval", test_aliccp.EVAL_SKELETON, test_aliccp.EVAL_COMMON)])
def test_bucket_join_is_the_row_join(split, skeleton_lines, common_lines):
  spec = config_lib.load_config(test_aliccp.CONFIG).load_feature_spec()
  fields = aliccp.FieldFeatures(spec)
  skeleton, skeleton_rows, _ = _parsed(
      skeleton_lines, split, caliccp.SKELETON, fields,
      crecords.RecordBatcher(spec, aliccp.SOURCE_LABELS, (caliccp.MD5,)))
  common, common_rows, tombstones = _parsed(
      common_lines, split, caliccp.COMMON, fields,
      crecords.RecordBatcher(spec, (), (caliccp.MD5,)))
  batch, dead, used, unused = caliccp.BucketJoiner(spec).join(
      split, skeleton, common, tombstones)

  # The row join, md5 by md5.
  row_fn = aliccp._JoinFn(spec)  # pylint: disable=protected-access
  row_fn.setup()
  expected_rows, expected_dead, outcomes = [], [], []
  for md5 in sorted({r["metadata"][caliccp.MD5] for r in skeleton_rows + common_rows}
                    | {t[0] for t in tombstones}):
    grouped = {
        "skeleton": [dict(r, split=split) for r in skeleton_rows
                     if r["metadata"][caliccp.MD5] == md5],
        "common": [r for r in common_rows if r["metadata"][caliccp.MD5] == md5],
        "rejected": [t[1:] for t in tombstones if t[0] == md5]}
    for out in row_fn.process(((split, md5), grouped)):
      if isinstance(out, dict):
        expected_rows.append(out)
      elif out.tag == dl.DEAD_LETTER:
        expected_dead.append(out.value)
      else:
        outcomes.append(out.tag)
  assert (used, unused) == (outcomes.count(aliccp.USED), outcomes.count(aliccp.UNUSED))
  key = lambda letter: (letter["file"], letter["line"])
  assert sorted(dead, key=key) == sorted(expected_dead, key=key)
  if split == "train":  # Every join case is in the train files.
    assert {dl.DUPLICATE_MD5, dl.MISSING_COMMON_FEATURES, dl.COMMON_FEATURES_REJECTED,
            dl.REPEATED_SINGLE_VALUED_FIELD} <= {d["reason"] for d in dead}
  found = batch.to_pylist()
  assert len(found) == len(expected_rows) > 0
  names = [n for n in batch.schema.names if n not in (
      "file", "line", "record", "impression_id", "timestamp", "click", "purchase")]
  by_line = {row["line"]: row for row in found}
  if split == "train":  # A list on both sides: the skeleton's values, then the common's.
    assert by_line[len(test_aliccp.TRAIN_SKELETON) + 2]["f150_14"] == ["s1", "in1"]
  for row in expected_rows:
    got = by_line[row["line"]]
    assert {n: got[n] for n in names if got[n] is not None} == row["features"]
    assert {"click": got["click"], "purchase": got["purchase"]} == row["labels"]
    assert got["impression_id"] == row["impression_id"]
  assert np.all(np.asarray([r["line"] for r in found]) > 0)
