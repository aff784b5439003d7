"""tests/host_speed.py: the host-speed line every run's summary ends with.

Oracles: arithmetic on the numbers in the line (the budget is reached where session time
per loop second times the loop time is 480 s), and the loop's CPU time against the time
of a loop with 4x the additions (the probe measures work, so 4x the work takes 2.5-6x the
time; a probe that measured nothing, or a constant, would not).
"""

import re

import pytest

from tests import host_speed


def _numbers(line):
  return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", line)]


@pytest.mark.parametrize("session_s, loop_s", [(255.0, 1.03), (693.0, 3.4), (100.0, 0.5)])
def test_the_line_states_where_the_budget_is_reached(session_s, loop_s):
  line = host_speed.summary_line(session_s, loop_s, budget_s=480.0)
  assert line.startswith("host speed: a 20,000,000-addition Python loop took")
  loop, session, per_loop, budget, limit, ratio = _numbers(line.split("loop took", 1)[1])
  assert (loop, session, budget) == (round(loop_s, 2), round(session_s), 480)
  assert per_loop == round(session_s / loop_s)
  # At the limit's loop time the session scales to the budget; the ratio is limit / loop.
  assert limit == pytest.approx(480.0 * loop_s / session_s, abs=0.006)
  assert ratio == pytest.approx(480.0 / session_s, abs=0.006)


def test_the_probe_measures_cpu_work():
  """The least of 3 runs each (a busy host's noise only adds time)."""
  assert host_speed.Probe(additions=200_000).seconds() > 0  # the thread's own answer
  small = min(host_speed.loop_seconds(additions=200_000) for _ in range(3))
  large = min(host_speed.loop_seconds(additions=800_000) for _ in range(3))
  assert small > 0 and 2.5 < large / small < 6.0, (small, large)


def test_the_budget_is_the_whole_suites_with_or_without_its_slow_tests():
  assert host_speed.budget_of(True, "") == 480.0
  assert host_speed.budget_of(True, "not slow") == 180.0
  assert host_speed.budget_of(True, "slow") is None
  assert host_speed.budget_of(False, "") is None  # some files or tests only
  line = host_speed.summary_line(30.0, 1.5)
  assert line.endswith("is 20 s per loop second") and "budget" not in line


class _Config:
  def __init__(self, whole_suite=True, markexpr=""):
    self.stash = pytest.Stash()
    self.args_source = (pytest.Config.ArgsSource.TESTPATHS if whole_suite
                        else pytest.Config.ArgsSource.ARGS)
    self._markexpr = markexpr

  def getoption(self, name):
    assert name == "markexpr"
    return self._markexpr


class _Reporter:
  def __init__(self):
    self.lines = []

  def write_line(self, line):
    self.lines.append(line)


@pytest.mark.parametrize("worker", [None, "gw1"])
def test_the_controller_alone_probes_and_ends_the_summary_with_the_line(worker, monkeypatch):
  """tests/conftest.py's hooks: the xdist controller (or a lone pytest) starts the probe
  at configure and writes the line once at the summary; a worker does neither."""
  from tests import conftest  # pylint: disable=g-import-not-at-top
  if worker:
    monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
  else:
    monkeypatch.delenv("PYTEST_XDIST_WORKER", raising=False)
  monkeypatch.setattr(host_speed, "LOOP_ADDITIONS", 200_000)
  config, reporter = _Config(), _Reporter()
  conftest.pytest_configure(config)
  conftest.pytest_terminal_summary(reporter, 0, config)
  if worker:
    assert reporter.lines == []
  else:
    [line] = reporter.lines
    assert line.startswith("host speed: a 200,000-addition Python loop took")
    assert "reach the 480 s budget" in line
    loop_s = _numbers(line.split("loop took", 1)[1])[0]
    assert 0 < loop_s < 5
