"""Tests of training.strategy and of loss scaling under MirroredStrategy (2 replicas).

The 2-replica checks run in a subprocess that splits the one CPU into 2 logical devices
(`tf.config.set_logical_device_configuration` must run before TF initialises its
devices, which other tests in this pytest process have already done); the same
subprocess computes tests/test_esmc_mirrored.py's report, once per session
(`mirrored_reports`; tests/conftest.py runs both files on one xdist worker). They compare one
training step on a 64-example batch under MirroredStrategy (2 x 32 per replica) with
the same step on one device, from the same weights, with plain SGD: SGD's update is
linear in the gradient, so a replica-count scaling error shows up as a 2x update (Adam
would hide it: its first step is ~lr * sign(gradient)).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import build_once
from training import strategy as strategy_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOLERANCE = 1e-5
REPLICAS = 2
BATCH = 64


def test_tf_config_round_trip(monkeypatch):
  workers = ["127.0.0.1:20001", "127.0.0.1:20002"]
  monkeypatch.setenv("TF_CONFIG", strategy_lib.tf_config(workers, 1))
  assert strategy_lib.task_identity() == ("worker", 1)
  assert not strategy_lib.is_chief()
  monkeypatch.setenv("TF_CONFIG", strategy_lib.tf_config(workers, 0))
  assert strategy_lib.is_chief()
  config = json.loads(os.environ["TF_CONFIG"])
  assert config["cluster"]["worker"] == workers
  with pytest.raises(ValueError, match="index 2"):
    strategy_lib.tf_config(workers, 2)


def test_chief_job_owns_the_export(monkeypatch):
  cluster = {"chief": ["127.0.0.1:1"], "worker": ["127.0.0.1:2"]}
  monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                              "task": {"type": "worker", "index": 0}}))
  assert not strategy_lib.is_chief()
  monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster,
                                              "task": {"type": "chief", "index": 0}}))
  assert strategy_lib.is_chief()
  monkeypatch.delenv("TF_CONFIG")
  assert strategy_lib.is_chief() and strategy_lib.task_identity() == ("chief", 0)


def test_make_strategy(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  default = strategy_lib.make_strategy("default")
  assert default.num_replicas_in_sync == 1
  assert not strategy_lib.needs_static_shapes(default)
  with pytest.raises(ValueError, match="TF_CONFIG"):
    strategy_lib.make_strategy("multi_worker")
  with pytest.raises(ValueError, match="unknown strategy"):
    strategy_lib.make_strategy("horovod")


def _one_step(model, iterator):
  """Runs model.train_function once; returns (logs as floats, weights as arrays)."""
  logs = model.make_train_function()(iterator)
  return ({k: float(v) for k, v in logs.items()},
          [v.numpy() for v in model.trainable_variables])


def single_and_mirrored(build, features):
  """(single-device model, 2-replica MirroredStrategy model, the strategy, the initial
  weights): both built by `build()`, compiled with SGD(0.5), and given the same random
  weights (tests.test_esmm.randomize, seed 1). Call inside a process whose CPU is split
  into REPLICAS logical devices."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tests import test_esmm  # pylint: disable=g-import-not-at-top
  single = build()
  single.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=0.5))
  single(features)
  test_esmm.randomize(single, seed=1)
  initial = [v.numpy() for v in single.trainable_variables]
  strategy = mirrored_strategy()
  assert strategy.num_replicas_in_sync == REPLICAS
  with strategy.scope():
    mirrored = build()
    mirrored.compile(optimizer=tf_keras.optimizers.SGD(learning_rate=0.5))
  mirrored.distribute_reduction_method = "first"  # as training.trainer sets it
  mirrored(features)
  for variable, value in zip(mirrored.trainable_variables, initial):
    variable.assign(value)
  return single, mirrored, strategy, initial


_MIRRORED = []  # the process's one MirroredStrategy over the split CPU


def split_cpu() -> None:
  """Splits the CPU into REPLICAS logical devices (before TF initialises its devices)."""
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration()] * REPLICAS)


def mirrored_strategy() -> tf.distribute.MirroredStrategy:
  """One MirroredStrategy over /cpu:0 and /cpu:1 per process: a second one would number
  its collective ops from the same keys as the first, and they would collide."""
  if not _MIRRORED:
    _MIRRORED.append(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
  return _MIRRORED[0]


def mirrored_step_report(tmp_dir: str) -> dict:
  """One SGD step on one device vs MirroredStrategy on 2 CPUs (in a split_cpu process).

  Returns JSON-able numbers: the single-device loss, the mean and list of per-replica
  losses, the largest weight difference after the step, the size of the update, and
  the `loss` each run's train_function logged.
  """
  import tf_keras  # pylint: disable=g-import-not-at-top
  from tests import test_esmm  # pylint: disable=g-import-not-at-top

  tf_keras.utils.set_random_seed(0)
  features, labels = test_esmm.make_batch(BATCH, seed=3)
  single, mirrored, strategy, initial = single_and_mirrored(
      lambda: test_esmm.build("esmm", _Path(tmp_dir)), features)

  batch = (features, labels)
  single_loss = float(single.compute_loss(batch, training=True))
  # Each replica gets BATCH / REPLICAS consecutive examples, as a global batch split.
  halves = tf.data.Dataset.from_tensor_slices(batch).batch(BATCH // REPLICAS)
  distributed = strategy.distribute_datasets_from_function(lambda _: halves)
  per_replica = strategy.run(lambda b: mirrored.compute_loss(b, training=True),
                             args=(next(iter(distributed)),))
  replica_losses = [float(x) for x in strategy.experimental_local_results(per_replica)]

  single_logs, single_weights = _one_step(single, iter(tf.data.Dataset.from_tensors(batch)))
  mirrored_logs, mirrored_weights = _one_step(mirrored, iter(distributed))
  return {
      "single_loss": single_loss,
      "replica_losses": replica_losses,
      "mean_replica_loss": float(np.mean(replica_losses)),
      "max_weight_diff": max(float(np.max(np.abs(a - b)))
                             for a, b in zip(single_weights, mirrored_weights)),
      "max_update": max(float(np.max(np.abs(a - b)))
                        for a, b in zip(single_weights, initial)),
      "single_logged_loss": single_logs["loss"],
      "mirrored_logged_loss": mirrored_logs["loss"],
      "mirrored_logged_ctr_auc": mirrored_logs["ctr_auc"],
      "single_logged_ctr_auc": single_logs["ctr_auc"],
  }


class _Path(str):
  """A str with `/` (what tests.test_esmm.build expects of pytest's tmp_path)."""

  def __truediv__(self, other):
    return _Path(os.path.join(self, other))


def report_from_subprocess(module: str, function: str, tmp_dir: str, timeout: int = 600):
  """Runs `module.function(tmp_dir)` in a fresh Python (so it can split the CPU into
  logical devices before TF initialises) and returns the JSON dict it returns."""
  code = (f"import json; from tests import {module} as m; "
          f"print('REPORT', json.dumps(m.{function}({tmp_dir!r})))")
  env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
  done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout, check=False)
  assert done.returncode == 0, done.stderr[-3000:]
  line = [l for l in done.stdout.splitlines() if l.startswith("REPORT ")][-1]
  return json.loads(line[len("REPORT "):])


def mirrored_reports(tmp_dir: str) -> dict:
  """Subprocess body: split_cpu, then {"step": mirrored_step_report, "tie":
  tests/test_esmc_mirrored.py's mirrored_tie_report} (one TF start-up for both)."""
  from tests import test_esmc_mirrored  # pylint: disable=g-import-not-at-top
  split_cpu()
  reports = {}
  for name, report in (("step", mirrored_step_report),
                       ("tie", test_esmc_mirrored.mirrored_tie_report)):
    os.makedirs(os.path.join(tmp_dir, name))
    reports[name] = report(os.path.join(tmp_dir, name))
  return reports


def shared_mirrored_reports(tmp_path_factory) -> dict:
  """mirrored_reports' result, computed in one subprocess once per session."""
  return build_once(tmp_path_factory, "mirrored_reports", lambda directory: (
      report_from_subprocess("test_strategy", "mirrored_reports", directory)))


@pytest.fixture(scope="module")
def mirrored_report(tmp_path_factory):
  return shared_mirrored_reports(tmp_path_factory)["step"]


@pytest.mark.slow
def test_mirrored_loss_is_the_global_batch_mean(mirrored_report):
  report = mirrored_report
  assert len(report["replica_losses"]) == REPLICAS
  # The halves differ (else the check below would be vacuous) ...
  assert abs(report["replica_losses"][0] - report["replica_losses"][1]) > 1e-3
  # ... and their mean is the loss of the whole batch on one device.
  assert report["mean_replica_loss"] == pytest.approx(report["single_loss"], abs=TOLERANCE)


@pytest.mark.slow
def test_mirrored_sgd_step_equals_single_device_step(mirrored_report):
  assert report_update_is_real(mirrored_report)
  assert mirrored_report["max_weight_diff"] < TOLERANCE, mirrored_report


def report_update_is_real(report) -> bool:
  """The step moved some weight by far more than the tolerance."""
  return report["max_update"] > 1000 * TOLERANCE


@pytest.mark.slow
def test_mirrored_logged_metrics_are_not_summed_over_replicas(mirrored_report):
  # MultiTaskModel.train_step returns metric results, which are already global, so
  # they must not be reduced with Keras' default "sum" over replicas.
  assert 0.0 <= mirrored_report["mirrored_logged_ctr_auc"] <= 1.0
  assert mirrored_report["mirrored_logged_ctr_auc"] == pytest.approx(
      mirrored_report["single_logged_ctr_auc"], abs=1e-4)


@pytest.mark.slow
def test_mirrored_logged_loss_equals_single_device_loss(mirrored_report):
  assert mirrored_report["mirrored_logged_loss"] == pytest.approx(
      mirrored_report["single_logged_loss"], abs=TOLERANCE)
