"""Two `pipeline.train --strategy multi_worker` processes on loopback train one model.

Each worker gets its own TF_CONFIG (cluster of 2 workers on 127.0.0.1, free ports);
worker 0 is the chief. The test checks that both finish, that the chief exports a
SavedModel that scores examples and the other worker leaves no export, that the step
count is the configured one, and that each worker read its own half of the train files
(training.data shards by file per tf.distribute.InputContext).

A killed worker: worker 1 is SIGKILLed after the first checkpoint; worker 0 then fails
(its collectives lose their peer) or is ended; the documented recovery, restarting every
task with the same command, resumes from that checkpoint, ends at the configured final
step, and the chief exports.

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

EPOCHS = small_world_lib.EPOCHS
STEPS_PER_EPOCH = small_world_lib.STEPS_PER_EPOCH
subprocess_env = small_world_lib.subprocess_env  # also used by tests/test_beam_parallel.py
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


@pytest.fixture(scope="module")
def inputs(small_world):
  return {"data": small_world["data"], "config": small_world["config"]}


@pytest.fixture(scope="module")
def cluster_run(inputs, tmp_path_factory):
  root = str(tmp_path_factory.mktemp("multi_worker"))
  model_dir = os.path.join(root, "model")
  workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
  start = time.time()
  codes, texts = finish_workers(start_workers(inputs, model_dir, workers, root))
  seconds = time.time() - start
  return {"codes": codes, "logs": texts, "model_dir": model_dir, "seconds": seconds,
          **inputs}


def test_both_workers_finish(cluster_run):
  for index, code in enumerate(cluster_run["codes"]):
    assert code == 0, f"worker {index} exited {code}:\n{cluster_run['logs'][index][-3000:]}"


def test_chief_exports_and_the_other_worker_does_not(cluster_run):
  model_dir = cluster_run["model_dir"]
  exports = glob.glob(os.path.join(model_dir, "export", "*", "saved_model.pb"))
  assert len(exports) == 1, exports
  leftovers = [path for path in glob.glob(os.path.join(model_dir, "*"))
               if os.path.basename(path) not in ("export", "backup", "best", "logs",
                                                    "metrics.json")]
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
  with open(os.path.join(cluster_run["model_dir"], "metrics.json")) as f:
    metrics = json.load(f)
  assert metrics["num_replicas"] == 2
  assert metrics["final_step"] == EPOCHS * STEPS_PER_EPOCH
  assert metrics["initial_step"] == 0
  # Global metrics, not summed over the 2 workers (which gave AUCs of up to 2). The small
  # eval split may hold no purchase (an AUC of 0 then), so only ctr_auc must beat 0.5.
  for name, value in metrics["eval"].items():
    if name.endswith("_auc"):
      assert 0.0 <= value <= 1.0, metrics["eval"]
  assert metrics["eval"]["ctr_auc"] > 0.5, metrics["eval"]


def test_each_worker_reads_its_own_files(cluster_run):
  for index, text in enumerate(cluster_run["logs"]):
    line = [l for l in text.splitlines() if "make_dataset" in l and "/train/" in l][0]
    assert f"2 files (pipeline {index} of 2)" in line, line


KILLED_STEPS_PER_EPOCH = 30
KILLED_CHECKPOINT_EVERY = 10


def newest_checkpoint_step(model_dir: str) -> int:
  """Step of the newest MODEL_DIR/backup/chief/ckpt-N (0 when none is complete yet)."""
  path = os.path.join(model_dir, "backup", "chief", "checkpoint")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    text = f.read()
  found = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', text)
  return int(found.group(1)) * KILLED_CHECKPOINT_EVERY if found else 0


@pytest.fixture(scope="module")
def killed_worker_run(inputs, tmp_path_factory):
  root = str(tmp_path_factory.mktemp("killed_worker"))
  inputs = {"data": inputs["data"], "config": write_small_config(
      os.path.join(root, "small.yaml"), KILLED_CHECKPOINT_EVERY, KILLED_STEPS_PER_EPOCH)}
  model_dir = os.path.join(root, "model")
  workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
  started = start_workers(inputs, model_dir, workers, root, "-first")
  deadline = time.time() + 600
  while newest_checkpoint_step(model_dir) < KILLED_CHECKPOINT_EVERY:
    assert all(process.poll() is None for process, _ in started), "a worker ended early"
    assert time.time() < deadline, "no checkpoint within 600 s"
    time.sleep(0.05)
  started[1][0].send_signal(signal.SIGKILL)
  checkpoint_step = newest_checkpoint_step(model_dir)
  # Worker 0 loses its peer: it fails by itself or hangs in a collective; end it.
  first_codes, first_logs = finish_workers(started, timeout=60)
  assert not os.path.exists(os.path.join(model_dir, "metrics.json"))
  start = time.time()
  codes, logs = finish_workers(start_workers(inputs, model_dir, workers, root, "-restart"))
  return {"first_codes": first_codes, "checkpoint_step": checkpoint_step, "codes": codes,
          "logs": logs, "model_dir": model_dir, "restart_seconds": time.time() - start}


def test_restarted_cluster_resumes_after_a_killed_worker_and_the_chief_exports(
    killed_worker_run):
  run = killed_worker_run
  assert run["first_codes"][1] == -signal.SIGKILL
  for index, code in enumerate(run["codes"]):
    assert code == 0, f"worker {index} exited {code}:\n{run['logs'][index][-3000:]}"
  with open(os.path.join(run["model_dir"], "metrics.json")) as f:
    metrics = json.load(f)
  total = EPOCHS * KILLED_STEPS_PER_EPOCH
  assert metrics["num_replicas"] == 2 and metrics["final_step"] == total
  # Resumed from the checkpoint taken before the kill (or a later one of worker 0's).
  assert run["checkpoint_step"] <= metrics["initial_step"] < total
  assert metrics["initial_step"] % KILLED_CHECKPOINT_EVERY == 0
  for index, text in enumerate(run["logs"]):
    assert f"Resumed from MODEL_DIR/backup at step {metrics['initial_step']}" in text, index
  exports = glob.glob(os.path.join(run["model_dir"], "export", "*", "saved_model.pb"))
  assert len(exports) == 1 and metrics["export_dir"] == os.path.dirname(exports[0])
