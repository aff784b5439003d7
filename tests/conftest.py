"""Test set-up: Keras 2 (tf_keras) for TFRS, quiet TF logs, and the session-wide worlds.

Where it sits: every test module sees these fixtures. An expensive input (a simulated
world run through the real Beam job) is built once per `pytest` session and shared; with
pytest-xdist (`make test` runs `-n 2`) it is built once for all workers: the first worker
to ask builds it under a file lock in the run's shared temp directory, the others wait
and reuse it. Shared outputs are read-only for their users; a test that changes one
copies it first (tests/test_training_inputs.py's corrupt shards do).

Fixtures:
  small_world: tests/small_world.py's 4k-impression world after pipeline.preprocess:
    {"raw": simulator output, "data": Beam output, "config": the small experiment YAML}.
"""

import contextlib
import fcntl
import json
import os
import shutil

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tensorflow.python.autograph.core import config as autograph_config  # pylint: disable=wrong-import-position,g-direct-tensorflow-import
from tests import small_world as small_world_lib  # pylint: disable=wrong-import-position

# AutoGraph leaves the packages of its CONVERSION_RULES as written (tensorflow, keras,
# numpy, ...) but not tf_keras, the same Keras 2 code under another name, nor TFRS: it
# would transpile every Keras and TFRS function a tf.function calls, which costs ~55 of a
# 5-step train_and_export's ~75 CPU seconds (tests/test_training_inputs.py's config).
# Code that needs AutoGraph (Python control flow on tensors) fails loudly without it.
_NOT_CONVERTED = ("tf_keras", "tensorflow_recommenders")
# This sets it for the pytest process only: the CLIs that tests run as subprocesses
# transpile as before until the library sets the same rule.
autograph_config.CONVERSION_RULES = tuple(
    autograph_config.DoNotConvert(name) for name in _NOT_CONVERTED) + tuple(
        autograph_config.CONVERSION_RULES)

DONE = "DONE"  # written last into a shared build's directory
# Module-scoped fixtures too cheap to keep their tests on one worker: a JSON file read,
# a view of the session's small_world.
CHEAP_MODULE_FIXTURES = {"golden", "inputs"}
# Modules that share a build through a directory of their own under the worker's temp
# directory (tests/test_serving.py's shared_workdir: the served ESMM), not through a
# fixture of this file: one xdist group, so that build is made by one worker only.
SHARED_DIRECTORY_GROUPS = {"tests.test_serving": "serving_shared",
                           "tests.test_predict_cli": "serving_shared",
                           "tests.test_benchmarks": "serving_shared"}


def shared_root(tmp_path_factory) -> str:
  """The temp directory every worker of this session sees (the master's under plain
  pytest; the parent of the per-worker temp directories under xdist)."""
  base = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    base = base.parent
  return str(base)


@contextlib.contextmanager
def _locked(path: str):
  with open(path, "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)


def build_once(tmp_path_factory, name: str, build):
  """`build(directory)`'s result, built once per session under SHARED_ROOT/name.

  The first caller (of any xdist worker) runs `build` and stores its result (a JSON-able
  dict of paths) beside a DONE marker; later callers wait on the lock and read it. A
  build that failed leaves no marker, so the next caller builds again from scratch.
  """
  root = shared_root(tmp_path_factory)
  directory = os.path.join(root, name)
  done = os.path.join(directory, DONE)
  with _locked(os.path.join(root, f"{name}.lock")):
    if not os.path.exists(done):
      shutil.rmtree(directory, ignore_errors=True)
      os.makedirs(directory)
      result = build(directory)
      with open(done, "w") as f:
        json.dump(result, f)
    with open(done) as f:
      return json.load(f)


@pytest.fixture(scope="session")
def small_world(tmp_path_factory) -> dict:
  """tests/small_world.py's world: simulate 4k impressions (seed 5) -> Beam; read-only."""
  return build_once(tmp_path_factory, "small_world", small_world_lib.build)


def _module_fixtures(item) -> set:
  """Names of the module-, class- or package-scoped fixtures `item` uses (its closure),
  less CHEAP_MODULE_FIXTURES."""
  return {definition.argname
          for definitions in item._fixtureinfo.name2fixturedefs.values()  # pylint: disable=protected-access
          for definition in definitions
          if definition.scope in ("module", "class", "package")
          and definition.argname not in CHEAP_MODULE_FIXTURES}


def xdist_groups(items) -> dict:
  """nodeid -> xdist group name, for the tests that must share a worker.

  Within a module, tests that use a common module-scoped fixture (directly or through
  another fixture) form one group named after the module and that fixture, so the
  fixture is built on one worker only; tests of independent fixtures (e.g. the two
  clusters of tests/test_multi_worker.py) may run on both workers at once.
  SHARED_DIRECTORY_GROUPS puts whole modules into one group.
  """
  parent = {}

  def find(key):
    while parent.setdefault(key, key) != key:
      key = parent[key]
    return key

  uses = {}
  for item in items:
    module = item.module.__name__
    if module in SHARED_DIRECTORY_GROUPS:
      uses[item.nodeid] = [SHARED_DIRECTORY_GROUPS[module]]
      continue
    keys = sorted(f"{module}:{name}" for name in _module_fixtures(item))
    for key in keys[1:]:
      parent[find(key)] = find(keys[0])
    uses[item.nodeid] = keys
  return {nodeid: find(keys[0]) for nodeid, keys in uses.items() if keys}


def pytest_collection_modifyitems(config, items):
  """Schedules for pytest-xdist (`make test`: `-n 2 --dist loadgroup`), heaviest first.

  Each test of an xdist group (see xdist_groups) runs on its group's worker; the others
  are scheduled one by one. xdist hands out the largest groups first; among the rest the
  end-to-end (`slow`) tests come first, so no long test is left alone on one worker at the
  end of the run. The order changes nothing else: each test builds or reads its own
  inputs.
  """
  del config  # unused
  groups = xdist_groups(items)
  for item in items:
    if item.nodeid in groups:
      item.add_marker(pytest.mark.xdist_group(groups[item.nodeid]))
  items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
