"""AutoGraph leaves Keras 2 (tf_keras) and TFRS as written, as TF meant it to for Keras.

Where it sits: imported by `models/__init__.py`, so every process that builds a model
(pipeline.train, the demo, the benchmarks, the tests) applies it before the first
tf.function traces.

AutoGraph rewrites every Python function a tf.function calls, unless a rule in
`CONVERSION_RULES` says not to. TF 2.16's rules leave `keras` (Keras 2's old package
name), `tensorflow`, numpy and others as written, but not `tf_keras`, the same Keras 2
code under the name TF 2.16 needs for it (TF_USE_LEGACY_KERAS=1), nor
`tensorflow_recommenders`. So each training process transpiled ~7,500 Keras and TFRS
functions one by one: ~55 of the ~75 CPU seconds of a 5-step `train_and_export` on the
test suite's small world (measured with cProfile; 22 CPU s with this rule). The project's
own code (`models/`, `training/`) is still converted. Version-checked: on any other
TF / tf_keras pair nothing is changed (TF may have added the rule itself).
Upstream report text: docs/TRAINING.md, "AutoGraph and tf_keras".
"""

import tensorflow as tf
import tf_keras
from tensorflow.python.autograph.core import config as autograph_config  # pylint: disable=g-direct-tensorflow-import

# The TF and tf_keras releases on which the rule was found missing and measured.
CHECKED_TF_VERSION = "2.16."
CHECKED_TF_KERAS_VERSION = "2.16."
NOT_CONVERTED = ("tf_keras", "tensorflow_recommenders")


def _on_checked_versions() -> bool:
  return (tf.__version__.startswith(CHECKED_TF_VERSION) and
          tf_keras.__version__.startswith(CHECKED_TF_KERAS_VERSION))


def leave_keras_unconverted() -> bool:
  """Prepends DoNotConvert rules for tf_keras and TFRS (once); returns whether it did."""
  if not _on_checked_versions():
    return False
  present = {getattr(rule, "_prefix", None) for rule in autograph_config.CONVERSION_RULES}
  missing = [name for name in NOT_CONVERTED if name not in present]
  if not missing:
    return False
  autograph_config.CONVERSION_RULES = tuple(
      autograph_config.DoNotConvert(name) for name in missing) + tuple(
          autograph_config.CONVERSION_RULES)
  return True


leave_keras_unconverted()
