"""The validation-day choices: benchmarks.choices.choose and
benchmarks.calibration.choose_method pick by the validation day and never read the eval
day (tables where the eval day would pick another candidate, and eval entries that raise
when read)."""

import math

import numpy as np
import pytest

from benchmarks import calibration as calibration_benchmark
from benchmarks import choices


class _Unreadable(dict):
  """A dict whose listed keys raise when read: proof that a chooser never looks."""

  def __init__(self, values, forbidden):
    super().__init__(values)
    self._forbidden = set(forbidden)

  def __getitem__(self, key):
    if key in self._forbidden:
      raise AssertionError(f"the eval-day entry {key!r} was read")
    return super().__getitem__(key)

  def get(self, key, default=None):
    if key in self._forbidden:
      raise AssertionError(f"the eval-day entry {key!r} was read")
    return super().get(key, default)


def _stat(mean):
  return {"mean": mean, "std": 0.0, "n": 3}


def _schedule_table(validation, evaluation):
  """candidate -> {validation: {CRITERION: stat}, eval: {CRITERION: stat}}."""
  return {name: {"validation": {choices.CRITERION: _stat(validation[name])},
                 "eval": {choices.CRITERION: _stat(evaluation[name])}}
          for name in validation}


def test_choose_takes_the_best_validation_day_where_the_eval_day_prefers_another():
  table = _schedule_table(validation={"a": 0.770, "b": 0.778, "c": 0.775},
                          evaluation={"a": 0.790, "b": 0.771, "c": 0.772})
  assert choices.choose(table, choices._criterion) == "b"
  # the same chooser on the eval day (what the review found) would have taken "a"
  assert choices.choose(table, choices._criterion, day="eval") == "a"


def test_choose_never_reads_the_eval_day():
  table = {name: _Unreadable({"validation": {choices.CRITERION: _stat(value)},
                              "eval": {choices.CRITERION: _stat(1.0)}}, ["eval"])
           for name, value in {"x": 0.70, "y": 0.72}.items()}
  assert choices.choose(table, choices._criterion) == "y"


def test_choose_breaks_a_tie_by_table_order_and_refuses_a_nan_criterion():
  tied = _schedule_table(validation={"first": 0.75, "second": 0.75},
                         evaluation={"first": 0.70, "second": 0.80})
  assert choices.choose(tied, choices._criterion) == "first"
  broken = _schedule_table(validation={"a": 0.75, "b": math.nan},
                           evaluation={"a": 0.75, "b": 0.75})
  with pytest.raises(ValueError, match="'b'.*NaN"):
    choices.choose(broken, choices._criterion)
  with pytest.raises(ValueError, match="no candidates"):
    choices.choose({}, choices._criterion)


def test_aggregate_gives_each_days_mean_and_sample_std_over_seeds():
  runs = [{day: {metric: 0.7 + 0.01 * seed + (0.05 if day == "eval" else 0.0)
                 for metric in choices.METRICS}
           for day in choices.DAYS} for seed in range(3)]
  summary = choices.aggregate({"c": runs})
  values = np.array([0.70, 0.71, 0.72])
  for day, shift in (("validation", 0.0), ("eval", 0.05)):
    stat = summary["c"][day][choices.CRITERION]
    assert stat["n"] == 3
    assert stat["mean"] == pytest.approx(values.mean() + shift)
    assert stat["std"] == pytest.approx(values.std(ddof=1))


def test_candidate_overrides_train_uncalibrated_and_leave_the_candidates_alone():
  overrides = choices.candidate_overrides(choices.SCHEDULE_CANDIDATES)
  assert set(overrides) == set(choices.SCHEDULE_CANDIDATES)
  for name, override in overrides.items():
    assert override["train"]["calibration"] == "none"
    assert {k: v for k, v in override["train"].items() if k != "calibration"} == \
        choices.SCHEDULE_CANDIDATES[name]["train"]
  assert all("calibration" not in c["train"] for c in choices.SCHEDULE_CANDIDATES.values())
  assert choices.CONFIGURED_SCHEDULE in choices.SCHEDULE_CANDIDATES


def _calibration_summary(validation, evaluation):
  """model -> method -> key -> stat, every method of METHODS; validation / evaluation:
  model -> method -> one calibration value for every validation / eval key."""
  summary = {}
  for model in validation:
    summary[model] = {}
    for method in calibration_benchmark.METHODS:
      stats = {key: _stat(validation[model].get(method, 0.5))
               for key in calibration_benchmark.VALIDATION_CALIBRATIONS}
      stats.update({key: _stat(evaluation[model].get(method, 0.5))
                    for key in calibration_benchmark.CALIBRATIONS})
      summary[model][method] = stats
  return summary


def test_choose_method_counts_the_validation_day_where_the_eval_day_prefers_another():
  validation = {"m1": {"bias": 1.01, "ips_ctr": 0.90}, "m2": {"bias": 0.97, "ips_ctr": 1.02}}
  evaluation = {"m1": {"bias": 0.80, "ips_ctr": 1.00}, "m2": {"bias": 0.80, "ips_ctr": 1.00}}
  summary = _calibration_summary(validation, evaluation)
  choice = calibration_benchmark.choose_method(summary)
  assert choice["method"] == "bias"
  assert choice["within"]["bias"] == 2 and choice["within"]["ips_ctr"] == 1
  assert choice["worst"]["bias"] == pytest.approx((0.01 + 0.03) / 2)
  # the eval day alone would have picked ips_ctr
  on_eval = calibration_benchmark.within_counts(summary, calibration_benchmark.CALIBRATIONS)
  assert max(on_eval, key=on_eval.get) == "ips_ctr"


def test_choose_method_never_reads_the_eval_day_and_breaks_ties_by_the_worst_deviation():
  validation = {"m1": {"platt": 1.04, "ips_ctr": 0.99}, "m2": {"platt": 0.97, "ips_ctr": 1.02}}
  evaluation = {"m1": {"platt": 1.0}, "m2": {"platt": 1.0}}
  summary = _calibration_summary(validation, evaluation)
  guarded = {model: {method: _Unreadable(stats, calibration_benchmark.CALIBRATIONS)
                     for method, stats in methods.items()}
             for model, methods in summary.items()}
  choice = calibration_benchmark.choose_method(guarded)
  # both within on both models; ips_ctr's largest deviations (0.01, 0.02) are smaller
  assert choice["within"]["platt"] == choice["within"]["ips_ctr"] == 2
  assert choice["method"] == "ips_ctr"


def test_choose_method_uses_the_validation_keys_every_run_holds():
  validation = {"m1": {"ips_ctr": 1.0}}
  summary = _calibration_summary(validation, {"m1": {}})
  for method in calibration_benchmark.METHODS:  # runs scored before ctr / ctcvr were kept
    summary["m1"][method]["ctr_validation"] = {"mean": math.nan, "std": math.nan, "n": 0}
  choice = calibration_benchmark.choose_method(summary)
  assert "ctr_validation" not in choice["keys"]
  assert "cvr_all_validation" in choice["keys"]
  for method in calibration_benchmark.METHODS:
    for key in calibration_benchmark.VALIDATION_CALIBRATIONS:
      summary["m1"][method][key] = {"mean": math.nan, "std": math.nan, "n": 0}
  with pytest.raises(ValueError, match="no validation-day calibration"):
    calibration_benchmark.choose_method(summary)


def test_validation_day_calibrations_are_sums_over_the_truth():
  rng = np.random.default_rng(0)
  n = 1000
  truth = {"p_click": rng.uniform(0.01, 0.2, n), "p_purchase_given_click": rng.uniform(0.0, 0.3, n)}
  truth["p_ctcvr"] = truth["p_click"] * truth["p_purchase_given_click"]
  outputs = {"ctr": truth["p_click"] * 1.1, "cvr": truth["p_purchase_given_click"] * 0.9}
  outputs["ctcvr"] = outputs["ctr"] * outputs["cvr"]
  clicked = rng.random(n) < 0.3
  result = calibration_benchmark.calibrations(outputs, truth, clicked)
  assert set(result) == set(calibration_benchmark.CALIBRATIONS)
  assert result["ctr"] == pytest.approx(1.1)
  assert result["cvr_clicked"] == pytest.approx(0.9)
  assert result["cvr_all"] == pytest.approx(0.9)
  assert result["ctcvr"] == pytest.approx(0.99)


def test_schedule_section_marks_the_chosen_and_the_configured_candidate():
  names = list(choices.SCHEDULE_CANDIDATES)[:2] + [choices.CONFIGURED_SCHEDULE]
  summary = {name: {day: {metric: _stat(0.77 + 0.001 * i + (0.01 if day == "eval" else 0))
                          for metric in choices.METRICS}
                    for day in choices.DAYS}
             for i, name in enumerate(names)}
  chosen = choices.choose(summary, choices._criterion)
  assert chosen == choices.CONFIGURED_SCHEDULE
  text = "\n".join(choices.render_schedule(summary, chosen,
                                           {"validation": 0.78, "eval": 0.79}))
  assert f"| {chosen} (chosen) (configured) |" in text
  assert "the schedule configs/esmm_oracle_factors.yaml trains" in text
  assert f"leads the next, {names[1]}, by 0.0010" in text


def test_shortlist_keeps_the_best_on_the_validation_day_and_never_reads_the_eval_day():
  validation = {"a": 0.770, "b": 0.778, "c": 0.775, "d": 0.778}
  table = {name: _Unreadable({"validation": {choices.CRITERION: _stat(value)},
                              "eval": {choices.CRITERION: _stat(1.0 - value)}}, ["eval"])
           for name, value in validation.items()}
  # b and d tie: table order; the eval day (reversed) would have kept a and c
  assert choices.shortlist(table, choices._criterion, 3) == ["b", "d", "c"]
  assert choices.shortlist(table, choices._criterion, 0) == ["b"]


def test_schedule_section_names_the_finalists_and_the_seeds_of_each_row():
  names = list(choices.SCHEDULE_CANDIDATES)[:3]
  summary = {name: {day: {metric: {"mean": 0.77 + 0.001 * i, "std": 0.0, "n": 3 if i else 1}
                          for metric in choices.METRICS}
                    for day in choices.DAYS}
             for i, name in enumerate(names)}
  finalists = names[1:]
  chosen = choices.choose({c: summary[c] for c in finalists}, choices._criterion)
  text = "\n".join(choices.render_schedule(summary, chosen, {}, finalists))
  assert f"| {names[2]} (finalist) (chosen) | " in text
  assert f"| {names[0]} | `" in text and f"| {names[0]} (finalist)" not in text
  assert f"the 2 best on the validation day ({names[1]}, {names[2]})" in text
  assert f"leads the next, {names[1]}, by 0.0010" in text
  row = next(line for line in text.splitlines() if line.startswith(f"| {names[0]} |"))
  assert row.split(" | ")[2] == "1"  # the screened-out candidate's one seed
