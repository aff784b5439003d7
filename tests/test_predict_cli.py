"""End-to-end test of the predict CLI (python -m pipeline.predict).

Bad input lines (not JSON, not an object, a wrong dtype, a missing user_id, and hostile
lines: 100,000 levels of nesting, bytes that are not UTF-8, NaN / Infinity, a 5 MB string,
a 2M-element list, a line over the byte limit) get a per-record error naming the line, the
field and the reason; every other record is still scored, one output line per non-blank
input line, in order, with the scores it gets alone. An export base resolves to its newest
complete version (serving/versions.py); user errors are one line (pipeline/cli.py).
The CLI runs as a subprocess for the exit status and stderr contract (the bad records'
run and the user errors); the other runs call what its main calls, `predict_file`, in
this process (it already holds TensorFlow: no start-up of 4-8 s per run). Importing
pipeline.predict defines its absl flags here: no other test imports an entry point that
defines flags of the same names (pipeline.evaluate, .simulate, .train).
"""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import tensorflow as tf
import yaml

from benchmarks import common
from pipeline import predict
from tests import test_serving
from training import export as export_lib

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory):
  return test_serving.shared_export_dir(tmp_path_factory)


def _run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, "-m", "pipeline.predict", *args], cwd=common.REPO_ROOT,
      env=dict(os.environ, PYTHONPATH=common.REPO_ROOT), capture_output=True, text=True,
      check=False)


def _predict(saved_model: str, lines, tmp_path, batch_size: int = 2, name: str = "in",
             subprocess_run: bool = False):
  """The output lines of scoring LINES: by the CLI in a subprocess, or by predict_file."""
  input_path = tmp_path / f"{name}.jsonl"
  output_path = tmp_path / f"{name}_out.jsonl"
  input_path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode()
                                    for line in lines) + b"\n")
  if subprocess_run:
    proc = _run("--saved_model", saved_model, "--input", str(input_path), "--output",
                str(output_path), "--batch_size", str(batch_size))
    assert proc.returncode == 0, proc.stderr[-3000:]
  else:
    predict.predict_file(saved_model, str(input_path), str(output_path), batch_size)
  return [json.loads(line, parse_constant=lambda name: pytest.fail(f"{name} in output"))
          for line in output_path.read_text().splitlines()]


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
      json.dumps({"user_id": "u1", "item_id": "i1"}),
  ]
  out = _predict(export_dir, lines, tmp_path, subprocess_run=True)
  assert len(out) == len(lines)
  assert [row["line"] for row in out] == list(range(1, len(lines) + 1))
  errors = {i: row["error"] for i, row in enumerate(out) if "error" in row}
  assert sorted(errors) == [1, 2, 3, 5, 6]
  assert errors[1]["reason"] == "unparseable_json"
  assert errors[2]["field"] == "user_age" and "user_age" in errors[2]["detail"]
  assert errors[3]["reason"] == "not_an_object"
  assert errors[5] == {"field": "user_id", "reason": "missing_field",
                       "detail": "field 'user_id' is missing; the raw log contract requires it"}
  assert errors[6]["field"] == "position"
  for i in (0, 4, 7):
    predictions = out[i]["predictions"]
    assert set(predictions) == test_serving.OUTPUTS
    assert all(0.0 < p < 1.0 for p in predictions.values())
  assert out[0]["record"] == good  # the input record is echoed back
  assert out[0]["input_notes"] == {"defaulted": [], "unknown_values": {}, "cut": {}}
  assert out[4]["input_notes"] == {"defaulted": [],
                                   "unknown_values": {"item_category": "unheard-of"},
                                   "cut": {}}
  assert out[7]["input_notes"]["defaulted"] == [
      name for name in test_serving.A_RECORD if name not in ("impression_id", "user_id",
                                                             "item_id")]
  assert out[2]["record"]["user_age"] == "thirty"
  assert out[1]["record"] == "{not json"  # the line's text


def test_hostile_lines_get_errors_and_the_good_ones_score_as_alone(export_dir, tmp_path):
  good = [json.dumps(dict(test_serving.A_RECORD, position=position)) for position in range(1, 9)]
  record = json.dumps(test_serving.A_RECORD)[:-1]  # to append one hostile field
  hostile = [
      ("[" * 100_000 + "]" * 100_000, "too_deep", "<line>"),
      (record.encode() + b', "user_gender": "\xff\xfe"}', "not_utf8", "<line>"),
      ("[1, 2, 3]", "not_an_object", "<record>"),
      (record + ', "item_price": NaN}', "bad_value", "item_price"),
      (record + ', "item_rating": Infinity}', "bad_value", "item_rating"),
      (record + ', "item_category": "' + "c" * 5_000_000 + '"}', "too_long", "item_category"),
      (record + ', "user_recent_categories": [' + ",".join(["1"] * 2_000_000) + "]}",
       "too_long", "user_recent_categories"),
      (record + ', "notes": "' + "n" * 9_000_000 + '"}', "line_too_long", "<line>"),
  ]
  lines = [line for pair in zip(good, [text for text, _, _ in hostile]) for line in pair]
  out = _predict(export_dir, lines, tmp_path, batch_size=3, name="mixed")
  alone = _predict(export_dir, good, tmp_path, batch_size=1, name="alone")
  assert len(out) == len(lines)
  assert [row["line"] for row in out] == list(range(1, len(lines) + 1))
  for row, (_, reason, field) in zip(out[1::2], hostile):
    assert row["error"]["reason"] == reason and row["error"]["field"] == field, row["error"]
    assert isinstance(row["record"], str) and len(row["record"]) <= 1003  # cut text
  assert [row["predictions"] for row in out[0::2]] == [row["predictions"] for row in alone]
  assert [row["record"] for row in out[0::2]] == [json.loads(line) for line in good]
  assert os.path.getsize(tmp_path / "mixed_out.jsonl") < 100_000  # nothing huge echoed


def test_spec_limits_refuse_or_cut_per_record(export_dir, tmp_path):
  """Issue 33: a value over its feature's max_length is a too_long error (on_too_long:
  dead_letter, the default) or cut and listed in input_notes.cut (on_too_long: cut); the
  other records are scored as alone. The limits are written into a copy of the export's
  feature spec (they do not change the SavedModel graph), so no second model is trained."""
  copy = tmp_path / "export"
  shutil.copytree(export_dir, copy)
  spec_path = copy / "assets.extra" / export_lib.SPEC_FILE
  document = yaml.safe_load(spec_path.read_text())
  limits = {"user_id": {"max_length": 12},
            "item_category": {"max_length": 3, "on_too_long": "cut"},
            "user_recent_categories": {"max_length": 2, "on_too_long": "cut"}}
  for entry in document["features"]:
    entry.update(limits.get(entry["name"], {}))
  spec_path.write_text(yaml.safe_dump(document, sort_keys=False))
  good = dict(test_serving.A_RECORD)
  short = dict(good, item_category=good["item_category"][:3],
               user_recent_categories=good["user_recent_categories"][:2])
  lines = [json.dumps(short),
           json.dumps(dict(short, user_id="u" * 13)),                            # too_long
           json.dumps(dict(short, item_category="c" * 200_000)),                 # -> "ccc"
           json.dumps(dict(short, user_recent_categories=["a", "b", "c", "d"]))]  # -> 2
  out = _predict(str(copy), lines, tmp_path, batch_size=2, name="limits")
  assert out[0]["input_notes"]["cut"] == {}
  assert out[1]["error"]["reason"] == "too_long" and out[1]["error"]["field"] == "user_id"
  assert "a string of 13 characters, more than the limit of 12" in out[1]["error"]["detail"]
  assert out[2]["input_notes"]["cut"] == {"item_category": 200_000}
  assert out[3]["input_notes"]["cut"] == {"user_recent_categories": 4}
  cut_alone = _predict(str(copy), [json.dumps(dict(short, item_category="ccc")),
                                   json.dumps(dict(short, user_recent_categories=["a", "b"]))],
                       tmp_path, batch_size=2, name="cut_alone")
  # Scored exactly as the cut values given: out[2] and out[3] share one SavedModel call
  # (out[1]'s error flushed out[0]), as the two lines here do.
  assert [row["predictions"] for row in (out[2], out[3])] == [
      row["predictions"] for row in cut_alone]
  assert all(row["input_notes"]["cut"] == {} for row in cut_alone)


def test_user_errors_are_one_line(export_dir, tmp_path):
  good = tmp_path / "in.jsonl"
  good.write_text(json.dumps(test_serving.A_RECORD) + "\n")
  output = str(tmp_path / "out.jsonl")
  cases = [
      (["--saved_model", "/no/such/model", "--input", str(good), "--output", output],
       "error: --saved_model /no/such/model: no such directory"),
      (["--saved_model", export_dir, "--input", str(tmp_path / "missing.jsonl"), "--output",
        output], f"error: --input {tmp_path / 'missing.jsonl'}: no such file"),
      (["--saved_model", export_dir, "--input", str(good), "--output", str(good)],
       f"error: --output {good} is the --input file"),
  ]
  for args, expected in cases:
    proc = _run(*args)
    assert proc.returncode == 2, (args, proc.stderr[-2000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), (args, proc.stderr[-2000:])
  assert not os.path.exists(output)
  assert good.read_text() == json.dumps(test_serving.A_RECORD) + "\n"


class _ConstantScorer(tf.Module):
  """serving_default(examples) -> ctr, cvr, ctcvr of 0.5, 0.5, 0.25: an older, other model."""

  @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
  def serve(self, examples):
    half = tf.fill(tf.shape(examples), 0.5)
    return {"ctr": half, "cvr": half, "ctcvr": half * half}


def test_export_base_resolves_to_the_newest_complete_version(export_dir, tmp_path, caplog):
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
  by_base = _predict(str(base), lines, tmp_path)
  stderr = caplog.text  # serving.versions' warnings
  by_version = _predict(export_dir, lines, tmp_path)
  by_older = _predict(str(older), lines, tmp_path)
  assert by_base == by_version
  assert by_older[0]["predictions"] == {"ctr": 0.5, "cvr": 0.5, "ctcvr": 0.25}
  assert by_base[0]["predictions"]["ctr"] != 0.5
  for version, lacks in ((newest + 1, "saved_model.pb"),
                         (newest + 2, "variables/variables.index")):
    assert re.search(rf"incomplete SavedModel version {base}/{version}: lacks [^\n]*{lacks}",
                     stderr), stderr[-3000:]
