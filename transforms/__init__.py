"""Beam PTransforms of the preprocessing job: read, parse, join, label, split, encode, write, stats."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
