"""Test set-up: Keras 2 (tf_keras) for TFRS, quiet TF logs, and the session-wide worlds.

Where it sits: every test module sees these fixtures. An expensive input (a simulated
world run through the real Beam job) is built once per `pytest` session and shared; with
pytest-xdist (`make test` runs `-n 2`) it is built once for all workers: the first worker
to ask builds it under a file lock in the run's shared temp directory, the others wait
and reuse it. Shared outputs are read-only for their users; a test that changes one
copies it first (tests/test_training_inputs.py's corrupt shards do).

Every run's summary ends with the host's speed (tests/host_speed.py): a fixed loop's time
and the session's time per second of it, against the budget (480 s for the whole suite,
180 s without its slow tests).

Fixtures:
  small_world: tests/small_world.py's 4k-impression world after pipeline.preprocess (one
    in-memory Beam worker):
    {"raw": simulator output, "data": Beam output, "config": the small experiment YAML}.
"""

import contextlib
import fcntl
import json
import os
import re
import shutil
import time

import pytest

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import models  # pylint: disable=wrong-import-position,unused-import  (models/autograph_rules.py before any test traces)
from tests import host_speed  # pylint: disable=wrong-import-position
from tests import small_world as small_world_lib  # pylint: disable=wrong-import-position
from transforms import beam_compat  # pylint: disable=wrong-import-position

# The tests' own pipelines get the job's cached DoFn introspection and options views too
# (docs/SCALING.md 2.6, 2.7; pipeline.preprocess applies them for every job;
# tests/test_beam_data_loss.py compares them with Beam's own).
beam_compat.cache_dofn_specs()
beam_compat.cache_option_views()

DONE = "DONE"  # written last into a shared build's directory
# Modules that share a build made outside this file's fixtures, as one xdist work unit:
#   serving_shared: a directory under the worker's temp directory (tests/test_serving.py's
#     shared_workdir: the served ESMM), so that build is made by one worker only;
#   mirrored: tests/test_strategy.py's build_once of both 2-replica reports (one
#     subprocess), so that no worker sits waiting on the other's build lock.
SHARED_BUILD_GROUPS = {"tests.test_serving": "serving_shared",
                       "tests.test_predict_cli": "serving_shared",
                       "tests.test_benchmarks": "serving_shared",
                       "tests.test_strategy": "mirrored",
                       "tests.test_esmc_mirrored": "mirrored"}


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


def _files_with_module_fixtures(tests_dir: str) -> set:
  """Paths (relative to the rootdir, as in node ids) of the test files that define a
  module-, class- or package-scoped fixture."""
  found = set()
  for name in sorted(os.listdir(tests_dir)):
    if name.startswith("test_") and name.endswith(".py"):
      with open(os.path.join(tests_dir, name)) as f:
        if re.search(r'fixture\(scope="(module|class|package)"', f.read()):
          found.add(f"{os.path.basename(tests_dir)}/{name}")
  return found


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
  """`--dist loadscope` (make test): a test file with a module-scoped fixture is one work
  unit, so its fixture is built on one worker only; every other test is its own unit.

  (pytest-xdist's own `--dist loadgroup` marks do nothing under pytest 9: it renames
  item._nodeid, which pytest 9 no longer reads.) SHARED_BUILD_GROUPS puts several
  files into one unit. xdist hands out the units with the most tests first; among single
  tests those of files with `slow` tests come first (pytest_collection_modifyitems).
  """
  if config.getvalue("dist") != "loadscope":
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=g-import-not-at-top
  grouped = _files_with_module_fixtures(os.path.join(str(config.rootpath), "tests"))

  class SharedFixtureScheduling(LoadScopeScheduling):

    def _split_scope(self, nodeid: str) -> str:
      path = nodeid.split("::", 1)[0]
      module = path[:-len(".py")].replace("/", ".")
      if module in SHARED_BUILD_GROUPS:
        return SHARED_BUILD_GROUPS[module]
      return path if path in grouped else nodeid

  return SharedFixtureScheduling(config, log)


def pytest_collection_modifyitems(config, items):
  """The test files holding end-to-end (`slow`) tests first, so that no long test is left
  alone on one xdist worker at the end of the run. A file's own order is kept (pytest
  groups the tests of a parametrised module-scoped fixture by parameter: moving the slow
  ones of them first would build each parameter's fixture twice); the order changes
  nothing else: each test builds or reads its own inputs."""
  del config  # unused
  slow_files = {item.nodeid.split("::", 1)[0] for item in items
                if item.get_closest_marker("slow") is not None}
  items.sort(key=lambda item: item.nodeid.split("::", 1)[0] not in slow_files)  # stable


_HOST_SPEED = pytest.StashKey[host_speed.Probe]()


def pytest_configure(config):
  """The host-speed probe (tests/host_speed.py) starts with the session, in the xdist
  controller or the one pytest process (not in each worker)."""
  if not os.environ.get("PYTEST_XDIST_WORKER"):
    config.stash[_HOST_SPEED] = host_speed.Probe(host_speed.LOOP_ADDITIONS)


def pytest_terminal_summary(terminalreporter, exitstatus, config):
  """Ends every run's summary with the host's speed and the session's time per unit of it
  (tests/host_speed.py), so a slow run says whether the suite grew or the host slowed."""
  del exitstatus  # unused
  probe = config.stash.get(_HOST_SPEED, None)
  loop_s = probe.seconds() if probe is not None else None
  if loop_s:
    whole_suite = config.args_source == pytest.Config.ArgsSource.TESTPATHS  # no paths given
    budget = host_speed.budget_of(whole_suite, config.getoption("markexpr") or "")
    terminalreporter.write_line(
        host_speed.summary_line(time.time() - probe.started, loop_s, budget))
