"""Two `pipeline.train --strategy multi_worker` processes on loopback train one model.

Each worker gets its own TF_CONFIG (cluster of 2 workers on 127.0.0.1, free ports);
worker 0 is the chief. The test checks that both finish, that the chief exports a
SavedModel that scores examples and the other worker leaves no export, that the step
count is the configured one, and that each worker read its own half of the train files
(training.data shards by file per tf.distribute.InputContext).

`small_run_inputs` (simulate 4k impressions -> Beam -> a small model config) is shared
with tests/test_resume.py.
"""

import glob
import json
import os
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from training import data
from training import strategy as strategy_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
pytestmark = pytest.mark.slow

EPOCHS = 2
STEPS_PER_EPOCH = 100
SMALL_CONFIG = f"""\
base: {os.path.join(REPO, "configs", "esmm.yaml")}
model: {{embedding_dim: 4, tower_units: [16]}}
train: {{batch_size: 64, epochs: {EPOCHS}, steps_per_epoch: {STEPS_PER_EPOCH},
         shuffle_buffer: 2000, checkpoint_every_steps: CHECKPOINT_EVERY,
         learning_rate: 0.005}}
"""


def subprocess_env(**extra) -> dict:
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONHASHSEED="0")
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def small_run_inputs(root, checkpoint_every_steps: int = STEPS_PER_EPOCH) -> dict:
  """Simulated raw logs -> Beam output, plus a small experiment YAML; returns paths."""
  raw, data_dir = os.path.join(root, "raw"), os.path.join(root, "data")
  config = os.path.join(root, "small.yaml")
  with open(config, "w") as f:
    f.write(SMALL_CONFIG.replace("CHECKPOINT_EVERY", str(checkpoint_every_steps)))
  for module, args in (
      ("pipeline.simulate", [f"--output={raw}", "--impressions=4000", "--seed=5"]),
      ("pipeline.preprocess", [f"--impressions={raw}/impressions/*.jsonl.gz",
                               f"--events={raw}/events/*.jsonl.gz",
                               f"--output={data_dir}", f"--config={config}"])):
    subprocess.run([sys.executable, "-m", module, *args], check=True, cwd=REPO,
                   env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  return {"data": data_dir, "config": config}


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


@pytest.fixture(scope="module")
def cluster_run(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("multi_worker"))
  inputs = small_run_inputs(root)
  model_dir = os.path.join(root, "model")
  workers = [f"127.0.0.1:{port}" for port in free_ports(2)]
  processes, logs = [], []
  start = time.time()
  for index in range(len(workers)):
    log = open(os.path.join(root, f"worker{index}.log"), "w+")
    logs.append(log)
    processes.append(subprocess.Popen(
        [sys.executable, "-m", "pipeline.train", f"--config={inputs['config']}",
         f"--data={inputs['data']}", f"--model_dir={model_dir}", "--strategy=multi_worker"],
        cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
        env=subprocess_env(TF_CONFIG=strategy_lib.tf_config(workers, index))))
  try:
    codes = [process.wait(timeout=900) for process in processes]
  finally:
    for process in processes:  # a worker whose peer died waits forever: end it
      if process.poll() is None:
        process.kill()
        process.wait()
  seconds = time.time() - start
  texts = []
  for log in logs:
    log.seek(0)
    texts.append(log.read())
    log.close()
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
               if os.path.basename(path) not in ("export", "backup", "logs", "metrics.json")]
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
