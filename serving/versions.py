"""Which SavedModel version to load from an export base, as TF Serving would choose it.

Flow position: between training.export (which writes MODEL_DIR/export/<version>/) and
its readers, pipeline.predict (serving.predictor) and pipeline.evaluate
(evaluation.runner); both resolve their --saved_model flag here.

A version directory is complete when it holds everything the readers load:
  saved_model.pb, variables/variables.index, assets/      (tf.saved_model.load)
  assets.extra/feature_spec.yaml                         (training.export.load_export_spec)
An export base can hold incomplete numbered directories (a half-finished copy, an
interrupted upload); like TF Serving, which keeps serving the last good version, we pick
the newest complete version and log a warning naming each incomplete one and what it
lacks.

Local directories are read with os, remote ones (gs://...) with tf.io.gfile, imported only
then: pipeline.predict and pipeline.evaluate refuse a local --saved_model without a
complete version in about 0.3 s, before TensorFlow loads.
"""

import dataclasses
import os
import types
from typing import Dict, List

from absl import logging

SAVED_MODEL_FILE = "saved_model.pb"
EXPORT_SUBDIR = "export"
# Path inside a version directory -> True if it is a directory, False if a file.
REQUIRED_PARTS = (
    (SAVED_MODEL_FILE, False),
    ("variables/variables.index", False),
    ("assets", True),
    ("assets.extra/feature_spec.yaml", False),
)


# The tf.io.gfile functions used here, as os has them for local paths.
_LOCAL_FILES = types.SimpleNamespace(isdir=os.path.isdir, exists=os.path.exists,
                                     listdir=os.listdir)


def _gfile(path: str):
  """The file functions for `path`: tf.io.gfile for a remote one, else os's (docstring)."""
  if "://" not in path:
    return _LOCAL_FILES
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
  return tf.io.gfile


class IncompleteExportError(FileNotFoundError):
  """No complete SavedModel version where one was expected; the message says what lacks."""


@dataclasses.dataclass
class ExportVersions:
  """The numeric version directories of an export base, split by completeness.

  complete: version numbers, ascending.
  incomplete: version number -> the required parts it lacks (REQUIRED_PARTS paths).
  """

  base: str
  complete: List[int]
  incomplete: Dict[int, List[str]]

  def newest(self) -> str:
    """The newest complete version's directory; IncompleteExportError if there is none."""
    if not self.complete:
      lacks = "; ".join(f"{version} lacks {', '.join(parts)}"
                        for version, parts in sorted(self.incomplete.items()))
      raise IncompleteExportError(
          f"{self.base}: no complete SavedModel version directory ({lacks}); a complete "
          f"one holds {', '.join(part for part, _ in REQUIRED_PARTS)}")
    return os.path.join(self.base, str(self.complete[-1]))


def missing_parts(version_dir: str) -> List[str]:
  """The REQUIRED_PARTS that `version_dir` lacks (empty if it is complete)."""
  missing = []
  for part, is_dir in REQUIRED_PARTS:
    path = os.path.join(version_dir, part)
    present = _gfile(path).isdir(path) if is_dir else (
        _gfile(path).exists(path) and not _gfile(path).isdir(path))
    if not present:
      missing.append(part)
  return missing


def list_versions(export_base: str) -> ExportVersions:
  """The numeric subdirectories of `export_base` (others, e.g. `<v>.tmp`, are ignored)."""
  complete, incomplete = [], {}
  for name in _gfile(export_base).listdir(export_base):
    name = name.rstrip("/")
    if not name.isdigit() or not _gfile(export_base).isdir(os.path.join(export_base, name)):
      continue
    missing = missing_parts(os.path.join(export_base, name))
    if missing:
      incomplete[int(name)] = missing
    else:
      complete.append(int(name))
  return ExportVersions(base=export_base, complete=sorted(complete), incomplete=incomplete)


def newest_complete_version(export_base: str) -> str:
  """The newest complete version directory under `export_base`.

  Logs a warning naming each incomplete version directory and what it lacks.

  Raises:
    IncompleteExportError: no version is complete (naming the base and what each lacks),
      or there are no numeric version directories at all.
  """
  versions = list_versions(export_base)
  for version, parts in sorted(versions.incomplete.items()):
    logging.warning("Skipping incomplete SavedModel version %s: lacks %s",
                    os.path.join(export_base, str(version)), ", ".join(parts))
  if not versions.complete and not versions.incomplete:
    raise IncompleteExportError(f"{export_base}: no numeric SavedModel version directories")
  chosen = versions.newest()
  logging.info("Using SavedModel version %s", chosen)
  return chosen


def _has_versions(directory: str) -> bool:
  return _gfile(directory).isdir(directory) and any(
      name.rstrip("/").isdigit() for name in _gfile(directory).listdir(directory))


def resolve_saved_model(path: str) -> str:
  """A complete SavedModel version directory from itself, an export base or a MODEL_DIR.

  Accepts MODEL_DIR/export/<version> (used as given, if complete), MODEL_DIR/export (its
  newest complete version) or MODEL_DIR (MODEL_DIR/export's newest complete version).

  Raises:
    IncompleteExportError: `path` is no directory, is an incomplete version directory,
      or no complete version is found; the message names the directory and what is
      missing.
  """
  path = path.rstrip("/")
  if not _gfile(path).isdir(path):
    raise IncompleteExportError(f"{path}: no such directory" if not _gfile(path).exists(path)
                                else f"{path}: is a file, expected a SavedModel directory")
  if _gfile(path).exists(os.path.join(path, SAVED_MODEL_FILE)):
    missing = missing_parts(path)
    if missing:
      raise IncompleteExportError(f"{path}: incomplete SavedModel version, lacks "
                                  f"{', '.join(missing)}")
    return path
  for base in (path, os.path.join(path, EXPORT_SUBDIR)):
    if _has_versions(base):
      return newest_complete_version(base)
  raise IncompleteExportError(f"{path}: no {SAVED_MODEL_FILE} here nor a numeric version "
                              f"directory in it or in its {EXPORT_SUBDIR}/")
