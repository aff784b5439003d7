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
from simulation import release_layouts
from tests import test_aliccp
from transforms import aliccp
from transforms import dead_letter as dl
from transforms import parse as parse_lib
from features import example_codec
from transforms.columnar import aliccp as caliccp
from transforms.columnar import aliccp_parse as caparse
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
def test_bucket_join_is_the_row_join(split, skeleton_lines, common_lines, monkeypatch):
  spec = config_lib.load_config(test_aliccp.CONFIG).load_feature_spec()
  fields = aliccp.FieldFeatures(spec)
  skeleton, skeleton_rows, _ = _parsed(
      skeleton_lines, split, caliccp.SKELETON, fields,
      crecords.RecordBatcher(spec, aliccp.SOURCE_LABELS, (caliccp.MD5,)))
  common, common_rows, tombstones = _parsed(
      common_lines, split, caliccp.COMMON, fields,
      crecords.RecordBatcher(spec, (), (caliccp.MD5,)))
  monkeypatch.setattr(caliccp, "JOIN_CHUNK_ROWS", 3)  # Merged a few rows at a time.
  batches, dead, used, unused = caliccp.BucketJoiner(spec).join(
      split, skeleton, common, tombstones)
  assert all(0 < b.num_rows <= 3 for b in batches)
  batch = pa.Table.from_batches(batches).combine_chunks().to_batches()[0]

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


TRICKY_LINES = [
    test_aliccp.skeleton(" 20", 0, 0, "mdA", [("205", "i1", "1.0")]),  # id with a space
    test_aliccp.skeleton(21, 1, 0, "mdA", [("205", "i1", "1e-3"), ("210", "n", "2E+2")]),
    test_aliccp.skeleton(22, 1, 0, "mdA", [("205", "i1", "1e999")]),  # not finite
    test_aliccp.skeleton(23, 1, 0, "mdA", [("205", "i1", "+1")]),  # Python float() only
    test_aliccp.skeleton(24, 1, 0, "mdA", [("205", "i1", "1.")]),
    test_aliccp.skeleton(25, 1, 0, "mdA", [("205", "i\x031", "1")]),  # separator in id
    test_aliccp.skeleton(26, 0, 0, "mdA", []),  # no items
    test_aliccp.skeleton(27, 0, 0, "mdA", [("205", "i1", "1")], count="007"),
    test_aliccp.skeleton(28, 0, 0, "mdA", [("205", "i1", "1")], count="1 "),
    test_aliccp.skeleton(29, 0, 0, "mdA", [("205", "i1", "1"), ("f205", "i2", "1")]),
    test_aliccp.skeleton(30, 0, 0, "md,A", [("205", "i1", "1")]),
    test_aliccp.skeleton(31, 1, 1, "mdé", [("205", "i1", "1")]),  # non-ASCII md5
    test_aliccp.skeleton(32, 0, 0, "mdA", [("999", "x", "1"), ("109_14", "c", "0.5"),
                                           ("109_14", "d", "-2")]),
    "33,1,0,mdA,1,205\x02i,1\x031",  # a comma inside an id
]


@pytest.mark.parametrize("kind", [caparse.SKELETON, caparse.COMMON])
def test_columnar_line_parse_is_the_row_parse_on_plain_lines(kind, tmp_path):
  """Every line the columnar parser takes gives exactly the row function's values; it
  leaves the rest (every dead letter among them) to the row function; and it takes
  almost all of a release's good lines."""
  spec = config_lib.load_config(test_aliccp.CONFIG).load_feature_spec()
  fields = aliccp.FieldFeatures(spec)
  paths = release_layouts.write_aliccp_release(str(tmp_path), skeleton_rows=2000, seed=5,
                                               bad_every=20)
  with open(paths[f"{'sample_skeleton' if kind == caparse.SKELETON else 'common_features'}"
                  "_train"]) as f:
    texts = [line.strip() for line in f if line.strip()]
  if kind == caparse.SKELETON:
    texts += TRICKY_LINES + test_aliccp.TRAIN_SKELETON
  else:
    texts += [test_aliccp.common("mdT", [("101", "u", "1"), ("121", "-5", "1e2")]),
              test_aliccp.common(" mdT", [("101", "u", "1")])] + test_aliccp.TRAIN_COMMON
  texts = [t for t in texts if t]
  table, plain, odd, ignored = caparse.ReleaseLineParser(spec, kind).parse(texts)
  assert sorted(plain.tolist() + odd.tolist()) == list(range(len(texts)))
  rows = table.to_pylist()
  names = [n for n in table.column_names if n not in (
      "impression_id", "md5", aliccp.CLICK_LABEL, aliccp.PURCHASE_LABEL)]
  expected_ignored = 0
  for index, row in zip(plain.tolist(), rows):
    if kind == caparse.SKELETON:
      sample_id, md5, labels, features, skipped = aliccp.parse_skeleton_line(
          texts[index], fields, False)
      assert (row["impression_id"], row["click"], row["purchase"]) == (
          sample_id, labels["click"], labels["purchase"])
    else:
      md5, features, skipped = aliccp.parse_common_line(texts[index], fields)
    expected_ignored += skipped
    assert row["md5"] == md5
    assert {n: row[n] for n in names if row[n] is not None} == features, texts[index]
  assert ignored == expected_ignored > 0
  rejected = 0
  for index in odd.tolist():
    try:
      if kind == caparse.SKELETON:
        aliccp.parse_skeleton_line(texts[index], fields, False)
      else:
        aliccp.parse_common_line(texts[index], fields)
    except (parse_lib.FieldError, example_codec.RecordError):
      rejected += 1
  assert rejected > 0 and len(plain) > 0.9 * (len(texts) - rejected)
