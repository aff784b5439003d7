"""The fitted output calibration as a layer of the served graph.

Flow position: scorer (raw features -> {name: probability [batch, 1]}) ->
**OutputCalibration** -> the exported probabilities. The coefficients come from
models.calibration.fit_calibration (on the validation split) and are constants of
the graph; this layer runs Calibration.apply itself on float32 tensors (TENSORFLOW), so
the served graph computes what the fit and the benchmarks compute in numpy
(tests/test_calibration.py checks they agree):
  ctr' = sigmoid(a logit ctr + b);
  for each click-conditional rate r (cvr, P(action | click), P(micro | click)), read from
  its output or as product / ctr: r' = sigmoid(a logit r + c1 c + c2 c^2 + b) with
  c = logit ctr clipped to the fitted range, and its products recomposed: ctcvr' = ctr' * cvr', ctavr' = ctr' * action', ...
Every output is clipped to [EPSILON, 1 - EPSILON] like the heads; outputs the
calibration does not touch pass through unchanged.
"""

from typing import Dict

import tensorflow as tf
import tf_keras

from models import calibration as calibration_lib

# Calibration.apply's array functions, in float32 TensorFlow.
TENSORFLOW = calibration_lib.ArrayOps(
    as_array=lambda value: tf.cast(value, tf.float32), clip=tf.clip_by_value,
    log=tf.math.log, log1p=tf.math.log1p, sigmoid=tf.sigmoid)


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

  def call(self, outputs: Dict[str, tf.Tensor]) -> Dict[str, tf.Tensor]:
    return self.calibration.apply(outputs, TENSORFLOW)

  def get_config(self):
    config = super().get_config()
    config.update(calibration=self.calibration.to_dict())
    return config


def calibrated_scorer(scorer: tf_keras.Model,
                      calibration: calibration_lib.Calibration) -> tf_keras.Model:
  """The scorer followed by OutputCalibration: same inputs, same output names."""
  outputs = OutputCalibration(calibration, name="output_calibration")(scorer.output)
  return tf_keras.Model(scorer.input, outputs, name=f"{scorer.name}_calibrated")
