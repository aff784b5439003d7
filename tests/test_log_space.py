"""Tests of models.layers.log_space and the losses computed from it, against float64 numpy.

The oracle computes every probability and its gradient in float64 from the logits with
plain numpy formulas (log p = sum of log-sigmoids; log(1 - p) by log1p/expm1), not with
the code under test. Where p is within float64's rounding of 1 (a composite head whose
factors' logits are all >= 16, so 1 - p < 1e-13), the oracle is the plain formula
(p = ctr * cvr, 1 - p by subtraction) in 150-digit decimal arithmetic, its gradient a
central difference there.
"""

import decimal
import math

import numpy as np
import pytest
import tensorflow as tf

from models.layers import log_space
from tests.test_esmm import build, make_batch


def _log_sigmoid(z):
  return -np.logaddexp(0.0, -np.asarray(z, np.float64))


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


def _bce_of_product(y, logits):
  """float64 BCE(y, prod sigmoid(z_i)) and its gradient w.r.t. each z_i."""
  logits = np.asarray(logits, np.float64)
  log_p = _log_sigmoid(logits).sum()
  p = np.exp(log_p)
  log_not_p = np.log(-np.expm1(log_p))
  loss = -(y * log_p + (1 - y) * log_not_p)
  # d log p / dz_i = 1 - sigmoid(z_i); d log(1-p) / dz_i = -p/(1-p) * (1 - sigmoid(z_i)).
  d_log_p = 1.0 - _sigmoid(logits)
  grad = -(y * d_log_p + (1 - y) * (-p / (1.0 - p)) * d_log_p)
  return loss, grad


def _layer_bce_and_grad(y, logits, compose=None):
  """float32 BCE(y, p) from the layers (p = compose(the logits' log pairs)) and its
  gradient w.r.t. each logit. compose: log pairs -> log pair (default: their product)."""
  compose = compose or log_space.LogPairProduct()
  z = [tf.Variable([[v]], dtype=tf.float32) for v in logits]
  with tf.GradientTape() as tape:
    pairs = [log_space.SigmoidLogPair()(v) for v in z]
    log_odds = log_space.LogPairLogit()(compose(pairs))
    loss = tf.nn.sigmoid_cross_entropy_with_logits(tf.constant([[float(y)]]), log_odds)
  grads = tape.gradient(loss, z)
  return float(loss.numpy()), np.array([float(g.numpy()) for g in grads])


def _mixture(b, a, c):
  return b * a + (1 - b) * c


# Composite heads: (the probability from the factors' sigmoids, in Decimal; the same
# composition of the layers on the factors' log pairs). ESM2's ctcvr = ctr * cvr with
# cvr = mixture(action, buy | action, buy | no action) has HM3's ctmacro's shape.
COMPOSITES = {
    "esmm_ctcvr": (2, math.prod, lambda q: log_space.LogPairProduct()(q)),
    "esm2_ctcvr": (4, lambda s: s[0] * _mixture(*s[1:4]),
                   lambda q: log_space.LogPairProduct()([q[0],
                                                         log_space.LogPairMixture()(q[1:4])])),
    "hm3_ctcvr": (6, lambda s: s[0] * _mixture(_mixture(*s[1:4]), *s[4:6]),
                  lambda q: log_space.LogPairProduct()([q[0], log_space.LogPairMixture()(
                      [log_space.LogPairMixture()(q[1:4]), *q[4:6]])])),
}


def _exact_bce_and_grad(y, logits, probability):
  """BCE(y, probability(sigmoids of logits)) and its gradient, in 150-digit decimals:
  p by the plain formula, 1 - p by subtraction, the gradient by central differences."""
  with decimal.localcontext() as context:
    context.prec = 150

    def bce(zs):
      p = probability([1 / (1 + (-z).exp()) for z in zs])
      return -(p.ln() if y else (1 - p).ln())

    zs = [decimal.Decimal(float(z)) for z in logits]
    step = decimal.Decimal("1e-20")
    grad = []
    for i in range(len(zs)):
      up, down = list(zs), list(zs)
      up[i] += step
      down[i] -= step
      grad.append(float((bce(up) - bce(down)) / (2 * step)))
    return float(bce(zs)), np.array(grad)


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
@pytest.mark.parametrize("logit", [16.0, 20.0, 40.0])
@pytest.mark.parametrize("y", [0, 1])
def test_composite_heads_near_one_match_the_exact_loss(composite, logit, y):
  """Every factor's logit large (p -> 1): a negative's loss is -log(1 - p), which the
  old log-sum-exp mixture inside a product lost (ESM2's ctcvr at four logits of 20:
  loss 18.901 for 19.307, gradient 0.333 for 0.500 on ctr)."""
  count, probability, compose = COMPOSITES[composite]
  logits = [logit] * count
  expected_loss, expected_grad = _exact_bce_and_grad(y, logits, probability)
  loss, grad = _layer_bce_and_grad(y, logits, compose)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-4)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-4,
                             atol=1e-4 * np.max(np.abs(expected_grad)))


@pytest.mark.parametrize("logits", [(50.0, 50.0), (80.0, 80.0), (100.0, 100.0),
                                    (100.0, 60.0), (80.0, 40.0, 90.0)])
def test_a_negative_at_huge_logits_keeps_its_loss_and_gradient(logits):
  """A negative's loss -log(1 - p) ~ min logit grows without bound, with gradient summing
  to ~1 over the factors (it was clamped at 69.08, gradient 0, from logits ~69)."""
  expected_loss, expected_grad = _exact_bce_and_grad(0, logits, math.prod)
  loss, grad = _layer_bce_and_grad(0, logits)
  assert np.isfinite(loss) and np.all(np.isfinite(grad))
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(grad.sum(), 1.0, rtol=1e-4)


RARE = float(np.log(1e-4) - np.log1p(-1e-4))  # logit of 1e-4


@pytest.mark.parametrize("logits", [(RARE, RARE), (20.0, -20.0), (20.0, 20.0),
                                    (-20.0, -20.0), (-20.0, 20.0), (0.3, -2.0, 5.0)])
@pytest.mark.parametrize("y", [0, 1])
def test_product_head_loss_and_gradient_match_float64(logits, y):
  expected_loss, expected_grad = _bce_of_product(y, logits)
  loss, grad = _layer_bce_and_grad(y, logits)
  np.testing.assert_allclose(loss, expected_loss, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(grad, expected_grad, rtol=1e-4, atol=1e-7)
  if y == 1:  # a positive teaches every factor whose probability is not ~1
    assert np.all(np.abs(grad)[np.asarray(logits) < 15] > 1e-3)


def test_a_surprising_conversion_has_the_full_gradient():
  """ctr = cvr = 1e-4 and clicked+bought: loss -log(1e-8) = 18.4, gradient ~ -1 on each
  tower (the clipped probability-space loss gave 15.4 and exactly 0)."""
  loss, grad = _layer_bce_and_grad(1, (RARE, RARE))
  np.testing.assert_allclose(loss, -2 * np.log(1e-4), rtol=1e-5)
  np.testing.assert_allclose(grad, [-(1 - 1e-4)] * 2, rtol=1e-5)


def _mixture_oracle(zb, za, zc):
  b, a, c = _sigmoid(zb), _sigmoid(za), _sigmoid(zc)
  not_b, not_a, not_c = _sigmoid(-zb), _sigmoid(-za), _sigmoid(-zc)  # exact 1 - x
  p = b * a + not_b * c
  not_p = b * not_a + not_b * not_c
  return np.log(p), np.log(not_p)


@pytest.mark.parametrize("zs", [(0.5, -1.0, 2.0), (-30.0, 25.0, -40.0), (12.0, -18.0, 3.0),
                                (30.0, 30.0, -30.0)])
def test_mixture_log_pair_matches_float64(zs):
  z = [tf.constant([[v]], tf.float32) for v in zs]
  pair = log_space.LogPairMixture()([log_space.SigmoidLogPair()(v) for v in z]).numpy()[0]
  log_p, log_not_p = _mixture_oracle(*zs)
  np.testing.assert_allclose(pair, [log_p, log_not_p], rtol=1e-5, atol=1e-6)


def test_log1mexp_is_stable_and_has_finite_gradients():
  a = tf.constant([-1e-12, -1e-6, -0.5, -0.7, -5.0, -60.0, 0.0])
  with tf.GradientTape() as tape:
    tape.watch(a)
    value = log_space.log1mexp(a)
  grad = tape.gradient(value, a).numpy()
  expected = np.log(-np.expm1(np.array([-1e-12, -1e-6, -0.5, -0.7, -5.0, -60.0],
                                       np.float64)))
  np.testing.assert_allclose(value.numpy()[:-1], expected, rtol=1e-5, atol=1e-12)
  assert np.all(np.isfinite(value.numpy())) and np.all(np.isfinite(grad))


def _set_tower_logit(model, tower, value):
  """Zero the tower's logit kernel and set its bias: the tower outputs `value` always."""
  logit = model.scorer.get_layer(f"{tower}_tower").logit
  logit.kernel.assign(tf.zeros_like(logit.kernel))
  logit.bias.assign(tf.fill(logit.bias.shape, value))
  return logit


def test_esmm_ctcvr_loss_reaches_both_towers_for_a_rare_positive(tmp_path):
  model = build("esmm", tmp_path)
  features, _ = make_batch(4, seed=1)
  ctr_logit = _set_tower_logit(model, "ctr", RARE)
  cvr_logit = _set_tower_logit(model, "cvr", RARE)
  labels = {"click": tf.constant([1.0, 0.0, 0.0, 0.0]),
            "purchase": tf.constant([1.0, 0.0, 0.0, 0.0])}
  with tf.GradientTape() as tape:
    ctcvr = model.task_losses((features, labels))["ctcvr"]
  grad_ctr, grad_cvr = tape.gradient(ctcvr, [ctr_logit.bias, cvr_logit.bias])
  # Oracle: mean over 4 rows of BCE(y, ctr*cvr); row 0 is a positive, rows 1-3 negatives.
  losses = [_bce_of_product(1, (RARE, RARE))] + [_bce_of_product(0, (RARE, RARE))] * 3
  np.testing.assert_allclose(ctcvr.numpy(), np.mean([l for l, _ in losses]), rtol=1e-5)
  expected = np.mean([g for _, g in losses], axis=0)
  np.testing.assert_allclose([grad_ctr.numpy()[0], grad_cvr.numpy()[0]], expected,
                             rtol=1e-4)
  assert abs(expected[0]) > 0.2  # the positive dominates: -(1 - 1e-4) / 4


def test_weighted_task_is_the_mean_over_its_weights(tmp_path):
  """naive's cvr task = sum_i click_i BCE(purchase_i, cvr_i) / sum_i click_i."""
  model = build("naive", tmp_path)
  features, labels = make_batch(300, seed=8)
  cvr = model(features)["cvr"].numpy()[:, 0].astype(np.float64)
  click, purchase = labels["click"].numpy(), labels["purchase"].numpy()
  bce = -(purchase * np.log(cvr) + (1 - purchase) * np.log(1 - cvr))
  loss = model.task_losses((features, labels))["cvr"].numpy()
  np.testing.assert_allclose(loss, np.sum(click * bce) / click.sum(), rtol=1e-5)
  no_clicks = dict(labels, click=tf.zeros_like(labels["click"]),
                   purchase=tf.zeros_like(labels["purchase"]))
  assert model.task_losses((features, no_clicks))["cvr"].numpy() == 0.0
