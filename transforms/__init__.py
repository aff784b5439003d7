"""The preprocessing job, one module per step: read, parse, join, label, split, encode, write,
analyze, stats; job.py chains them (the module docstrings give the flow)."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
