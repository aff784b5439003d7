"""transforms.columnar.parse: the same kept records and dead letters as the row read+parse.

Each test writes a raw file with valid and bad lines of every kind, runs the row stage
(`read.read_json_lines` / `read.read_parquet_rows` -> `parse._Parse*Fn.process`, the
job's own code without a runner) and the columnar stage on it, and compares: kept
records (id, timestamp, coerced features, file, line, raw record) and dead letters
(source, file, line, reason, detail, record).
"""

import gzip
import json
import math
import os
import types

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa
import pytest

from transforms import dead_letter as dl
from transforms import parse
from transforms import read
from transforms import testing
from transforms.columnar import parse as cparse

EVENT_TYPES = ("click", "view_reviews", "cart", "favorite", "purchase")


class _File:
  """The slice of fileio.ReadableFile the readers use."""

  def __init__(self, path):
    self.metadata = types.SimpleNamespace(path=path)

  def open(self, compression_type=None, mime_type=None):  # pylint: disable=unused-argument
    return (gzip.open if self.metadata.path.endswith(".gz") else open)(self.metadata.path, "rb")


def _row_stage(path, row_fn):
  if hasattr(row_fn, "setup"):
    row_fn.setup()
  row_fn.start_bundle()
  reader = read.read_parquet_rows if read.is_parquet(path) else read.read_json_lines
  kept, dead = [], []
  for raw in reader(_File(path)):
    for out in row_fn.process(raw):
      if isinstance(out, beam.pvalue.TaggedOutput):
        dead.append(out.value)
      else:
        kept.append(out)
  return kept, dead


def _row_impression_fn(spec):
  return parse._ParseImpressionFn(spec)  # pylint: disable=protected-access


def _columnar_stage(path, parser, batch_rows):
  batches, dead = [], []
  if read.is_parquet(path):
    import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
    row = 1
    for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_rows):
      parsed, letters = parser.parse_parquet_batch(path, row, batch)
      row += batch.num_rows
      batches.append(parsed)
      dead += letters
  else:
    with _File(path).open() as handle:
      for lines, texts, _ in cparse.json_line_batches(handle, batch_rows):
        parsed, letters = parser.parse_json_lines(path, lines, texts)
        batches.append(parsed)
        dead += letters
  for batch in batches:
    assert batch.schema == parser.schema
  return pa.Table.from_batches(batches, schema=parser.schema).to_pylist(), dead


def _as_row_impressions(rows, spec, parquet):
  """Columnar rows in the row parser's record layout."""
  out = []
  keys = [name for feature in spec for name in
          ([feature.name, feature.weight_key] if feature.weighted else [feature.name])]
  for row in rows:
    out.append({"impression_id": row["impression_id"], "timestamp": row["timestamp"],
                "features": {key: row[key] for key in keys if row[key] is not None},
                "file": row["file"], "line": row["line"],
                "record": None if parquet else row["record"]})
  return out


def _key(letter):
  return (letter["file"], letter["line"])


def _valid(index):
  return testing.impression(index, testing.START + index)


BAD_IMPRESSION_LINES = [
    "{not json", "[1, 2]", '"x"', "5", "null",
    json.dumps({"timestamp": 5, "user_id": "u", "item_id": "i"}),
    json.dumps(_valid(1) | {"impression_id": ""}),
    json.dumps(_valid(2) | {"impression_id": 7}),
    json.dumps(_valid(3) | {"timestamp": "5"}),
    json.dumps(_valid(4) | {"timestamp": 5.0}),
    json.dumps(_valid(5) | {"timestamp": True}),
    json.dumps({k: v for k, v in _valid(7).items() if k != "user_id"}),
    json.dumps(_valid(8) | {"item_id": None}),
    json.dumps(_valid(9) | {"user_id": 3.5}),
    json.dumps(_valid(10) | {"user_age": 2.0}),
    json.dumps(_valid(11) | {"user_age": "3"}),
    json.dumps(_valid(12) | {"user_age": False}),
    json.dumps(_valid(13) | {"user_age": 2**64}),
    json.dumps(_valid(14) | {"item_price": "x"}),
    '{"impression_id": "nan1", "timestamp": 5, "user_id": "u", "item_id": "i", '
    '"item_price": NaN}',
    '{"impression_id": "inf1", "timestamp": 5, "user_id": "u", "item_id": "i", '
    '"item_price": Infinity}',
    '{"impression_id": "big1", "timestamp": 5, "user_id": "u", "item_id": "i", '
    '"item_price": 1e400}',
    json.dumps(_valid(15) | {"tags": ["a", None], "tags__weight": [1.0, 2.0]}),
    json.dumps(_valid(16) | {"device": ["ios"]}),
    json.dumps(_valid(17) | {"tags__weight": [1.0]}),
    json.dumps(_valid(18) | {"tags": None}),
    json.dumps(_valid(19) | {"tags__weight": [1.0, None]}),
    json.dumps(_valid(20) | {"tags__weight": ["a", "b"]}),
    '{"impression_id": "nanw", "timestamp": 5, "user_id": "u", "item_id": "i", '
    '"tags": ["a"], "tags__weight": [NaN]}',
    '{"impression_id": "dup", "impression_id": "dup2", "timestamp": 5, "user_id": "u", '
    '"item_id": "i"}',
    json.dumps(_valid(21) | {"device": {"a": 1}}),
    json.dumps(_valid(22) | {"position": 1.5}),
]
# Valid but unusual: coerced by the row parser, so the strict reader must fall back.
ODD_VALID_LINES = [
    json.dumps(_valid(30) | {"user_id": 12345}),
    json.dumps(_valid(31) | {"tags": "solo", "tags__weight": 2.0}),
    json.dumps(_valid(32) | {"tags": "solo"}),
    json.dumps(_valid(33) | {"tags": [], "tags__weight": []}),
    json.dumps(_valid(34) | {"tags": []}),
    json.dumps(_valid(35) | {"item_price": 7}),
    json.dumps(_valid(36) | {"device": None, "extra": {"nested": [1, "x"]}}),
    json.dumps({k: v for k, v in _valid(37).items() if k not in ("tags", "tags__weight")}),
    json.dumps(_valid(38) | {"device": "t\u00e9l\u00e9"}, ensure_ascii=False),
    json.dumps(_valid(39)) + "\u00a0",
    json.dumps(_valid(40)) + "\r",
    json.dumps(_valid(41) | {"item_price": 0.1 + 0.2, "tags__weight": [1e-310, 3.3]}),
]


def _impression_lines():
  lines = []
  for index in range(400):
    lines.append(json.dumps(_valid(100 + index)))
    if index % 9 == 0:
      lines.append("")
    if index % 13 == 0:
      lines.append("   ")
  for offset, bad in enumerate(BAD_IMPRESSION_LINES + ODD_VALID_LINES):
    lines.insert(7 + offset * 11, bad)
  return lines


@pytest.mark.parametrize("batch_rows", [50, 8192])
@pytest.mark.parametrize("name", ["imps.jsonl", "imps.jsonl.gz"])
def test_json_impressions_match_the_row_parser(tmp_path, name, batch_rows):
  path = str(tmp_path / name)
  testing.write_jsonl(path, _impression_lines())
  with open(path if not name.endswith(".gz") else os.devnull, "ab") as f:
    f.write(b'{"impression_id": "\xff\xfe bad utf8", "timestamp": 1}\n')
  spec = testing.small_spec()
  row_kept, row_dead = _row_stage(path, _row_impression_fn(spec))
  rows, dead = _columnar_stage(path, cparse.ImpressionParser(spec), batch_rows)
  assert len(row_dead) >= len(BAD_IMPRESSION_LINES)
  assert sorted(dead, key=_key) == sorted(row_dead, key=_key)
  assert _as_row_impressions(rows, spec, parquet=False) == row_kept


def test_json_with_no_newline_at_end_and_blank_file(tmp_path):
  path = str(tmp_path / "a.jsonl")
  with open(path, "w") as f:
    f.write("\n\n" + json.dumps(_valid(1)) + "\n{bad\n" + json.dumps(_valid(2)))
  spec = testing.small_spec()
  row_kept, row_dead = _row_stage(path, _row_impression_fn(spec))
  rows, dead = _columnar_stage(path, cparse.ImpressionParser(spec), 8192)
  assert [r["line"] for r in rows] == [3, 5]
  assert dead == row_dead and _as_row_impressions(rows, spec, False) == row_kept
  empty = str(tmp_path / "empty.jsonl")
  open(empty, "w").close()
  assert _columnar_stage(empty, cparse.ImpressionParser(spec), 8192) == ([], [])


def _event_lines():
  lines = []
  for index in range(300):
    lines.append(json.dumps(testing.event(f"imp{index}", testing.START + index,
                                          EVENT_TYPES[index % len(EVENT_TYPES)])))
  bad = ["{", "[]", json.dumps({"timestamp": 1, "event": "click"}),
         json.dumps(testing.event("", 1, "click")), json.dumps(testing.event("a", 1, "")),
         json.dumps(testing.event("a", 1, "teleport")),
         json.dumps(testing.event("a", 1.0, "click")),
         json.dumps(testing.event("a", 1, 5)), json.dumps(testing.event(5, 1, "click")),
         json.dumps({"impression_id": "a", "timestamp": 1})]
  for offset, line in enumerate(bad):
    lines.insert(3 + offset * 17, line)
  return lines


@pytest.mark.parametrize("batch_rows", [40, 8192])
def test_json_events_match_the_row_parser(tmp_path, batch_rows):
  path = testing.write_jsonl(str(tmp_path / "events.jsonl"), _event_lines())
  row_fn = parse._ParseEventFn(EVENT_TYPES)  # pylint: disable=protected-access
  row_kept, row_dead = _row_stage(path, row_fn)
  rows, dead = _columnar_stage(path, cparse.EventParser(EVENT_TYPES), batch_rows)
  assert len(row_dead) == 10
  assert sorted(dead, key=_key) == sorted(row_dead, key=_key)
  assert [{k: r[k] for k in ("impression_id", "timestamp", "event", "file", "line", "record")}
          for r in rows] == row_kept


def test_parquet_impressions_match_the_row_parser(tmp_path):
  records = [_valid(index) for index in range(300)]
  records[5]["item_price"] = float("nan")
  records[9]["impression_id"] = ""
  records[11].pop("user_id")
  records[20]["tags__weight"] = [1.0]
  records[21]["tags"] = ["x", None]
  records[22].pop("tags")
  records[23].pop("tags__weight")
  path = testing.write_parquet(str(tmp_path / "imps.parquet"), records)
  # An int column for a string feature and a float32 column: cast, or row by row.
  odd = [dict(r, user_id=index, item_price=None) for index, r in enumerate(records[:50])]
  odd_path = testing.write_parquet(str(tmp_path / "odd.parquet"), odd)
  spec = testing.small_spec()
  for file, batch_rows in ((path, 64), (odd_path, 16)):
    row_kept, row_dead = _row_stage(file, _row_impression_fn(spec))
    rows, dead = _columnar_stage(file, cparse.ImpressionParser(spec), batch_rows)
    # As JSON lines: NaN payloads compare equal that way (nan != nan in a dict).
    assert ([dl.to_json_line(d) for d in sorted(dead, key=_key)]
            == [dl.to_json_line(d) for d in sorted(row_dead, key=_key)])
    for row in row_kept:
      row["record"] = None
    assert _as_row_impressions(rows, spec, parquet=True) == row_kept
  assert len(_row_stage(path, _row_impression_fn(spec))[1]) == 6


def test_read_parse_transform_emits_batches_dead_letters_and_read_count(tmp_path):
  lines = [json.dumps(_valid(i)) for i in range(10)] + ["{bad", ""]
  testing.write_jsonl(str(tmp_path / "a.jsonl"), lines)
  testing.write_jsonl(str(tmp_path / "b.jsonl.gz"), lines[:3])
  with test_pipeline.TestPipeline() as p:
    out = p | cparse.ReadParseImpressions(str(tmp_path / "*"), testing.small_spec())
    assert_that(out[cparse.RECORDS] | beam.Map(lambda b: b.num_rows)
                | beam.CombineGlobally(sum), equal_to([13]), label="Rows")
    assert_that(out[dl.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"])),
                equal_to([(11, dl.UNPARSEABLE_JSON)]), label="Dead")
    assert_that(out[cparse.READ], equal_to([14]), label="Read")


def test_timestamp_outside_int64_is_a_parse_dead_letter():
  """The one documented divergence (the row job rejects it later, when encoding)."""
  text = json.dumps(_valid(6) | {"timestamp": 2**70})
  batch, dead = cparse.ImpressionParser(testing.small_spec()).parse_json_lines("f", [4], [text])
  assert batch.num_rows == 0
  assert [(d["line"], d["reason"]) for d in dead] == [(4, dl.BAD_VALUE)]


def test_a_lone_surrogate_is_a_parse_dead_letter():
  """The other documented divergence: Arrow strings must be valid utf-8."""
  text = json.dumps(_valid(7) | {"device": "\ud800x"})
  assert "\\ud800" in text
  batch, dead = cparse.ImpressionParser(testing.small_spec()).parse_json_lines("f", [2], [text])
  assert batch.num_rows == 0
  assert [(d["line"], d["reason"]) for d in dead] == [(2, dl.BAD_VALUE)]
  assert "'device'" in dead[0]["detail"]


def test_floats_parse_like_python_json():
  """pyarrow's JSON number parsing gives the same doubles as json.loads."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(0)
  values = [rng.uniform(0, 1000) for _ in range(2000)] + [rng.lognormvariate(0, 3)
                                                          for _ in range(2000)]
  texts = [json.dumps(testing.impression(i, 5, item_price=round(v, rng.randint(0, 17))))
           for i, v in enumerate(values)]
  parser = cparse.ImpressionParser(testing.small_spec())
  batch, dead = parser.parse_json_lines("f", list(range(1, len(texts) + 1)), texts)
  assert not dead
  expected = [json.loads(t)["item_price"] for t in texts]
  found = batch.column(batch.schema.get_field_index("item_price")).to_pylist()
  assert all(math.isfinite(v) for v in found)
  assert found == [float(v) for v in expected]


def test_parquet_rows_reads_back_rows_across_row_groups(tmp_path):
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  records = [testing.impression(i, testing.START + i) for i in range(25)]
  path = str(tmp_path / "imps.parquet")
  pq.write_table(pa.Table.from_pylist(records), path, row_group_size=7)
  expected = [row for _, _, row in read.read_parquet_rows(_File(path))]
  reader = cparse.ParquetRows()
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


def test_json_line_batches_fast_and_slow_paths_give_the_lines_read_json_lines_gives(
    monkeypatch):
  """Chunks that are valid utf-8 take a fast path; one with a bad byte the per-line one.
  Both must number, decode, strip and skip blank lines as `read.read_json_lines`."""
  import io  # pylint: disable=g-import-not-at-top
  lines = [b'{"a": 1}', b"", b"  ", b'{"b": "\xc3\xa9"}\r', b"\t{}\t", b"x" * 50,
           b'{"bad": "\xff"}', b"", b'{"c": 3}', b"last without newline"]
  data = b"\n".join(lines * 7)
  expected = [(number, text) for number, text in enumerate(
      (line.decode("utf-8", errors="replace").strip() for line in data.split(b"\n")), 1)
              if text]
  for chunk_bytes in (16, 64, 1 << 20):
    monkeypatch.setattr(cparse, "READ_CHUNK_BYTES", chunk_bytes)
    for batch_rows in (1, 3, 1000):
      found, last = [], 0
      for numbers, texts, so_far in cparse.json_line_batches(io.BytesIO(data), batch_rows):
        assert 0 < len(texts) <= batch_rows and len(numbers) == len(texts)
        assert so_far >= numbers[-1] > last
        last = numbers[-1]
        found += list(zip(numbers, texts))
      assert found == expected, (chunk_bytes, batch_rows)
