"""Keras models and shared layers. Keras 2 (tf_keras) is set before TF loads: TFRS needs it."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
