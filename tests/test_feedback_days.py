"""training/feedback_days.py: a day's delayed-feedback stream from the stored daily outputs.

Oracle: training/feedback_streams.py's per-exposure definition (tests/test_delayed_feedback.py
pins it on hand-made exposures), read for each day's period over every exposure of the
world. The daily outputs are written here from the exposures' event times as
transforms/daily.py defines them (tests/test_transforms_daily.py pins the job against a
hand-written stream): day k's train/ holds the impressions of (start, end] with their
labels' first-event times as of the snapshot `end`; updates/ the earlier, still-open ones
whose times changed in the period; closed/ those whose attribution window ended in it.
Clicks come at their exposure's second (a click seconds later could fall in the next day:
an edge this world leaves out).
"""

import collections

import numpy as np
import pytest

from training import feedback_days
from training import feedback_streams as streams

HOUR, DAY = 3600.0, 86400.0
W, C = 2 * DAY, 6 * HOUR
DAYS = 5


def make_world(seed=3, count=400):
  rng = np.random.default_rng(seed)
  times = np.sort(rng.uniform(0, DAYS * DAY, count)).round()
  clicked = rng.random(count) < 0.5
  converts = rng.random(count) < 0.5
  delays = rng.exponential(0.6 * DAY, count).round()  # some beyond W: never attributed
  return [streams.Exposure(float(t), float(t) if c else None, float(t + d) if c and v else None)
          for t, c, v, d in zip(times, clicked, converts, delays)]


def _as_of(exposure, snapshot):
  """(click, purchase) first-event times known at `snapshot`, -1 for none."""
  click = exposure.click_time if exposure.click_time is not None and (
      exposure.click_time <= snapshot) else -1
  attributed = streams.final_label(exposure, W) == 1
  purchase = exposure.conversion_time if attributed and click >= 0 and (
      exposure.conversion_time <= snapshot) else -1
  return click, purchase


def _rows(selected, snapshot):
  ids = [index for index, _ in selected]
  times = [_as_of(exposure, snapshot) for _, exposure in selected]
  return {"impression_id": np.array([f"imp{i}" for i in ids], dtype=object),
          "timestamp": np.array([exposure.time for _, exposure in selected], np.int64),
          "click_timestamp": np.array([t[0] for t in times], np.int64),
          "purchase_timestamp": np.array([t[1] for t in times], np.int64)}


def daily_outputs(world, day):
  """{"train", "updates", "closed"} of day `day` (module docstring)."""
  start, end = day * DAY, (day + 1) * DAY
  indexed = list(enumerate(world))
  new = [(i, e) for i, e in indexed if start < e.time <= end]
  was_open = [(i, e) for i, e in indexed if e.time <= start < e.time + W]
  updates = [(i, e) for i, e in was_open if _as_of(e, end) != _as_of(e, start)]
  closed = [(i, e) for i, e in indexed if e.time <= end and start < e.time + W <= end]
  return {"train": _rows(new, end), "updates": _rows(updates, end),
          "closed": _rows(closed, end)}


def stream_config(method):
  return streams.StreamConfig(method, W, C if method in streams.WINDOWED else 0.0)


def _multiset(samples):
  return collections.Counter((float(t), int(c), int(v), str(k)) for t, c, v, k in samples)


@pytest.mark.parametrize("method", [m for m in streams.METHODS if m != "oracle"])
def test_each_days_stream_equals_the_definition_over_every_exposure(method):
  world = make_world()
  outputs = [daily_outputs(world, day) for day in range(DAYS)]
  kinds = collections.Counter()
  for day in range(DAYS):
    start, end = day * DAY, (day + 1) * DAY
    found = feedback_days.day_stream(stream_config(method), start, end, outputs[day],
                                     outputs[day - 1]["train"] if day else None)
    expected = [(s.time, s.click, s.conversion, s.kind) for exposure in world
                for s in streams.samples(exposure, stream_config(method), end, since=start)]
    assert _multiset(zip(found.time, found.click, found.conversion, found.kind)) == (
        _multiset(expected)), (method, day)
    kinds.update(found.kind)
  # The world exercises every kind the method has.
  assert set(kinds) == {"fnw": {"exposure", "duplicate"}, "fnc": {"exposure", "duplicate"},
                        "vanilla": {"exposure"}, "waiting": {"exposure", "observed"},
                        "esdfm": {"exposure", "observed", "duplicate"},
                        "defer": set(feedback_days.KINDS)}[method]


@pytest.mark.parametrize("method", [m for m in streams.METHODS if m != "oracle"])
def test_a_stream_reads_only_the_outputs_it_names(method):
  """day_stream given only feedback_days.outputs_read(method) of each day (what
  training/feedback_inputs.py reads) gives the stream it gives with all three."""
  world = make_world()
  outputs = [daily_outputs(world, day) for day in range(DAYS)]
  for day in range(DAYS):
    args = (stream_config(method), day * DAY, (day + 1) * DAY)
    previous = outputs[day - 1]["train"] if day else None
    full = feedback_days.day_stream(*args, outputs[day], previous)
    read = feedback_days.day_stream(
        *args, {name: outputs[day][name] for name in feedback_days.outputs_read(method)},
        previous)
    for field in ("output", "row", "time", "click", "conversion", "kind"):
      np.testing.assert_array_equal(getattr(read, field), getattr(full, field))


def test_samples_point_at_their_stored_rows():
  world = make_world()
  day = 3
  today, previous = daily_outputs(world, day), daily_outputs(world, day - 1)["train"]
  found = feedback_days.day_stream(stream_config("defer"), day * DAY, (day + 1) * DAY, today,
                                   previous)
  tables = {**today, "previous": previous}
  assert {"train", "updates", "closed", "previous"} <= set(found.output)
  for output, row, time, kind in zip(found.output, found.row, found.time, found.kind):
    stored = tables[output]
    click, purchase = stored["click_timestamp"][row], stored["purchase_timestamp"][row]
    expected_time = {"exposure": click if click >= 0 else stored["timestamp"][row],
                     "observed": click + C, "duplicate": purchase, "final": click + W}[kind]
    assert time == expected_time, (output, kind)


def test_the_oracle_and_a_window_longer_than_the_day_are_refused():
  outputs = daily_outputs(make_world(), 1)
  with pytest.raises(ValueError, match="simulator's truth"):
    feedback_days.day_stream(stream_config("oracle"), DAY, 2 * DAY, outputs)
  with pytest.raises(ValueError, match="longer than the period"):
    feedback_days.day_stream(streams.StreamConfig("esdfm", W, 1.5 * DAY), DAY, 2 * DAY,
                             outputs)


def test_dfm_refits_every_click_inside_its_window_once_with_its_label_as_of_the_day():
  """DFM's day input (feedback_days.dfm_stream on dfm_earlier_rows: the earlier days'
  train/ brought up to the day by the updates/ of the days after them) equals the definition over every exposure: the day's exposures once (click label,
  purchase seen by the snapshot), every click of the ceil(W / day) days before once, and
  the elapsed time d (converted) or end - click."""
  world = make_world()
  outputs = [daily_outputs(world, day) for day in range(DAYS)]
  earlier_count = int(np.ceil(W / DAY))
  for day in range(earlier_count, DAYS):
    start, end = day * DAY, (day + 1) * DAY
    earlier = feedback_days.dfm_earlier_rows(
        [outputs[day - k]["train"] for k in range(1, earlier_count + 1)],
        [outputs[day - j]["updates"] for j in range(earlier_count)])
    found = feedback_days.dfm_stream(end, outputs[day]["train"], earlier)
    expected = []
    for exposure in world:
      if exposure.time > end:
        continue
      click, purchase = _as_of(exposure, end)
      elapsed = (purchase - click if purchase >= 0 else end - click) if click >= 0 else 0
      if start < exposure.time:
        expected.append((click if click >= 0 else exposure.time, int(click >= 0),
                         int(purchase >= 0), "exposure", elapsed))
      elif click >= 0 and start - earlier_count * DAY < exposure.time:
        expected.append((end, 1, int(purchase >= 0), "observed", elapsed))
    got = collections.Counter(zip(found.time.tolist(), found.click.tolist(),
                                  found.conversion.tolist(), found.kind.tolist(),
                                  found.elapsed.tolist()))
    assert got == collections.Counter((float(t), c, v, k, float(e))
                                      for t, c, v, k, e in expected), day
    assert {"exposure", "observed"} <= set(found.kind)
    assert 0 < found.conversion[found.kind == "observed"].sum() < (found.kind == "observed").sum()


def test_the_newest_update_of_an_impression_wins():
  rows = {"impression_id": np.array(["a", "b"], object), "timestamp": np.array([1, 2]),
          "click_timestamp": np.array([-1, 5]), "purchase_timestamp": np.array([-1, -1])}
  updates = {"impression_id": np.array(["a", "b", "a"], object),
             "timestamp": np.array([1, 2, 1]), "click_timestamp": np.array([3, 5, 3]),
             "purchase_timestamp": np.array([-1, 9, 7])}  # a: clicked, then purchased
  merged = feedback_days.with_updates(rows, updates)
  np.testing.assert_array_equal(merged["click_timestamp"], [3, 5])
  np.testing.assert_array_equal(merged["purchase_timestamp"], [7, 9])
