"""End-to-end test of the predict CLI (python -m pipeline.predict) in a subprocess.

Bad input lines (not JSON, not an object, a wrong dtype) get a per-record error naming
the field; every other record is still scored, one output line per input line, in order.
"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import common
from tests import test_serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  workdir = test_serving.shared_workdir(tmp_path_factory)
  return common.ensure_model(workdir, common.ensure_data(workdir, test_serving.IMPRESSIONS))


def _predict(saved_model: str, lines, tmp_path, batch_size: int = 2):
  input_path = tmp_path / "in.jsonl"
  output_path = tmp_path / "out.jsonl"
  input_path.write_text("\n".join(lines) + "\n")
  proc = subprocess.run(
      [sys.executable, "-m", "pipeline.predict", "--saved_model", saved_model,
       "--input", str(input_path), "--output", str(output_path),
       "--batch_size", str(batch_size)],
      cwd=common.REPO_ROOT, env=dict(os.environ, PYTHONPATH=common.REPO_ROOT),
      capture_output=True, text=True, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return [json.loads(line) for line in output_path.read_text().splitlines()]


def test_bad_records_get_errors_and_the_others_are_scored(export_dir, tmp_path):
  good = dict(test_serving.A_RECORD)
  lines = [
      json.dumps(good),
      "{not json",
      json.dumps(dict(good, user_age="thirty")),
      json.dumps([1, 2, 3]),
      json.dumps(dict(good, user_id="someone-new", item_category="unheard-of")),
      json.dumps({"impression_id": "nothing-else"}),
      json.dumps(dict(good, position=[1, 2])),
  ]
  out = _predict(export_dir, lines, tmp_path)
  assert len(out) == len(lines)
  errors = {i: row["error"] for i, row in enumerate(out) if "error" in row}
  assert sorted(errors) == [1, 2, 3, 6]
  assert errors[1]["reason"] == "unparseable_json"
  assert errors[2]["field"] == "user_age" and "user_age" in errors[2]["detail"]
  assert errors[3]["reason"] == "not_an_object"
  assert errors[6]["field"] == "position"
  for i in (0, 4, 5):
    predictions = out[i]["predictions"]
    assert set(predictions) == test_serving.OUTPUTS
    assert all(0.0 < p < 1.0 for p in predictions.values())
  assert out[0]["record"] == good  # the input record is echoed back
  assert out[2]["record"]["user_age"] == "thirty"


def test_export_base_resolves_to_the_newest_version(export_dir, tmp_path):
  export_base = os.path.dirname(export_dir)
  lines = [json.dumps(test_serving.A_RECORD)]
  by_base = _predict(export_base, lines, tmp_path)
  by_version = _predict(export_dir, lines, tmp_path)
  assert by_base == by_version
