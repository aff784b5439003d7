"""transforms.read: text lines in batches with their 1-based line numbers, Parquet batches and
rows read back by number, file matching."""

import io
import json

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa
import pyarrow.parquet as pq

from configs import config as config_lib
from transforms import read
from tests import beam_testing as testing


def test_match_files_reads_plain_and_gzip_and_parquet_batches_number_rows(tmp_path):
  plain = testing.write_jsonl(str(tmp_path / "a.jsonl"), ['{"x": 1}', "", "not json", '{"x": 3}'])
  packed = testing.write_jsonl(str(tmp_path / "b.jsonl.gz"), [{"y": 1}, {"y": 2}])
  rows = [{"impression_id": str(i), "timestamp": i} for i in range(5)]
  parquet = testing.write_parquet(str(tmp_path / "c.parquet"), rows)

  def lines_of(readable_file):
    if read.is_parquet(readable_file.metadata.path):
      return [(readable_file.metadata.path, batch.num_rows, batch.to_pylist())
              for batch in read.parquet_batches(readable_file, batch_rows=2)]
    with read.open_text(readable_file) as handle:
      return [(readable_file.metadata.path, number, text)
              for numbers, texts, _ in read.json_line_batches(handle)
              for number, text in zip(numbers, texts)]

  with test_pipeline.TestPipeline() as p:
    found = (p | read.MatchFiles([str(tmp_path / "*.jsonl"), str(tmp_path / "*.gz"),
                                  str(tmp_path / "*.parquet")])
             | beam.FlatMap(lines_of))
    assert_that(found, equal_to([
        (plain, 1, '{"x": 1}'), (plain, 3, "not json"), (plain, 4, '{"x": 3}'),
        (packed, 1, json.dumps({"y": 1})), (packed, 2, json.dumps({"y": 2})),
        (parquet, 2, rows[0:2]), (parquet, 2, rows[2:4]), (parquet, 1, rows[4:])]))


def test_split_patterns_and_parquet_detection():
  assert config_lib.split_patterns(" a/*.jsonl, gs://b/*.parquet ,") == ["a/*.jsonl",
                                                                    "gs://b/*.parquet"]
  assert read.is_parquet("x/part-0.PARQUET") and not read.is_parquet("x/a.jsonl.gz")
  assert read.glob_list("a*") == ["a*"] and read.glob_list(("a", "b")) == ["a", "b"]


def test_parquet_rows_reads_back_rows_across_row_groups(tmp_path):
  records = [testing.impression(i, testing.START + i) for i in range(25)]
  path = str(tmp_path / "imps.parquet")
  pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)
  expected = pq.read_table(path).to_pylist()
  reader = read.ParquetRows()
  for line in (25, 1, 8, 7, 15, 14, 22):
    assert reader.row(path, line) == expected[line - 1]
  reader.MAX_OPEN_FILES = 1
  other = str(tmp_path / "other.parquet")
  pq.write_table(pa.Table.from_pylist(records[:3]), other)
  assert reader.row(other, 2) == expected[1] and reader.row(path, 9) == expected[8]
  rows = [{"file": path, "line": 9, "record": None},
          {"file": "x.jsonl", "line": 2, "record": None},
          {"file": path, "line": 3, "record": "kept"}]
  assert [row["record"] for row in reader.fill_records(rows)] == [expected[8], None, "kept"]


def test_json_line_batches_number_decode_strip_and_skip_blank_lines(monkeypatch):
  """Chunks that are valid utf-8 take a fast path; one with a bad byte the per-line one.
  Both must give every non-blank line, decoded (bad bytes replaced) and stripped, with
  its 1-based line number in the file, whatever the chunk and batch sizes."""
  lines = [b'{"a": 1}', b"", b"  ", b'{"b": "\xc3\xa9"}\r', b"\t{}\t", b"x" * 50,
           b'{"bad": "\xff"}', b"", b'{"c": 3}', b"last without newline"]
  data = b"\n".join(lines * 7)
  expected = [(number, text) for number, text in enumerate(
      (line.decode("utf-8", errors="replace").strip() for line in data.split(b"\n")), 1)
              if text]
  for chunk_bytes in (16, 64, 1 << 20):
    monkeypatch.setattr(read, "READ_CHUNK_BYTES", chunk_bytes)
    for batch_rows in (1, 3, 1000):
      found, last = [], 0
      for numbers, texts, so_far in read.json_line_batches(io.BytesIO(data), batch_rows):
        assert 0 < len(texts) <= batch_rows and len(numbers) == len(texts)
        assert so_far >= numbers[-1] > last
        last = numbers[-1]
        found += list(zip(numbers, texts))
      assert found == expected, (chunk_bytes, batch_rows)
