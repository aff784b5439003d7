"""Delayed-feedback streams (training/feedback_streams.py) and losses
(models/layers/delayed_feedback.py).

Oracles: a hand-made list of exposures whose every sample, label, time and duplicate is
written out here; float64 numpy formulas of each loss and of its gradient; and an
unbiasedness check by simulation: on one cell of x (known click and conversion rates,
exponential delays), the minimiser of a method's weighted loss on its one-day training
stream (every exposure of the 9 days before the period's end contributes the samples it
ingests in the period) is the final CTCVR rate within 3 standard errors, and vanilla's
and the waiting window's are not.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from models.layers import delayed_feedback as losses
from models.layers import log_space
from training import feedback_streams as streams

HOUR, DAY = 3600.0, 86400.0
W = 7 * DAY  # attribution window
C = 6 * HOUR  # elapsed-time window (ES-DFM, DEFER) and waiting window


def _config(method):
  return streams.StreamConfig(method, attribution_s=W,
                              window_s=C if method in streams.WINDOWED else 0.0)


# ---- the streams, on a hand-made list of exposures ----

EXPOSURES = {
    "unclicked": streams.Exposure(0.0),
    "quick": streams.Exposure(100.0, 100.0, 100.0 + HOUR),  # converts within c
    "delayed": streams.Exposure(200.0, 200.0, 200.0 + 2 * DAY),  # c < d <= W
    "never": streams.Exposure(300.0, 300.0),
    "too_late": streams.Exposure(400.0, 400.0, 400.0 + 8 * DAY),  # d > W: not attributed
}


def _stream(method, until, since=-math.inf):
  """{exposure name: [(time, click, conversion, kind)]}."""
  return {name: [(s.time, s.click, s.conversion, s.kind)
                 for s in streams.samples(exposure, _config(method), until, since)]
          for name, exposure in EXPOSURES.items()}


def _expected(rows):
  """Every exposure's samples; the unclicked one is the same real negative in each."""
  return {"unclicked": [(0.0, 0, 0, "exposure")], **rows}


LATER = 20 * DAY  # every window has closed
EXPECTED_LATER = {
    "oracle": _expected({
        "quick": [(100.0, 1, 1, "exposure")], "delayed": [(200.0, 1, 1, "exposure")],
        "never": [(300.0, 1, 0, "exposure")], "too_late": [(400.0, 1, 0, "exposure")]}),
    "vanilla": _expected({  # everything has arrived by now: the final labels
        "quick": [(100.0, 1, 1, "exposure")], "delayed": [(200.0, 1, 1, "exposure")],
        "never": [(300.0, 1, 0, "exposure")], "too_late": [(400.0, 1, 0, "exposure")]}),
    "waiting": _expected({  # a conversion after w is lost
        "quick": [(100.0, 1, 0, "exposure"), (100.0 + C, 1, 1, "observed")],
        "delayed": [(200.0, 1, 0, "exposure"), (200.0 + C, 1, 0, "observed")],
        "never": [(300.0, 1, 0, "exposure"), (300.0 + C, 1, 0, "observed")],
        "too_late": [(400.0, 1, 0, "exposure"), (400.0 + C, 1, 0, "observed")]}),
    "fnw": _expected({
        "quick": [(100.0, 1, 0, "exposure"), (100.0 + HOUR, 1, 1, "duplicate")],
        "delayed": [(200.0, 1, 0, "exposure"), (200.0 + 2 * DAY, 1, 1, "duplicate")],
        "never": [(300.0, 1, 0, "exposure")], "too_late": [(400.0, 1, 0, "exposure")]}),
    "esdfm": _expected({
        "quick": [(100.0, 1, 0, "exposure"), (100.0 + C, 1, 1, "observed")],
        "delayed": [(200.0, 1, 0, "exposure"), (200.0 + C, 1, 0, "observed"),
                    (200.0 + 2 * DAY, 1, 1, "duplicate")],
        "never": [(300.0, 1, 0, "exposure"), (300.0 + C, 1, 0, "observed")],
        "too_late": [(400.0, 1, 0, "exposure"), (400.0 + C, 1, 0, "observed")]}),
    "defer": _expected({
        "quick": [(100.0, 1, 0, "exposure"), (100.0 + C, 1, 1, "observed"),
                  (100.0 + W, 1, 1, "final")],
        "delayed": [(200.0, 1, 0, "exposure"), (200.0 + C, 1, 0, "observed"),
                    (200.0 + 2 * DAY, 1, 1, "duplicate"), (200.0 + W, 1, 1, "final")],
        "never": [(300.0, 1, 0, "exposure"), (300.0 + C, 1, 0, "observed"),
                  (300.0 + W, 1, 0, "final")],
        "too_late": [(400.0, 1, 0, "exposure"), (400.0 + C, 1, 0, "observed"),
                     (400.0 + W, 1, 0, "final")]}),
}
EXPECTED_LATER["fnc"] = EXPECTED_LATER["fnw"]


@pytest.mark.parametrize("method", streams.METHODS)
def test_each_stream_once_every_window_has_closed(method):
  assert _stream(method, LATER) == EXPECTED_LATER[method]


def test_streams_at_a_snapshot_one_day_after_the_clicks():
  """At one day, the delayed conversion has not arrived: a fake negative for vanilla, no
  duplicate yet for FNW and ES-DFM, no final sample yet for DEFER."""
  day = DAY
  assert _stream("vanilla", day)["delayed"] == [(200.0, 1, 0, "exposure")]
  assert _stream("vanilla", day)["quick"] == [(100.0, 1, 1, "exposure")]
  assert _stream("oracle", day)["delayed"] == [(200.0, 1, 1, "exposure")]
  assert _stream("fnw", day)["delayed"] == [(200.0, 1, 0, "exposure")]
  assert _stream("esdfm", day)["delayed"] == [(200.0, 1, 0, "exposure"),
                                              (200.0 + C, 1, 0, "observed")]
  assert _stream("defer", day) == {name: rows for name, rows in _stream("esdfm", day).items()}
  # A period's stream holds what was ingested in it, from exposures of any earlier day.
  period = _stream("defer", 8 * DAY, since=DAY)
  assert period["delayed"] == [(200.0 + 2 * DAY, 1, 1, "duplicate"),
                               (200.0 + W, 1, 1, "final")]
  assert period["unclicked"] == [] and period["too_late"] == [(400.0 + W, 1, 0, "final")]


def test_only_the_exposure_sample_trains_the_click_task():
  for method in streams.METHODS:
    for exposure in EXPOSURES.values():
      found = streams.samples(exposure, _config(method), LATER)
      assert sum(streams.trains_click(s) for s in found) == 1, method
      conversion = [s for s in found if streams.trains_conversion(s, method)]
      if method in streams.WINDOWED and exposure.click_time is not None:
        assert all(s.kind != "exposure" for s in conversion), method


def test_bad_configs_are_refused():
  with pytest.raises(ValueError, match="unknown delayed-feedback method"):
    streams.StreamConfig("dfm2", W)
  with pytest.raises(ValueError, match="window_s must be in"):
    streams.StreamConfig("esdfm", W, window_s=0.0)
  with pytest.raises(ValueError, match="window_s must be in"):
    streams.StreamConfig("defer", W, window_s=2 * W)


# ---- the losses against float64 numpy ----

def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _loss_and_grads(fn, *variables):
  variables = [tf.Variable(v, dtype=tf.float32) for v in variables]
  with tf.GradientTape() as tape:
    loss = fn(*variables)
    total = tf.reduce_sum(loss)
  return loss.numpy().astype(np.float64), [g.numpy() for g in tape.gradient(total, variables)]


def test_weighted_log_loss_value_and_gradient():
  rng = np.random.default_rng(0)
  z = rng.normal(0, 3, 64)
  y = (rng.random(64) < 0.3).astype(np.float64)
  w1, w0 = rng.uniform(0.2, 2, 64), rng.uniform(0.2, 2, 64)
  loss, [grad] = _loss_and_grads(
      lambda logit: losses.weighted_log_loss(
          y, log_space.SigmoidLogPair()(logit[:, None]), w1, w0), z)
  s = _sigmoid(z)
  np.testing.assert_allclose(loss, -(y * w1 * np.log(s) + (1 - y) * w0 * np.log(1 - s)),
                             rtol=1e-5)
  np.testing.assert_allclose(grad, -(y * w1 * (1 - s) - (1 - y) * w0 * s), rtol=1e-4,
                             atol=1e-6)


def test_dfm_loss_value_and_gradients():
  rng = np.random.default_rng(1)
  z, r = rng.normal(-1, 2, 64), rng.normal(0, 1, 64)
  converted = (rng.random(64) < 0.5).astype(np.float64)
  time = rng.exponential(1.0, 64)
  loss, (grad_z, grad_r) = _loss_and_grads(
      lambda logit, log_rate: losses.dfm_loss(
          converted, log_space.SigmoidLogPair()(logit[:, None]), log_rate, time), z, r)
  s, rate = _sigmoid(z), np.exp(r)
  survive = np.exp(-rate * time)
  mass = 1 - s + s * survive  # P(not converted by the elapsed time)
  expected = np.where(converted == 1, -(np.log(s) + r - rate * time), -np.log(mass))
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)  # float32 inputs
  np.testing.assert_allclose(
      grad_z, np.where(converted == 1, -(1 - s), -s * (1 - s) * (survive - 1) / mass),
      rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(
      grad_r, np.where(converted == 1, -(1 - rate * time), s * survive * rate * time / mass),
      rtol=1e-4, atol=1e-6)


def test_fnc_serves_q_over_one_minus_q():
  q = np.array([1e-6, 0.01, 0.2, 0.45, 0.4999])
  pair = tf.constant(np.stack([np.log(q), np.log1p(-q)], axis=1), tf.float32)
  served = losses.fnc_final_pair(pair).numpy().astype(np.float64)
  np.testing.assert_allclose(np.exp(served[:, 0]), q / (1 - q), rtol=1e-5)
  np.testing.assert_allclose(np.exp(served[:, 1]), (1 - 2 * q) / (1 - q), rtol=2e-3)


# ---- unbiasedness by simulation, on the entire space ----

CTR, CVR, MEAN_DELAY = 0.6, 0.4, DAY
FINAL_CVR = CVR * (1 - math.exp(-W / MEAN_DELAY))  # conversions after W are not attributed
CTCVR = CTR * FINAL_CVR
DELAYED_POSITIVE = CVR * (math.exp(-C / MEAN_DELAY) - math.exp(-W / MEAN_DELAY))  # f_dp
END, HISTORY = 9 * DAY, 9 * DAY  # the period is (END - DAY, END]; exposures from 0


@pytest.fixture(scope="module")
def cell():
  return make_cell()


def make_cell(seed=7):
  """Exposures of one cell of x over the 9 days before END, 6,000 a day (seeded)."""
  rng = np.random.default_rng(seed)
  count = int(6000 * HISTORY / DAY)
  times = np.sort(rng.uniform(END - HISTORY, END, count))
  clicked = rng.random(count) < CTR
  converts = rng.random(count) < CVR
  delays = rng.exponential(MEAN_DELAY, count)
  return [streams.Exposure(t, t if c else None, t + d if c and v else None)
          for t, c, v, d in zip(times, clicked, converts, delays)]


def _weights(method, labels, clicked):
  """The conversion task's weight of each sample (count weights, module docstring of
  models/layers/delayed_feedback.py), at the true rates of the cell; unclicked: 1."""
  p = np.full(len(labels), FINAL_CVR)
  f_dp = np.full(len(labels), DELAYED_POSITIVE)
  if method == "fnw":
    w1, w0 = losses.fnw_weights(p)
  elif method == "esdfm":
    w1, w0 = losses.esdfm_weights(losses.real_negative_rate(p, f_dp))
  elif method == "defer":
    w1, w0 = losses.defer_weights(p, f_dp)
  else:  # oracle, vanilla, waiting, fnc: plain cross-entropy
    w1 = w0 = np.ones(len(labels))
  weights = np.where(labels == 1, np.asarray(w1), np.asarray(w0))
  return np.where(clicked, weights, 1.0)


def _minimiser(cell, method):
  """(argmin_f of the weighted cross-entropy of a constant f over the period's stream,
  its standard error by the delta method over exposures)."""
  config = _config(method)
  rows = [(index, s) for index, exposure in enumerate(cell)
          for s in streams.samples(exposure, config, END, since=END - DAY)
          if streams.trains_conversion(s, method)]
  owner = np.array([index for index, _ in rows])
  labels = np.array([s.conversion for _, s in rows], np.float64)
  clicked = np.array([s.click == 1 for _, s in rows])
  weights = _weights(method, labels, clicked)
  # The minimiser of sum_i w_i * BCE(y_i, f) is sum w y / sum w; also through the loss:
  f = float(np.sum(weights * labels) / np.sum(weights))
  logit = tf.Variable([math.log(f / (1 - f))], dtype=tf.float32)
  with tf.GradientTape() as tape:
    pair = log_space.SigmoidLogPair()(tf.fill([len(labels), 1], logit[0]))
    total = tf.reduce_sum(losses.weighted_log_loss(labels, pair, weights, weights))
  assert abs(float(tape.gradient(total, logit)[0])) < 1e-3 * len(labels)  # a stationary point
  numerator = np.bincount(owner, weights * labels, minlength=len(cell))
  denominator = np.bincount(owner, weights, minlength=len(cell))
  residual = numerator - f * denominator
  standard_error = math.sqrt(len(cell) * np.var(residual)) / np.sum(denominator)
  return f, standard_error


@pytest.mark.parametrize("method", ["oracle", "fnw", "esdfm", "defer"])
def test_the_weighted_stream_is_unbiased_for_the_final_ctcvr(cell, method):
  f, standard_error = _minimiser(cell, method)
  assert abs(f - CTCVR) < 3 * standard_error, (f, CTCVR, standard_error)


def test_fnc_is_unbiased_once_served_as_q_over_one_minus_q(cell):
  q, standard_error = _minimiser(cell, "fnc")
  assert q == pytest.approx(CTCVR / (1 + CTCVR), abs=3 * standard_error)
  served = losses.fnc_final_pair(tf.constant([[math.log(q), math.log1p(-q)]], tf.float32))
  assert math.exp(float(served[0, 0])) == pytest.approx(CTCVR, abs=4 * standard_error)


@pytest.mark.parametrize("method,biased_to", [
    # A click of age a (uniform over the day) has shown its conversion with probability
    # 1 - e^-a (mean delay a day): e^-1 of them on average by END.
    ("vanilla", CTR * CVR * math.exp(-1)),
    ("waiting", CTR * CVR * (1 - math.exp(-C / MEAN_DELAY)))])
def test_vanilla_and_the_waiting_window_are_biased(cell, method, biased_to):
  f, standard_error = _minimiser(cell, method)
  assert abs(f - CTCVR) > 10 * standard_error, (f, CTCVR, standard_error)
  assert f == pytest.approx(biased_to, abs=3 * standard_error)


def test_the_papers_normalised_weights_move_the_entire_space_minimiser():
  """Expected counts per exposure (no sampling): ES-DFM's published weights, (1 + f_dp)
  and (1 + f_dp) f_rn, give the clicked exposures of an x (1 + f_dp) times the mass of
  its unclicked ones; the count weights do not."""
  p, f_dp = FINAL_CVR, DELAYED_POSITIVE
  f_rn = float(losses.real_negative_rate([p], [f_dp])[0])
  immediate, fake_negative, real_negative = p - f_dp, f_dp, 1 - p
  for scale in (1.0, 1.0 + f_dp):  # count weights, then ES-DFM's published ones
    w1, w0 = scale * 1.0, scale * f_rn
    positives = CTR * w1 * (immediate + f_dp)  # observed at c, then the duplicates
    negatives = (1 - CTR) + CTR * w0 * (fake_negative + real_negative)
    minimiser = positives / (positives + negatives)
    # The clicked exposures' mass scaled by `scale`: CTR s p / (1 - CTR + CTR s).
    assert minimiser == pytest.approx(CTR * scale * p / (1 - CTR + CTR * scale), rel=1e-6)
    if scale == 1.0:
      assert minimiser == pytest.approx(CTCVR, rel=1e-6)  # f_rn in float32
    else:
      assert minimiser > 1.1 * CTCVR
