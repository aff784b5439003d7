"""The small simulated world the training tests share: 4k impressions -> Beam -> TFRecords.

Where it sits: tests/conftest.py builds it once per test session (the `small_world`
fixture) by running `pipeline.simulate`'s CLI, then `pipeline.preprocess.run` in the
building test's process, and tests/test_multi_worker.py, tests/test_resume.py and
tests/test_training_inputs.py train on it with the small experiment YAML written by `write_small_config` (esmm.yaml with
4-d embeddings and one 16-unit tower layer). Its preprocess runs on one in-memory Beam
worker (`--local_workers=1`, DirectRunner's default made explicit; 2 processes give the
same output: tests/test_beam_golden.py's Parquet world). Its data directory is read-only
for them: a test that corrupts a shard copies it first.
"""

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

IMPRESSIONS = 4000
SEED = 5
EPOCHS = 2
STEPS_PER_EPOCH = 100


def subprocess_env(**extra) -> dict:
  """This process's environment for a child CLI: Keras 2, quiet TF, no TF_CONFIG."""
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2",
             PYTHONHASHSEED="0")
  env.pop("TF_CONFIG", None)
  env.update(extra)
  return env


def write_small_config(path: str, checkpoint_every_steps: int = STEPS_PER_EPOCH,
                       steps_per_epoch: int = STEPS_PER_EPOCH, epochs: int = EPOCHS) -> str:
  """Writes the small experiment YAML (esmm.yaml with a tiny model) to `path`."""
  with open(path, "w") as f:
    f.write(f"base: {os.path.join(REPO, 'configs', 'esmm.yaml')}\n"
            "model: {embedding_dim: 4, tower_units: [16]}\n"
            f"train: {{batch_size: 64, epochs: {epochs}, steps_per_epoch: {steps_per_epoch},\n"
            f"        shuffle_buffer: 2000, checkpoint_every_steps: {checkpoint_every_steps},\n"
            "        learning_rate: 0.005}\n")
  return path


def build(root: str) -> dict:
  """Simulated raw logs (IMPRESSIONS, SEED) -> Beam output under `root`, plus the small
  experiment YAML; returns {"raw", "data", "config"} (paths)."""
  raw, data_dir = os.path.join(root, "raw"), os.path.join(root, "data")
  config = write_small_config(os.path.join(root, "small.yaml"))
  subprocess.run([sys.executable, "-m", "pipeline.simulate", f"--output={raw}",
                  f"--impressions={IMPRESSIONS}", f"--seed={SEED}"], check=True, cwd=REPO,
                 env=subprocess_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  # What `python -m pipeline.preprocess` runs, in the building test process (TF and Beam
  # are loaded there: a child would add ~5 CPU s of imports).
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top
  preprocess.run([f"--impressions={raw}/impressions/*.jsonl.gz",
                  f"--events={raw}/events/*.jsonl.gz", f"--output={data_dir}",
                  f"--config={config}", "--local_workers=1"])
  return {"raw": raw, "data": data_dir, "config": config}
