"""Tests of pipeline/demo.py's terminal output: steps log to files, the terminal gets
headers, counts and rates, and a failed step shows the end of its log and its path."""

import json

import pytest

from pipeline import demo


def test_run_step_keeps_the_output_in_the_log_file(tmp_path, capsys):
  source = tmp_path / "in.json"
  source.write_text('{"b": 1, "a": [1, 2]}')
  demo.run_step("1/2", "format json", "pretty-print", str(tmp_path / "logs"), "json.tool",
                "--sort-keys", str(source))
  out = capsys.readouterr().out
  assert "== [1/2] format json: pretty-print" in out
  log = tmp_path / "logs" / "format_json.log"
  assert f"log: {log}" in out and '"a"' not in out  # the output went to the file only
  text = log.read_text()
  assert text.startswith("$ ") and '"a": [' in text


def test_a_failed_step_prints_its_log_tail_and_names_the_log(tmp_path, capsys):
  with pytest.raises(demo.StepFailed, match=r"step 'broken' failed \(exit 2\).*broken.log"):
    demo.run_step("2/2", "broken", "a missing file", str(tmp_path), "json.tool",
                  str(tmp_path / "missing.json"))
  assert "No such file or directory" in capsys.readouterr().err


def test_counts_and_rates_from_the_stage_files():
  counts = {"impressions": {"read": 1010, "written": {"train": 800, "eval": 200},
                            "dead_letter": {"missing_field": 10}},
            "events": {"read": 60, "attributed": 58, "dead_letter": {"duplicate_event": 2}},
            "labels": {"train": {"click": 40, "purchase": 2}, "eval": {"click": 10}}}
  lines = demo.preprocess_lines(counts)
  assert "dead-lettered 10" in lines[0] and "dead-lettered 2" in lines[1]
  assert lines[2].split() == ["train", "800", "exposures:", "click", "40", "(5.00%),",
                              "purchase", "2", "(0.25%)"]
  assert lines[3].endswith("click 10 (5.00%)")
  world = {"sizes": {"impressions": 1000, "users": 5, "items": 7, "events": 60},
           "rates": {"ctr": 0.05, "purchase_per_click": 0.1, "purchase_per_exposure": 0.005},
           "selection_bias": {"relative_gap": -0.33}}
  assert "CTR 5.00%" in demo.simulate_lines(world)[1] and "-33%" in demo.simulate_lines(world)[2]
  metrics = {"train_examples": 700, "validation_examples": 100, "eval_examples": 200,
             "epochs": 2, "steps_per_epoch": 3, "examples_per_second": 1234.5,
             "eval": {"ctr_auc": 0.71, "ctr_logloss": 0.2}}
  assert "ctr_auc 0.7100" in demo.train_lines(metrics)[1]
  assert json.dumps(metrics)  # plain data
