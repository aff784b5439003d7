"""Golden digests of the file-split sources (Ali-CCP release, derived layouts).

Four fixed inputs, each preprocessed by the real CLI's `pipeline.preprocess.run` (in this
process, as tests/test_beam_golden.py does) and digested as that module does (Examples per
split, counts.json, transform.json, vocabularies, dead letters by (file, line, reason)),
plus every dead letter whole (reason, detail with the input folder left out, record).
Each world's run is made once per test session (`shared_world`, tests.conftest.build_once):
tests/test_real_samples.py checks and trains on the rechub_csv and paddle_esmm runs, whose
inputs are its vendored samples with its flags.

The reference is tests/data/golden/file_sources_golden.json, recorded by the retired
per-record job before the RecordBatch readers existed; the job must reproduce it exactly
(the Ali-CCP run with 2 join buckets, so a bucket holds many md5s and its batches take the
columnar encoder's path, on 2 local worker processes).

  aliccp       simulation.release_layouts: 6,000 train + 2,000 test skeleton rows, every
               dead-letter case of the release, duplicate / unused / rejected md5s, list
               fields on both sides of the join
  aliexpress   simulation.release_layouts: 4,000 + 1,333 rows with bad rows of each kind
  rechub_csv   tests/data/real's torch-rechub sample (train; val + test as eval)
  paddle_esmm  tests/data/real's PaddleRec ESMM sample

Regenerate (only when an output change is intended, and say why in the commit):

  TF_USE_LEGACY_KERAS=1 python -m tests.test_file_sources_golden --write
"""

import argparse
import glob
import hashlib
import json
import os
import shutil
import sys
import tempfile
from typing import Any, Dict, List

import pytest

from pipeline import preprocess
from simulation import release_layouts
from tests import test_beam_golden as beam_golden
from tests import test_success_marker
from tests import conftest

REPO = beam_golden.REPO
REAL = os.path.join(REPO, "tests", "data", "real")
GOLDEN = os.path.join(REPO, "tests", "data", "golden", "file_sources_golden.json")
WORLDS = ("aliccp", "aliexpress", "rechub_csv", "paddle_esmm")
WORKDIR = os.path.join(tempfile.gettempdir(), "cvr_file_sources_golden")


def _inputs(name: str, raw: str) -> List[str]:
  """The preprocess flags of world `name`, its files written (or copied) under raw."""
  if name == "aliccp":
    paths = release_layouts.write_aliccp_release(raw, skeleton_rows=6000, seed=3)
    return ["--source=ali_ccp", f"--skeleton={paths['sample_skeleton_train']}",
            f"--common_features={paths['common_features_train']}",
            f"--eval_skeleton={paths['sample_skeleton_test']}",
            f"--eval_common_features={paths['common_features_test']}"]
  if name == "aliexpress":
    paths = release_layouts.write_aliexpress(raw, train_rows=4000, seed=4)
    return ["--source=aliexpress", f"--train={paths['train']}", f"--eval={paths['test']}"]
  os.makedirs(raw)
  if name == "rechub_csv":
    for part in ("train", "val", "test"):
      shutil.copy(os.path.join(REAL, f"rechub_aliccp_{part}.csv"), raw)
    return ["--source=rechub_csv", f"--train={raw}/rechub_aliccp_train.csv",
            f"--eval={raw}/rechub_aliccp_val.csv,{raw}/rechub_aliccp_test.csv"]
  for part in ("train", "test"):
    shutil.copy(os.path.join(REAL, f"paddle_esmm_{part}.txt"), raw)
  return ["--source=paddle_esmm", f"--train={raw}/paddle_esmm_train.txt",
          f"--eval={raw}/paddle_esmm_test.txt"]


def make_world(name: str) -> Dict[str, Any]:
  """Writes and preprocesses world `name` in WORKDIR/name; returns pipeline.preprocess.run's
  result ("counts", "marker", "schema", ...) and "output", the output dir.

  Impression ids of the derived layouts hold the input's path, so every run uses the
  same folder (emptied first). The output starts with a stale success marker of an
  "older run", which the job must replace (tests/test_real_samples.py checks the new one).
  """
  shutil.rmtree(os.path.join(WORKDIR, name), ignore_errors=True)
  raw, output = os.path.join(WORKDIR, name, "raw"), os.path.join(WORKDIR, name, "data")
  flags = []
  if name == "aliccp":  # Many md5s per bucket, 2 processes.
    flags = ["--join_buckets=2", "--local_workers=2"]
  inputs = _inputs(name, raw)
  test_success_marker.write_stale_marker(output)
  return dict(preprocess.run([*inputs, f"--output={output}", *flags]), output=output)


def shared_world(tmp_path_factory, name: str) -> Dict[str, Any]:
  """World `name`, preprocessed once per test session (on any xdist worker) and copied out
  of WORKDIR (which another session may empty): {"output": the copy, read-only for its
  users, "counts": run()'s counts, "found": `digest_output` of the run}."""
  def build(directory):
    with workdir_locked(name):
      result = make_world(name)
      copy = os.path.join(directory, "data")
      shutil.copytree(result["output"], copy)
      return {"output": copy, "counts": result["counts"],
              "found": digest_output(result["output"])}
  return conftest.build_once(tmp_path_factory, f"file_sources_golden_{name}", build)


def workdir_locked(name: str):
  """An exclusive lock on WORKDIR/name for a run and its reads: test sessions running at
  the same time (WORKDIR is one fixed folder) take turns instead of emptying it under
  each other."""
  os.makedirs(WORKDIR, exist_ok=True)
  return conftest._locked(os.path.join(WORKDIR, f"{name}.lock"))  # pylint: disable=protected-access


def digest_output(output: str) -> Dict[str, Any]:
  """`test_beam_golden.digest_output` plus "dead_letter_records": every dead letter's
  (file basename, line, reason, detail, record), input folders left out of the detail."""
  found = beam_golden.digest_output(output)
  raw_dirs = {os.path.join(os.path.dirname(output), "raw") + os.sep}
  letters = []
  for path in glob.glob(os.path.join(output, "dead_letter", "*.jsonl")):
    with open(path) as f:
      for line in f:
        letter = json.loads(line)
        detail = letter["detail"]
        for raw in raw_dirs:
          detail = detail.replace(raw, "")
        letters.append([os.path.basename(letter["file"]), letter["line"], letter["reason"],
                        detail, letter["record"]])
  text = json.dumps(sorted(letters, key=json.dumps), sort_keys=True, separators=(",", ":"))
  found["digests"]["dead_letter_records"] = hashlib.sha256(text.encode("utf-8")).hexdigest()
  return found


@pytest.fixture(scope="module")
def golden():
  with open(GOLDEN) as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("name", WORLDS)
def test_job_reproduces_the_golden_digest(name, golden, tmp_path_factory):
  expected = golden["worlds"][name]
  found = shared_world(tmp_path_factory, name)["found"]
  assert found["sizes"] == expected["sizes"]
  assert found["digests"] == expected["digests"]


def test_golden_worlds_hold_every_dead_letter_case(golden):
  """The pinned worlds exercise what they claim: dead letters of each kind, and enough
  rows for the columnar encoder's batch path (tests would pass vacuously otherwise)."""
  for name in ("aliccp", "aliexpress"):
    sizes = golden["worlds"][name]["sizes"]
    assert sizes["examples_train"] > 2048 and sizes["dead_letters"] >= 20
  reasons = set(golden["worlds"]["aliccp"]["reasons"])
  assert {"malformed_line", "bad_label", "purchase_without_click", "feature_count_mismatch",
          "malformed_item", "repeated_single_valued_field", "missing_common_features",
          "common_features_rejected", "duplicate_md5"} <= reasons


def _reasons(output: str) -> List[str]:
  reasons = set()
  for path in glob.glob(os.path.join(output, "dead_letter", "*.jsonl")):
    with open(path) as f:
      reasons.update(json.loads(line)["reason"] for line in f)
  return sorted(reasons)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--write", action="store_true", help=f"rewrite {GOLDEN}")
  args = parser.parse_args(argv)
  worlds = {}
  for name in WORLDS:
    with workdir_locked(name):
      output = make_world(name)["output"]
      worlds[name] = dict(digest_output(output), reasons=_reasons(output))
    print(name, json.dumps(worlds[name]["sizes"]))
  if args.write:
    with open(GOLDEN, "w") as f:
      json.dump({"engine": "columnar", "worlds": worlds}, f, indent=2, sort_keys=True)
      f.write("\n")
    print(f"wrote {GOLDEN}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
