"""layouts.aliccp, aliccp_join and --source ali_ccp: the raw Ali-CCP layout, written here
byte for byte.

The files use the release's separators (items joined by \\x01, field \\x02 feature id
\\x03 value) and cover multi-valued weighted fields, a missing md5, count mismatches, a
purchase without a click, malformed items and lines, duplicate and unused common rows.
The columnar line parser must give the line functions' values on every line it takes,
and `BucketJoiner.join` the join rules' outcome applied md5 by md5 (every join case:
duplicates, missing and rejected md5s, lists on both sides, a scalar on both sides).
"""

import glob
import json
import os

import numpy as np
import pyarrow as pa
import pytest
import tensorflow as tf

from configs import config as config_lib
from features import example_codec
from layouts import aliccp
from layouts import aliccp_join
from pipeline import preprocess
from simulation import release_layouts
from transforms import accounting
from transforms import dead_letter as dl
from transforms import job
from transforms import outputs as outputs_lib
from transforms import parse as parse_lib
from transforms import records as records_lib
from tests import test_success_marker
from tests.conftest import build_once

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "ali_ccp.yaml")


def items(*triples):
  """The raw feature list of (field, id, value) triples."""
  return "\x01".join(f"{field}\x02{feature_id}\x03{value}" for field, feature_id, value in triples)


def skeleton(sample_id, click, buy, md5, triples, count=None):
  count = len(triples) if count is None else count
  return f"{sample_id},{click},{buy},{md5},{count},{items(*triples)}"


def common(md5, triples, count=None):
  count = len(triples) if count is None else count
  return f"{md5},{count},{items(*triples)}"


ITEM_1 = [("205", "i1", "1.0"), ("206", "c1", "1.0"), ("210", "n1", "1.0"), ("210", "n2", "0.5"),
          ("508", "x1", "2.5"), ("301", "p1", "1.0")]
USER_A = [("101", "u1", "1.0"), ("109_14", "cat1", "3.0"), ("109_14", "cat2", "1.5"),
          ("124", "g1", "1.0"), ("999", "unknown_field", "1.0")] + [
              (field, f"v{field}", "1.0") for field in ("121", "122", "125", "126", "127", "128",
                                                        "129")]

TRAIN_SKELETON = [
    skeleton(1, 1, 1, "mdA", ITEM_1),                                    # written
    skeleton(2, 0, 0, "mdA", [("205", "i2", "1.0")]),                    # written
    skeleton(3, 1, 0, "mdB", [("205", "i3", "1.0")]),                    # written
    skeleton(4, 0, 1, "mdA", [("205", "i4", "1.0")]),                    # purchase_without_click
    skeleton(5, 0, 0, "mdMissing", [("205", "i5", "1.0")]),              # missing_common_features
    skeleton(6, 0, 0, "mdA", [("205", "i6", "1.0")], count=5),           # feature_count_mismatch
    "7,0,0,mdA,2," + items(("205", "i7", "1.0")) + "\x01206c7",          # malformed_item
    "8,0,0",                                                             # malformed_line
    skeleton(9, 2, 0, "mdA", [("205", "i9", "1.0")]),                    # bad_label
    skeleton(10, 0, 0, "mdA", [("205", "i10", "1.0"), ("205", "i11", "1.0")]),  # repeated scalar
    skeleton(11, 0, 0, "mdA", [("205", "i11", "abc")]),                  # malformed_item (value)
    "",                                                                  # blank: not a record
    skeleton(12, 0, 0, "mdBad", [("205", "i12", "1.0")]),                # common_features_rejected
]
TRAIN_COMMON = [
    common("mdA", USER_A),                                               # used
    common("mdB", [("101", "u2", "1.0"), ("150_14", "in1", "0.25")]),    # used
    common("mdUnused", [("101", "u3", "1.0")]),                          # unused
    common("mdA", [("101", "u9", "1.0")]),                               # duplicate_md5
    common("mdBad", [("101", "u4", "1.0")], count=3),                    # feature_count_mismatch
    "garbage-without-commas",                                            # malformed_line
]
EVAL_SKELETON = [
    skeleton(1, 1, 0, "mdA", [("205", "i1", "1.0")]),  # ids restart; joins the eval mdA
    skeleton(2, 0, 0, "mdB", [("205", "i2", "1.0")]),  # mdB is only in train: missing
]
EVAL_COMMON = [common("mdA", [("101", "u5", "1.0")])]


def write_release(directory):
  """Train and test files in the release's layout; returns the four paths."""
  paths = {}
  for name, lines in (("train/sample_skeleton_train.csv", TRAIN_SKELETON),
                      ("train/common_features_train.csv", TRAIN_COMMON),
                      ("test/sample_skeleton_test.csv", EVAL_SKELETON),
                      ("test/common_features_test.csv", EVAL_COMMON)):
    path = os.path.join(str(directory), name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="") as f:
      f.write("".join(line + "\n" for line in lines))
    paths[name.split("/")[1].rsplit("_", 1)[0] + "_" + name.split("/")[0]] = path
  return paths


def read_split(output, split, spec, label_names):
  files = sorted(glob.glob(outputs_lib.OutputPaths(output).examples_pattern(split)))
  return [example_codec.example_to_dict(raw.numpy(), spec, label_names)
          for raw in tf.data.TFRecordDataset(files, compression_type="GZIP")]


def test_feature_list_parses_every_item_and_rejects_malformed_ones():
  assert aliccp.parse_feature_list(items(("109_14", "7", "2.0"), ("109_14", "8", "0.5"))) == [
      ("109_14", "7", 2.0), ("109_14", "8", 0.5)]
  assert aliccp.parse_feature_list("") == []
  for bad in ("109_14\x027", "109_14\x027\x03x", "\x027\x031.0", "1\x02\x031", "1\x022\x033\x034",
              "1\x022\x03nan"):
    with pytest.raises(parse_lib.FieldError) as e:
      aliccp.parse_feature_list(items(("101", "1", "1.0")) + "\x01" + bad)
    assert e.value.reason == "malformed_item" and "item 1" in e.value.detail


def test_field_names_are_identifiers():
  assert [aliccp.field_feature_name(f) for f in ("101", "109_14", "D508")] == [
      "f101", "f109_14", "D508"]


def test_purchase_without_click_follows_the_orphan_policy():
  with pytest.raises(parse_lib.FieldError, match="purchase is 1 but click is 0"):
    aliccp.source_labels(0, 1, infer_click=False)
  assert aliccp.source_labels(0, 1, infer_click=True) == {"click": 1, "purchase": 1}
  assert aliccp.source_labels(1, 0, infer_click=False) == {"click": 1, "purchase": 0}


def preprocessed_release(tmp_path_factory):
  """`write_release`'s files through `pipeline.preprocess --source ali_ccp --join_buckets 2`
  (2 join buckets: several md5s per bucket), made once per test session over a stale
  success marker; read-only for its users (this module, tests/test_real_samples.py).

  Returns:
    {"paths": write_release's paths, "output": the output dir, "counts" and "schema":
    pipeline.preprocess.run's}.
  """
  def build(directory):
    paths = write_release(os.path.join(directory, "raw"))
    output = os.path.join(directory, "out")
    test_success_marker.write_stale_marker(output)
    result = preprocess.run([
        "--source", "ali_ccp", "--output", output, "--join_buckets", "2",
        "--skeleton", paths["sample_skeleton_train"],
        "--common_features", paths["common_features_train"],
        "--eval_skeleton", paths["sample_skeleton_test"],
        "--eval_common_features", paths["common_features_test"]])
    return {"paths": paths, "output": output, "counts": result["counts"],
            "schema": result["schema"]}
  return build_once(tmp_path_factory, "aliccp_release", build)


def test_the_job_keeps_every_value_and_weight_and_accounts_for_every_line(tmp_path_factory):
  output = preprocessed_release(tmp_path_factory)["output"]
  spec = config_lib.load_config(CONFIG).load_feature_spec()
  out = outputs_lib.OutputPaths(output)
  counts = job.check_run(out, seconds=1.0)
  assert counts["impressions"] == {
      "read": 14, "written": {"train": 3, "eval": 1},
      "dead_letter": {"bad_label": 1, "common_features_rejected": 1,
                      "feature_count_mismatch": 1, "malformed_item": 2, "malformed_line": 1,
                      "missing_common_features": 2, "purchase_without_click": 1,
                      "repeated_single_valued_field": 1}}
  assert counts["common_features"] == {
      "read": 7, "used": 3, "unused": 1,
      "dead_letter": {"duplicate_md5": 1, "feature_count_mismatch": 1, "malformed_line": 1}}
  assert "events" not in counts
  assert counts["labels"] == {"train": {"click": 2, "purchase": 1},
                              "eval": {"click": 1, "purchase": 0}}

  train = {d["impression_id"]: d for d in read_split(output, "train", spec, ["click", "purchase"])}
  assert sorted(train) == ["1", "2", "3"]
  first = train["1"]
  assert (first["click"], first["purchase"], first["timestamp"]) == (1, 1, 0)
  assert first["f210"] == ["n1", "n2"] and first["f210__weight"] == [1.0, 0.5]
  assert first["f508"] == ["x1"] and first["f508__weight"] == [2.5]
  assert first["f109_14"] == ["cat1", "cat2"] and first["f109_14__weight"] == [3.0, 1.5]
  assert (first["f101"], first["f124"], first["f205"], first["f206"], first["f301"]) == (
      "u1", "g1", "i1", "c1", "p1")
  assert "f127_14" not in first  # A field the row lacks is absent, not an empty default.
  assert train["2"]["f101"] == "u1"  # The kept mdA row is the first, not the duplicate.
  assert train["3"]["f150_14"] == ["in1"] and train["3"]["f150_14__weight"] == [0.25]
  evals = read_split(output, "eval", spec, ["click", "purchase"])
  assert [(d["impression_id"], d["f101"], d["click"]) for d in evals] == [("1", "u5", 1)]

  letters = [json.loads(line) for path in glob.glob(out.dead_letter_pattern) for line in open(path)]
  assert len(letters) == 13
  by_reason = {}
  for letter in letters:
    by_reason.setdefault((letter["source"], letter["reason"]), []).append(letter)
  missing = by_reason[("impressions", "missing_common_features")]
  assert sorted((os.path.basename(l["file"]), l["line"]) for l in missing) == [
      ("sample_skeleton_test.csv", 2), ("sample_skeleton_train.csv", 5)]
  assert by_reason[("impressions", "purchase_without_click")][0]["record"] == TRAIN_SKELETON[3]
  assert by_reason[("common_features", "duplicate_md5")][0]["line"] == 4
  assert "dead-lettered (feature_count_mismatch)" in by_reason[
      ("impressions", "common_features_rejected")][0]["detail"]
  assert by_reason[("impressions", "malformed_line")][0]["line"] == 8


def test_flags_of_another_source_or_a_missing_flag_fail_early(tmp_path):
  paths = write_release(tmp_path)
  base = ["--source", "ali_ccp", "--output", str(tmp_path / "out"),
          "--skeleton", paths["sample_skeleton_train"],
          "--common_features", paths["common_features_train"],
          "--eval_skeleton", paths["sample_skeleton_test"]]
  with pytest.raises(job.PreprocessError, match="needs --eval_common_features"):
    preprocess.run(base)
  with pytest.raises(job.PreprocessError, match="does not use"):
    preprocess.run(base + ["--eval_common_features", paths["common_features_test"],
                           "--impressions", paths["sample_skeleton_train"]])
  args, _ = preprocess.parse_args(base)
  assert args.config == preprocess.DEFAULT_CONFIGS["ali_ccp"] == CONFIG
  with pytest.raises(job.PreprocessError, match="click and purchase labels only"):
    preprocess.run(base + ["--eval_common_features", paths["common_features_test"],
                           "--config", os.path.join(REPO, "configs", "esmm.yaml")])


def test_a_lost_common_features_line_breaks_the_identity():
  counts = accounting.build_counts(
      [(("impressions", "read"), 2), (("impressions", "written", "train"), 2),
       (("common_features", "read"), 3), (("common_features", "used"), 1),
       (("common_features", "unused"), 1)], ["click", "purchase"],
      sources=("impressions", "common_features"))
  assert "events" not in counts
  problems = accounting.check_counts(counts)
  assert problems == ["common_features: read 3 != used 1 + unused 1 + dead-lettered 0 ({}); "
                      "1 unaccounted"]


def test_concat_lists_joins_rows_and_keeps_nulls_of_both():
  first = pa.array([["a"], None, ["b", "c"], None, []], pa.list_(pa.string()))
  second = pa.array([["x", "y"], ["z"], None, None, ["w"]], pa.list_(pa.string()))
  assert aliccp_join.concat_lists(first, second).to_pylist() == [
      ["a", "x", "y"], ["z"], ["b", "c"], None, ["w"]]
  # Sliced inputs (offsets not starting at 0), as a take or a filter leaves them.
  sliced = aliccp_join.concat_lists(first.slice(2, 3), second.slice(1, 3))
  assert sliced.to_pylist() == [["b", "c", "z"], None, []]


def _parsed(lines, split, kind, fields, batcher):
  records, tombstones, dead = [], [], []
  for line, text in enumerate(lines, start=1):
    if not text:
      continue
    try:
      if kind == aliccp_join.SKELETON:
        sample_id, md5, labels, features, _ = aliccp.parse_skeleton_line(text, fields, False)
      else:
        (md5, features, _), sample_id, labels = aliccp.parse_common_line(text, fields), "", {}
    except (parse_lib.FieldError, example_codec.RecordError) as e:
      dead.append((kind, line, e.reason))
      if kind == aliccp_join.COMMON and aliccp.common_md5(text):
        tombstones.append((aliccp.common_md5(text), f"{split}_{kind}", line, e.reason))
      continue
    records.append({"impression_id": sample_id, "timestamp": 0, "features": features,
                    "labels": labels, "file": f"{split}_{kind}", "line": line,
                    "record": text, "metadata": {aliccp_join.MD5: md5}})
  batch, _ = batcher.batch(records)
  return pa.Table.from_batches([batch]), records, tombstones


JOIN_CASES = [  # Beyond the release above: the two merge cases of the join.
    skeleton(13, 0, 0, "mdA", [("205", "i13", "1.0"), ("101", "me", "1.0")]),
    skeleton(14, 1, 0, "mdB", [("205", "i14", "1.0"), ("150_14", "s1", "2.0")]),
]


def _rules_join(split, spec, skeleton_rows, common_rows, tombstones):
  """The join rules applied md5 by md5 on parsed dicts: common rows ordered by (file,
  line), the first kept and the others duplicate_md5; skeleton rows of an md5 without a
  kept row missing_common_features / common_features_rejected; the others merged by
  `FieldFeatures.merge` (a scalar on both sides: its dead letter).
  -> (joined records, dead letters, common md5s used)."""
  fields = aliccp.FieldFeatures(spec)
  md5 = lambda row: row["metadata"][aliccp_join.MD5]
  joined, dead, used = [], [], 0
  for key in sorted({md5(r) for r in skeleton_rows + common_rows} | {t[0] for t in tombstones}):
    commons = sorted((r for r in common_rows if md5(r) == key),
                     key=lambda r: (r["file"], r["line"]))
    dead += [aliccp.duplicate_md5_letter(split, key, commons[0], r) for r in commons[1:]]
    rows = [r for r in skeleton_rows if md5(r) == key]
    if not commons:
      reason, detail = aliccp.unjoined_reason(split, key, [t[1:] for t in tombstones
                                                           if t[0] == key])
      dead += [dl.make_dead_letter(dl.IMPRESSIONS, r["file"], r["line"], reason, detail,
                                   r["record"]) for r in rows]
      continue
    used += bool(rows)
    for row in rows:
      try:
        features = fields.merge(row["features"], commons[0]["features"])
      except example_codec.RecordError as e:
        dead.append(dl.make_dead_letter(dl.IMPRESSIONS, row["file"], row["line"], e.reason,
                                        e.detail, row["record"]))
        continue
      joined.append(dict(row, features=features))
  return joined, dead, used


@pytest.mark.parametrize("split, skeleton_lines, common_lines", [
    ("train", TRAIN_SKELETON + JOIN_CASES, TRAIN_COMMON),
    ("eval", EVAL_SKELETON, EVAL_COMMON)])
def test_bucket_join_is_the_join_rules_md5_by_md5(split, skeleton_lines, common_lines, monkeypatch):
  spec = config_lib.load_config(CONFIG).load_feature_spec()
  fields = aliccp.FieldFeatures(spec)
  skeleton, skeleton_rows, _ = _parsed(
      skeleton_lines, split, aliccp_join.SKELETON, fields,
      records_lib.RecordBatcher(spec, aliccp.SOURCE_LABELS, (aliccp_join.MD5,)))
  common, common_rows, tombstones = _parsed(
      common_lines, split, aliccp_join.COMMON, fields,
      records_lib.RecordBatcher(spec, (), (aliccp_join.MD5,)))
  monkeypatch.setattr(aliccp_join, "JOIN_CHUNK_ROWS", 3)  # Merged a few rows at a time.
  batches, dead, used, unused = aliccp_join.BucketJoiner(spec).join(
      split, skeleton, common, tombstones)
  assert all(0 < b.num_rows <= 3 for b in batches)
  batch = pa.Table.from_batches(batches).combine_chunks().to_batches()[0]

  expected_rows, expected_dead, used_count = _rules_join(
      split, spec, skeleton_rows, common_rows, tombstones)
  assert (used, unused) == (used_count, len({r["metadata"][aliccp_join.MD5]
                                             for r in common_rows}) - used_count)
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
    assert by_line[len(TRAIN_SKELETON) + 2]["f150_14"] == ["s1", "in1"]
  for row in expected_rows:
    got = by_line[row["line"]]
    assert {n: got[n] for n in names if got[n] is not None} == row["features"]
    assert {"click": got["click"], "purchase": got["purchase"]} == row["labels"]
    assert got["impression_id"] == row["impression_id"]
  assert np.all(np.asarray([r["line"] for r in found]) > 0)


TRICKY_LINES = [
    skeleton(" 20", 0, 0, "mdA", [("205", "i1", "1.0")]),  # id with a space
    skeleton(21, 1, 0, "mdA", [("205", "i1", "1e-3"), ("210", "n", "2E+2")]),
    skeleton(22, 1, 0, "mdA", [("205", "i1", "1e999")]),  # not finite
    skeleton(23, 1, 0, "mdA", [("205", "i1", "+1")]),  # Python float() only
    skeleton(24, 1, 0, "mdA", [("205", "i1", "1.")]),
    skeleton(25, 1, 0, "mdA", [("205", "i\x031", "1")]),  # separator in id
    skeleton(26, 0, 0, "mdA", []),  # no items
    skeleton(27, 0, 0, "mdA", [("205", "i1", "1")], count="007"),
    skeleton(28, 0, 0, "mdA", [("205", "i1", "1")], count="1 "),
    skeleton(29, 0, 0, "mdA", [("205", "i1", "1"), ("f205", "i2", "1")]),
    skeleton(30, 0, 0, "md,A", [("205", "i1", "1")]),
    skeleton(31, 1, 1, "mdé", [("205", "i1", "1")]),  # non-ASCII md5
    skeleton(32, 0, 0, "mdA", [("999", "x", "1"), ("109_14", "c", "0.5"),
                                           ("109_14", "d", "-2")]),
    "33,1,0,mdA,1,205\x02i,1\x031",  # a comma inside an id
]


@pytest.mark.parametrize("kind", [aliccp.SKELETON, aliccp.COMMON])
def test_columnar_line_parse_is_the_line_functions_on_plain_lines(kind, tmp_path):
  """Every line the columnar parser takes gives exactly the line function's values; it
  leaves the rest (every dead letter among them) to the line function; and it takes
  almost all of a release's good lines."""
  spec = config_lib.load_config(CONFIG).load_feature_spec()
  fields = aliccp.FieldFeatures(spec)
  paths = release_layouts.write_aliccp_release(str(tmp_path), skeleton_rows=2000, seed=5,
                                               bad_every=20)
  with open(paths[f"{'sample_skeleton' if kind == aliccp.SKELETON else 'common_features'}"
                  "_train"]) as f:
    texts = [line.strip() for line in f if line.strip()]
  if kind == aliccp.SKELETON:
    texts += TRICKY_LINES + TRAIN_SKELETON
  else:
    texts += [common("mdT", [("101", "u", "1"), ("121", "-5", "1e2")]),
              common(" mdT", [("101", "u", "1")])] + TRAIN_COMMON
  texts = [t for t in texts if t]
  table, plain, odd, ignored = aliccp.ReleaseLineParser(spec, kind).parse(texts)
  assert sorted(plain.tolist() + odd.tolist()) == list(range(len(texts)))
  rows = table.to_pylist()
  names = [n for n in table.column_names if n not in (
      "impression_id", "md5", aliccp.CLICK_LABEL, aliccp.PURCHASE_LABEL)]
  expected_ignored = 0
  for index, row in zip(plain.tolist(), rows):
    if kind == aliccp.SKELETON:
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
      if kind == aliccp.SKELETON:
        aliccp.parse_skeleton_line(texts[index], fields, False)
      else:
        aliccp.parse_common_line(texts[index], fields)
    except (parse_lib.FieldError, example_codec.RecordError):
      rejected += 1
  assert rejected > 0 and len(plain) > 0.9 * (len(texts) - rejected)


def test_a_line_the_line_functions_fail_on_is_a_parser_error_not_a_failed_job(monkeypatch):
  """Issue 33: any exception of the line rules (MemoryError here) is a dead letter, and a
  common-features line's md5 still leaves its tombstone."""
  spec = config_lib.load_config(CONFIG).load_feature_spec()

  def exploding(text, *args):
    raise MemoryError(f"out of memory on {text!r}")

  monkeypatch.setattr(aliccp, "parse_common_line", exploding)
  fn = aliccp_join._ReadReleaseFileFn(  # pylint: disable=protected-access
      aliccp.COMMON, spec, "train", False, num_buckets=2, progress_interval_s=60.0)
  fn.setup()
  text = "mdX,x,not a feature list"  # Not plain: the line function decides.
  outputs = list(fn._parse_batch("c.csv", [5], [text]))  # pylint: disable=protected-access
  tagged = {out.tag: out.value for out in outputs}
  letter = tagged[dl.DEAD_LETTER]
  assert (letter["line"], letter["reason"], letter["record"]) == (5, dl.PARSER_ERROR, text)
  assert "MemoryError" in letter["detail"]
  assert tagged[aliccp_join.REJECTED][1][0] == "mdX"
