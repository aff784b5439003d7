"""Tests of AITM (models/aitm.py, models/layers/ait.py) against numpy oracles."""

import math

import numpy as np
import pytest
import tensorflow as tf

from models import aitm
from models.layers import ait
from tests.test_esmm import randomize
from tests.test_model_zoo import build_zoo, make_labelled_batch


def _sigmoid(x):
  return 1.0 / (1.0 + np.exp(-np.asarray(x, np.float64)))


def test_ait_attention_and_fused_vector_match_numpy():
  rng = np.random.default_rng(0)
  k = 4
  layer = ait.AdaptiveInformationTransfer(k)
  p = rng.normal(size=(5, k)).astype(np.float32)
  q = rng.normal(size=(5, k)).astype(np.float32)
  layer([p, q])  # builds h1, h2, h3
  h1, h2, h3 = (rng.normal(size=(k, k)).astype(np.float32) for _ in range(3))
  for dense, kernel in zip((layer.h1, layer.h2, layer.h3), (h1, h2, h3)):
    dense.kernel.assign(kernel)
  scores = np.stack([np.sum((u @ h2) * (u @ h3), axis=1) / math.sqrt(k) for u in (p, q)], 1)
  weights = np.exp(scores - scores.max(1, keepdims=True))
  weights /= weights.sum(1, keepdims=True)
  expected = weights[:, :1] * (p @ h1) + weights[:, 1:] * (q @ h1)
  np.testing.assert_allclose(layer.attention(p, q).numpy(), weights, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(layer([p, q]).numpy(), expected, rtol=1e-5, atol=1e-5)
  assert not any(d.use_bias for d in (layer.h1, layer.h2, layer.h3))


def test_calibrator_value_and_gradient_match_numpy():
  logits = [np.array([[0.0], [2.0], [-1.0]]), np.array([[1.0], [1.0], [-3.0]]),
            np.array([[1.5], [-1.0], [-2.0]])]
  variables = [tf.Variable(l, dtype=tf.float32) for l in logits]
  with tf.GradientTape() as tape:
    penalty = ait.ExpectationCalibratorPenalty()(variables)
    total = tf.reduce_sum(penalty)
  grads = [g.numpy() for g in tape.gradient(total, variables)]
  s = [_sigmoid(l) for l in logits]
  expected = sum(np.maximum(later - earlier, 0) for earlier, later in zip(s, s[1:]))
  np.testing.assert_allclose(penalty.numpy(), expected, rtol=1e-6)
  # d/dl_t: +s'(l_t) where step t exceeds t-1, -s'(l_t) where step t+1 exceeds t.
  expected_grads = []
  for t, st in enumerate(s):
    slope = st * (1 - st)
    up = (st > s[t - 1]) if t > 0 else np.zeros_like(st, bool)
    down = (s[t + 1] > st) if t + 1 < len(s) else np.zeros_like(st, bool)
    expected_grads.append(slope * (up.astype(float) - down.astype(float)))
  for got, want in zip(grads, expected_grads):
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("chain", [["click", "purchase"], ["click", "action", "purchase"]])
def test_step_losses_calibrator_and_exported_cvr_match_numpy(chain, tmp_path):
  model = build_zoo("aitm", tmp_path, params={"chain": chain, "calibrator_alpha": 0.3})
  randomize(model, seed=2)  # spread outputs: the calibrator's penalty is far from 0
  features, labels = make_labelled_batch(200, seed=3)
  out = {k: v.numpy()[:, 0].astype(np.float64) for k, v in model(features).items()}
  names = aitm.step_outputs(chain)
  assert set(out) == set(names) | {"cvr"}
  losses = model.task_losses((features, labels))
  label = np.ones(200)
  for name, step in zip(names, chain):
    label = label * labels[step].numpy()
    p = out[name]
    bce = -np.mean(label * np.log(p) + (1 - label) * np.log(1 - p))
    np.testing.assert_allclose(losses[name].numpy(), bce, rtol=1e-4)
  expected_cvr = np.clip(out["ctcvr"] / out["ctr"], 1e-7, 1 - 1e-7)
  np.testing.assert_allclose(out["cvr"], expected_cvr, rtol=1e-5)
  assert np.all((out["cvr"] > 0) & (out["cvr"] < 1)) and not np.isnan(out["cvr"]).any()
  steps = [out[name] for name in names]
  penalty = np.mean(sum(np.maximum(b - a, 0) for a, b in zip(steps, steps[1:])))
  assert penalty > 1e-3  # violated on many rows: a missing or wrong penalty shows
  aux = model.auxiliary_loss_values((features, labels))["calibrator_loss"].numpy()
  np.testing.assert_allclose(aux, penalty, rtol=1e-4, atol=1e-7)
  total = sum(losses[n].numpy() for n in names) + 0.3 * aux
  np.testing.assert_allclose(model.compute_loss((features, labels)).numpy(), total, rtol=1e-5)


def test_alpha_zero_has_no_calibrator_and_bad_chains_fail(tmp_path):
  model = build_zoo("aitm", tmp_path, params={"calibrator_alpha": 0.0})
  assert model.auxiliary_losses == ()
  with pytest.raises(ValueError, match="must start with 'click' and end with 'purchase'"):
    build_zoo("aitm", tmp_path / "bad", params={"chain": ["click", "action"]})


def test_information_flows_forward_only(tmp_path):
  """The ctr step's loss does not reach the later towers; the ctcvr loss reaches both."""
  model = build_zoo("aitm", tmp_path)
  batch = make_labelled_batch(128, seed=4)
  ctr_tower = model.scorer.get_layer("ctr_tower").trainable_variables
  ctcvr_tower = model.scorer.get_layer("ctcvr_tower").trainable_variables
  with tf.GradientTape(persistent=True) as tape:
    losses = model.task_losses(batch, training=True)
  assert all(g is None for g in tape.gradient(losses["ctr"], ctcvr_tower))
  assert all(g is not None for g in tape.gradient(losses["ctcvr"], ctr_tower + ctcvr_tower))
