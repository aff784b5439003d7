"""transforms.read: JSON Lines (plain and gzip) and Parquet keep file and 1-based line."""

import json

from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import read
from transforms import testing


def test_json_lines_plain_and_gzip_keep_file_and_line(tmp_path):
  plain = testing.write_jsonl(str(tmp_path / "a.jsonl"), ['{"x": 1}', "", "not json", '{"x": 3}'])
  packed = testing.write_jsonl(str(tmp_path / "b.jsonl.gz"), [{"y": 1}, {"y": 2}])
  with test_pipeline.TestPipeline() as p:
    records = p | read.ReadRecords([str(tmp_path / "*.jsonl"), str(tmp_path / "*.gz")],
                                   "impressions")
    assert_that(records, equal_to([
        (plain, 1, '{"x": 1}'), (plain, 3, "not json"), (plain, 4, '{"x": 3}'),
        (packed, 1, json.dumps({"y": 1})), (packed, 2, json.dumps({"y": 2}))]))


def test_parquet_rows_are_dicts_numbered_from_one(tmp_path):
  path = testing.write_parquet(str(tmp_path / "rows.parquet"), [
      {"impression_id": "a", "timestamp": 1, "tags": ["p", "q"]},
      {"impression_id": "b", "timestamp": 2, "tags": []}])
  with test_pipeline.TestPipeline() as p:
    records = p | read.ReadRecords(path, "impressions", reshuffle=False)
    assert_that(records, equal_to([
        (path, 1, {"impression_id": "a", "timestamp": 1, "tags": ["p", "q"]}),
        (path, 2, {"impression_id": "b", "timestamp": 2, "tags": []})]))


def test_split_patterns_and_parquet_detection():
  assert read.split_patterns(" a/*.jsonl, gs://b/*.parquet ,") == ["a/*.jsonl",
                                                                    "gs://b/*.parquet"]
  assert read.is_parquet("x/part-0.PARQUET") and not read.is_parquet("x/a.jsonl.gz")
