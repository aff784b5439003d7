"""transforms.aliccp and --source ali_ccp: the raw Ali-CCP layout, written here byte for byte.

The files use the release's separators (items joined by \\x01, field \\x02 feature id
\\x03 value) and cover multi-valued weighted fields, a missing md5, count mismatches, a
purchase without a click, malformed items and lines, duplicate and unused common rows.
"""

import glob
import json
import os

import pytest
import tensorflow as tf
from apache_beam.testing import test_pipeline

from configs import config as config_lib
from features import example_codec
from pipeline import preprocess
from transforms import accounting
from transforms import aliccp
from transforms import outputs as outputs_lib
from transforms import parse as parse_lib
from transforms import preprocess_job

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


def small_config():
  return config_lib.load_config(CONFIG, overrides={"data": {"train_shards": 1,
                                                            "eval_shards": 1}})


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


def test_the_job_keeps_every_value_and_weight_and_accounts_for_every_line(tmp_path):
  paths = write_release(tmp_path / "raw")
  config = small_config()
  spec = config.load_feature_spec()
  output = str(tmp_path / "out")
  with test_pipeline.TestPipeline() as p:
    _ = p | preprocess_job.PreprocessAliCcp(
        {"train": [paths["sample_skeleton_train"]], "eval": [paths["sample_skeleton_test"]]},
        {"train": [paths["common_features_train"]], "eval": [paths["common_features_test"]]},
        output, config.data, spec, statistics=False)
  out = outputs_lib.OutputPaths(output)
  counts = preprocess_job.check_run(out, seconds=1.0)
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
  with pytest.raises(preprocess_job.PreprocessError, match="needs --eval_common_features"):
    preprocess.run(base)
  with pytest.raises(preprocess_job.PreprocessError, match="does not use"):
    preprocess.run(base + ["--eval_common_features", paths["common_features_test"],
                           "--impressions", paths["sample_skeleton_train"]])
  args, _ = preprocess.parse_args(base)
  assert args.config == preprocess.DEFAULT_CONFIGS["ali_ccp"] == CONFIG
  with pytest.raises(preprocess_job.PreprocessError, match="click and purchase labels only"):
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
