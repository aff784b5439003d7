"""Fault tolerance: SIGKILL `pipeline.train` half way, re-run the same command, compare.

The killed run is stopped once BackupAndRestore (MODEL_DIR/backup, every
train.checkpoint_every_steps steps) has saved past half of the run's steps. The same
command then resumes from that checkpoint: it must end at the same total step
(optimizer.iterations = epochs * steps_per_epoch), say where it resumed, and give a
model whose eval AUC is within a tolerance of an uninterrupted run's. (The data
iterator is not checkpointed: the resumed run restarts its seeded shuffle, so the two
runs see different batch orders and their AUCs differ a little.)
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from tests import test_multi_worker as cluster

REPO = cluster.REPO
pytestmark = pytest.mark.slow

TOTAL_STEPS = cluster.EPOCHS * cluster.STEPS_PER_EPOCH
CHECKPOINT_EVERY = 25  # train.checkpoint_every_steps
AUC_TOLERANCE = 0.03
LOGLOSS_TOLERANCE = 0.02


def _train_command(inputs, model_dir):
  return [sys.executable, "-m", "pipeline.train", f"--config={inputs['config']}",
          f"--data={inputs['data']}", f"--model_dir={model_dir}"]


def latest_checkpoint_number(backup_dir: str) -> int:
  """N of the newest MODEL_DIR/backup/chief/ckpt-N (0 when none is complete yet)."""
  path = os.path.join(backup_dir, "chief", "checkpoint")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    found = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', f.read())
  return int(found.group(1)) if found else 0


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("resume"))
  inputs = cluster.small_run_inputs(root, checkpoint_every_steps=CHECKPOINT_EVERY)
  env = cluster.subprocess_env()
  killed_dir = os.path.join(root, "killed")
  clean_dir = os.path.join(root, "clean")
  clean = subprocess.Popen(_train_command(inputs, clean_dir), cwd=REPO, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  victim = subprocess.Popen(_train_command(inputs, killed_dir), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  half = TOTAL_STEPS // 2 // CHECKPOINT_EVERY  # checkpoint number at half way
  deadline = time.time() + 600
  while latest_checkpoint_number(os.path.join(killed_dir, "backup")) < half:
    assert victim.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline, "no half-way checkpoint within 600 s"
    time.sleep(0.2)
  victim.send_signal(signal.SIGKILL)
  victim.wait()
  killed_at = latest_checkpoint_number(os.path.join(killed_dir, "backup"))
  assert not os.path.exists(os.path.join(killed_dir, "metrics.json"))
  start = time.time()
  resumed = subprocess.run(_train_command(inputs, killed_dir), cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=900, check=False)
  resume_seconds = time.time() - start
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert clean.wait(timeout=900) == 0
  metrics = {}
  for name, model_dir in (("resumed", killed_dir), ("clean", clean_dir)):
    with open(os.path.join(model_dir, "metrics.json")) as f:
      metrics[name] = json.load(f)
  return {"metrics": metrics, "killed_at_step": killed_at * CHECKPOINT_EVERY,
          "resume_seconds": resume_seconds, "killed_dir": killed_dir}


def test_resumed_run_starts_from_the_checkpoint(runs):
  resumed = runs["metrics"]["resumed"]
  assert runs["killed_at_step"] >= TOTAL_STEPS // 2
  # It resumes from the newest checkpoint (saved at the kill or just after it), not 0.
  assert runs["killed_at_step"] <= resumed["initial_step"] < TOTAL_STEPS
  assert resumed["initial_step"] % CHECKPOINT_EVERY == 0


def test_both_runs_end_at_the_same_total_step(runs):
  for name, metrics in runs["metrics"].items():
    assert metrics["final_step"] == TOTAL_STEPS == metrics["epochs"] * metrics[
        "steps_per_epoch"], name
  assert runs["metrics"]["clean"]["initial_step"] == 0


def test_resumed_model_is_no_worse(runs):
  resumed, clean = runs["metrics"]["resumed"]["eval"], runs["metrics"]["clean"]["eval"]
  # The small eval split may hold no purchase (ctcvr/cvr AUC 0 then): compare ctr.
  assert 0.5 < clean["ctr_auc"] <= 1.0 and 0.5 < resumed["ctr_auc"] <= 1.0, (clean, resumed)
  assert resumed["ctr_auc"] >= clean["ctr_auc"] - AUC_TOLERANCE, (resumed, clean)
  assert resumed["ctr_logloss"] <= clean["ctr_logloss"] + LOGLOSS_TOLERANCE, (resumed, clean)
  exports = os.listdir(os.path.join(runs["killed_dir"], "export"))
  assert len(exports) == 1, exports
