"""Keras models and shared layers. Keras 2 (tf_keras) is set before TF loads: TFRS needs it."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

# AutoGraph leaves tf_keras and TFRS as written (models/autograph_rules.py).
from models import autograph_rules as _autograph_rules  # pylint: disable=g-import-not-at-top,wrong-import-position
