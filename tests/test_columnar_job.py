"""transforms.columnar.job: the whole columnar chain gives the row job's files, byte for byte.

Both jobs run on a TestPipeline over the malformed logs of
tests/test_transforms_preprocess_job.py (every dead-letter reason of the log source), under
both orphan policies; counts.json, transform.json, every dead letter (all fields) and
the multiset of serialized Examples per split must be equal.
"""

import glob
import json
import os

import pytest
from apache_beam.testing import test_pipeline

from configs import config as config_lib
from pipeline import preprocess
from tests import test_beam_golden as golden_test
from tests import test_transforms_preprocess_job as row_job_test
from transforms import outputs as outputs_lib
from transforms import preprocess_job
from transforms import testing
from transforms.columnar import job as columnar_job

REPO = golden_test.REPO


def _outputs(output):
  paths = outputs_lib.OutputPaths(output)
  letters = [open(path).read().splitlines() for path in glob.glob(paths.dead_letter_pattern)]
  return {"counts": json.load(open(paths.counts)),
          "transform": json.load(open(f"{paths.transform_dir}/transform.json")),
          "dead_letters": sorted(line for lines in letters for line in lines),
          "examples": {split: sorted(golden_test._tfrecords(  # pylint: disable=protected-access
              f"{output}/{split}/*.tfrecord.gz")) for split in outputs_lib.SPLITS}}


@pytest.mark.parametrize("policy", ["dead_letter", "infer_click"])
def test_columnar_job_writes_what_the_row_job_writes(tmp_path, policy):
  impressions, events = row_job_test._write_logs(tmp_path)  # pylint: disable=protected-access
  config, spec = testing.data_config(orphan_event_policy=policy), testing.small_spec()
  results = {}
  for name, job in (("row", preprocess_job.Preprocess),
                    ("columnar", columnar_job.PreprocessColumnar)):
    output = str(tmp_path / name)
    with test_pipeline.TestPipeline() as p:
      _ = p | job(impressions, events, output, config, spec, statistics=False)
    preprocess_job.check_run(outputs_lib.OutputPaths(output), seconds=1.0)
    results[name] = _outputs(output)
  assert results["columnar"]["counts"]["events"]["read"] == 10
  assert len(results["columnar"]["dead_letters"]) >= 11
  assert results["columnar"] == results["row"]


def test_engine_flag_defaults_to_columnar_for_every_source():
  args, _ = preprocess.parse_args(["--output", "out", "--impressions", "i", "--events", "e"])
  assert args.engine == preprocess.COLUMNAR
  config = config_lib.load_config(os.path.join(REPO, "configs", "ali_ccp.yaml"))
  patterns = {"skeleton": ["s"], "eval_skeleton": ["es"], "common_features": ["c"],
              "eval_common_features": ["ec"]}
  for engine, job in ((None, columnar_job.PreprocessAliCcpColumnar),
                      ("row", preprocess_job.PreprocessAliCcp)):
    args, _ = preprocess.parse_args(["--output", "out", "--source", "ali_ccp"]
                                    + (["--engine", engine] if engine else []))
    transform = preprocess.build_transform(args, patterns, config, config.load_feature_spec())
    assert type(transform) is job  # pylint: disable=unidiomatic-typecheck


def test_columnar_job_on_parquet_join_dead_letters(tmp_path):
  """Join dead letters of Parquet rows hold the row read back (columnar.parse.ParquetRows),
  and same-timestamp duplicates are ordered by it, as in the row job."""
  day, t0 = testing.DAY_S, testing.START
  impressions = testing.write_parquet(str(tmp_path / "impressions.parquet"), [
      testing.impression(1, t0), testing.impression(2, t0 + 10),
      testing.impression(2, t0 + 10, device="web")])
  events = testing.write_parquet(str(tmp_path / "events.parquet"), [
      testing.event("imp1", t0 + 5, "click"), testing.event("imp1", t0 - 5, "click"),
      testing.event("imp1", t0 + 2 * day, "click"), testing.event("nope", t0, "click")])
  config, spec = testing.data_config(), testing.small_spec()
  results = {}
  for name, job in (("row", preprocess_job.Preprocess),
                    ("columnar", columnar_job.PreprocessColumnar)):
    output = str(tmp_path / name)
    with test_pipeline.TestPipeline() as p:
      _ = p | job(impressions, events, output, config, spec, statistics=False)
    results[name] = _outputs(output)
  assert results["columnar"] == results["row"]
