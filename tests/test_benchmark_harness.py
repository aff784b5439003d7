"""Tests of the benchmark harness' pure parts (benchmarks.models, tune, sweep, calibration)."""

import json
import math
import os
import shutil

import numpy as np
import pytest

from benchmarks import calibration as calibration_benchmark
from benchmarks import models as truth_benchmark
from benchmarks import regime
from benchmarks import sweep
from benchmarks import tune
from configs import config as config_lib
from models import calibration as calibration_lib


def test_sampling_is_deterministic_and_inside_the_space():
  space = dict(tune.SPACE, **tune.MODEL_SPACE["esmc"])
  first = [tune.sample(space, np.random.default_rng(3)) for _ in range(2)]
  assert first[0] == first[1]
  trials = [tune.sample(space, np.random.default_rng(seed)) for seed in range(200)]
  rates = [t["train.learning_rate"] for t in trials]
  assert 3e-4 <= min(rates) and max(rates) <= 1e-2
  # log-uniform: about half the draws below the geometric mean of the bounds
  assert 0.4 < np.mean(np.array(rates) < math.sqrt(3e-4 * 1e-2)) < 0.6
  assert {tuple(t["model.tower_units"]) for t in trials} == set(tune.SPACE["model.tower_units"][1])
  assert all(1e-5 <= t["model.params.constraint_lambda"] <= 1e-1 for t in trials)


def test_overrides_build_a_loadable_config():
  trial = {"model.embedding_dim": 8, "model.tower_units": [64, 32],
           "model.params.constraint_lambda": 0.01, "train.learning_rate": 0.003}
  overrides = tune.to_overrides(trial)
  assert overrides == {"model": {"embedding_dim": 8, "tower_units": [64, 32],
                                 "params": {"constraint_lambda": 0.01}},
                       "train": {"learning_rate": 0.003}}
  config = config_lib.load_config(
      f"{truth_benchmark.PROJECT_ROOT}/configs/esmc.yaml", overrides=overrides)
  assert config.model.embedding_dim == 8 and tuple(config.model.tower_units) == (64, 32)
  assert config.model.params["constraint_lambda"] == 0.01
  assert config.model.params["constraint_pull_target"] is True  # untouched by the trial
  assert config.train.learning_rate == 0.003


def test_objective_reads_the_validation_logloss_only():
  report = {"training": {"validation": {"ctr_logloss": 0.2, "ctcvr_logloss": 0.03,
                                        "loss": 9.0}},
            "tasks": {"ctr": {"auc": 0.99}}}
  assert tune.objective(report) == pytest.approx(0.23)
  assert math.isnan(tune.objective({"training": {}}))


def _cell(naive, esmm, esmc):
  return {"per_seed": {"naive": naive, "esmm": esmm, "esmc": esmc}}


def test_gain_over_naive_pairs_seeds_and_picks_the_best_entire_space_model():
  gain = sweep.gain_over_naive(_cell([0.70, 0.72], [0.73, 0.74], [0.71, 0.75]))
  assert gain["model"] == "esmm"  # mean 0.735 vs esmc 0.730
  assert gain["mean"] == pytest.approx(0.025)
  assert gain["std"] == pytest.approx(math.sqrt(2 * 0.005 ** 2))
  assert sweep.gain_over_naive({"per_seed": {"esmm": [0.7]}}) == {}


def _report(ctr_cal, cvr_cal, es_cal, ctcvr_cal):
  def task(cal, noise):
    return {"auc": 0.7, "truth": {"calibration_vs_truth": cal, "bayes_calibration": noise,
                                  "bayes_auc": 0.8, "auc_gap": 0.1}}
  cvr = dict(task(cvr_cal, 0.95), entire_space={"calibration": es_cal})
  return {"tasks": {"ctr": task(ctr_cal, 1.01), "cvr": cvr, "ctcvr": task(ctcvr_cal, 0.9)},
          "train_seconds": 10.0}


def test_calibration_table_shows_the_mean_and_spread_against_the_truth():
  summary = truth_benchmark.aggregate(
      {"esmm": [_report(1.0, 0.8, 0.9, 0.7), _report(1.1, 0.9, 0.9, 0.9)]})
  cvr = summary["esmm"]["cvr"]
  assert cvr["calibration_vs_truth"]["mean"] == pytest.approx(0.85)
  assert cvr["es_calibration"] == {"mean": 0.9, "std": 0.0, "n": 2}
  lines = truth_benchmark._calibration_table(summary)  # pylint: disable=protected-access
  assert lines[0] == "## Calibration against the truth"
  row = next(line for line in lines if line.startswith("| esmm |"))
  assert row == ("| esmm | 1.050 ± 0.071 | 0.850 ± 0.071 | 0.900 ± 0.000 | "
                 "0.800 ± 0.141 |")
  assert "| (truth / observed) | 1.010 | 0.950 | - | 0.900 |" in lines


def _summary(ctr_auc, ctcvr_auc, es_auc):
  stat = lambda v: {"mean": v, "std": 0.0, "n": 1}
  return {"ctr": {"auc": stat(ctr_auc), "bayes_auc": stat(0.80)},
          "ctcvr": {"auc": stat(ctcvr_auc), "bayes_auc": stat(0.79)},
          "cvr": {"auc": stat(0.7), "es_expected_auc": stat(es_auc),
                  "es_bayes_expected_auc": stat(0.81), "es_calibration": stat(1.0)}}


def test_learning_curves_give_the_gap_to_bayes_per_size(tmp_path):
  cells = [{"size": size, "ctr": 0.045, "train_clicks": size // 20,
            "train_purchases": size // 300, "per_seed": {},
            "summary": {"esmm": _summary(*aucs)}}
           for size, aucs in ((100_000, (0.75, 0.65, 0.70)), (1_000_000, (0.79, 0.76, 0.80)))]
  markdown = sweep.render_markdown(cells, dict(flag="", seeds=1, epochs=3, batch_size=1024,
                                               seconds=60, cpus=2, load_before="0",
                                               load_after="0"))
  assert ("| 0.045 | esmm | 0.0500 / 0.1400 / 0.1100 | 0.0100 / 0.0300 / 0.0100 |"
          in markdown.splitlines())
  sweep.plot_learning_curves(cells, str(tmp_path / "gaps.png"))
  assert (tmp_path / "gaps.png").stat().st_size > 1000


def test_tuned_config_merges_stages_and_loads(tmp_path, monkeypatch):
  monkeypatch.setattr(tune, "TUNED_DIR", str(tmp_path))
  tune.write_tuned_config("esmc", {"train.learning_rate": 0.003, "model.embedding_dim": 8},
                          "benchmarks/results/tune_esmm.md")
  path = tune.write_tuned_config("esmc", {"model.params.constraint_lambda": 0.01},
                                 "benchmarks/results/tune_esmc_model.md")
  text = open(path).read()
  assert "# from benchmarks/results/tune_esmm.md" in text
  assert "# from benchmarks/results/tune_esmc_model.md" in text
  # the file must load from configs/tuned/ (its base is ../esmc.yaml)
  target = tmp_path / "configs" / "tuned"
  target.mkdir(parents=True)
  (target / "esmc.yaml").write_text(text)
  for name in ("esmc.yaml", "base_simulated.yaml"):
    shutil.copy(f"{truth_benchmark.PROJECT_ROOT}/configs/{name}", tmp_path / "configs" / name)
  shutil.copytree(f"{truth_benchmark.PROJECT_ROOT}/configs/features",
                  tmp_path / "configs" / "features")
  config = config_lib.load_config(str(target / "esmc.yaml"))
  assert config.train.learning_rate == 0.003 and config.model.embedding_dim == 8
  assert config.model.params["constraint_lambda"] == 0.01
  assert config.model.params["tie_layers"] == "all"  # from ../esmc.yaml
  assert os.path.exists(config.feature_spec_path)


def test_learning_curves_leave_cells_that_were_not_run_empty():
  cells = [{"size": 100_000, "ctr": 0.045, "train_clicks": 1, "train_purchases": 1,
            "per_seed": {}, "summary": {"esmm": _summary(0.75, 0.65, 0.70)}},
           {"size": 1_000_000, "ctr": 0.015, "train_clicks": 1, "train_purchases": 1,
            "per_seed": {}, "summary": {"naive": _summary(0.78, 0.70, 0.75)}}]
  lines = sweep.render_markdown(cells, dict(flag="", seeds=1, epochs=3, batch_size=None,
                                            seconds=60, cpus=2, load_before="0",
                                            load_after="0")).splitlines()
  assert "| 0.045 | esmm | 0.0500 / 0.1400 / 0.1100 | - |" in lines
  assert "| 0.015 | naive | - | 0.0200 / 0.0900 / 0.0600 |" in lines


def _calibration_run(values):
  """One run's benchmarks.calibration result: method -> the four calibrations."""
  aucs = {key: 0.7 for key in calibration_benchmark.AUCS}
  return {"methods": {
      method: dict(zip(calibration_benchmark.CALIBRATIONS, values.get(method, (1, 1, 1, 1))),
                   **aucs)
      for method in calibration_benchmark.METHODS}}


def test_calibration_benchmark_counts_models_whose_every_mean_is_within_the_goal():
  runs = {"esmm": [_calibration_run({"none": (1.0, 0.9, 0.8, 1.2)}),
                   _calibration_run({"none": (1.0, 1.0, 0.9, 1.0)})],
          "esmc": [_calibration_run({"ips_ctr": (1.0, 1.0, 0.94, 1.0)})]}
  summary = calibration_benchmark.aggregate(runs)
  assert summary["esmm"]["none"]["cvr_all"]["mean"] == pytest.approx(0.85)
  assert summary["esmm"]["none"]["ctcvr"]["std"] == pytest.approx(math.sqrt(0.02))
  page = calibration_benchmark.render(summary, {
      "command": "python -m benchmarks.calibration", "runs_dir": "/r", "runs": 3,
      "seconds": 60, "load_before": "0", "load_after": "0"})
  counts = dict(part.split(" ") for part in page.split(
      "within 1.00 ± 0.05: ")[1].split(".\n")[0].split(", "))
  # esmm misses with none (0.85 / 0.95 means; 1.10 ctcvr), esmc with ips_ctr (0.94)
  assert counts == {"none": "1/2", "bias": "2/2", "platt": "2/2", "platt_ctr": "2/2",
                    "ips_ctr": "1/2"}
  assert "| esmm | none | 1.000 ± 0.000 | 0.950 ± 0.071 | 0.850 ± 0.071 |" in page


def test_calibration_benchmark_states_the_validation_days_draw_against_its_truth():
  click = np.array([1, 1, 0, 0, 1, 0])
  purchase = np.array([1, 0, 0, 1, 0, 0])  # row 3 bought without a click: not counted
  truth = {"p_click": np.array([0.5, 0.5, 0.25, 0.25, 0.5, 0.5]),
           "p_purchase_given_click": np.array([0.5, 0.25, 0.5, 0.5, 0.25, 0.1]),
           "p_ctcvr": np.array([0.25, 0.125, 0.125, 0.125, 0.125, 0.05])}
  ratios = calibration_benchmark.observed_vs_truth(click, purchase, truth)
  # 3 clicks / 2.5 expected; 1 purchase over clicks / (0.5 + 0.25 + 0.25); 1 / 0.8
  assert {k: ratios[k] for k in ("ctr", "cvr_clicked", "ctcvr")} == pytest.approx(
      {"ctr": 1.2, "cvr_clicked": 1.0, "ctcvr": 1.25})
  runs = {"esmm": [_calibration_run({})]}
  page = calibration_benchmark.render(calibration_benchmark.aggregate(runs), {
      "command": "python -m benchmarks.calibration", "runs_dir": "/r", "runs": 1,
      "seconds": 60, "load_before": "0", "load_after": "0",
      "validation": {"validation_rows": 6, "validation_clicks": 3, "validation_purchases": 400,
                     "validation_observed_vs_truth": {"ctr": 1.0, "cvr_clicked": 0.97,
                                                      "ctcvr": 0.96}},
      "bayes": {"ctcvr_expected_auc": 0.78, "cvr_all_expected_auc": 0.81}})
  assert "purchases over clicks 0.970, purchases 0.960" in page
  assert "1 / sqrt(400) = 0.050 relative" in page
  assert "CTCVR expected AUC 0.7800, CVR AUC (entire space) 0.8100" in page


def test_sweep_holds_the_catalog_fixed_only_when_asked():
  assert sweep.simulate_flags(0.045) == ("--target_ctr", "0.045")
  # the 1M world's default catalog, whatever the cell's size
  assert sweep.simulate_flags(0.015, 1_000_000) == (
      "--target_ctr", "0.015", "--users", "25000", "--items", "10000", "--brands", "1000")
  assert sweep.cell_name(300_000, 0.045) == "n300000_ctr0.045"
  assert sweep.cell_name(300_000, 0.045, 1_000_000) == "n300000_ctr0.045_catalog1000000"


def test_sweep_cell_passes_the_catalog_and_the_calibration_to_its_runs(tmp_path, monkeypatch):
  calls = {}

  def make_world(mode_dir, size, flags):
    calls["world"] = (mode_dir, size, flags)
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    (data / "counts.json").write_text(
        '{"labels": {"train": {"click": 40, "purchase": 3}}}')
    return {"raw": str(tmp_path / "raw"), "data": str(data)}

  def run_all(mode_dir, world, models, seeds, epochs, batch_size, parallel=1,
              overrides=None, runs_dir="runs"):
    calls["runs"] = (overrides, runs_dir)
    report = {"tasks": {"cvr": {"entire_space": {"expected_auc": 0.7}}}}
    return {name: [report] * seeds for name in models}

  monkeypatch.setattr(sweep.truth_benchmark, "make_world", make_world)
  monkeypatch.setattr(sweep.truth_benchmark, "run_all", run_all)
  monkeypatch.setattr(sweep.truth_benchmark, "aggregate", lambda reports: {})
  settings = dict(seeds=2, epochs=3, batch_size=None, parallel=2,
                  catalog_of=1_000_000, calibration="none")
  cell = sweep.run_cell(str(tmp_path), 300_000, 0.045, ["naive", "esmm"], settings)
  mode_dir, size, flags = calls["world"]
  assert mode_dir.endswith("n300000_ctr0.045_catalog1000000") and size == 300_000
  assert flags[flags.index("--users") + 1] == "25000"
  assert calls["runs"] == ({"naive": {"train": {"calibration": "none"}},
                            "esmm": {"train": {"calibration": "none"}}},
                           "runs_calibration_none")
  assert cell["train_clicks"] == 40 and cell["per_seed"]["esmm"] == [0.7, 0.7]
  # without them: the config's own calibration in runs/, the simulator's catalog
  cell = sweep.run_cell(str(tmp_path), 300_000, 0.045, ["naive"], dict(settings,
                        catalog_of=None, calibration=None))
  assert calls["runs"] == (None, "runs") and "--users" not in calls["world"][2]


def test_optimizer_override_adds_to_the_calibration_override_and_names_both():
  overrides, suffix = truth_benchmark.calibration_override(["naive", "esmm"], "none")
  merged, optimizer_suffix = truth_benchmark.train_override(
      ["naive", "esmm"], "optimizer", "lazy_adam", overrides)
  assert merged == {"naive": {"train": {"calibration": "none", "optimizer": "lazy_adam"}},
                    "esmm": {"train": {"calibration": "none", "optimizer": "lazy_adam"}}}
  assert suffix + optimizer_suffix == "_calibration_none_optimizer_lazy_adam"
  assert overrides["esmm"]["train"] == {"calibration": "none"}  # not modified in place
  assert truth_benchmark.train_override(["esmm"], "optimizer", None, overrides) == (
      overrides, "")


def test_calibration_override_names_its_runs_and_sets_every_config():
  assert truth_benchmark.calibration_override(["naive", "esmm"], None) == (None, "")
  assert truth_benchmark.calibration_override(["naive", "esmm"], "none") == (
      {"naive": {"train": {"calibration": "none"}},
       "esmm": {"train": {"calibration": "none"}}}, "_calibration_none")


def test_run_all_trains_only_missing_runs_and_the_page_names_the_reused_ones(tmp_path,
                                                                            monkeypatch):
  done = tmp_path / "runs" / "esmm" / "seed1"
  done.mkdir(parents=True)
  (done / "evaluation.json").write_text('{"tasks": {}, "train_seconds": 60.0}')
  trained = []

  def fake_python(*args, log_path=None):
    model_dir = args[args.index("--model_dir") + 1]
    trained.append(os.path.relpath(model_dir, tmp_path))
    with open(os.path.join(model_dir, "evaluation.json"), "w") as f:
      f.write('{"tasks": {}, "train_seconds": 30.0}')

  monkeypatch.setattr(truth_benchmark, "_python", fake_python)
  reports = truth_benchmark.run_all(str(tmp_path), {"data": "d", "raw": "r"},
                                    ["esmm", "naive"], 2, 3, None)
  assert sorted(trained) == ["runs/esmm/seed2", "runs/naive/seed1", "runs/naive/seed2"]
  assert [r[truth_benchmark.REUSED] for r in reports["esmm"]] == [True, False]
  assert truth_benchmark.reused_runs(reports) == {"esmm": [1]}
  settings = dict(impressions=10, seeds=2, epochs=3, batch_size=None, seconds=120.0,
                  parallel=1, reused_runs={"esmm": [1]}, train_seconds_all_runs=150.0)
  page = truth_benchmark.render_markdown(truth_benchmark.aggregate(reports), settings,
                                         {"train": 8, "eval": 2, "eval_labels": {}})
  assert ("1 run(s) were reused from an earlier invocation's run directory, not trained "
          "again, so the wall time above excludes them: esmm (seed 1). The training time of "
          "every run, summed: 2.5 min.") in page
  # a results file from before the dict form (a list of "name/seedK") renders the same
  settings["reused_runs"] = ["esmm/seed1"]
  assert page == truth_benchmark.render_markdown(
      truth_benchmark.aggregate(reports), settings, {"train": 8, "eval": 2, "eval_labels": {}})
  settings["reused_runs"] = ["esmm-1"]
  with pytest.raises(ValueError, match="reused_runs: 'esmm-1' is not NAME/seedK"):
    truth_benchmark.render_markdown(truth_benchmark.aggregate(reports), settings,
                                    {"train": 8, "eval": 2, "eval_labels": {}})
  settings["reused_runs"] = {}
  assert "reused" not in truth_benchmark.render_markdown(
      truth_benchmark.aggregate(reports), settings, {"train": 8, "eval": 2, "eval_labels": {}})


def test_calibration_benchmark_weighs_the_validation_purchases_as_an_entire_space_fit():
  click = np.array([1, 1, 0, 1, 0])
  purchase = np.array([1, 0, 1, 1, 0])  # row 2 bought without a click: not counted
  truth = {"p_click": np.array([0.5, 0.5, 0.5, 0.25, 0.1]),
           "p_purchase_given_click": np.array([0.5, 0.5, 0.4, 0.4, 0.2]),
           "p_ctcvr": np.array([0.25, 0.25, 0.2, 0.1, 0.02])}
  ratios = calibration_benchmark.observed_vs_truth(click, purchase, truth)
  # weights 1 / p_click of the two clicked purchases: 2 and 4; sum of truth 2.0
  assert ratios["cvr_all_ips"] == pytest.approx(6.0 / 2.0)
  assert ratios["cvr_all_ips_ess"] == pytest.approx(36.0 / 20.0)
  # p_click below 1 / 5 (a cap of 5 on 1 / p): row 4 only, 0.2 of the 2.0 summed cvr
  low = calibration_benchmark.observed_vs_truth(click, purchase, truth, max_weight=5.0)
  assert (low["low_propensity_share"], low["low_propensity_cvr_share"],
          low["low_propensity_cap"]) == pytest.approx((0.2, 0.1, 5.0))
  assert ratios["low_propensity_share"] == 0.0  # none below 1% at the default cap
  page = calibration_benchmark.render(calibration_benchmark.aggregate(
      {"esmm": [_calibration_run({})]}), {
          "command": "python -m benchmarks.calibration", "runs_dir": "/r", "runs": 1,
          "seconds": 60, "load_before": "0", "load_after": "0",
          "validation": {"validation_rows": 5, "validation_clicks": 3,
                         "validation_purchases": 400,
                         "validation_observed_vs_truth": dict(
                             ratios, cvr_all_ips=0.889, cvr_all_ips_ess=215.0)}})
  assert "purchase rate at 0.889 of its truth" in page
  assert "effective 215 of the 400 purchases (1 / sqrt(215) = 0.068 relative)" in page


def test_calibration_benchmark_shows_the_exported_methods_fit_day_beside_the_eval_day():
  run = _calibration_run({"ips_ctr": (1.0, 0.98, 0.95, 1.0)})
  run["methods"]["ips_ctr"].update(cvr_clicked_validation=1.0, cvr_all_validation=0.96)
  page = calibration_benchmark.render(calibration_benchmark.aggregate({"hm3": [run]}), {
      "command": "python -m benchmarks.calibration", "runs_dir": "/r", "runs": 1,
      "seconds": 60, "load_before": "0", "load_after": "0"})
  assert "| hm3 | 1.000 | 0.980 | 0.960 | 0.950 |" in page
  # a cache written before these columns existed renders without the table
  old = calibration_benchmark.render(calibration_benchmark.aggregate(
      {"hm3": [_calibration_run({})]}), {
          "command": "python -m benchmarks.calibration", "runs_dir": "/r", "runs": 1,
          "seconds": 60, "load_before": "0", "load_after": "0"})
  assert "The fit's own day" not in old
  assert config_lib.load_config(os.path.join(
      truth_benchmark.PROJECT_ROOT, "configs", "esmm.yaml")).train.calibration == (
          calibration_benchmark.EXPORTED_METHOD)
  assert calibration_benchmark.EXPORTED_MAX_WEIGHT == calibration_lib.MAX_PROPENSITY_WEIGHT


def _world(rows, rng):
  """Truth of `rows` exposures: cvr falls as ctr rises (as in the simulator)."""
  p_click = rng.uniform(0.02, 0.2, rows)
  p_buy = np.clip(0.25 - p_click + rng.uniform(-0.02, 0.02, rows), 0.01, 1.0)
  return {"p_click": p_click, "p_purchase_given_click": p_buy}


def test_redrawn_labels_leave_a_true_model_calibrated_and_rescale_a_halved_one():
  rng = np.random.default_rng(3)
  validation, evaluation = _world(20_000, rng), _world(20_000, rng)
  clicked = rng.random(20_000) < evaluation["p_click"]
  outputs = lambda truth, scale: {"ctr": truth["p_click"],
                                  "cvr": scale * truth["p_purchase_given_click"]}
  for scale in (1.0, 0.5):
    draws = calibration_benchmark.redraw_calibrations(
        outputs(validation, scale), validation, outputs(evaluation, scale),
        evaluation["p_purchase_given_click"], clicked, draws=20)
    es = np.asarray(draws["cvr_all"])
    # unbiased over the draws (the fit restores a halved cvr), yet each draw moves
    assert abs(es.mean() - 1.0) < 0.02 and 0.005 < es.std() < 0.1
    assert abs(np.mean(draws["cvr_clicked"]) - 1.0) < 0.02
    # the model's ctr is the truth, so the true propensities change little; no p_click
    # is below 1%, so the cap never binds
    true = np.asarray(draws["cvr_all_true_propensity"])
    assert np.abs(true - es).max() < 0.01 and abs(true.mean() - 1.0) < 0.02
    assert draws["cvr_all_true_propensity_uncapped"] == draws["cvr_all_true_propensity"]
  clicks_only = calibration_benchmark.redraw_calibrations(
      outputs(validation, 1.0), validation, outputs(evaluation, 1.0),
      evaluation["p_purchase_given_click"], clicked, draws=2, method="platt")
  assert sorted(clicks_only) == ["cvr_all", "cvr_clicked"]  # no propensity to swap
  again = calibration_benchmark.redraw_calibrations(
      outputs(validation, 0.5), validation, outputs(evaluation, 0.5),
      evaluation["p_purchase_given_click"], clicked, draws=20)
  assert again["cvr_all"] == draws["cvr_all"]  # deterministic given the seed


def test_redraw_section_pools_the_seeds_draws_and_counts_those_within_the_goal():
  runs = {"hm3": [dict(_calibration_run({"ips_ctr": (1.0, 1.0, 0.94, 1.0)}),
                       redraws={"cvr_all": [0.9, 1.0], "cvr_clicked": [1.0, 1.0]}),
                  dict(_calibration_run({"ips_ctr": (1.0, 1.0, 0.94, 1.0)}),
                       redraws={"cvr_all": [0.96, 0.98], "cvr_clicked": [0.98, 1.02]})]}
  redraws = {"hm3": calibration_benchmark.redraw_summary(runs["hm3"])}
  # the seeds' average draws 0.93, 0.99: std 0.0424, over sqrt(2) draws 0.03
  assert redraws["hm3"]["cvr_all"] == pytest.approx(
      {"mean": 0.96, "mean_error": 0.03, "std": (0.05 + 0.01) / 2, "within": 0.75,
       "draws": 4})
  page = calibration_benchmark.render(calibration_benchmark.aggregate(runs), {
      "command": "python -m benchmarks.calibration", "runs_dir": "/r", "runs": 2,
      "seconds": 60, "load_before": "0", "load_after": "0", "redraws": 2}, redraws)
  assert "| hm3 | 0.940 | 0.960 ± 0.030 | 0.030 | 0.75 | 1.000 | 1.000 | 0.010 |" in page
  assert ("spread is 0.030-0.030 for every model: one day's labels move the entire-space "
          "level by up to ± 0.030") in page
  assert "redraw mean within 1.00 ± 0.05: 1 of 1 models (1 of them within two" in page
  # with the true-propensity refits: their columns, and the verdict only when every
  # model is within the goal with them
  for run, capped, uncapped in zip(runs["hm3"], ([0.93, 0.99], [0.99, 1.01]),
                                   ([0.97, 1.01], [1.0, 1.02])):
    run["redraws"].update(cvr_all_true_propensity=capped,
                          cvr_all_true_propensity_uncapped=uncapped)
  redraws = {"hm3": calibration_benchmark.redraw_summary(runs["hm3"])}
  assert redraws["hm3"]["cvr_all_true_propensity_uncapped"]["mean"] == pytest.approx(1.0)
  page = calibration_benchmark.render(calibration_benchmark.aggregate(runs), {
      "command": "python -m benchmarks.calibration", "runs_dir": "/r", "runs": 2,
      "seconds": 60, "load_before": "0", "load_after": "0", "redraws": 2,
      "validation": {"validation_rows": 6, "validation_clicks": 3, "validation_purchases": 400,
                     "validation_observed_vs_truth": {
                         "ctr": 1.0, "cvr_clicked": 1.0, "ctcvr": 1.0,
                         "low_propensity_share": 0.27, "low_propensity_cvr_share": 0.47,
                         "low_propensity_cap": 100.0}}},
      redraws)
  assert ("| hm3 | 0.940 | 0.960 ± 0.030 | 0.030 | 0.75 | 0.980 | 1.000 | 1.000 | 1.000 | "
          "0.010 |") in page
  assert ("redraw means of 0.980-0.980 with the exported cap on 1 / p (1 of 1 within 1.00 ± "
          "0.05; +0.020 to +0.020 from the exported fit's on the same draws) and 1.000-1.000 "
          "uncapped (1 of 1 within 1.00 ± 0.05; +0.040 to +0.040") in page
  # hm3's exported mean 0.960 is within the goal: nothing to explain, no verdict
  assert "What keeps the exported fit" not in page
  assert ("Exposures clicked less often than 1 in 100 (where the cap binds) are 27% of the "
          "validation rows and hold 47% of their summed true cvr: the rarely clicked") in page

  def page_for(exported, uncapped, capped_only=False):
    for run in runs["hm3"]:
      run["redraws"].update(cvr_all=exported, cvr_all_true_propensity_uncapped=uncapped)
      if capped_only:
        del run["redraws"]["cvr_all_true_propensity_uncapped"]
    return calibration_benchmark.render(calibration_benchmark.aggregate(runs), {
        "command": "c", "runs_dir": "/r", "runs": 2, "seconds": 60, "load_before": "0",
        "load_after": "0", "redraws": 2},
        {"hm3": calibration_benchmark.redraw_summary(runs["hm3"])})

  # 0.90 exported, 1.00 with the true propensity: the verdict
  assert ("What keeps the exported fit below 1.00 - 0.05 for the 1 model(s) there is its "
          "propensity") in page_for([0.9, 0.9], [1.0, 1.0])
  # 0.90 exported, still 0.85 with it: the propensity does not explain it
  assert "What keeps" not in page_for([0.9, 0.9], [0.85, 0.85])
  # only the capped refits: their column and numbers, no verdict
  page = page_for([0.9, 0.9], [1.0, 1.0], capped_only=True)
  assert "redraw mean, true propensity (capped)" in page and "(uncapped)" not in page
  assert "What keeps" not in page
  assert "## Another validation day" not in calibration_benchmark.render(
      calibration_benchmark.aggregate(runs), {
          "command": "c", "runs_dir": "/r", "runs": 2, "seconds": 60, "load_before": "0",
          "load_after": "0"})


def test_redraws_draw_purchases_only_on_drawn_clicks_and_move_with_the_seed(monkeypatch):
  rng = np.random.default_rng(5)
  truth = _world(20_000, rng)
  outputs = {"ctr": truth["p_click"], "cvr": truth["p_purchase_given_click"]}
  seen = []
  real_fit = calibration_lib.fit_calibration

  propensities = []

  def fit(outputs_, labels, method, **kwargs):
    if kwargs:  # a true-propensity refit, on the same draw's labels
      assert labels is seen[-1]["labels"]
      propensities.append(kwargs)
    else:
      seen.append({k: np.array(v) for k, v in labels.items()})
      seen[-1]["labels"] = labels
    return real_fit(outputs_, labels, method, **kwargs)

  monkeypatch.setattr(calibration_lib, "fit_calibration", fit)
  clicked = np.ones(20_000, bool)
  first = calibration_benchmark.redraw_calibrations(
      outputs, truth, outputs, truth["p_purchase_given_click"], clicked, draws=3)
  other = calibration_benchmark.redraw_calibrations(
      outputs, truth, outputs, truth["p_purchase_given_click"], clicked, draws=3, seed=1)
  assert len(seen) == 6 and first["cvr_all"] != other["cvr_all"]
  assert len(propensities) == 12 and all(
      p["propensity"] is not None and np.array_equal(p["propensity"], truth["p_click"])
      for p in propensities)
  assert [p["max_weight"] for p in propensities[:2]] == [
      calibration_lib.MAX_PROPENSITY_WEIGHT, None]
  for labels in seen:
    assert np.all(labels["purchase"] <= labels["click"])  # a purchase needs a click
    assert labels["click"].mean() == pytest.approx(truth["p_click"].mean(), abs=0.01)
    bought = labels["purchase"][labels["click"] > 0].mean()
    expected = np.average(truth["p_purchase_given_click"], weights=truth["p_click"])
    assert bought == pytest.approx(expected, abs=0.02)
  assert not np.array_equal(seen[0]["click"], seen[1]["click"])


def test_a_calibration_cache_is_reused_only_with_the_same_redraws(tmp_path):
  cache = tmp_path / "calibration_methods.json"
  assert not calibration_benchmark._cached(str(cache), 40)  # pylint: disable=protected-access
  drawn = {key: [1.0, 0.9] for key in calibration_benchmark.redraw_keys("ips_ctr")}
  day = {"validation_observed_vs_truth": {"low_propensity_cap": 100.0}}
  cache.write_text(json.dumps({"redraws": drawn, **day}))  # before the seed was stored
  assert calibration_benchmark._cached(str(cache), 2)  # pylint: disable=protected-access
  assert not calibration_benchmark._cached(str(cache), 40)  # pylint: disable=protected-access
  cache.write_text(json.dumps({"redraws": drawn, **day, "redraw_seed": 7}))
  assert not calibration_benchmark._cached(str(cache), 2)  # pylint: disable=protected-access
  # a cache from before the true-propensity refits (or the low-propensity share) is redone
  cache.write_text(json.dumps({"redraws": {"cvr_all": [1.0, 0.9], "cvr_clicked": [1.0, 1.0]},
                               **day}))
  assert not calibration_benchmark._cached(str(cache), 2)  # pylint: disable=protected-access
  cache.write_text(json.dumps({"redraws": drawn}))
  assert not calibration_benchmark._cached(str(cache), 2)  # pylint: disable=protected-access


def test_delayed_feedback_pr_auc_and_relative_improvements_against_brute_force():
  """benchmarks.delayed_feedback: average precision against its definition (distinct
  scores: the mean precision at each positive's rank; all tied: the positive rate), and
  RI = (method - vanilla) / (oracle - vanilla) per seed on the means over the days, for
  AUC and NLL (lower NLL is better: the ratio keeps 1 = the oracle's)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import delayed_feedback as df  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(4)
  labels = (rng.random(300) < 0.2).astype(int)
  scores = rng.random(300)
  order = np.argsort(-scores)
  ranks = np.flatnonzero(labels[order]) + 1
  brute = np.mean(np.cumsum(labels[order])[ranks - 1] / ranks)
  assert df.average_precision(labels, scores) == pytest.approx(brute, rel=1e-12)
  assert df.average_precision(labels, np.full(300, 0.3)) == pytest.approx(labels.mean())
  assert df.relative_improvement(0.25, 0.3, 0.2) == pytest.approx(0.5)
  rows = []
  for seed, (oracle, vanilla, fnw) in {1: (0.8, 0.6, 0.7), 2: (0.9, 0.5, 0.8)}.items():
    for method, auc in (("oracle", oracle), ("vanilla", vanilla), ("fnw", fnw)):
      for day, shift in (("d1", -0.01), ("d2", 0.01)):  # the days' mean is `auc`
        rows.append({"world": f"s{seed}", "seed": seed, "sigma": None, "model": "esmm",
                     "method": method, "day": day, "ctcvr_auc": auc + shift,
                     "ctcvr_nll": 1.0 - auc, **{m: 0.5 for m in df.METRICS
                                                if m not in ("ctcvr_auc", "ctcvr_nll")}})
  cell = df.summarize(rows)["main"]["esmm"]["fnw"]
  assert cell["ri_auc"]["per_seed"] == pytest.approx([0.5, 0.75])
  assert cell["ri_nll"]["per_seed"] == pytest.approx([0.5, 0.75])
  assert cell["ctcvr_auc"]["mean"] == pytest.approx(0.75)
  assert cell["ri_auc"]["std"] == pytest.approx(np.std([0.5, 0.75], ddof=1))


def test_delayed_feedback_goals_tail_sweep_and_page_from_hand_made_rows():
  """benchmarks.delayed_feedback's page: the RI of the seeds' means beside the mean of
  per-seed RIs, the goals' best ESMM method (by RI-NLL) and its checks, the share still
  to come (1 - seen / final, pooled), and the tail sweep's cells, against hand-worked
  values."""
  from benchmarks import delayed_feedback as df  # pylint: disable=g-import-not-at-top
  aucs = {(1, None): {"oracle": 0.8, "vanilla": 0.6, "fnw": 0.7, "esdfm": 0.75},
          (2, None): {"oracle": 0.9, "vanilla": 0.5, "fnw": 0.6, "esdfm": 0.8},
          (1, 2.5): {"oracle": 0.8, "vanilla": 0.6, "fnw": 0.65, "esdfm": 0.7}}
  rows = []
  for (seed, sigma), methods in aucs.items():
    for method, auc in methods.items():
      for day, seen in (("d1", 70), ("d2", 90)):  # 160 of 200 final purchases seen
        rows.append({"world": f"s{seed}", "seed": seed, "sigma": sigma, "model": "esmm",
                     "method": method, "day": day, "ctcvr_auc": auc,
                     "ctcvr_nll": 1.0 - auc, "ctcvr_pr_auc": 0.1, "cvr_auc": 0.7,
                     "ctcvr_calibration": 1.0, "train_cpu_s": 10.0,
                     "ctcvr_calibration_vs_truth": {"vanilla": 0.8}.get(method, 1.03),
                     "eval_final_purchases": 100, "eval_purchases_seen": seen})
  summary = df.summarize(rows)
  fnw = summary["main"]["esmm"]["fnw"]
  assert fnw["ri_auc"]["per_seed"] == pytest.approx([0.5, 0.25])
  # means 0.65, 0.55, 0.85: (0.65 - 0.55) / (0.85 - 0.55), not the ratios' mean 0.375
  assert fnw["ri_auc_of_means"] == pytest.approx(1 / 3)
  assert fnw["ri_nll_of_means"] == pytest.approx(1 / 3)
  outcome = df.goals(summary, rows)
  assert outcome["best"] == "esdfm"
  assert outcome["ri_nll"] == pytest.approx(0.75)
  assert (outcome["ri_nll_met"], outcome["ri_auc_met"], outcome["calibration_met"]) == (
      True, True, True)
  assert outcome["vanilla_calibration_vs_truth"] == pytest.approx(0.8)
  assert outcome["still_to_come"] == pytest.approx(0.2)
  table = df.sweep_table(rows, 1.8).splitlines()
  assert [line.split("|")[1].strip() for line in table[2:]] == ["1.8", "2.5"]
  assert "| 0.50 / 0.50 / 1.03 |" in table[3]  # esdfm at sigma 2.5: 0.1 / 0.2
  assert "| 0.75 / 0.75 / 1.03 |" in table[2]  # seed 1 of the main worlds
  # the RIs' denominators: oracle - vanilla AUC 0.2, NLL (1 - 0.8) - (1 - 0.6) = -0.2
  assert "| 20.0% | +0.2000 / -0.20000 |" in table[2]
  settings = {"window_days": 3, "days": 9, "impressions": 270_000, "seeds": [1, 2],
              "pretrain_days": 4, "name": "delayed_feedback", "started": "x",
              "seconds": 60.0, "cpu_s": 120.0, "load_before": "0", "load_after": "0"}
  # The page's training settings come from the rows: one value per model, or none.
  for row in rows:
    row.update(epochs=2, learning_rate=0.002, window_s=3600)
  settings["configs"] = df.configs_of(rows + [dict(rows[0], model="naive", epochs=1),
                                               dict(rows[0], model="naive")])
  assert settings["configs"] == {"esmm": {"epochs": 2, "learning_rate": 0.002,
                                          "window_s": 3600}, "naive": {}}
  page = df.render_markdown({"settings": settings, "summary": summary, "rows": rows})
  assert "esmm: 2 epochs a day at learning rate 0.002, the method's window c = 1 h" in page
  settings["configs"]["esmm"]["epochs"] = 1
  assert "esmm: 1 epoch a day at" in df.render_markdown(
      {"settings": settings, "summary": summary, "rows": rows})
  assert "naive: settings not recorded in its rows" in page
  assert "| esdfm: 0.75 | yes |" in page
  assert "(still to come at the snapshot: 20.0%)" in page


def test_regime_cells_move_one_knob_at_a_time_around_the_aliccp_centre():
  cells = regime.cells_of("full", ["sparsity", "signal", "size"])
  centre = [c for c in cells if c["centre"]]
  assert len(cells) == len({c["key"] for c in cells}) == 4 and len(centre) == 1
  centre = centre[0]
  assert (centre["size"], centre["purchase"]) == (1_000_000, pytest.approx(18 / 3400))
  assert centre["share"] == pytest.approx(0.1 / 1.1)
  assert [axis for axis, _ in centre["axes"]] == ["sparsity", "signal", "size"]
  for cell in cells:
    moved = [k for k in ("size", "purchase", "share") if cell[k] != centre[k]]
    assert len(moved) == (0 if cell is centre else 1)
  flags = regime.simulate_flags(centre)
  assert flags[:2] == ("--profile", "aliccp")
  assert float(flags[flags.index("--click_signal_share") + 1]) == centre["share"]


def test_regime_paired_gain_is_a_t_interval_of_the_per_seed_differences():
  rng = np.random.default_rng(0)
  naive = rng.uniform(0.6, 0.7, 3)
  for shift, significant in ((0.02, True), (0.0, False)):
    esmm = naive + shift + rng.normal(0.0, 0.002, 3)
    gain = regime.paired_gain({"naive": list(naive), "esmm": list(esmm)}, "esmm")
    diffs = np.asarray(esmm, np.float64) - np.asarray(naive, np.float64)
    half = 4.303 * diffs.std(ddof=1) / np.sqrt(3)   # t(0.975, 2 degrees of freedom)
    assert gain["mean"] == pytest.approx(diffs.mean(), abs=1e-12)
    assert gain["std"] == pytest.approx(diffs.std(ddof=1), abs=1e-12)
    assert (gain["low"], gain["high"]) == (pytest.approx(diffs.mean() - half, abs=1e-12),
                                           pytest.approx(diffs.mean() + half, abs=1e-12))
    assert gain["significant"] is significant
  one = regime.paired_gain({"naive": [0.6], "esmm": [0.7]}, "esmm")
  assert one["n"] == 1 and not one["significant"]      # one seed proves nothing
  assert regime.paired_gain({"naive": [0.6]}, "esmm")["n"] == 0


def test_regime_tunes_per_size_runs_cells_and_finds_the_crossover(tmp_path, monkeypatch):
  """Hand-made runs: ESMM beats naive by 0.01 + 0.001 x seed only where P(buy | click)
  <= 0.02; the tuning trial with learning rate 3e-3 and embedding L2 1e-4 has the
  lowest validation loss."""
  calls = []

  def make_world(mode_dir, size, flags):
    data = tmp_path / os.path.basename(mode_dir)
    data.mkdir(exist_ok=True)
    (data / "counts.json").write_text('{"labels": {"train": {"click": 40, "purchase": 3}}}')
    return {"raw": str(data), "data": str(data), "flags": flags}

  def run_all(mode_dir, world, models, seeds, epochs, batch_size, parallel=1,
              overrides=None, configs=None, runs_dir="runs"):
    calls.append((os.path.basename(mode_dir), runs_dir, list(models), overrides))
    flags = world["flags"]
    purchase = float(flags[flags.index("--target_purchase_per_click") + 1])
    reports = {}
    for name in models:
      runs = []
      for seed in range(1, seeds + 1):
        auc = 0.70 + (0.01 + 0.001 * seed if name == "esmm" and purchase <= 0.02 else 0.0)
        if name == "shared_bottom":  # ahead everywhere, but not an entire-space model
          auc += 0.05 + 0.001 * seed
        loss = 0.5 - (0.1 if "embl2_0.0001" in name else 0.0) - (0.01 if "lr0.003" in name
                                                             else 0.0)
        runs.append({"tasks": {"cvr": {"entire_space": {"expected_auc": auc,
                                                        "bayes_expected_auc": 0.8}},
                               "ctcvr": {"auc": auc - 0.05, "bayes_auc": 0.8}},
                     "training": {"validation": {"ctr_logloss": loss, "ctcvr_logloss": 0.1}},
                     "train_seconds": 10.0})
      reports[name] = runs
    return reports

  monkeypatch.setattr(regime.truth_benchmark, "make_world", make_world)
  monkeypatch.setattr(regime.truth_benchmark, "run_all", run_all)
  # three values on the axis, so that the crossover is inside it
  monkeypatch.setitem(regime.AXES["full"], "sparsity", (
      "--target_purchase_per_click", "P(buy | click)",
      (0.07, 0.02, regime.ALICCP.target_purchase_per_click)))
  settings = dict(regime.MODES["full"], mode="full", axes=["sparsity"], parallel=2,
                  calibration="none",
                  grid={"learning_rate": (1e-3, 3e-3), "embedding_l2": (0.0, 1e-4)})
  tuned = regime.tune_size(str(tmp_path), 1_000_000, settings)
  assert len(tuned["trials"]) == 4
  assert (tuned["best"]["learning_rate"], tuned["best"]["embedding_l2"]) == (3e-3, 1e-4)
  assert tuned["best"]["objective"] == pytest.approx(0.49)
  assert calls[-1][1] == "tuning" and calls[-1][2][0].startswith("esmm_lr")
  cells = [regime.run_cell(str(tmp_path), cell, tuned["best"], settings)
           for cell in regime.cells_of("full", ["sparsity"])]
  centre = next(c for c in cells if c["centre"])
  cell_calls = {key: (models, overrides) for key, runs_dir, models, overrides in calls
                if runs_dir == "runs"}
  assert len(cell_calls) == 3
  models, overrides = cell_calls[cells[0]["key"]]   # P(buy | click) 0.07, not the centre
  assert models == list(regime.CELL_MODELS) and not cells[0]["centre"]
  assert all(o == {"train": {"learning_rate": 3e-3, "calibration": "none"},
                   "model": {"embedding_l2": 1e-4}} for o in overrides.values())
  assert set(centre["summary"]) == set(regime.CENTRE_MODELS)
  gain = centre["gains"]["ES CVR AUC"]["esmm"]
  assert gain["mean"] == pytest.approx(0.012) and gain["significant"]
  shared = centre["gains"]["ES CVR AUC"]["shared_bottom"]
  assert shared["mean"] == pytest.approx(0.052) and shared["significant"]
  assert regime.best_gain(centre["gains"], "ES CVR AUC")[0] == "esmm"
  found = regime.crossover([(v, c["gains"]) for v, c in regime.axis_rows(
      cells, "sparsity", "full")], "ES CVR AUC")
  assert (found["value"], found["model"]) == (0.02, "esmm")
  page = regime.render_markdown(cells, {1_000_000: tuned}, dict(
      settings, flag="", date="today", seconds=60.0, cpus=2, load_before="0",
      load_after="0", train_seconds=600.0, centre_size=1_000_000, seeds=3))
  assert "- Crossover on ES CVR AUC: P(buy | click) = 0.02 (esmm, +0.0120" in page
  assert "| 0.07 | shared_bottom (click-space, shared embeddings) | +0.0520 ± 0.0010" in page
  assert "| 1,000,000 | 0.003 | 0.0001 | 0.490000 (chosen) |" in page
  assert "| esmm_oracle (oracle: + hidden factors) | 0.1000 ± 0.0000 |" in page
  regime.plot(cells, settings, str(tmp_path / "regime.png"))
  assert (tmp_path / "regime.png").stat().st_size > 0
