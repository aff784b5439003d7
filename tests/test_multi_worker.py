"""Two `pipeline.train --strategy multi_worker` processes on loopback train one model.

Each worker gets its own TF_CONFIG (cluster of 2 workers on 127.0.0.1, free ports);
worker 0 is the chief. One cluster scenario feeds every test here:

  1. both workers start from nothing (each logs "input from step 0", none "Resumed");
     worker 1 is SIGKILLed after the first checkpoint, then worker 0 (a preempted
     cluster; alone it would fail once its peer's heartbeat is missed);
  2. the documented recovery, restarting every task with the same command, is itself a
     complete 2-worker run: it resumes from that checkpoint and ends at the configured
     final step; the chief exports a SavedModel that scores examples and writes
     metrics.json (global metrics over both replicas), the other worker leaves no export,
     and each worker reads its own half of the train files in both runs (training.data
     shards by file per tf.distribute.InputContext).

(A fresh run's metrics.json `initial_step` 0 is checked on one process by
tests/test_resume.py's uninterrupted run; here the first run's logs show its start.)

The data is the session's `small_world` (tests/conftest.py: 4k simulated impressions
-> Beam, shared with tests/test_resume.py and tests/test_training_inputs.py).
"""

import glob
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from tests import small_world as small_world_lib
from training import data
from training import strategy as strategy_lib

REPO = small_world_lib.REPO
pytestmark = pytest.mark.slow

subprocess_env = small_world_lib.subprocess_env
write_small_config = small_world_lib.write_small_config


def free_ports(count: int) -> list:
  """`count` distinct free TCP ports on 127.0.0.1 (bound and released)."""
  sockets = []
  try:
    for _ in range(count):
      sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
      sock.bind(("127.0.0.1", 0))
      sockets.append(sock)
    return [sock.getsockname()[1] for sock in sockets]
  finally:
    for sock in sockets:
      sock.close()


def start_workers(inputs, model_dir, workers, log_dir, tag="") -> list:
  """Starts one pipeline.train per worker; returns [(process, log file)]."""
  started = []
  for index in range(len(workers)):
    log = open(os.path.join(log_dir, f"worker{index}{tag}.log"), "w+")
    started.append((subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", f"--config={inputs['config']}",
         f"--data={inputs['data']}", f"--model_dir={model_dir}", "--strategy=multi_worker"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=subprocess_env(TF_CONFIG=strategy_lib.tf_config(workers, index))), log))
  return started


def finish_workers(started, timeout=900) -> tuple:
  """Waits for every worker (ending the ones left hanging); returns (codes, log texts)."""
  try:
    codes = [process.wait(timeout=timeout) for process, _ in started]
  finally:
    for process, _ in started:  # a worker whose peer died waits forever: end it
      if process.poll() is None:
        process.kill()
        process.wait()
  texts = []
  for _, log in started:
    log.seek(0)
    texts.append(log.read())
    log.close()
  return codes, texts


EPOCHS = 1  # one epoch end (validation, eval) per run: the cluster's collective steps
STEPS_PER_EPOCH = 40  # 40 steps of 64 examples: eval ctr_auc above 0.5
CHECKPOINT_EVERY = 10  # the first run is killed once ckpt-1 (step 10) is written
TOTAL_STEPS = EPOCHS * STEPS_PER_EPOCH


def newest_checkpoint_step(model_dir: str) -> int:
  """Step of the newest MODEL_DIR/backup/chief/ckpt-N (0 when none is complete yet)."""
  path = os.path.join(model_dir, "backup", "chief", "checkpoint")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    text = f.read()
  found = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', text)
  return int(found.group(1)) * CHECKPOINT_EVERY if found else 0


@pytest.fixture(scope="module")
def cluster_run(small_world, tmp_path_factory):
  """Starts the cluster, kills worker 1 after the first checkpoint, ends worker 0, then
  restarts both with the same commands and lets them finish."""
  root = str(tmp_path_factory.mktemp("multi_worker"))
  inputs = {"data": small_world["data"], "config": write_small_config(
      os.path.join(root, "small.yaml"), CHECKPOINT_EVERY, STEPS_PER_EPOCH, EPOCHS)}
  model_dir = os.path.join(root, "model")
  workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
  started = start_workers(inputs, model_dir, workers, root, "-first")
  deadline = time.time() + 600
  while newest_checkpoint_step(model_dir) < CHECKPOINT_EVERY:
    assert all(process.poll() is None for process, _ in started), "a worker ended early"
    assert time.time() < deadline, "no checkpoint within 600 s"
    time.sleep(0.05)
  started[1][0].send_signal(signal.SIGKILL)
  checkpoint_step = newest_checkpoint_step(model_dir)
  # Worker 0 would fail by itself once the coordination service misses worker 1's
  # heartbeat (about 10 s later) or hang in a collective; a preempted cluster loses both,
  # so end it now.
  started[0][0].send_signal(signal.SIGKILL)
  first_codes, first_logs = finish_workers(started, timeout=60)
  assert not os.path.exists(os.path.join(model_dir, "metrics.json"))
  codes, logs = finish_workers(start_workers(inputs, model_dir, workers, root, "-restart"))
  return {"first_codes": first_codes, "first_logs": first_logs,
          "checkpoint_step": checkpoint_step, "codes": codes, "logs": logs,
          "model_dir": model_dir, "data": inputs["data"]}


def read_metrics(run) -> dict:
  with open(os.path.join(run["model_dir"], "metrics.json")) as f:
    return json.load(f)


def test_both_workers_finish(cluster_run):
  for index, code in enumerate(cluster_run["codes"]):
    assert code == 0, f"worker {index} exited {code}:\n{cluster_run['logs'][index][-3000:]}"


def test_the_first_run_starts_from_step_0_and_loses_the_killed_worker(cluster_run):
  assert cluster_run["first_codes"][1] == -signal.SIGKILL
  for index, text in enumerate(cluster_run["first_logs"]):
    assert re.search(r"Training esmm: .*, input from step 0\b", text), index
    assert "Resumed from MODEL_DIR/backup" not in text, index


def test_restarted_cluster_resumes_after_a_killed_worker_and_the_chief_exports(cluster_run):
  run = cluster_run
  metrics = read_metrics(run)
  # Resumed from the checkpoint taken before the kill (or a later one of worker 0's).
  assert run["checkpoint_step"] <= metrics["initial_step"] < TOTAL_STEPS
  assert metrics["initial_step"] % CHECKPOINT_EVERY == 0
  for index, text in enumerate(run["logs"]):
    assert f"Resumed from MODEL_DIR/backup at step {metrics['initial_step']}" in text, index
  exports = glob.glob(os.path.join(run["model_dir"], "export", "*", "saved_model.pb"))
  assert len(exports) == 1 and metrics["export_dir"] == os.path.dirname(exports[0])


def test_chief_exports_and_the_other_worker_does_not(cluster_run):
  model_dir = cluster_run["model_dir"]
  exports = glob.glob(os.path.join(model_dir, "export", "*", "saved_model.pb"))
  assert len(exports) == 1, exports
  leftovers = [path for path in glob.glob(os.path.join(model_dir, "*"))
               if os.path.basename(path) not in ("export", "backup", "best", "logs",
                                                    "warm_start", "metrics.json")]
  assert not leftovers, leftovers  # the non-chief's scratch export is deleted
  records = list(tf.data.TFRecordDataset(
      sorted(glob.glob(data.split_pattern(cluster_run["data"], "eval"))),
      compression_type="GZIP").take(16))
  loaded = tf.saved_model.load(os.path.dirname(exports[0]))
  outputs = loaded.signatures["serving_default"](examples=tf.stack(records))
  assert set(outputs) == {"ctr", "cvr", "ctcvr"}
  for name, value in outputs.items():
    assert value.shape == (16,) and bool(tf.reduce_all((value > 0) & (value < 1))), name


def test_metrics_count_global_steps_and_replicas(cluster_run):
  metrics = read_metrics(cluster_run)
  assert metrics["num_replicas"] == 2
  assert metrics["final_step"] == TOTAL_STEPS
  # Global metrics, not summed over the 2 workers (which gave AUCs of up to 2). The small
  # eval split may hold no purchase (an AUC of 0 then), so only ctr_auc must beat 0.5.
  for name, value in metrics["eval"].items():
    if name.endswith("_auc"):
      assert 0.0 <= value <= 1.0, metrics["eval"]
  assert metrics["eval"]["ctr_auc"] > 0.5, metrics["eval"]


def test_each_worker_reads_its_own_files(cluster_run):
  for logs in (cluster_run["first_logs"], cluster_run["logs"]):
    for index, text in enumerate(logs):
      line = [l for l in text.splitlines() if "make_dataset" in l and "/train/" in l][0]
      assert f"2 files (pipeline {index} of 2)" in line, line
