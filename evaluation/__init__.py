"""Offline metrics (AUC, GAUC, log loss, calibration) and truth comparisons."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
