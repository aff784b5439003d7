"""features.success_marker: written last by pipeline.preprocess, checked by readers.

Issue 14: a job whose accounting check fails leaves no marker, and a reader refuses its
output; a valid run's marker verifies; a shard removed, added or rewritten after the
job invalidates it. That every source's job (ali_ccp, rechub_csv, paddle_esmm) replaces a
stale marker with one that verifies is checked on tests/test_real_samples.py's runs
(`write_stale_marker`, `assert_marker_verifies`).
"""

import json
import os

import apache_beam as beam
import pyarrow as pa
import pytest

from features import success_marker
from pipeline import preprocess
from transforms import job
from transforms import outputs as outputs_lib
from transforms import split as split_lib
from tests import beam_testing as testing

T0 = testing.START
DAY = testing.DAY_S


def _fake_output(root):
  """A small output directory: shards, counts.json, a vocabulary, a Beam temp dir."""
  files = {
      "counts.json": b'{"impressions": {}}',
      "train/train-00000-of-00002.tfrecord.gz": b"a" * 100,
      "train/train-00001-of-00002.tfrecord.gz": b"b" * 90,
      "eval/eval-00000-of-00001.tfrecord.gz": b"c" * 40,
      "transform/vocab/device.txt": b"ios\nandroid\n",
  }
  for name, content in files.items():
    path = os.path.join(root, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(content)
  return {name: len(content) for name, content in files.items()}


def test_marker_lists_every_output_file_and_verifies(tmp_path):
  expected = _fake_output(str(tmp_path))
  # Left by a Beam sink while running: not an output file.
  os.makedirs(tmp_path / "train" / "beam-temp-train-0123abcd")
  (tmp_path / "train" / "beam-temp-train-0123abcd" / "part").write_bytes(b"x")
  path = success_marker.write_success_marker(str(tmp_path), {"impressions": {"read": 3}})
  assert path == str(tmp_path / success_marker.MARKER_FILE)
  assert sorted(os.listdir(tmp_path)) == ["_SUCCESS.json", "counts.json", "eval", "train",
                                          "transform"]  # No temporary marker left.
  marker = success_marker.check_success_marker(str(tmp_path))
  assert marker["files"] == expected
  assert marker["counts"] == {"impressions": {"read": 3}}
  assert marker["format_version"] == success_marker.FORMAT_VERSION
  assert marker["digest"] == success_marker.files_digest(expected)
  assert json.load(open(path)) == marker


def test_no_marker_says_why_and_how_to_rerun(tmp_path):
  _fake_output(str(tmp_path))
  with pytest.raises(success_marker.IncompleteOutputError,
                     match="failed or is still running") as raised:
    success_marker.check_success_marker(str(tmp_path))
  assert "python -m pipeline.preprocess" in str(raised.value)
  assert str(tmp_path) in str(raised.value)
  assert isinstance(raised.value, ValueError)


@pytest.mark.parametrize("change, message", [
    ("remove", "missing train/train-00001-of-00002.tfrecord.gz"),
    ("truncate", "size of train/train-00001-of-00002.tfrecord.gz changed from 90 to 10"),
    ("add", "added train/train-00002-of-00002.tfrecord.gz"),
])
def test_a_changed_shard_invalidates_the_marker(tmp_path, change, message):
  _fake_output(str(tmp_path))
  success_marker.write_success_marker(str(tmp_path), {})
  shard = tmp_path / "train" / "train-00001-of-00002.tfrecord.gz"
  if change == "remove":
    shard.unlink()
  elif change == "truncate":
    shard.write_bytes(b"b" * 10)
  else:
    (tmp_path / "train" / "train-00002-of-00002.tfrecord.gz").write_bytes(b"new")
  with pytest.raises(success_marker.IncompleteOutputError, match="changed since") as raised:
    success_marker.check_success_marker(str(tmp_path))
  assert message in str(raised.value)


def test_an_edited_or_unknown_marker_is_refused(tmp_path):
  _fake_output(str(tmp_path))
  path = success_marker.write_success_marker(str(tmp_path), {})
  marker = json.load(open(path))
  marker["files"]["counts.json"] += 1
  json.dump(marker, open(path, "w"))
  with pytest.raises(success_marker.IncompleteOutputError, match="does not match its digest"):
    success_marker.check_success_marker(str(tmp_path))
  json.dump(dict(marker, format_version=99), open(path, "w"))
  with pytest.raises(success_marker.IncompleteOutputError, match="format_version 99"):
    success_marker.check_success_marker(str(tmp_path))
  open(path, "w").write("{half a mar")
  with pytest.raises(success_marker.IncompleteOutputError, match="unreadable"):
    success_marker.check_success_marker(str(tmp_path))
  assert success_marker.remove_success_marker(str(tmp_path))
  assert not success_marker.remove_success_marker(str(tmp_path))


def _write_logs(directory):
  os.makedirs(directory, exist_ok=True)
  impressions = [testing.impression(index, T0 + (index // 20) * DAY + index)
                 for index in range(60)]
  events = [testing.event(f"imp{index}", T0 + (index // 20) * DAY + index + 5, "click")
            for index in range(0, 60, 3)]
  return (testing.write_jsonl(os.path.join(directory, "impressions.jsonl"), impressions),
          testing.write_jsonl(os.path.join(directory, "events.jsonl"), events))


class _SplitLosingOne(split_lib.SplitBatchesByTime):
  """SplitBatchesByTime that silently drops imp7, as the runner bug of docs/SCALING.md 2.1
  did."""

  def expand(self, batches):
    kept = batches | "LoseOne" >> beam.Map(lambda b: b.filter(pa.array(
        [impression_id != "imp7" for impression_id in
         b.column(b.schema.get_field_index("impression_id")).to_pylist()])))
    return super().expand(kept)


@pytest.mark.slow
def test_reruns_into_one_directory_leave_only_their_shards_and_a_failed_one_no_marker(
    tmp_path, tmp_path_factory, monkeypatch):
  """Runs of the job into a directory that holds an earlier run's output.

  The earlier run: tests/test_file_sources_golden.py's aliexpress world (32 train and 16
  eval shards, dead letters, its own marker), copied in.
  1. A rerun with fewer shards (2 + 1) writes a marker that verifies and lists only its
     own shards. The bug: old shards 2-3 of a 4-shard run stayed beside a 2-shard rerun's,
     and the marker listed them as output, so the trainer would have read every example
     twice.
  2. A rerun whose accounting check fails (a record lost in the job's split): the old
     marker goes at the start, no new one is written, and a reader refuses the directory.
  """
  import glob  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tests import test_file_sources_golden  # pylint: disable=g-import-not-at-top
  impressions, events = _write_logs(str(tmp_path / "logs"))
  output = str(tmp_path / "out")
  paths = outputs_lib.OutputPaths(output)
  earlier = test_file_sources_golden.shared_world(tmp_path_factory, "aliexpress")["output"]
  shutil.copytree(earlier, output)
  earlier_shards = [name for name in success_marker.check_success_marker(output)["files"]
                    if name.endswith(".tfrecord.gz")]
  assert len(earlier_shards) == 32 + 16
  config = testing.write_experiment(str(tmp_path / "config"), train_shards=2, eval_shards=1)
  argv = ["--impressions", impressions, "--events", events, "--output", output,
          "--config", config]

  result = preprocess.run(argv)
  marker = success_marker.check_success_marker(output)
  assert result["marker"] == success_marker.marker_path(output)
  assert marker["counts"] == result["counts"]
  assert marker["counts"]["impressions"]["read"] == 60
  assert {"counts.json", "labels.json", "feature_spec.yaml", "schema/schema.pbtxt",
          "transform/transform.json", "stats/train_stats.pb"} <= set(marker["files"])
  shards = sorted(name for name in marker["files"] if name.endswith(".tfrecord.gz"))
  assert shards == ["eval/eval-00000-of-00001.tfrecord.gz",
                    "train/train-00000-of-00002.tfrecord.gz",
                    "train/train-00001-of-00002.tfrecord.gz"]
  for split in outputs_lib.SPLITS:
    files = sorted(glob.glob(paths.examples_pattern(split)))
    examples = sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))
    assert examples == result["counts"]["impressions"]["written"][split]

  # The lost record is injected into the job's split.
  monkeypatch.setattr(split_lib, "SplitBatchesByTime", _SplitLosingOne)
  with pytest.raises(job.AccountingError, match="impressions: read 60"):
    preprocess.run(argv)
  assert not os.path.exists(success_marker.marker_path(output))
  assert os.path.exists(paths.counts)  # The job did write.
  with pytest.raises(success_marker.IncompleteOutputError, match="failed or is still running"):
    success_marker.check_success_marker(output)


def write_stale_marker(output):
  """A marker of an "older run" in `output` (created): a job must replace it, not trust it."""
  os.makedirs(output, exist_ok=True)
  with open(success_marker.marker_path(output), "w") as f:
    f.write("{}")


def assert_marker_verifies(output, counts):
  """`output`'s marker verifies, holds the job's `counts` and lists eval shards.

  Every source's job writes one (tests/test_real_samples.py: ali_ccp, rechub_csv,
  paddle_esmm, each over a stale marker from `write_stale_marker`).
  """
  marker = success_marker.check_success_marker(output)
  assert marker["counts"] == counts
  assert marker["counts"]["impressions"]["read"] > 0
  assert any(name.startswith("eval/eval-") for name in marker["files"])


def test_a_stale_marker_does_not_verify(tmp_path):
  write_stale_marker(str(tmp_path / "out"))
  with pytest.raises(success_marker.IncompleteOutputError):
    success_marker.check_success_marker(str(tmp_path / "out"))


def test_a_url_filesystem_works_like_a_local_one():
  """The gs:// code path (joins with '/', tf.io.gfile), on TF's in-memory ram://."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  root = "ram://success_marker_test/out"
  for name in ("counts.json", "train/train-00000-of-00001.tfrecord.gz"):
    tf.io.gfile.makedirs(os.path.dirname(f"{root}/{name}"))
    with tf.io.gfile.GFile(f"{root}/{name}", "w") as f:
      f.write("abc")
  success_marker.write_success_marker(root, {"impressions": {}})
  assert success_marker.check_success_marker(root)["files"] == {
      "counts.json": 3, "train/train-00000-of-00001.tfrecord.gz": 3}
  tf.io.gfile.remove(f"{root}/train/train-00000-of-00001.tfrecord.gz")
  with pytest.raises(success_marker.IncompleteOutputError, match="missing train/train-0"):
    success_marker.check_success_marker(root)
