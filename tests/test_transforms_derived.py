"""layouts.derived: CSV rows parsed in columns are the line parser's rows.

Every row the columnar parser (`CsvLineParser`) takes must give exactly
`CsvRowParser`'s labels, features and search_id; the rest (every dead letter among
them) it leaves to the line parser; and it takes almost every good row of a generated
AliExpress file. The whole reader is pinned by tests/test_file_sources_golden.py.
"""

from configs import config as config_lib
from features import example_codec
from features import spec as spec_lib
from layouts import aliccp
from layouts import derived
from simulation import release_layouts
from tests import test_aliexpress
from transforms import dead_letter as dl
from transforms import parse as parse_lib

SPEC = spec_lib.feature_spec_from_dict({"features": [
    {"name": "a", "dtype": "string", "transform": "hash", "hash_buckets": 10},
    {"name": "b", "dtype": "int", "transform": "hash", "hash_buckets": 10},
    {"name": "c", "dtype": "float", "transform": "normalize"},
    {"name": "d", "dtype": "string", "transform": "hash", "hash_buckets": 10,
     "multivalent": True, "weighted": True},
    {"name": "e", "dtype": "float", "transform": "bucketize", "num_buckets": 4,
     "multivalent": True, "weighted": True},
]})
HEADER = "click,conversion,search_id,a,b,c,d,e,extra"
LINES = [
    "1,0,s1,x,5,0.5,y,1.5,z",
    "0,0,s1,,,,,,",                 # every feature missing
    "1,1,s2,x y,-7,1e-3,y,-2,z",    # an inner space, a negative int, an exponent
    "0,1,s2,x,5,0.5,y,1.5,z",       # purchase without click: line parser
    "1,0,s3,x,5.0,0.5,y,1.5,z",     # int given a float: line parser (bad_type)
    "1,0,s3,x,99999999999999999999,0.5,y,1.5,z",  # int beyond 18 digits: line parser
    "1,0,s3,x,5,nan,y,1.5,z",       # not a finite float: line parser
    "1,0,s3,x,5,1e999,y,1.5,z",     # overflows to inf: line parser
    "1,0,s3,x,5,+1,y,1.5,z",        # Python float() only
    "1,0, s4,x,5,0.5,y,1.5,z",      # search_id with an edge space: line parser strips it
    "1,0,s4, x,5,0.5,y,1.5,z",      # feature with an edge space
    "1,0,s4,  ,5,0.5,y,1.5,z",      # a blank cell: missing, via the line parser
    "1,0,,x,5,0.5,y,1.5,z",         # empty search_id: malformed_line
    "1,0,s5,x,5,0.5,y,1.5",         # a cell missing
    "1,0,s5,é,5,0.5,y,1.5,z",       # non-ASCII
    "2,0,s5,x,5,0.5,y,1.5,z",       # bad label
    "1,0,s6,x,007,0.5,y,1.5,z",
]


def _check(row_parser, spec, texts):
  table, plain, odd = derived.CsvLineParser(row_parser, spec).parse(texts)
  assert sorted(plain.tolist() + odd.tolist()) == list(range(len(texts)))
  label_names = set(aliccp.SOURCE_LABELS) | {derived.SEARCH_ID}
  features = [n for n in table.column_names if n not in label_names]
  for index, row in zip(plain.tolist(), table.to_pylist()):
    labels, expected, metadata = row_parser.parse(texts[index])
    assert {n: row[n] for n in features if row[n] is not None} == expected, texts[index]
    assert {k: row[k] for k in aliccp.SOURCE_LABELS} == labels
    assert {k: row[k] for k in metadata} == metadata
  rejected = 0
  for index in odd.tolist():
    try:
      row_parser.parse(texts[index])
    except (parse_lib.FieldError, example_codec.RecordError):
      rejected += 1
  return plain, rejected


def test_every_dtype_and_odd_cell():
  row_parser = derived.CsvRowParser(
      aliccp.FieldFeatures(SPEC), SPEC, HEADER, "f.csv", infer_click=False,
      label_columns=derived.ALIEXPRESS_LABEL_COLUMNS,
      id_column=derived.SEARCH_ID)
  plain, rejected = _check(row_parser, SPEC, LINES)
  assert set(plain.tolist()) == {0, 1, 2, 16}
  assert rejected == 8


def test_a_generated_aliexpress_file_goes_almost_all_through_columns(tmp_path):
  spec = config_lib.load_config(test_aliexpress.CONFIG).load_feature_spec()
  paths = release_layouts.write_aliexpress(str(tmp_path), train_rows=3000, seed=9)
  with open(paths["train"]) as f:
    header, *texts = [line.strip() for line in f if line.strip()]
  row_parser = derived.CsvRowParser(
      aliccp.FieldFeatures(spec), spec, header, paths["train"], infer_click=False,
      label_columns=derived.ALIEXPRESS_LABEL_COLUMNS,
      id_column=derived.SEARCH_ID)
  plain, rejected = _check(row_parser, spec, texts)
  assert rejected == 60 and len(plain) == len(texts) - rejected


def test_a_feature_fed_by_two_columns_leaves_the_file_to_the_line_parser():
  row_parser = derived.CsvRowParser(
      aliccp.FieldFeatures(SPEC), SPEC, "click,conversion,search_id,a,b,c,d,e,a", "f.csv",
      infer_click=False, label_columns=derived.ALIEXPRESS_LABEL_COLUMNS,
      id_column=derived.SEARCH_ID)
  table, plain, odd = derived.CsvLineParser(row_parser, SPEC).parse(LINES[:3])
  assert len(plain) == 0 and odd.tolist() == [0, 1, 2] and table.num_rows == 0


def test_a_line_the_line_parser_fails_on_is_a_parser_error_not_a_failed_job():
  """Issue 33: any exception of the line rules (MemoryError here) is a dead letter."""
  fn = derived._ReadDerivedFileFn(derived.ALIEXPRESS, SPEC, "train", False,
                                  aliccp.SOURCE_LABELS)

  class Exploding:
    def parse(self, text):
      raise MemoryError(f"out of memory on {text!r}")

  tag, letter = fn.parse_line(Exploding(), "f.csv", 3, LINES[0])
  assert tag == dl.DEAD_LETTER and (letter["line"], letter["record"]) == (3, LINES[0])
  assert letter["reason"] == dl.PARSER_ERROR and "MemoryError" in letter["detail"]
