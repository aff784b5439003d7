"""training/feedback_objective.py: a registered model's objective under each delayed-feedback
method, against a float64 numpy oracle; FNC's correction inside the exported SavedModel;
the auxiliary classifier of ES-DFM and DEFER (training/feedback_auxiliary.py) on rows
with a known delayed-positive rate.

A batch of stream samples is made by hand: exposures (clicked or not), observed samples,
duplicates and DEFER's final re-entries, with labels, kinds and f_dp known. The oracle
computes each term from the model's own log-odds in float64: the conversion task's loss
with the method's count weights (p = sigmoid of the cvr log-odds) on clicked samples and
1 on unclicked ones, over the samples that train it; the click task's BCE over the
exposure samples only. The model is tests/test_esmm.py's tiny ESMM (or naive baseline)
with random weights; no training step is traced except the one short fit.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from features import parsing
from tests.test_esmm import SPEC, build, make_artifacts, make_batch, make_config, randomize
from training import export as export_lib
from training import feedback_auxiliary
from training import feedback_days
from training import feedback_inputs
from training import feedback_objective as objective

KIND = {name: index for index, name in enumerate(feedback_days.KINDS)}
# (click, conversion, kind) per sample: every kind, labels 0 and 1, unclicked exposures.
SAMPLES = [(0, 0, "exposure"), (1, 0, "exposure"), (1, 1, "exposure"), (0, 0, "exposure"),
           (1, 1, "duplicate"), (1, 0, "observed"), (1, 1, "observed"), (1, 1, "final"),
           (1, 0, "final"), (1, 0, "exposure"), (0, 0, "exposure"), (1, 1, "duplicate")]
N = len(SAMPLES)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
  """The tiny ESMM and naive baseline, random weights (read-only here)."""
  built = {}
  for name in ("esmm", "naive"):
    model = build(name, tmp_path_factory.mktemp(name))
    randomize(model, seed=3)
    built[name] = model
  return built


def stream_batch(method):
  features, _ = make_batch(N, seed=4)
  click, conversion, kind = (np.array(column) for column in zip(*SAMPLES))
  kind = np.array([KIND[k] for k in kind])
  f_dp = np.linspace(0.02, 0.3, N)
  labels = objective.stream_labels(
      click, conversion, kind, method,
      f_dp=f_dp if method in objective.NEEDS_DELAYED_POSITIVE else None)
  return (features, labels), {"click": click, "conversion": conversion, "kind": kind,
                              "f_dp": f_dp}


def numpy_feedback_loss(method, label, click, weight, logit, cvr_logit, f_dp):
  """sum_i s_i [w1 y (-log q) + w0 (1 - y) (-log(1 - q))] / sum_i s_i in float64, the
  count weights of models/layers/delayed_feedback.py on clicked samples, 1 elsewhere."""
  logit, cvr_logit = (np.asarray(a, np.float64) for a in (logit, cvr_logit))
  log_q, log_not_q = -np.logaddexp(0.0, -logit), -np.logaddexp(0.0, logit)
  p = 1.0 / (1.0 + np.exp(-cvr_logit))
  w1, w0 = np.ones_like(p), np.ones_like(p)
  if method == "fnw":
    w0 = 1.0 - p
  elif method == "esdfm":
    w0 = (1.0 - p) / (1.0 - p + f_dp)
  elif method == "defer":
    w1, w0 = np.full_like(p, 0.5), (1.0 - p) / (2.0 * (1.0 - p) + f_dp)
  w1, w0 = np.where(click > 0, w1, 1.0), np.where(click > 0, w0, 1.0)
  per = -(label * w1 * log_q + (1.0 - label) * w0 * log_not_q) * weight
  return per.sum() / weight.sum()


def numpy_bce(label, logit, weight):
  logit = np.asarray(logit, np.float64)
  per = label * np.logaddexp(0.0, -logit) + (1 - label) * np.logaddexp(0.0, logit)
  return (per * weight).sum() / weight.sum()


@pytest.mark.parametrize("method", ["vanilla", "waiting", "fnw", "fnc", "esdfm", "defer"])
@pytest.mark.parametrize("name", ["esmm", "naive"])
def test_each_term_matches_the_numpy_oracle(models, name, method):
  model = objective.feedback_model(models[name], method)
  batch, raw = stream_batch(method)
  log_odds = {k: v.numpy().reshape(-1) for k, v in model.log_odds(batch[0]).items()}
  click, conversion = raw["click"].astype(float), raw["conversion"].astype(float)
  exposure = (raw["kind"] == KIND["exposure"]).astype(float)
  trains_conversion = np.ones(N)
  if method in ("waiting", "esdfm", "defer"):
    trains_conversion = 1.0 - exposure * click
  # ESMM trains ctcvr over every exposure (label click * purchase); naive trains cvr over
  # the clicked ones (label purchase, weight click).
  output, label, weight = {"esmm": ("ctcvr", click * conversion, trains_conversion),
                           "naive": ("cvr", conversion, click * trains_conversion)}[name]
  assert objective.trained_output(model) == output
  expected = numpy_feedback_loss(method, label, click, weight, log_odds[output],
                                 log_odds["cvr"], raw["f_dp"])
  auxiliary = model.auxiliary_loss_values(batch)
  assert float(auxiliary[f"{output}_feedback"]) == pytest.approx(expected, rel=1e-5)
  tasks = model.task_losses(batch)
  # The click task reads exposure samples only: duplicates and re-entries count no click.
  assert float(tasks["ctr"]) == pytest.approx(
      numpy_bce(click, log_odds["ctr"], exposure), rel=1e-5)
  assert model.task_loss_weights[output] == 0.0  # metrics only: the feedback loss trains
  total = model.compute_loss(batch).numpy()
  assert total == pytest.approx(float(tasks["ctr"]) + expected, rel=1e-5)


def test_the_weights_are_held_constant(models):
  """The gradient of DEFER's loss equals that of the same loss with its weights fed in as
  constants (p and f_dp carry no gradient)."""
  model = objective.feedback_model(models["esmm"], "defer")
  batch, _ = stream_batch("defer")
  log_odds = model.log_odds(batch[0])
  w1, w0 = (tf.constant(w.numpy()) for w in objective.class_weights(
      "defer", batch[1], log_odds))
  variables = model.trainable_variables
  labels = batch[1]
  with tf.GradientTape(persistent=True) as tape:
    found = model.auxiliary_loss_values(batch, training=True)["ctcvr_feedback"]
    logit = tf.reshape(model.log_odds(batch[0], training=True)["ctcvr"], [-1, 1])
    pair = tf.concat([tf.math.log_sigmoid(logit), tf.math.log_sigmoid(-logit)], -1)
    mask = labels["trains_conversion"]
    constant = tf.reduce_sum(mask * objective.losses.weighted_log_loss(
        labels["click"] * labels["purchase"], pair, w1, w0)) / tf.reduce_sum(mask)
  assert float(found) == pytest.approx(float(constant), rel=1e-6)
  for got, want in zip(tape.gradient(found, variables), tape.gradient(constant, variables)):
    if want is None:
      assert got is None
      continue
    got = tf.convert_to_tensor(got).numpy()
    np.testing.assert_allclose(got, tf.convert_to_tensor(want).numpy(), rtol=1e-5,
                               atol=1e-7)


def test_a_model_with_labels_a_stream_lacks_or_an_unknown_method_is_refused(models,
                                                                            tmp_path):
  with pytest.raises(ValueError, match=r"reads labels \['action'\]"):
    objective.feedback_model(build("esm2", tmp_path), "fnw")
  with pytest.raises(ValueError, match="unknown delayed-feedback method 'dfx'"):
    objective.feedback_model(models["esmm"], "dfx")
  with pytest.raises(ValueError, match="needs f_dp"):
    objective.stream_labels([1], [0], [0], "esdfm")


def test_a_short_fit_on_a_stream_lowers_the_loss(tmp_path):
  tf_keras.utils.set_random_seed(0)  # initial weights and order: not the earlier tests'
  model = build("esmm", tmp_path)
  trained = objective.feedback_model(model, "fnw")
  trained.compile(tf_keras.optimizers.Adam(0.02))
  features, labels = make_batch(2048, seed=5)
  # The FNW stream of these exposures: each clicked one at once as a negative, and a
  # duplicate positive for each purchase.
  bought = labels["purchase"].numpy() > 0
  index = np.concatenate([np.arange(2048), np.flatnonzero(bought)])
  kind = np.where(np.arange(len(index)) < 2048, KIND["exposure"], KIND["duplicate"])
  conversion = (np.arange(len(index)) >= 2048).astype(int)
  sample_features = {k: tf.gather(v, index) for k, v in features.items()}
  sample_labels = objective.stream_labels(
      tf.gather(labels["click"], index), conversion, kind, "fnw")
  dataset = tf.data.Dataset.from_tensor_slices((sample_features, sample_labels)).shuffle(
      4096, seed=1).batch(256)
  before = trained.evaluate(dataset, return_dict=True, verbose=0)
  history = trained.fit(dataset, epochs=2, verbose=0)
  assert "ctcvr_feedback" in history.history
  assert history.history["loss"][-1] < 0.8 * before["loss"]


def test_fnc_serves_q_over_1_minus_q_inside_the_saved_model(models, tmp_path):
  esmm, naive = models["esmm"], models["naive"]
  features, _ = make_batch(40, seed=6)
  for model in (esmm, naive):
    assert objective.serving_scorer(model.scorer, "fnw", "ctcvr") is model.scorer
  served = objective.serving_scorer(esmm.scorer, "fnc", objective.trained_output(esmm))
  raw = {k: v.numpy().astype(np.float64).reshape(-1) for k, v in esmm(features).items()}
  q = np.minimum(raw["ctcvr"], (1 - 1e-7) / 2)
  expected = {"ctr": raw["ctr"], "ctcvr": q / (1 - q),
              "cvr": np.minimum(q / (1 - q) / raw["ctr"], 1.0)}
  export_dir = export_lib.export_saved_model(served, SPEC, str(tmp_path / "export"),
                                             version=1)
  loaded = tf.saved_model.load(export_dir)
  padded = {name: (value.to_tensor() if isinstance(value, tf.RaggedTensor) else value)
            for name, value in features.items() if name in parsing.raw_input_signature(SPEC)}
  outputs = loaded.signatures[export_lib.PREDICT_RAW](**padded)
  for name, value in expected.items():
    np.testing.assert_allclose(outputs[name].numpy(), value, rtol=2e-5, err_msg=name)
  # The naive baseline trains cvr in the click space: cvr' = q / (1 - q), ctcvr = ctr * cvr'.
  naive_served = objective.serving_scorer(naive.scorer, "fnc", objective.trained_output(naive))
  raw = {k: v.numpy().astype(np.float64).reshape(-1) for k, v in naive(features).items()}
  got = {k: v.numpy().reshape(-1) for k, v in naive_served(features).items()}
  q = np.minimum(raw["cvr"], (1 - 1e-7) / 2)
  np.testing.assert_allclose(got["cvr"], q / (1 - q), rtol=2e-5)
  np.testing.assert_allclose(got["ctcvr"], raw["ctr"] * q / (1 - q), rtol=2e-5)


def test_the_auxiliary_classifier_learns_the_delayed_positive_rate(tmp_path):
  """feedback_auxiliary's naive click-space model, fed clicked rows labelled with a known
  delayed-positive rate (0.5 at position 0, 0.05 elsewhere), serves that rate as f_dp."""
  # The classifier's initial weights come from the global seed: set it, so that the
  # result does not depend on the tests this process ran before (over seeds 0-5 the
  # position-0 mean is 0.47-0.59; one suite's process history gave 0.40).
  tf_keras.utils.set_random_seed(0)
  features, _ = make_batch(6000, seed=11)
  position = features["position"].numpy()
  rate = np.where(position == 0, 0.5, 0.05)
  delayed = (np.random.default_rng(12).uniform(size=len(rate)) < rate).astype(np.float32)
  dataset = tf.data.Dataset.from_tensor_slices((features, {
      "click": np.ones_like(delayed), "purchase": delayed})).shuffle(6000, seed=2).batch(128)
  config = make_config("esmm")
  artifacts = make_artifacts(str(tmp_path / "transform"))
  model = feedback_auxiliary.train_delayed_positive_model(config, SPEC, artifacts, dataset,
                                                          epochs=2, learning_rate=0.02)
  assert model.name == "naive" and model.task_loss_weights["ctr"] == 0.0
  f_dp = feedback_inputs.f_dp_function(model.scorer)(features).numpy()
  assert f_dp.shape == (6000,)
  assert f_dp[position == 0].mean() == pytest.approx(0.5, abs=0.08)
  assert f_dp[position != 0].mean() == pytest.approx(0.05, abs=0.03)


@pytest.mark.parametrize("name", ["esmm", "naive"])
def test_dfm_term_is_the_delayed_likelihood_of_the_clicks(models, name):
  """DFM (each click once, with its delay or elapsed time): the term equals the numpy
  negative log-likelihood -(log p + log lambda - lambda d) of a conversion after delay
  d and -log(1 - p + p exp(-lambda e)) of a click unconverted after e, on the model's
  cvr and its delay head, summed over clicked samples over the conversion task's
  normaliser; the delay head learns from it; the served scorer is the model's own."""
  model = objective.feedback_model(models[name], "dfm")
  features, _ = make_batch(N, seed=4)
  click = np.array([s[0] for s in SAMPLES], np.float64)
  conversion = np.array([s[1] for s in SAMPLES], np.float64) * click
  elapsed = np.linspace(0.1, 5.0, N)
  labels = objective.stream_labels(click, conversion, np.zeros(N, np.int64), "dfm",
                                   elapsed_days=elapsed)
  log_odds = {k: v.numpy().astype(np.float64).reshape(-1)
              for k, v in model.log_odds(features).items()}
  z, log_rate = log_odds["cvr"], log_odds[objective.DELAY_OUTPUT]
  log_p, log_not_p = -np.logaddexp(0.0, -z), -np.logaddexp(0.0, z)
  hazard = np.exp(log_rate) * elapsed
  nll = np.where(conversion > 0, -(log_p + log_rate - hazard),
                 -np.logaddexp(log_not_p, log_p - hazard))
  weight = np.ones(N) if name == "esmm" else click  # ESMM: over exposures; naive: clicks
  expected = (weight * click * nll).sum() / weight.sum()
  output = objective.trained_output(model)
  found = model.auxiliary_loss_values((features, labels))[f"{output}_feedback"]
  assert float(found) == pytest.approx(expected, rel=1e-5)
  head = model.log_odds_model.get_layer(objective.DELAY_OUTPUT).trainable_variables
  with tf.GradientTape() as tape:
    loss = model.compute_loss((features, labels), training=True)
  assert all(float(tf.reduce_max(tf.abs(g))) > 0 for g in tape.gradient(loss, head))
  assert objective.serving_scorer(models[name].scorer, "dfm", output) is models[name].scorer
  with pytest.raises(ValueError, match="needs elapsed_days"):
    objective.stream_labels(click, conversion, np.zeros(N, np.int64), "dfm")


def test_the_configs_feedback_methods_are_the_objectives_and_bad_settings_are_refused():
  from configs import config as config_lib  # pylint: disable=g-import-not-at-top
  assert config_lib.FEEDBACK_METHODS == ("none",) + objective.METHODS
  assert config_lib.FEEDBACK_WINDOWED == feedback_inputs.streams.WINDOWED
  daily = "configs/esmm_feedback.yaml"
  for name in ("esmm", "naive"):
    config = config_lib.load_config(f"configs/{name}_feedback.yaml")
    assert (config.model.name, config.feedback.method, config.feedback.window_s) == (
        name, "esdfm", 3600)
  assert not config_lib.load_config("configs/esmm_daily.yaml").feedback.enabled
  for overrides, message in [
      ({"feedback": {"method": "fnv"}}, "feedback.method 'fnv'"),
      ({"feedback": {"method": "esdfm", "window_s": 2 * 86400}}, "window_s 172800"),
      ({"feedback": {"method": "fnc"}, "train": {"calibration": "platt"}},
       "train.calibration 'platt'"),
      ({"feedback": {"methods": "fnc"}}, "unknown key feedback.methods")]:
    with pytest.raises(config_lib.ConfigError, match=message):
      config_lib.load_config(daily, overrides=overrides)
  # esmm_daily.yaml early-stops and calibrates on its validation split: both named.
  with pytest.raises(config_lib.ConfigError, match="calibration 'ips_ctr' and train."
                     "early_stopping_patience 1"):
    config_lib.load_config("configs/esmm_daily.yaml",
                           overrides={"feedback": {"method": "fnw"}})


def test_pipeline_train_refuses_a_method_on_data_without_a_day_before_tensorflow(
    small_world, tmp_path):
  """pipeline.train --feedback_method: one line, before TensorFlow, naming what is wrong:
  the config's validation-split settings, or data that is no day's output."""
  from tests import test_entry_points as entry_points  # pylint: disable=g-import-not-at-top
  common = ("--config", small_world["config"], "--data", small_world["data"],
            "--model_dir", str(tmp_path / "model"), "--feedback_method", "fnw")
  for extra, expected in (
      ((), "feedback.method 'fnw' trains on its stream without a validation split: "
           "train.calibration 'ips_ctr' and train.early_stopping_patience 1"),
      (("--calibration", "none", "--early_stopping_patience", "0"),
       f"--data {small_world['data']}: no day.json: feedback.method 'fnw' trains on a "
       f"day's stream, the output of pipeline.preprocess --day")):
    result = entry_points.run(entry_points.module_command("train", *common, *extra),
                              entry_points.REPO, env=entry_points.IMPORT_TIMES)
    entry_points.assert_one_error_line(result, expected)
    assert "tensorflow" not in entry_points.split_import_lines(result.stderr)[0]
