"""Scoring raw log records with an exported SavedModel. Keras 2 (tf_keras) for TFRS."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
