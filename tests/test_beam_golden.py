"""Golden digest of the Beam job's outputs, for rewrites that must not change them.

Two fixed simulated worlds (pipeline.simulate, same flags + seed -> identical files): a
JSON Lines world with corrupt lines (corrupt_fraction 0.01) and a Parquet world. Each is
preprocessed by the real CLI's `pipeline.preprocess.run` (the command's job, post-run
checks and success marker, in this process: a child would add ~5 CPU s of TF + Beam
imports per run) and digested (`digest_output`) into sha256s of:

  examples_train / examples_eval  the multiset of serialized tf.Examples of the split
                                  (sorted, so independent of shards and bundle order)
  counts                          counts.json, as canonical JSON
  transform                       transform/transform.json, as canonical JSON
  vocabularies                    every transform/vocab/*.txt, by name, byte for byte
  dead_letters                    the sorted (file basename, line, reason) of every dead
                                  letter (basenames: independent of where the run was)

and compared with tests/data/golden/beam_golden.json (recorded by the retired
per-record job; the RecordBatch job reproduces it exactly). The Parquet world runs with
`--local_workers 2` (DirectRunner multi_processing: two worker processes) and 7 join
buckets (so a bucket holds many ids), the JSONL world with one in-memory worker and the
default buckets. Bundles, shard assignment and record order differ between one worker and
two processes; the outputs must not (docs/SCALING.md 2.1: exact sums and quantiles), so
`--write` also runs the Parquet world on one in-memory worker with the default buckets
(`ONE_WORKER`) and refuses to write unless both runs give the same digests: the golden
records an output that one worker and two processes produce alike, and this test's
2-process run must reproduce it byte for byte (Examples, vocabularies; counts.json and
transform.json as canonical JSON). Checked on 2026-12-06: both give the committed digests.

Regenerate (only when an output change is intended, and say why in the commit):

  TF_USE_LEGACY_KERAS=1 python -m tests.test_beam_golden --write [--workdir DIR]
"""

import argparse
import glob
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from typing import Any, Dict, List

import pytest

from pipeline import preprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOLDEN = os.path.join(REPO, "tests", "data", "golden", "beam_golden.json")
WORLDS = {
    "jsonl_corrupt": {
        "simulate": ["--impressions=20000", "--corrupt_fraction=0.01", "--seed=11"],
        "preprocess": [],
    },
    "parquet": {
        "simulate": ["--impressions=5000", "--format=parquet", "--seed=12"],
        "preprocess": ["--local_workers=2", "--join_buckets=7"],
    },
}
# The flags `--write` also runs a world with (module docstring): one in-memory worker.
ONE_WORKER = {"parquet": ["--local_workers=1"]}


def _env() -> Dict[str, str]:
  return dict(os.environ, PYTHONPATH=REPO, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")


def _run(module: str, args: List[str]) -> None:
  """`python -m module args` in a child process (pipeline.simulate: no TF, ~0.3 CPU s to
  start)."""
  proc = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(),
                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                        check=False)
  if proc.returncode != 0:
    raise RuntimeError(f"python -m {module} {' '.join(args)} failed:\n{proc.stdout[-3000:]}")


def make_world(name: str, workdir: str, preprocess_flags: List[str] = None) -> str:
  """Simulates (once) and preprocesses world `name` under workdir, with the world's
  preprocess flags or `preprocess_flags`; returns the output dir."""
  world = WORLDS[name]
  raw, output = os.path.join(workdir, name, "raw"), os.path.join(workdir, name, "data")
  if not os.path.isdir(raw):
    _run("pipeline.simulate", [f"--output={raw}", *world["simulate"]])
  flags = world["preprocess"] if preprocess_flags is None else preprocess_flags
  preprocess.run([f"--impressions={raw}/impressions/*", f"--events={raw}/events/*",
                  f"--output={output}", *flags])
  return output


def _sha256_records(records: List[bytes]) -> str:
  digest = hashlib.sha256()
  for record in sorted(records):
    digest.update(len(record).to_bytes(8, "big"))
    digest.update(record)
  return digest.hexdigest()


def _sha256_json(value: Any) -> str:
  text = json.dumps(value, sort_keys=True, separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _tfrecords(pattern: str) -> List[bytes]:
  """Every record of the gzip TFRecord files matching pattern (plain Python, no TF)."""
  records = []
  for path in sorted(glob.glob(pattern)):
    with gzip.open(path, "rb") as f:
      data = f.read()
    offset = 0
    while offset < len(data):  # uint64 length, uint32 crc, data, uint32 crc
      length = int.from_bytes(data[offset:offset + 8], "little")
      records.append(data[offset + 12:offset + 12 + length])
      offset += 12 + length + 4
  return records


def digest_output(output: str) -> Dict[str, Any]:
  """{"digests": item -> sha256, "sizes": item -> number of records} of one output dir."""
  digests, sizes = {}, {}
  for split in ("train", "eval"):
    records = _tfrecords(os.path.join(output, split, f"{split}-*-of-*.tfrecord.gz"))
    digests[f"examples_{split}"], sizes[f"examples_{split}"] = (_sha256_records(records),
                                                                len(records))
  with open(os.path.join(output, "counts.json")) as f:
    digests["counts"] = _sha256_json(json.load(f))
  with open(os.path.join(output, "transform", "transform.json")) as f:
    digests["transform"] = _sha256_json(json.load(f))
  vocabularies = {}
  for path in sorted(glob.glob(os.path.join(output, "transform", "vocab", "*"))):
    with open(path, "rb") as f:
      vocabularies[os.path.basename(path)] = hashlib.sha256(f.read()).hexdigest()
  digests["vocabularies"], sizes["vocabularies"] = _sha256_json(vocabularies), len(vocabularies)
  letters = []
  for path in glob.glob(os.path.join(output, "dead_letter", "*.jsonl")):
    with open(path) as f:
      for line in f:
        letter = json.loads(line)
        letters.append([os.path.basename(letter["file"]), letter["line"], letter["reason"]])
  digests["dead_letters"], sizes["dead_letters"] = _sha256_json(sorted(letters)), len(letters)
  return {"digests": digests, "sizes": sizes}


@pytest.fixture(scope="module")
def golden():
  with open(GOLDEN) as f:
    return json.load(f)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(WORLDS))
def test_outputs_match_the_golden_digest(name, golden, tmp_path):
  expected = golden["worlds"][name]
  assert expected["simulate"] == WORLDS[name]["simulate"], "world changed: regenerate"
  # Written by a --write that found one worker's output the same (module docstring).
  assert expected.get("same_with") == ONE_WORKER.get(name), "regenerate (docstring)"
  found = digest_output(make_world(name, str(tmp_path)))
  assert found["sizes"] == expected["sizes"]
  assert expected["sizes"]["dead_letters"] > 0 or name == "parquet"
  assert found["digests"] == expected["digests"], (
      "outputs differ from tests/data/golden/beam_golden.json; if intended, regenerate "
      "(see this module's docstring)")


def test_digest_ignores_shards_and_paths(tmp_path):
  """Same records in other shards, dead letters under another directory: same digest."""
  def write(root, shards, prefix):
    for split in ("train", "eval"):
      os.makedirs(os.path.join(root, split), exist_ok=True)
      for index, records in enumerate(shards):
        path = os.path.join(root, split, f"{split}-{index:05d}-of-{len(shards):05d}.tfrecord.gz")
        with gzip.open(path, "wb") as f:
          for record in records:
            f.write(len(record).to_bytes(8, "little") + b"\0" * 4 + record + b"\0" * 4)
    os.makedirs(os.path.join(root, "transform", "vocab"), exist_ok=True)
    for name, text in (("counts.json", '{"a": 1, "b": 2}'),
                       ("transform/transform.json", '{"features": {}}'),
                       ("transform/vocab/device.txt", "ios\n")):
      with open(os.path.join(root, name), "w") as f:
        f.write(text)
    os.makedirs(os.path.join(root, "dead_letter"), exist_ok=True)
    with open(os.path.join(root, "dead_letter", "dead_letter-00000.jsonl"), "w") as f:
      for line in (3, 1):
        f.write(json.dumps({"file": f"{prefix}/raw/impressions-0.jsonl.gz", "line": line,
                            "reason": "bad_type", "source": "impressions"}) + "\n")

  write(str(tmp_path / "one"), [[b"a", b"b", b"c"]], "/x")
  write(str(tmp_path / "two"), [[b"c"], [b"b", b"a"]], "/elsewhere")
  write(str(tmp_path / "three"), [[b"a", b"b", b"b"]], "/x")
  one, two, three = (digest_output(str(tmp_path / name)) for name in ("one", "two", "three"))
  assert one == two
  assert one["sizes"]["examples_train"] == 3
  assert three["digests"]["examples_train"] != one["digests"]["examples_train"]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description="Regenerate tests/data/golden/beam_golden.json.")
  parser.add_argument("--write", action="store_true",
                      help="Write the golden file (default: print the digests only).")
  parser.add_argument("--workdir", default=None, help="Scratch directory (default: a temp dir).")
  args = parser.parse_args(argv)
  workdir = args.workdir or tempfile.mkdtemp(prefix="beam_golden_")
  worlds = {}
  for name in sorted(WORLDS):
    worlds[name] = {"simulate": WORLDS[name]["simulate"],
                    "preprocess": WORLDS[name]["preprocess"],
                    **digest_output(make_world(name, workdir))}
    if name in ONE_WORKER:
      alone = digest_output(make_world(name, workdir, ONE_WORKER[name]))
      if alone != {key: worlds[name][key] for key in ("digests", "sizes")}:
        raise SystemExit(f"{name}: {WORLDS[name]['preprocess']} and {ONE_WORKER[name]} give "
                         f"different outputs, nothing written:\n{alone}\n{worlds[name]}")
      worlds[name]["same_with"] = ONE_WORKER[name]
  golden = {"about": "tests/test_beam_golden.py: digests of pipeline.preprocess outputs on "
                     "fixed simulated worlds", "worlds": worlds}
  text = json.dumps(golden, indent=1, sort_keys=True) + "\n"
  print(text)
  if args.write:
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    with open(GOLDEN, "w") as f:
      f.write(text)


if __name__ == "__main__":
  main()
