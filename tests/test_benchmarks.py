"""Tests of the benchmark code paths at tiny sizes (no timing bars).

Each benchmark runs end to end on the session's shared 5000-impression data and model
(see tests/test_serving.py) and must write its markdown table with the machine header.
Rates are checked for consistency with what was measured (examples = the split's
counts, rate = examples / seconds, the steady window inside the epoch) and the tables
for their rows and formatted cells, since timings themselves vary.
"""

import glob
import json
import os
import resource
import shutil

import pytest

from benchmarks import beam_preprocess
from benchmarks import common
from benchmarks import file_sources
from benchmarks import input_pipeline
from benchmarks import serving_latency
from benchmarks import training_throughput
from tests import test_serving
from training import trainer


def test_markdown_table_and_result_file(tmp_path):
  table = common.markdown_table(["a", "b"], [[1, "x"], [2.5, "y"]])
  assert table.splitlines() == ["| a | b |", "|---|---|", "| 1 | x |", "| 2.5 | y |"]
  path = common.write_result("demo", "Demo", table, str(tmp_path), command="python -m x")
  text = open(path).read()
  assert text.startswith("# Demo\n")
  for key in ("cores (nproc)", "CPU", "memory", "tensorflow", "apache-beam", "date (UTC)"):
    assert f"| {key} |" in text
  assert str(os.cpu_count()) in text and table in text


def test_percentiles():
  seconds = [0.001] * 99 + [0.1]
  assert common.percentile_ms(seconds, 50) == pytest.approx(1.0)
  assert common.percentile_ms(seconds, 100) == pytest.approx(100.0)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  return test_serving.shared_workdir(tmp_path_factory)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return test_serving.shared_data_dir(tmp_path_factory)


def _table_rows(path, first_header):
  """The cells of the markdown table whose header starts with `first_header`."""
  lines = open(path).read().splitlines()
  start = next(i for i, line in enumerate(lines) if line.startswith(f"| {first_header} |"))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith("| "):
      break
    rows.append([cell.strip() for cell in line.strip("|").split("|")])
  return rows


def _split_sizes(data_dir):
  written = trainer.read_counts(data_dir)["impressions"]["written"]
  return written["train"], written["eval"]


@pytest.mark.slow
def test_training_throughput_runs_ours_and_deepctr(data_dir, tmp_path):
  batch_size = 256
  results = training_throughput.run(data_dir, batch_size=batch_size,
                                    results_dir=str(tmp_path),
                                    variants=("ours", "deepctr"), in_process=True)
  train_examples, eval_examples = _split_sizes(data_dir)
  full_steps = train_examples // batch_size
  assert full_steps > training_throughput.WARMUP_STEPS + 1  # a steady window exists
  for variant in ("ours", "deepctr"):
    r = results[variant]
    # One epoch: every train batch was a step; every eval example was scored.
    assert r["steps"] == -(-train_examples // batch_size), variant
    assert r["eval_examples"] == eval_examples, variant
    assert r["epoch_ex_per_s"] == pytest.approx(train_examples / r["epoch_seconds"])
    assert r["steady_steps"] == full_steps - training_throughput.WARMUP_STEPS - 1
    # The steady window is part of the epoch, so it took less time than the epoch.
    steady_seconds = r["steady_steps"] * batch_size / r["steady_ex_per_s"]
    assert 0 < steady_seconds < r["epoch_seconds"], variant
    assert 0.5 < r["ctr_auc"] < 1.0, variant
    # The simulated purchases are predictable: both reach CTCVR AUC ~0.95 after this
    # epoch (seeded); scores misaligned with their labels would be near 0.5.
    assert r["ctcvr_auc"] > 0.8, variant
  assert results["ratio"] == pytest.approx(results["ours"]["steady_ex_per_s"] /
                                           results["deepctr"]["steady_ex_per_s"])
  # Same embedding size and towers: the parameter counts differ only by DeepCTR's
  # padding row of the list feature, its bias-free logits and its output biases.
  assert abs(results["ours"]["params"] - results["deepctr"]["params"]) < 100
  # The table holds one row per variant with the measured numbers, as formatted.
  rows = _table_rows(tmp_path / "training_throughput.md", "model")
  assert len(rows) == 2 and all(len(row) == 9 for row in rows)
  for row, variant in zip(rows, ("ours", "deepctr")):
    r = results[variant]
    assert row[0] == training_throughput.VARIANTS[variant][0]
    assert row[2] == f"{r['steady_ex_per_s']:,.0f}"
    assert row[6:] == [f"{r['ctr_auc']:.4f}", f"{r['ctcvr_auc']:.4f}", f"{r['params']:,}"]
  assert "ours / DeepCTR" in open(tmp_path / "training_throughput.md").read()


@pytest.mark.slow
def test_input_pipeline_reports_three_rates(data_dir, tmp_path):
  batch_size = 256
  results = input_pipeline.run(data_dir, batch_size=batch_size, results_dir=str(tmp_path))
  train_examples, _ = _split_sizes(data_dir)
  steps = max(training_throughput.WARMUP_STEPS + 3, train_examples // batch_size)
  names = ["input only (make_dataset)",
           f"step only ({input_pipeline.CACHED_BATCHES} cached batches)",
           "end to end (fit on make_dataset)"]
  assert list(results) == names
  # One pass of make_dataset delivers every train example once.
  assert results[names[0]]["examples"] == train_examples
  # The fit rates count the steps after the warm-up, full batches each.
  timed = steps - min(training_throughput.WARMUP_STEPS, steps - 2) - 1
  for name in names[1:]:
    assert results[name]["examples"] == timed * batch_size, name
  for name, r in results.items():
    assert r["seconds"] > 0 and r["ex_per_s"] == pytest.approx(r["examples"] / r["seconds"])
  rows = _table_rows(tmp_path / "input_pipeline.md", "what")
  assert [row[0] for row in rows] == names
  step_rate = results[names[1]]["ex_per_s"]
  for row, name in zip(rows, names):
    r = results[name]
    assert row[1:] == [f"{r['examples']:,}", f"{r['seconds']:.1f}", f"{r['ex_per_s']:,.0f}",
                       f"{r['ex_per_s'] / step_rate:.2f}"]
  assert rows[1][4] == "1.00"


@pytest.mark.slow
def test_serving_latency_covers_both_signatures(tmp_path_factory, data_dir, tmp_path):
  saved_model = test_serving.shared_export_dir(tmp_path_factory)
  rows = serving_latency.run(saved_model, data_dir, calls=20, results_dir=str(tmp_path),
                             batch_sizes=(1, 8))
  assert {(r["signature"].split()[0], r["batch"]) for r in rows} == {
      (path, batch) for path in ("serving_default", "predict_raw", "Predictor")
      for batch in (1, 8)}
  assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)


@pytest.mark.slow
def test_beam_preprocess_counts_every_record(workdir, tmp_path):
  rows = beam_preprocess.run(1000, workers=(1,), workdir=workdir, results_dir=str(tmp_path))
  floor, job = rows
  assert floor["run"].startswith("floor") and floor["floor_ratio"] == 1.0
  assert floor["written"] == floor["impressions"] == 1000  # 1,000 Examples, none dropped.
  assert job["run"] == "job"
  assert job["impressions"] == 1000 and job["records"] == 1000 + job["events"]
  assert job["events"] == floor["events"] and not job["failure"]
  assert job["peak_rss_gib"] > 0.05  # a Python process with TF and Beam loaded
  assert job["floor_ratio"] > 1.0
  text = open(tmp_path / "beam_preprocess.md").read()
  assert "records/s per worker" in text and "Load average 1/5/15 min at the start" in text


@pytest.mark.slow
def test_beam_preprocess_reads_parquet_worlds(workdir, tmp_path):
  """The benchmark's Parquet input without a job (a subprocess of ~8 CPU s): the same
  seeded world in Parquet, the floor's Parquet reader on it, the job's flags matching its
  files, and the table's input column. The job on Parquet logs is the golden's
  (tests/test_beam_golden.py); the job's subprocess, its accounting and its row are the
  same code for either input and run in the JSON Lines test above."""
  raws = {fmt: common.ensure_raw(workdir, 1000, fmt=fmt) for fmt in ("jsonl", "parquet")}
  floors = {fmt: beam_preprocess.floor(raw, [b"an Example"], 10, str(tmp_path / fmt), fmt)
            for fmt, raw in raws.items()}
  assert floors["parquet"]["parsed"] == floors["jsonl"]["parsed"] > 1000  # the same world
  assert floors["parquet"]["written"] == 10
  flags = common.preprocess_args(raws["parquet"], str(tmp_path / "out"), "parquet")
  for flag in ("--impressions", "--events"):
    assert glob.glob(flags[flags.index(flag) + 1]), flag
  row = dict(beam_preprocess.row("job", 1, {"impressions": {"read": 1000},
                                            "events": {"read": 80}}, 2.0, 3.0, 0.5),
             format="parquet", floor_ratio=4.0)
  body = beam_preprocess.write_table([row], str(tmp_path), "test", name="formats")
  assert "| Parquet |" in body and "| 540 |" in body  # 1,080 records in 2 s
  assert "| Parquet |" in open(tmp_path / "formats.md").read()


def _job_in_this_process(jobs):
  """A stand-in for beam_preprocess.run_job that runs the same job, `pipeline.preprocess
  .run(args)` (what `python -m pipeline.preprocess args` runs), in this process, and
  returns run_job's result from it: counts.json, the job's pipeline seconds, this
  process's peak memory, no failure (a failed accounting check raises). Each call's args
  are appended to `jobs`. run_job's own part (the subprocess, its memory polling, its log's
  pipeline seconds and failure line) is test_beam_preprocess_counts_every_record's."""
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top

  def run_job(args, output, log_path):
    del log_path  # no subprocess, no log
    jobs.append(list(args))
    if os.path.exists(output):
      shutil.rmtree(output)
    seconds = preprocess.run(list(args))["seconds"]
    with open(os.path.join(output, "counts.json")) as f:
      counts = json.load(f)
    common.checked_data_dir(output)  # as run_job: a finished job left a verifiable marker
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    return {"counts": counts, "pipeline_seconds": seconds, "wall_seconds": seconds,
            "peak_rss_gib": peak_kib / 2**20, "failure": None}

  return run_job


@pytest.mark.slow
def test_file_sources_benchmark_counts_every_line(workdir, tmp_path, monkeypatch):
  """One source's job (Ali-CCP: skeleton and common-features lines both count); the
  other's inputs and flags are checked without a job (the jobs' outputs are
  tests/test_file_sources_golden.py's). The job runs in this process
  (`_job_in_this_process`): its subprocess would add a TensorFlow, Beam and TFDV start-up
  (~5 CPU s), and the benchmarks' subprocess runner, beam_preprocess.run_job, is the one
  test_beam_preprocess_counts_every_record runs."""
  jobs = []
  monkeypatch.setattr(beam_preprocess, "run_job", _job_in_this_process(jobs))
  rows = file_sources.run(600, workers=(1,), workdir=workdir, results_dir=str(tmp_path),
                          command="test", sources=("ali_ccp",))
  [args] = jobs  # one job: the source's, with its worker count and output
  assert args[0] == "--source=ali_ccp" and "--local_workers=1" in args
  assert f"--output={os.path.join(workdir, 'file_sources_ali_ccp_w1')}" in args
  [job] = rows
  assert job["source"] == "ali_ccp" and not job["failure"]
  assert job["lines"] >= 790 and 0 < job["written"] < job["lines"]  # 2% bad lines.
  text = open(tmp_path / "file_sources.md").read()
  assert "lines/s per worker" in text and "| ali_ccp |" in text
  flags = file_sources.write_inputs("aliexpress", 600, workdir)
  assert flags[0] == "--source=aliexpress"
  for flag in flags[1:]:
    with open(flag.split("=", 1)[1]) as f:
      assert sum(1 for _ in f) > 600 // 3  # a header and the rows (eval: a third)
  with pytest.raises(ValueError, match="unknown sources"):
    file_sources.run(600, (1,), workdir, str(tmp_path), "test", sources=("criteo",))
