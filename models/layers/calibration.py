"""The fitted output calibration as a layer of the served graph.

Flow position: scorer (raw features -> {name: probability [batch, 1]}) ->
**OutputCalibration** -> the exported probabilities. The coefficients come from
models.calibration.fit_calibration (on the validation split) and are constants of
the graph; this layer computes, in float32, what Calibration.apply computes in numpy
(tests/test_calibration.py checks they agree):
  ctr' = sigmoid(a logit ctr + b);
  for each click-conditional rate r (cvr, P(action | click), P(micro | click)), read from
  its output or as product / ctr: r' = sigmoid(a logit r + c1 c + c2 c^2 + b) with
  c = logit ctr clipped to the fitted range, and its products recomposed: ctcvr' = ctr' * cvr', ctavr' = ctr' * action', ...
Every output is clipped to [EPSILON, 1 - EPSILON] like the heads; outputs the
calibration does not touch pass through unchanged.
"""

import json
from typing import Dict

import tensorflow as tf
import tf_keras

from models import calibration as calibration_lib

EPSILON = calibration_lib.EPSILON


def _logit(p: tf.Tensor) -> tf.Tensor:
  p = tf.clip_by_value(tf.cast(p, tf.float32), EPSILON, 1.0 - EPSILON)
  return tf.math.log(p) - tf.math.log1p(-p)


def _probability(z: tf.Tensor) -> tf.Tensor:
  return tf.clip_by_value(tf.sigmoid(z), EPSILON, 1.0 - EPSILON)


@tf_keras.saving.register_keras_serializable(package="cvr")
class OutputCalibration(tf_keras.layers.Layer):
  """{name: float32 [batch, 1] probability} -> the same dict, calibrated.

  Args:
    calibration: a models.calibration.Calibration (or its to_dict()).
  """

  def __init__(self, calibration, **kwargs):
    kwargs.setdefault("dtype", "float32")
    super().__init__(**kwargs)
    if not isinstance(calibration, calibration_lib.Calibration):
      calibration = calibration_lib.Calibration.from_dict(calibration)
    self.calibration = calibration

  @staticmethod
  def _transform(coefficients: calibration_lib.Coefficients, z: tf.Tensor,
                 z_ctr: tf.Tensor) -> tf.Tensor:
    c = tf.clip_by_value(z_ctr, coefficients.ctr_low, coefficients.ctr_high)
    return (coefficients.slope * z + coefficients.ctr_slope * c
            + coefficients.ctr_quadratic * c * c + coefficients.intercept)

  def call(self, outputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    result = dict(outputs)
    if calibration_lib.CTR not in outputs:
      return result
    raw_ctr = tf.cast(outputs[calibration_lib.CTR], tf.float32)
    z_ctr = _logit(raw_ctr)
    ctr = _probability(self._transform(self.calibration.ctr, z_ctr, z_ctr))
    result[calibration_lib.CTR] = ctr
    for rate in calibration_lib.RATES:
      if rate.output in outputs:
        value = tf.cast(outputs[rate.output], tf.float32)
      else:
        product = next((p for p in rate.products if p in outputs), None)
        if product is None:
          continue
        value = tf.cast(outputs[product], tf.float32) / raw_ctr
      coefficients = self.calibration.rates.get(rate.name, calibration_lib.Coefficients())
      calibrated = _probability(self._transform(coefficients, _logit(value), z_ctr))
      if rate.output in outputs:
        result[rate.output] = calibrated
      for product in rate.products:
        if product in outputs:
          result[product] = tf.clip_by_value(ctr * calibrated, EPSILON, 1.0 - EPSILON)
    return result

  def get_config(self):
    config = super().get_config()
    config.update(calibration=json.loads(self.calibration.to_json()))
    return config


def calibrated_scorer(scorer: tf_keras.Model,
                      calibration: calibration_lib.Calibration) -> tf_keras.Model:
  """The scorer followed by OutputCalibration: same inputs, same output names."""
  outputs = OutputCalibration(calibration, name="output_calibration")(scorer.output)
  return tf_keras.Model(scorer.input, outputs, name=f"{scorer.name}_calibrated")
