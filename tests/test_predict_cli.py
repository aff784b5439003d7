"""End-to-end test of the predict CLI (python -m pipeline.predict) in a subprocess.

Bad input lines (not JSON, not an object, a wrong dtype) get a per-record error naming
the field; every other record is still scored, one output line per input line, in order.
An export base resolves to its newest complete version (serving/versions.py).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf

from benchmarks import common
from tests import test_serving

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  workdir = test_serving.shared_workdir(tmp_path_factory)
  return common.ensure_model(workdir, common.ensure_data(workdir, test_serving.IMPRESSIONS))


def _predict(saved_model: str, lines, tmp_path, batch_size: int = 2, stderr: bool = False):
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
  scored = [json.loads(line) for line in output_path.read_text().splitlines()]
  return (scored, proc.stderr) if stderr else scored


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


class _ConstantScorer(tf.Module):
  """serving_default(examples) -> ctr, cvr, ctcvr of 0.5, 0.5, 0.25: an older, other model."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve(self, examples):
    half = tf.fill(tf.shape(examples), 0.5)
    return {"ctr": half, "cvr": half, "ctcvr": half * half}


def test_export_base_resolves_to_the_newest_complete_version(export_dir, tmp_path):
  """Base: an older other model, the trained one, a newer empty dir, a newer without variables."""
  newest = int(os.path.basename(export_dir))
  base = tmp_path / "export"
  shutil.copytree(export_dir, base / str(newest))
  older = base / str(newest - 5)
  module = _ConstantScorer()
  tf.saved_model.save(module, str(older), signatures={"serving_default": module.serve})
  shutil.copytree(os.path.join(export_dir, "assets.extra"), older / "assets.extra")
  os.makedirs(base / str(newest + 1))  # a half-finished copy
  shutil.copytree(export_dir, base / str(newest + 2),
                  ignore=lambda directory, names: ["variables"] if "variables" in names else [])

  lines = [json.dumps(test_serving.A_RECORD)]
  by_base, stderr = _predict(str(base), lines, tmp_path, stderr=True)
  by_version = _predict(export_dir, lines, tmp_path)
  by_older = _predict(str(older), lines, tmp_path)
  assert by_base == by_version
  assert by_older[0]["predictions"] == {"ctr": 0.5, "cvr": 0.5, "ctcvr": 0.25}
  assert by_base[0]["predictions"]["ctr"] != 0.5
  for version, lacks in ((newest + 1, "saved_model.pb"),
                         (newest + 2, "variables/variables.index")):
    assert re.search(rf"incomplete SavedModel version {base}/{version}: lacks [^\n]*{lacks}",
                     stderr), stderr[-3000:]
