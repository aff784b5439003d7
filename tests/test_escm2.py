"""Tests of ESCM2 (models/escm2.py): IPS and DR losses on hand-made batches (numpy)."""

import numpy as np
import pytest
import tensorflow as tf

from tests.test_esmm import make_batch
from tests.test_log_space import _set_tower_logit
from tests.test_model_zoo import build_zoo


def _logit(p):
  return float(np.log(p) - np.log1p(-p))


def _bce(y, p):
  return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _imputation_tower(model):
  return model.log_odds_model.get_layer("imputation_tower")


CLICK = np.array([1.0, 1.0, 0.0, 0.0, 1.0, 0.0])
PURCHASE = np.array([1.0, 0.0, 0.0, 0.0, 0.0, 0.0])


def _model(name, tmp_path, ctr, cvr, imputation=None, **params):
  """An ESCM2 model whose towers output fixed probabilities (logit kernels zeroed)."""
  model = build_zoo(name, tmp_path, params=params)
  _set_tower_logit(model, "ctr", _logit(ctr))
  _set_tower_logit(model, "cvr", _logit(cvr))
  if imputation is not None:  # a training-only tower: not in the exported scorer
    assert "imputation_tower" not in [layer.name for layer in model.scorer.layers]
    logit = _imputation_tower(model).logit
    logit.kernel.assign(tf.zeros_like(logit.kernel))
    logit.bias.assign(tf.fill(logit.bias.shape, imputation))
  features, _ = make_batch(len(CLICK), seed=2)
  labels = {"click": tf.constant(CLICK, tf.float32), "purchase": tf.constant(PURCHASE, tf.float32)}
  return model, (features, labels)


@pytest.mark.parametrize("normalization", ["exposures", "clicks"])
def test_ips_loss_on_a_hand_made_batch(tmp_path, normalization):
  model, batch = _model("escm2_ips", tmp_path, ctr=0.25, cvr=0.1,
                        ips_normalization=normalization)
  e = _bce(PURCHASE, 0.1)
  expected = np.sum(CLICK * e / 0.25) / (len(CLICK) if normalization == "exposures"
                                         else CLICK.sum())
  got = model.auxiliary_loss_values(batch)["cvr_ips_loss"].numpy()
  np.testing.assert_allclose(got, expected, rtol=1e-5)
  tasks = model.task_losses(batch)
  total = tasks["ctr"].numpy() + 1.0 * tasks["ctcvr"].numpy() + 0.1 * got
  np.testing.assert_allclose(model.compute_loss(batch).numpy(), total, rtol=1e-5)


def test_a_tiny_propensity_is_clipped(tmp_path):
  """ctr = 1e-4 on clicked rows: 1/ohat = 1e4 is clipped to max_inverse_propensity."""
  model, batch = _model("escm2_ips", tmp_path, ctr=1e-4, cvr=0.1, max_inverse_propensity=15.0)
  expected = np.sum(CLICK * _bce(PURCHASE, 0.1) * 15.0) / len(CLICK)
  np.testing.assert_allclose(model.auxiliary_loss_values(batch)["cvr_ips_loss"].numpy(),
                             expected, rtol=1e-5)
  floored, batch = _model("escm2_ips", tmp_path / "floor", ctr=1e-4, cvr=0.1,
                          max_inverse_propensity=1e9, propensity_floor=1e-2)
  expected = np.sum(CLICK * _bce(PURCHASE, 0.1) / 1e-2) / len(CLICK)
  np.testing.assert_allclose(floored.auxiliary_loss_values(batch)["cvr_ips_loss"].numpy(),
                             expected, rtol=1e-5)


def test_propensity_gradient_is_stopped(tmp_path):
  model, batch = _model("escm2_ips", tmp_path, ctr=0.25, cvr=0.1)
  ctr_bias = model.scorer.get_layer("ctr_tower").logit.bias
  cvr_bias = model.scorer.get_layer("cvr_tower").logit.bias
  with tf.GradientTape(persistent=True) as tape:
    ips = model.auxiliary_loss_values(batch)["cvr_ips_loss"]
  assert tape.gradient(ips, ctr_bias) is None
  # d/dz_cvr of sum o (softplus(z) - y z) / ohat / n = sum o (cvr - y) / ohat / n
  expected = np.sum(CLICK * (0.1 - PURCHASE) / 0.25) / len(CLICK)
  np.testing.assert_allclose(tape.gradient(ips, cvr_bias).numpy()[0], expected, rtol=1e-5)


def test_dr_and_imputation_losses_on_a_hand_made_batch(tmp_path):
  imputation_logit = 0.4
  model, batch = _model("escm2_dr", tmp_path, ctr=0.25, cvr=0.1, imputation=imputation_logit)
  e = _bce(PURCHASE, 0.1)
  e_hat = np.log1p(np.exp(imputation_logit))  # softplus
  n = len(CLICK)
  dr = np.sum(e_hat + CLICK * (e - e_hat) / 0.25) / n
  imputation = np.sum(CLICK * (e - e_hat) ** 2 / 0.25) / n
  aux = model.auxiliary_loss_values(batch)
  np.testing.assert_allclose(aux["cvr_dr_loss"].numpy(), dr, rtol=1e-5)
  np.testing.assert_allclose(aux["imputation_loss"].numpy(), imputation, rtol=1e-5)
  # Gradients: DR trains the CVR tower only, the imputation loss the imputation tower only.
  imputation_bias = _imputation_tower(model).logit.bias
  cvr_bias = model.scorer.get_layer("cvr_tower").logit.bias
  with tf.GradientTape(persistent=True) as tape:
    aux = model.auxiliary_loss_values(batch)
  assert tape.gradient(aux["cvr_dr_loss"], imputation_bias) is None
  assert tape.gradient(aux["imputation_loss"], cvr_bias) is None
  slope = 1 / (1 + np.exp(-imputation_logit))  # d softplus
  expected = np.sum(-2 * CLICK * (e - e_hat) / 0.25) * slope / n
  np.testing.assert_allclose(tape.gradient(aux["imputation_loss"], imputation_bias).numpy()[0],
                             expected, rtol=1e-5)


def test_outputs_follow_the_esmm_identity(tmp_path):
  model, (features, _) = _model("escm2_dr", tmp_path, ctr=0.3, cvr=0.2, imputation=0.0)
  out = {k: v.numpy() for k, v in model(features).items()}
  assert set(out) == {"ctr", "cvr", "ctcvr"}
  np.testing.assert_allclose(out["ctr"], 0.3, rtol=1e-6)
  np.testing.assert_allclose(out["cvr"], 0.2, rtol=1e-6)
  np.testing.assert_array_equal(out["ctcvr"], out["ctr"] * out["cvr"])


@pytest.mark.parametrize("name", ["escm2_ips", "escm2_dr"])
def test_a_short_fit_lowers_the_loss_and_trains_every_tower(name, tmp_path):
  from tests.test_model_zoo import make_labelled_batch  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  model = build_zoo(name, tmp_path)
  model.compile(tf_keras.optimizers.Adam(0.01))
  batch = make_labelled_batch(512, seed=7)
  before = model.compute_loss(batch).numpy()
  towers = ["ctr_tower", "cvr_tower"] + (["imputation_tower"] if name == "escm2_dr" else [])
  start = {t: [w.numpy().copy() for w in model.log_odds_model.get_layer(t).weights]
           for t in towers}
  data = tf.data.Dataset.from_tensor_slices(make_labelled_batch(3000, seed=8)).batch(128)
  history = model.fit(data, epochs=2, verbose=0)
  assert model.compute_loss(batch).numpy() < 0.9 * before
  assert {"cvr_ips_loss"} <= set(history.history) or {"cvr_dr_loss", "imputation_loss"} <= set(
      history.history)
  for tower, weights in start.items():
    after = model.log_odds_model.get_layer(tower).weights
    assert any(np.any(a.numpy() != b) for a, b in zip(after, weights)), tower
