"""`pipeline.preprocess --engine columnar` reproduces the row job's golden digest exactly.

The same two simulated worlds as tests/test_beam_golden.py (JSON Lines with corrupt lines
on one in-memory worker; Parquet on 2 local worker processes), preprocessed by the real
CLI with `--engine columnar` (and a small bucket count, so buckets hold many ids), and
digested by `test_beam_golden.digest_output`: every digest (Examples per split, counts,
transform.json, vocabularies, dead letters) must equal tests/data/golden/beam_golden.json.
"""

import json
import os

import pytest

from tests import test_beam_golden as golden_test


def _make_columnar_world(name, workdir):
  world = golden_test.WORLDS[name]
  raw, output = os.path.join(workdir, name, "raw"), os.path.join(workdir, name, "data")
  run = golden_test._run  # pylint: disable=protected-access
  run("pipeline.simulate", [f"--output={raw}", "--overwrite", *world["simulate"]])
  run("pipeline.preprocess", [
      f"--impressions={raw}/impressions/*", f"--events={raw}/events/*", f"--output={output}",
      "--engine=columnar", "--join_buckets=7", *world["preprocess"]])
  return output


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(golden_test.WORLDS))
def test_columnar_engine_matches_the_golden_digest(name, tmp_path):
  with open(golden_test.GOLDEN) as f:
    expected = json.load(f)["worlds"][name]
  found = golden_test.digest_output(_make_columnar_world(name, str(tmp_path)))
  assert found["sizes"] == expected["sizes"]
  assert found["digests"] == expected["digests"]
