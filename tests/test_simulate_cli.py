"""Tests of the `python -m pipeline.simulate` entry point, run as a subprocess."""

import glob
import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from simulation import truth as truth_lib
from simulation import writer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_simulate(*args):
  """Runs the CLI from the repository root; returns the CompletedProcess."""
  return subprocess.run([sys.executable, "-m", "pipeline.simulate", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=120, check=False)


def test_cli_writes_jsonl_logs_truth_and_world_json(tmp_path):
  output_dir = str(tmp_path / "out")
  result = run_simulate("--output", output_dir, "--impressions", "3000", "--seed", "3",
                        "--shards", "2", "--corrupt_fraction", "0.02")
  assert result.returncode == 0, result.stderr
  assert "Done in" in result.stderr   # absl logs to stderr
  assert sorted(os.listdir(output_dir)) == ["events", "impressions", "truth", "world.json"]
  assert sorted(os.listdir(os.path.join(output_dir, "impressions"))) == [
      "impressions-00000-of-00002.jsonl.gz", "impressions-00001-of-00002.jsonl.gz"]
  with open(os.path.join(output_dir, "world.json")) as f:
    world = json.load(f)
  assert world["config"]["num_impressions"] == 3000 and world["config"]["seed"] == 3
  assert world["output"]["format"] == "jsonl" and world["output"]["shards"] == 2
  assert world["corruption"]["fraction"] == 0.02
  assert world["sizes"]["last_day"] == "2026-01-08"
  truth = truth_lib.load_truth(output_dir)
  assert len(truth["impression_id"]) == 3000


def test_cli_writes_parquet(tmp_path):
  output_dir = str(tmp_path / "out")
  result = run_simulate("--output", output_dir, "--impressions", "2000", "--format",
                        "parquet", "--days", "2", "--start_date", "2026-02-01")
  assert result.returncode == 0, result.stderr
  impressions = sorted(glob.glob(os.path.join(output_dir, "impressions", "*.parquet")))
  events = sorted(glob.glob(os.path.join(output_dir, "events", "*.parquet")))
  assert len(impressions) == len(events) == 4
  tables = [pq.read_table(path) for path in impressions]
  assert all(table.column_names == list(writer.IMPRESSION_FIELDS) for table in tables)
  assert sum(table.num_rows for table in tables) == 2000
  assert pq.read_table(events[0]).column_names == list(writer.EVENT_FIELDS)
  with open(os.path.join(output_dir, "world.json")) as f:
    assert json.load(f)["sizes"]["last_day"] == "2026-02-02"
  assert len(truth_lib.load_truth(output_dir)["p_ctcvr"]) == 2000


def test_cli_refuses_an_earlier_output_unless_overwrite_and_checks_flags(tmp_path):
  output_dir = str(tmp_path / "out")
  args = ("--output", output_dir, "--impressions", "1000", "--profile", "aliccp",
          "--click_signal_share", "0.5")
  assert run_simulate(*args).returncode == 0
  with open(os.path.join(output_dir, "world.json")) as f:
    config = json.load(f)["config"]
  # Ali-CCP's proportions (ESMM paper, Table 1: 84M impressions, 0.4M users, 4.3M
  # items, 3.4M clicks, 18k conversions) and the knob's weights (simulation.profiles).
  assert (config["num_users"], config["num_items"]) == (round(1000 * 0.4 / 84),
                                                         round(1000 * 4.3 / 84))
  behaviour = config["behaviour"]
  assert behaviour["target_ctr"] == pytest.approx(3.4 / 84)
  assert behaviour["target_purchase_per_click"] == pytest.approx(18 / 3400)
  assert behaviour["click_match"] ** 2 + behaviour["click_quality"] ** 2 == pytest.approx(
      0.5 * 1.1)
  refused = run_simulate(*args)
  assert refused.returncode != 0 and "--overwrite" in refused.stderr
  assert run_simulate(*args, "--overwrite").returncode == 0
  bad_fraction = run_simulate(*args, "--overwrite", "--corrupt_fraction", "0.9")
  assert bad_fraction.returncode != 0 and "corrupt_fraction" in bad_fraction.stderr
  assert run_simulate("--impressions", "10").returncode != 0   # --output is required


def test_cli_writes_a_dynamic_heavy_tailed_world_by_day(tmp_path):
  output_dir = str(tmp_path / "out")
  args = ("--output", output_dir, "--impressions", "3000", "--days", "3",
          "--new_users_per_day", "0.05", "--item_churn_per_day", "0.05",
          "--popularity_drift", "0.1", "--delay_model", "heavy_tailed",
          "--attribution_window_s", "604800", "--purchase_delay_sigma", "1.2",
          "--layout", "daily", "--shards", "1")
  result = run_simulate(*args)
  assert result.returncode == 0, result.stderr
  with open(os.path.join(output_dir, "world.json")) as f:
    world = json.load(f)
  config = world["config"]
  assert (config["new_users_per_day"], config["item_churn_per_day"],
          config["delay_model"], config["late_purchase_fraction"],
          config["conversion_delay"]["sigma"]) == (0.05, 0.05, "heavy_tailed", 0.0, 1.2)
  assert world["output"]["layout"] == "daily"
  assert world["output"]["files"]["outcomes"] == "truth/outcomes.jsonl.gz"
  assert world["output"]["files"]["impressions"] == [
      f"impressions/2026-01-0{d}/impressions-00000-of-00001.jsonl.gz" for d in (1, 2, 3)]
  assert len(world["population_by_day"]["new_users"]) == 3
  assert len(truth_lib.load_outcomes(output_dir)["purchase"]) == 3000
  # heavy_tailed decides which purchases are late: an explicit late fraction is refused.
  refused = run_simulate(*args, "--overwrite", "--late_fraction", "0.02")
  assert refused.returncode != 0 and "late_purchase_fraction must be 0" in refused.stderr
