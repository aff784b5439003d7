"""Output calibration (models.calibration, models.layers.calibration).

  * the fit recovers known coefficients: data drawn from logit p = a z + c z_ctr + b;
  * the score equations hold on the rows fitted: calibrated predictions sum to the
    labels (every method has an intercept), and platt_ctr's residuals are orthogonal
    to z_ctr;
  * ips_ctr weights the clicked rows by 1 / ctr': with the true propensity it is
    calibrated over ALL exposures where the click-space platt fit is not; a ctr blind
    to part of the selection leaves it low, a given true propensity (uncapped) does not;
  * products are recomposed (ctcvr = ctr' * cvr', ctavr = ctr' * action' also when the
    rate is read as ctavr / ctr), untouched outputs pass through;
  * too few positives fall back to simpler forms (ips_ctr -> platt -> bias -> none);
  * Newton's steps are damped: it converges where a plain Newton step diverges;
  * the Keras layer computes what the numpy apply computes, and survives get_config;
  * a config asking for calibration without a validation split is refused.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from models import calibration
from models.layers import calibration as calibration_layers


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _world(n=200_000, seed=0):
  """Model outputs and labels whose truth is a known distortion of the outputs."""
  rng = np.random.default_rng(seed)
  z_ctr = rng.normal(-3.0, 1.0, n)
  z_cvr = rng.normal(-2.0, 1.0, n)
  click = rng.random(n) < _sigmoid(1.2 * z_ctr + 0.3)
  true_cvr = _sigmoid(0.8 * z_cvr - 0.4 * z_ctr - 0.5)
  purchase = click & (rng.random(n) < true_cvr)
  outputs = {"ctr": _sigmoid(z_ctr), "cvr": _sigmoid(z_cvr)}
  outputs["ctcvr"] = outputs["ctr"] * outputs["cvr"]
  labels = {"click": click.astype(np.float64), "purchase": purchase.astype(np.float64)}
  return outputs, labels


def test_platt_ctr_recovers_the_coefficients_the_labels_were_drawn_with():
  outputs, labels = _world()
  fitted = calibration.fit_calibration(outputs, labels, "platt_ctr")
  assert fitted.ctr.method == "platt"  # the ctr has no ctr term
  assert fitted.ctr.slope == pytest.approx(1.2, abs=0.03)
  assert fitted.ctr.intercept == pytest.approx(0.3, abs=0.1)
  cvr = fitted.rates["cvr"]
  assert cvr.method == "platt_ctr" and cvr.rows == int(labels["click"].sum())
  assert cvr.slope == pytest.approx(0.8, abs=0.06)
  assert cvr.ctr_slope == pytest.approx(-0.4, abs=0.15)
  assert cvr.ctr_quadratic == pytest.approx(0.0, abs=0.03)
  assert cvr.intercept == pytest.approx(-0.5, abs=0.3)


def test_ips_ctr_is_calibrated_over_all_exposures_where_a_click_space_fit_is_not():
  # A hidden h raises the click and lowers the cvr (clickbait); the model's ctr is the
  # true one (noise in its base hides h from z_ctr), its cvr misses h.
  rng = np.random.default_rng(6)
  n = 400_000
  h = rng.normal(0.0, 1.0, n)
  z_ctr = rng.normal(-1.5, 0.7, n) + h
  z_cvr = rng.normal(-2.0, 0.8, n)
  true_cvr = _sigmoid(z_cvr - 0.8 * h)
  click = rng.random(n) < _sigmoid(z_ctr)
  purchase = click & (rng.random(n) < true_cvr)
  outputs = {"ctr": _sigmoid(z_ctr), "cvr": _sigmoid(z_cvr)}
  labels = {"click": click * 1.0, "purchase": purchase * 1.0}
  ratio = {}
  for method in ("platt", "platt_ctr", "ips_ctr"):
    fitted = calibration.fit_calibration(outputs, labels, method)
    ratio[method] = fitted.apply(outputs)["cvr"].sum() / true_cvr.sum()
  assert ratio["ips_ctr"] == pytest.approx(1.0, abs=0.03)
  assert abs(ratio["platt"] - 1.0) > 0.1  # fitted to the clicks: off for all exposures
  fitted = calibration.fit_calibration(outputs, labels, "ips_ctr")
  clicked = click
  weights = calibration.propensity_weights(fitted.apply(outputs)["ctr"][clicked])
  residual = fitted.apply(outputs)["cvr"][clicked] - labels["purchase"][clicked]
  assert abs(weights @ residual) < 1e-3 * labels["purchase"].sum()  # its score equation


def test_a_propensity_blind_to_the_selection_leaves_ips_low_and_the_true_one_does_not():
  # As in the simulated world: hidden factors raise the click and lower the cvr
  # (clickbait), and the model learned only one of them (h1, not h2), so among exposures
  # it cannot tell apart the clicked ones have the lower cvr and its 1 / ctr' weights
  # cannot undo that; with the true P(click | x) as propensity (uncapped) the same fit is
  # calibrated over all exposures, and capping 1 / p at 100 (p >= 1%) pulls it back down
  # because the exposures clicked less often than 1% hold the highest cvr.
  rng = np.random.default_rng(11)
  n = 600_000
  h1, h2 = rng.normal(0.0, 0.8, n), rng.normal(0.0, 0.8, n)
  base = rng.normal(-3.0, 0.7, n)
  p_click = _sigmoid(base + 1.2 * (h1 + h2))
  true_cvr = _sigmoid(-2.0 - 0.8 * (h1 + h2))
  click = rng.random(n) < p_click
  purchase = click & (rng.random(n) < true_cvr)
  outputs = {"ctr": _sigmoid(base + 1.2 * h1), "cvr": _sigmoid(-2.3 - 0.8 * h1)}
  labels = {"click": click * 1.0, "purchase": purchase * 1.0}

  def level(**kwargs):
    fitted = calibration.fit_calibration(outputs, labels, "ips_ctr", **kwargs)
    return fitted.apply(outputs)["cvr"].sum() / true_cvr.sum()

  blind, capped = level(), level(propensity=p_click)
  uncapped = level(propensity=p_click, max_weight=None)
  # measured: blind 0.649, capped 0.933, uncapped 0.999
  assert uncapped == pytest.approx(1.0, abs=0.03)
  assert blind < uncapped - 0.05 and blind < capped < uncapped - 0.02
  # the exported fit is the one whose propensity is its own calibrated ctr
  fitted = calibration.fit_calibration(outputs, labels, "ips_ctr")
  assert level(propensity=fitted.apply(outputs)["ctr"]) == pytest.approx(blind, rel=1e-9)
  with pytest.raises(ValueError, match=r"propensity: 600000 click probabilities in \(0, 1\]"):
    calibration.fit_calibration(outputs, labels, "ips_ctr", propensity=p_click[:10])
  for bad in (p_click * 0.0, p_click + 1.0, np.where(click, np.nan, p_click)):
    with pytest.raises(ValueError, match="propensity: 600000 click probabilities"):
      calibration.fit_calibration(outputs, labels, "ips_ctr", propensity=bad)
  with pytest.raises(ValueError, match="apply to ips_ctr only, not 'platt_ctr'"):
    calibration.fit_calibration(outputs, labels, "platt_ctr", propensity=p_click)
  with pytest.raises(ValueError, match="apply to ips_ctr only"):
    calibration.fit_calibration(outputs, labels, "platt", max_weight=None)
  for cap in (0.0, -1.0):
    with pytest.raises(ValueError, match="max_weight: a cap on 1 / propensity > 0 or None"):
      calibration.fit_calibration(outputs, labels, "ips_ctr", max_weight=cap)


@pytest.mark.parametrize("method", ["bias", "platt", "platt_ctr"])
def test_calibrated_predictions_sum_to_the_labels_on_the_fitted_rows(method):
  outputs, labels = _world(50_000, seed=1)
  fitted = calibration.fit_calibration(outputs, labels, method)
  calibrated = fitted.apply(outputs)
  clicked = labels["click"] > 0
  assert calibrated["ctr"].sum() == pytest.approx(labels["click"].sum(), rel=1e-4)
  assert calibrated["cvr"][clicked].sum() == pytest.approx(labels["purchase"].sum(), rel=1e-3)
  np.testing.assert_allclose(calibrated["ctcvr"], calibrated["ctr"] * calibrated["cvr"],
                             rtol=1e-12)
  if method == "platt_ctr":  # the score equation of the ctr term
    residual = calibrated["cvr"][clicked] - labels["purchase"][clicked]
    z_ctr = calibration.logit(outputs["ctr"])[clicked]
    assert abs(residual @ z_ctr) < 1e-2 * np.abs(z_ctr).sum() / len(z_ctr)


def test_a_rate_read_as_product_over_ctr_is_recomposed_and_others_pass_through():
  rng = np.random.default_rng(2)
  n = 40_000
  ctr = _sigmoid(rng.normal(-2.5, 1.0, n))
  action_given_click = _sigmoid(rng.normal(-1.0, 1.0, n))
  click = rng.random(n) < ctr
  action = click & (rng.random(n) < np.clip(1.5 * action_given_click, 0, 1))
  outputs = {"ctr": ctr, "ctavr": ctr * action_given_click, "p_other": rng.random(n)}
  labels = {"click": click * 1.0, "action": action * 1.0}
  fitted = calibration.fit_calibration(outputs, labels, "platt")
  assert set(fitted.rates) == {"action"}
  calibrated = fitted.apply(outputs)
  np.testing.assert_array_equal(calibrated["p_other"], outputs["p_other"])
  assert calibrated["ctavr"][click].sum() / calibrated["ctr"][click].sum() > (
      outputs["ctavr"][click].sum() / ctr[click].sum())  # the action rate moved up
  action_rate = calibrated["ctavr"] / calibrated["ctr"]
  assert action_rate[click].sum() == pytest.approx(action.sum(), rel=1e-3)


def test_few_positives_fall_back_to_simpler_forms_and_none_leave_it_alone():
  outputs, labels = _world(20_000, seed=3)
  bought = np.flatnonzero(labels["purchase"])
  assert len(bought) > 100
  for kept, form in ((60, "platt"), (20, "bias"), (5, "none")):
    few = dict(labels, purchase=np.zeros_like(labels["purchase"]))
    few["purchase"][bought[:kept]] = 1.0
    cvr = calibration.fit_calibration(outputs, few, "ips_ctr").rates["cvr"]
    assert cvr.method == form and cvr.positives == kept
    assert cvr.ctr_slope == 0.0 and (form == "platt" or cvr.slope == 1.0)
  no_positive = dict(labels, purchase=np.zeros_like(labels["purchase"]))
  fitted = calibration.fit_calibration(outputs, no_positive, "platt_ctr")
  assert fitted.rates["cvr"] == calibration.Coefficients(
      rows=int(labels["click"].sum()), positives=0)
  with pytest.raises(ValueError, match="calibration method 'isotonic'"):
    calibration.fit_calibration(outputs, labels, "isotonic")
  with pytest.raises(ValueError, match="'ctr' output"):
    calibration.fit_calibration({"cvr": outputs["cvr"]}, labels, "bias")


def test_damped_newton_converges_from_a_start_where_plain_newton_diverges():
  # The model says p = 3e-7 where half the rows are positive: at delta = 0 the Hessian
  # is ~0, so a plain Newton step jumps to |delta| ~ 1e5 and never returns (it ends at
  # -500000 here); halving the step until the likelihood does not fall reaches
  # logit(0.5) + 15 = 15.
  n = 1000
  target = (np.arange(n) % 2).astype(np.float64)
  delta = calibration.fit_logistic_offset(np.full(n, -15.0), np.ones((n, 1)), target)
  assert delta[0] == pytest.approx(15.0, abs=1e-3)


def test_the_layer_computes_what_numpy_computes_and_round_trips_its_config():
  outputs, labels = _world(20_000, seed=4)
  outputs["ctavr"] = outputs["ctr"] * _sigmoid(calibration.logit(outputs["cvr"]) + 1.0)
  labels["action"] = labels["click"] * (np.random.default_rng(5).random(20_000) < 0.3)
  fitted = calibration.fit_calibration(outputs, labels, "platt_ctr")
  assert set(fitted.rates) == {"cvr", "action"}
  layer = calibration_layers.OutputCalibration(fitted)
  restored = calibration_layers.OutputCalibration.from_config(layer.get_config())
  assert restored.calibration == fitted
  tensors = {k: tf.constant(v.reshape(-1, 1), tf.float32) for k, v in outputs.items()}
  expected = fitted.apply({k: v.numpy() for k, v in tensors.items()})
  for served in (layer(tensors), restored(tensors)):
    assert set(served) == set(outputs)
    for name, value in served.items():
      np.testing.assert_allclose(value.numpy().reshape(-1), expected[name], rtol=2e-4,
                                 atol=1e-7, err_msg=name)


def test_calibrated_scorer_keeps_the_inputs_and_output_names():
  inputs = {"x": tf_keras.Input(shape=(1,), name="x")}
  logit = tf_keras.layers.Dense(1, name="logit")(inputs["x"])
  ctr = tf_keras.layers.Activation("sigmoid", name="ctr")(logit)
  cvr = tf_keras.layers.Activation("sigmoid", name="cvr")(-logit)
  scorer = tf_keras.Model(inputs, {"ctr": ctr, "cvr": cvr}, name="toy")
  fitted = calibration.Calibration(
      "bias", calibration.Coefficients(intercept=1.0, method="bias"),
      {"cvr": calibration.Coefficients(intercept=-1.0, method="bias")})
  wrapped = calibration_layers.calibrated_scorer(scorer, fitted)
  x = np.linspace(-2, 2, 5).reshape(-1, 1).astype(np.float32)
  raw = {k: v.numpy() for k, v in scorer({"x": x}).items()}
  served = {k: v.numpy().reshape(-1) for k, v in wrapped({"x": x}).items()}
  expected = fitted.apply(raw)
  assert set(served) == {"ctr", "cvr"}
  for name in served:
    np.testing.assert_allclose(served[name], expected[name], rtol=1e-5)
  np.testing.assert_allclose(calibration.logit(served["ctr"]),
                             calibration.logit(raw["ctr"]) + 1.0, rtol=1e-4)


def test_calibration_without_a_validation_split_is_refused(tmp_path):
  config = tmp_path / "c.yaml"
  config.write_text("base: %s\ntrain: {validation_from: null, early_stopping_patience: 0,"
                    " calibration: platt_ctr}\n" % (config_lib.__file__.replace(
                        "config.py", "esmm.yaml")))
  with pytest.raises(config_lib.ConfigError, match="validation split"):
    config_lib.load_config(str(config))
  config.write_text("base: %s\ntrain: {calibration: isotonic}\n" % (
      config_lib.__file__.replace("config.py", "esmm.yaml")))
  with pytest.raises(config_lib.ConfigError, match="train.calibration 'isotonic'"):
    config_lib.load_config(str(config))


def test_label_truth_scales_exactly_the_purchase_columns(tmp_path):
  from simulation import truth as truth_lib  # pylint: disable=g-import-not-at-top
  columns = {name: np.full(3, 0.5) for name in truth_lib.PROBABILITY_COLUMNS}
  labelled = truth_lib.label_truth(columns, 0.02)
  for name in truth_lib.PROBABILITY_COLUMNS:
    expected = 0.49 if name in truth_lib.PURCHASE_COLUMNS else 0.5
    np.testing.assert_allclose(labelled[name], expected, err_msg=name)
  assert columns["p_ctcvr"][0] == 0.5  # the input is unchanged
  with pytest.raises(ValueError, match="late_fraction"):
    truth_lib.label_truth(columns, 1.0)
