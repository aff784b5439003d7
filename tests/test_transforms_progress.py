"""transforms.progress: a progress line per interval with the records so far and the rate."""

import contextlib
import logging

import apache_beam as beam
import pyarrow as pa
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import progress


def test_record_progress_logs_once_per_interval(caplog):
  stage = "test_stage_interval"
  logger = progress.progress_logger()
  assert not logger.propagate and logger.level == logging.INFO  # Its own stderr handler.
  logger.addHandler(caplog.handler)
  try:
    logged = [progress.record_progress(stage, 1000, 10.0, now=100.0 + t)
              for t in (0.0, 4.0, 9.0, 10.0, 15.0, 20.5)]
  finally:
    logger.removeHandler(caplog.handler)
  assert logged == [False, False, False, True, False, True]
  lines = [r.getMessage() for r in caplog.records if stage in r.getMessage()]
  assert len(lines) == 2
  assert "4,000 records in 10.0 s (400 records/s; last 10.0 s: 400 records/s)" in lines[0]
  assert "6,000 records in 20.5 s" in lines[1] and "last 10.5 s: 190 records/s" in lines[1]


def test_log_progress_passes_batches_through():
  batches = [pa.RecordBatch.from_pydict({"x": list(range(n))}) for n in (3, 5)]
  with test_pipeline.TestPipeline() as p:
    rows = (p | beam.Create(batches) | progress.LogProgress("test_stage_beam", 0.0)
            | beam.Map(lambda batch: batch.num_rows))
    assert_that(rows, equal_to([3, 5]))


@contextlib.contextmanager
def logged_stages(caplog):
  """Yields the set of stages with a progress line logged inside the block (filled at its
  end); the progress logger does not propagate, so caplog's handler joins it meanwhile."""
  logger = progress.progress_logger()  # Its handler holds the stderr of its first use.
  logger.addHandler(caplog.handler)
  stages = set()
  try:
    yield stages
  finally:
    logger.removeHandler(caplog.handler)
  stages.update(record.getMessage().split(":")[0] for record in caplog.records
                if record.name == "progress")


@pytest.mark.slow  # a whole Beam job or CLI run: make test, not make test-fast
def test_file_split_sources_log_their_progress(tmp_path, caplog, monkeypatch):
  """--source ali_ccp logs lines parsed per file kind and rows joined per split (every
  batch, with a tiny interval); --source aliexpress's rows parsed per split are checked on
  tests/test_aliexpress.py's CLI run."""
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top
  from simulation import release_layouts  # pylint: disable=g-import-not-at-top
  from transforms import read  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(read, "BATCH_ROWS", 40)  # Several batches of small files.
  with logged_stages(caplog) as stages:
    release = release_layouts.write_aliccp_release(str(tmp_path / "aliccp"),
                                                   skeleton_rows=300)
    preprocess.run(["--source", "ali_ccp", "--output", str(tmp_path / "out_aliccp"),
                    "--skeleton", release["sample_skeleton_train"],
                    "--common_features", release["common_features_train"],
                    "--eval_skeleton", release["sample_skeleton_test"],
                    "--eval_common_features", release["common_features_test"],
                    "--progress_interval_s", "1e-9"])
  assert {"skeleton_parsed", "common_parsed", "train_joined", "eval_joined"} <= stages
