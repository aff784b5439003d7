"""Feature spec, transform artifacts and example codecs. Keras 2 (tf_keras) for TF: TFRS needs it."""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
