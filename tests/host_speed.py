"""The host's speed beside the suite's time: how far this session is from the budget.

The suite's time follows the host: the same tests took 255-693 s of pytest time on this
project's 2-core machines, and a fixed Python loop (LOOP_ADDITIONS additions, timed in
CPU seconds of its own thread) took 1.03-3.5 s on them, in the same ratio (557 s / 304 s
= 1.83 against 1.93 s / 1.06 s = 1.82). So a session's time alone does not say whether
the suite grew or the host slowed; the time per second of the loop does.

tests/conftest.py starts `Probe` when pytest starts (in the xdist controller, or the one
pytest process, in a thread of its own) and prints `summary_line` at the end of every
run (make test, CI's .ci/run): the loop's time, the session's time per second of it,
and, for the whole suite with or without its slow tests, the loop time at which the
session would have reached its budget.
"""

import threading
import time
from typing import Optional

LOOP_ADDITIONS = 20_000_000  # the loop every session's notes measured since issue 30
BUDGET_S = 480.0  # DEVELOPERS.md: 8 minutes of pytest time on 2 cores (make test)
FAST_BUDGET_S = 180.0  # and 3 minutes for make test-fast (README)


# The loop as the notes ran it (`python3 -c` with it at module level): its names are
# globals, each access a dict lookup, about twice the time of the same loop's locals.
_LOOP = "s = 0\nfor i in range(additions):\n  s += i\n"


def loop_seconds(additions: int = LOOP_ADDITIONS) -> float:
  """CPU seconds of this thread to add the integers below `additions` in a Python loop
  at module level (`_LOOP`)."""
  code = compile(_LOOP, "<host-speed loop>", "exec")
  start = time.thread_time()
  exec(code, {"additions": additions})  # pylint: disable=exec-used
  return time.thread_time() - start


class Probe:
  """`loop_seconds()` measured in a daemon thread, started at construction."""

  def __init__(self, additions: int = LOOP_ADDITIONS):
    self.started = time.time()  # also the session's start, for `summary_line`
    self._seconds: Optional[float] = None
    self._thread = threading.Thread(target=self._run, args=(additions,), daemon=True,
                                    name="host-speed-probe")
    self._thread.start()

  def _run(self, additions: int) -> None:
    self._seconds = loop_seconds(additions)

  def seconds(self, timeout: float = 60.0) -> Optional[float]:
    """The loop's CPU seconds (waiting up to `timeout` for it), or None."""
    self._thread.join(timeout)
    return self._seconds


def budget_of(whole_suite: bool, mark_expression: str) -> Optional[float]:
  """The budget of a session: BUDGET_S for the whole suite (`make test`), FAST_BUDGET_S
  for it without the slow tests (`make test-fast`, -m "not slow"), else None."""
  if not whole_suite:
    return None
  return {"": BUDGET_S, "not slow": FAST_BUDGET_S}.get(mark_expression.strip())


def summary_line(session_s: float, loop_s: float, budget_s: Optional[float] = None) -> str:
  """One line: the loop's time, the session's seconds per loop second and, given a
  budget, the loop time (host speed) at which this session's tests would take it.

  Example: 255 s with a 1.03 s loop -> 248 s per loop second; the 480 s budget is
  reached at a 480 / 248 = 1.94 s loop, 1.88x slower than this host.
  """
  per_loop_s = session_s / loop_s
  line = (f"host speed: a {LOOP_ADDITIONS:,}-addition Python loop took {loop_s:.2f} CPU s; "
          f"this session, {session_s:.0f} s, is {per_loop_s:.0f} s per loop second")
  if budget_s is None:
    return line
  limit_s = budget_s / per_loop_s
  return (f"{line}, so its tests reach the {budget_s:.0f} s budget on a host whose loop "
          f"takes {limit_s:.2f} s ({limit_s / loop_s:.2f}x this one's time)")
