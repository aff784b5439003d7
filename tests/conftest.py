"""Test set-up: Keras 2 (tf_keras) for TFRS, quiet TF logs, a shared tmp data factory."""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
