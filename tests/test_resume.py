"""Exact resume: SIGKILL `pipeline.train` at step 40 of 80, re-run the same command.

Both runs use `--deterministic_ops` (tf.config.experimental.enable_op_determinism) on
CPU. The killed run is stopped once BackupAndRestore (MODEL_DIR/backup, every
CHECKPOINT_EVERY steps) has saved step 40, the end of epoch 1; the same command then
resumes from the newest checkpoint (step 40, or 50 if one more was saved before the
signal landed) and runs to the end, output calibration and export included. The
uninterrupted run is the oracle of the weights and metrics only, so it stops after them
(CLEAN_ONLY_FLAGS: no calibration fit, no export; both come after training and change
neither the checkpoints nor metrics.json's eval and validation sections, which are the
uncalibrated Keras metrics).
Because the input stream is a deterministic function of the seed and the resumed run
skips the batches its checkpoint's steps consumed (training.data `skip_steps`), it sees
exactly the batches the uninterrupted run saw from that step on, so:

  * the final weights (every model and optimizer variable of the step-80 checkpoint)
    equal the uninterrupted run's to WEIGHT_TOLERANCE;
  * the eval and validation metrics (of the final weights: this test's config keeps
    them, `restore_best_weights: false`, so the metrics see the resumed half too), the
    validation loss of every epoch and the best epoch are the same (METRIC_TOLERANCE).

Tolerances: with deterministic ops the same inputs give bitwise-identical results, so
any difference would be a different batch order or a state the checkpoint missed (a
different batch changes weights by ~1e-3 at this learning rate). The tolerances leave
room only for float32 rounding (1e-6 relative) should an op's reduction order ever
differ between the processes, and are far below what a wrong batch order produces.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from tests import small_world as small_world_lib

REPO = small_world_lib.REPO
pytestmark = pytest.mark.slow

STEPS_PER_EPOCH = 40  # 2 epochs of 64 examples a step: eval ctr_auc well above 0.5
TOTAL_STEPS = small_world_lib.EPOCHS * STEPS_PER_EPOCH
CHECKPOINT_EVERY = 10  # train.checkpoint_every_steps
KILL_AT_STEP = STEPS_PER_EPOCH  # the end of epoch 1 (killed before or after validating it)
WEIGHT_TOLERANCE = 1e-6  # relative, and absolute for values near 0
METRIC_TOLERANCE = 1e-6
# The uninterrupted run's extra flags: what runs after training (the calibration's pass
# over the validation split and its trace, the SavedModel export) is not compared.
CLEAN_ONLY_FLAGS = ("--calibration=none", "--noexport")


def _train_command(inputs, model_dir, *extra_flags):
  return [sys.executable, "-m", "pipeline.train", f"--config={inputs['config']}",
          f"--data={inputs['data']}", f"--model_dir={model_dir}", "--deterministic_ops",
          *extra_flags]


def latest_checkpoint_number(backup_dir: str) -> int:
  """N of the newest MODEL_DIR/backup/chief/ckpt-N (0 when none is complete yet)."""
  path = os.path.join(backup_dir, "chief", "checkpoint")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    found = re.search(r'model_checkpoint_path: "ckpt-(\d+)"', f.read())
  return int(found.group(1)) if found else 0


def final_variables(model_dir: str) -> dict:
  """name -> value of every weight and optimizer variable of the newest backup checkpoint.

  Metric accumulators (model/tasks/*/_ranking_metrics/...) are left out: they are
  reset at every epoch's start, so they hold the steps since the (re)start, not state.
  """
  path = tf.train.latest_checkpoint(os.path.join(model_dir, "backup", "chief"))
  return {name: tf.train.load_variable(path, name)
          for name, _ in tf.train.list_variables(path)
          if name.startswith("model/") and "_metrics/" not in name}


@pytest.fixture(scope="module")
def runs(small_world, tmp_path_factory):
  root = str(tmp_path_factory.mktemp("resume"))
  small = small_world_lib.write_small_config(os.path.join(root, "small.yaml"),
                                             CHECKPOINT_EVERY, STEPS_PER_EPOCH)
  config = os.path.join(root, "final_weights.yaml")
  with open(config, "w") as f:
    f.write(f"base: {small}\ntrain: {{restore_best_weights: false}}\n")
  inputs = {"data": small_world["data"], "config": config}
  env = small_world_lib.subprocess_env()
  killed_dir = os.path.join(root, "killed")
  clean_dir = os.path.join(root, "clean")
  clean = subprocess.Popen(_train_command(inputs, clean_dir, *CLEAN_ONLY_FLAGS), cwd=REPO,
                           env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  victim = subprocess.Popen(_train_command(inputs, killed_dir), cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline = time.time() + 600
  while latest_checkpoint_number(os.path.join(killed_dir, "backup")) < (
      KILL_AT_STEP // CHECKPOINT_EVERY):
    assert victim.poll() is None, "the run ended before it could be killed"
    assert time.time() < deadline, "no half-way checkpoint within 600 s"
    time.sleep(0.05)
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
          "resume_seconds": resume_seconds, "killed_dir": killed_dir, "clean_dir": clean_dir}


def test_resumed_run_starts_from_the_checkpoint(runs):
  resumed = runs["metrics"]["resumed"]
  assert runs["killed_at_step"] >= KILL_AT_STEP
  # It resumes from the newest checkpoint (saved at the kill or just after it), not 0.
  assert runs["killed_at_step"] <= resumed["initial_step"] < TOTAL_STEPS
  assert resumed["initial_step"] % CHECKPOINT_EVERY == 0


def test_both_runs_end_at_the_same_total_step(runs):
  for name, metrics in runs["metrics"].items():
    assert metrics["final_step"] == TOTAL_STEPS == metrics["epochs"] * metrics[
        "steps_per_epoch"], name
  assert runs["metrics"]["clean"]["initial_step"] == 0


def test_final_weights_equal_the_uninterrupted_runs(runs):
  resumed, clean = final_variables(runs["killed_dir"]), final_variables(runs["clean_dir"])
  assert sorted(resumed) == sorted(clean) and len(clean) > 10
  assert int(resumed["model/optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"]) == TOTAL_STEPS
  for name, value in clean.items():
    np.testing.assert_allclose(resumed[name], value, rtol=WEIGHT_TOLERANCE,
                               atol=WEIGHT_TOLERANCE, err_msg=name)


def test_eval_and_validation_metrics_equal_the_uninterrupted_runs(runs):
  resumed, clean = runs["metrics"]["resumed"], runs["metrics"]["clean"]
  assert 0.5 < clean["eval"]["ctr_auc"] <= 1.0, clean["eval"]
  for section in ("eval", "validation"):
    assert sorted(resumed[section]) == sorted(clean[section])
    for name, value in clean[section].items():
      assert resumed[section][name] == pytest.approx(value, rel=METRIC_TOLERANCE,
                                                     abs=METRIC_TOLERANCE), (section, name)
  # Every epoch validated once (the killed one too), to the same losses and best epoch.
  assert [entry["epoch"] for entry in resumed["validation_history"]] == [1, 2]
  for got, want in zip(resumed["validation_history"], clean["validation_history"]):
    assert got["val_loss"] == pytest.approx(want["val_loss"], rel=METRIC_TOLERANCE)
  assert resumed["best_epoch"] == clean["best_epoch"]
  # The resumed run ran to the end: its calibration fitted, one export (none killed).
  assert "calibration" in resumed and "calibration" not in clean
  exports = os.listdir(os.path.join(runs["killed_dir"], "export"))
  assert len(exports) == 1, exports
