"""Training library: tf.data input, strategies, loop, export. Keras 2 (tf_keras) for TFRS."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
