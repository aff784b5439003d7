"""The columnar stages so far (read+parse, bucketed join+label, split+encode) on the golden
worlds of tests/test_beam_golden.py: their Examples and dead letters give the golden digests.

Runs without a Beam runner (the stage functions, file by file and bucket by bucket) on the
same simulated worlds as the golden test, and checks the sha256 of each split's sorted
Examples and of the sorted (file basename, line, reason) dead letters against
tests/data/golden/beam_golden.json. Analyzers, statistics and counts run in the whole job
(tests/test_columnar_golden.py).
"""

import glob
import json
import gzip
import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from configs import config as config_lib
from features import spec as spec_lib
from tests import test_beam_golden as golden_test
from transforms import label
from transforms import read
from transforms.columnar import encode as cencode
from transforms.columnar import label as clabel
from transforms.columnar import parse as cparse

CONFIG = os.path.join(golden_test.REPO, "configs", "esmm.yaml")


def _parse_files(parser, paths):
  batches, dead = [], []
  for path in paths:
    if read.is_parquet(path):
      row = 1
      for batch in pq.ParquetFile(path).iter_batches(batch_size=cparse.BATCH_ROWS):
        parsed, letters = parser.parse_parquet_batch(path, row, batch)
        row += batch.num_rows
        batches.append(parsed)
        dead += letters
    else:
      with gzip.open(path, "rb") as handle:
        for lines, texts, _ in cparse.json_line_batches(handle):
          parsed, letters = parser.parse_json_lines(path, lines, texts)
          batches.append(parsed)
          dead += letters
  return batches, dead


def columnar_outputs(raw, num_buckets=8):
  """{"train", "eval"}: serialized Examples, and every dead letter, of the columnar stages."""
  config = config_lib.load_config(CONFIG)
  spec = spec_lib.load_feature_spec(config.feature_spec_path)
  data = config.data
  imps, dead = _parse_files(cparse.ImpressionParser(spec),
                            sorted(glob.glob(os.path.join(raw, "impressions", "*"))))
  events, event_dead = _parse_files(
      cparse.EventParser(label.EventLabeler(data).event_types),
      sorted(glob.glob(os.path.join(raw, "events", "*"))))
  dead += event_dead
  labeler = clabel.BucketLabeler(data, cparse.impression_schema(spec))
  buckets = {}
  for key, batches in (("i", imps), ("e", events)):
    for batch in batches:
      for bucket, part in clabel.split_by_bucket(batch, num_buckets):
        buckets.setdefault(bucket, {"i": [], "e": []})[key].append(part)
  encoder = cencode.BatchEncoder(spec, data.label_names)
  examples = {"train": [], "eval": []}
  for parts in buckets.values():
    batch, letters, _ = labeler.join_and_label(
        pa.Table.from_batches(parts["i"], schema=labeler.impression_schema),
        pa.Table.from_batches(parts["e"], schema=cparse.event_schema()))
    dead += letters
    for split, part in cencode.split_batch(batch, data.eval_from_timestamp).items():
      found, letters = encoder.encode(part)
      examples[split] += found
      dead += letters
  return examples, dead


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(golden_test.WORLDS))
def test_columnar_stages_give_the_golden_examples_and_dead_letters(name, tmp_path):
  with open(golden_test.GOLDEN) as f:
    expected = json.load(f)["worlds"][name]
  raw = str(tmp_path / "raw")
  run = golden_test._run  # pylint: disable=protected-access
  world = golden_test.WORLDS[name]
  run("pipeline.simulate", [f"--output={raw}", "--overwrite", *world["simulate"]])
  examples, dead = columnar_outputs(raw)
  for split in ("train", "eval"):
    assert len(examples[split]) == expected["sizes"][f"examples_{split}"]
    digest = golden_test._sha256_records(examples[split])  # pylint: disable=protected-access
    assert digest == expected["digests"][f"examples_{split}"]
  letters = sorted([os.path.basename(d["file"]), d["line"], d["reason"]] for d in dead)
  assert len(letters) == expected["sizes"]["dead_letters"]
  digest = golden_test._sha256_json(letters)  # pylint: disable=protected-access
  assert digest == expected["digests"]["dead_letters"]
