"""The success marker: proof that a preprocess output directory is complete.

Flow: raw logs -> pipeline.preprocess (removes any old marker first; writes
`OUTPUT/_SUCCESS.json` last, only after every check passed) -> training / evaluation
(`check_success_marker(data_dir)` before reading anything).

A directory without a marker is the output of a job that failed or is still running (or
of a version of the job from before markers). The marker lists every output file with
its size, so a shard removed, added or rewritten after the job is caught too:

    {"format_version": 1,
     "created": "2026-01-08T12:00:00Z",
     "counts": {... counts.json ...},
     "files": {"counts.json": 812, "train/train-00000-of-00004.tfrecord.gz": 104857, ...},
     "digest": "sha256 of the sorted (relative path, size) list"}

Paths work locally and on gs:// (tf.io.gfile); the marker is written to a temporary name
and renamed, so a reader never sees half a marker. TensorFlow is imported by the functions
that need it: checking a local directory needs none (os), so pipeline.train and
pipeline.evaluate refuse unusable local data in about 0.3 s, before TensorFlow loads.
"""

import datetime
import functools
import hashlib
import json
import os
import posixpath
import uuid
from typing import Any, Dict, List

MARKER_FILE = "_SUCCESS.json"
FORMAT_VERSION = 1
_TMP_PREFIX = MARKER_FILE + ".tmp-"
# Beam's file sinks write into these while a job runs and delete them on success
# (apache_beam/io/filebasedsink.py: "beam-temp-<prefix>-<uuid>"; io/fileio.py: ".temp<uid>").
_BEAM_TEMP_PREFIXES = ("beam-temp-", ".temp")
RERUN = ("python -m pipeline.preprocess --impressions ... --events ... --output {data_dir} "
         "(or the --source/--config of the original run; docs/COMMANDS.md: pipeline.preprocess)")


class IncompleteOutputError(ValueError):
  """A preprocess output directory has no valid success marker; the message says why."""


def _join(root: str, relative: str) -> str:
  return posixpath.join(root, relative) if "://" in root else os.path.join(root, relative)


def _is_excluded(relative: str) -> bool:
  parts = relative.split("/")
  if parts[-1] == MARKER_FILE or parts[-1].startswith(_TMP_PREFIX):
    return True
  return any(part.startswith(_BEAM_TEMP_PREFIXES) for part in parts)


def list_output_files(output_dir: str) -> Dict[str, int]:
  """Relative path ('/'-separated) -> size in bytes of every output file under output_dir.

  Leaves out the marker (and its temporary files) and Beam's temporary directories.
  """
  files = {}
  root = output_dir.rstrip("/")
  if "://" in root:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
    walk, size = tf.io.gfile.walk, lambda path: tf.io.gfile.stat(path).length
  else:  # os.walk as tf.io.gfile.walk walks: into linked folders too
    walk, size = lambda top: os.walk(top, followlinks=True), os.path.getsize
  for directory, _, names in walk(root):
    for name in names:
      path = _join(directory, name)
      relative = path[len(root):].lstrip("/").replace(os.sep, "/")
      if not _is_excluded(relative):
        files[relative] = size(path)
  return dict(sorted(files.items()))


def files_digest(files: Dict[str, int]) -> str:
  """sha256 of the sorted (relative path, size) pairs."""
  text = json.dumps(sorted(files.items()), separators=(",", ":"))
  return hashlib.sha256(text.encode("utf-8")).hexdigest()


def marker_path(output_dir: str) -> str:
  return _join(output_dir, MARKER_FILE)


def remove_success_marker(output_dir: str) -> bool:
  """Deletes an old marker (at the start of a job); True when there was one."""
  path = marker_path(output_dir)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
  if tf.io.gfile.exists(path):
    tf.io.gfile.remove(path)
    return True
  return False


def write_success_marker(output_dir: str, counts: Dict[str, Any]) -> str:
  """Writes OUTPUT/_SUCCESS.json atomically; call it last, after every check passed.

  Args:
    output_dir: the preprocess output directory (local or gs://).
    counts: the job's counts.json contents.

  Returns:
    The marker's path.
  """
  files = list_output_files(output_dir)
  marker = {
      "format_version": FORMAT_VERSION,
      "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
      "counts": counts,
      "files": files,
      "digest": files_digest(files),
  }
  path = marker_path(output_dir)
  tmp = _join(output_dir, _TMP_PREFIX + uuid.uuid4().hex)
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
  with tf.io.gfile.GFile(tmp, "w") as f:
    json.dump(marker, f, indent=1, sort_keys=True)
  tf.io.gfile.rename(tmp, path, overwrite=True)
  return path


def _changes(expected: Dict[str, int], found: Dict[str, int]) -> List[str]:
  changes = [f"missing {name}" for name in sorted(set(expected) - set(found))]
  changes += [f"added {name}" for name in sorted(set(found) - set(expected))]
  changes += [f"size of {name} changed from {expected[name]} to {found[name]} bytes"
              for name in sorted(set(expected) & set(found)) if expected[name] != found[name]]
  return changes


def check_success_marker(data_dir: str) -> Dict[str, Any]:
  """The marker of a complete preprocess output; raises when there is none or it is stale.

  Returns:
    The marker dict ("counts", "files", "digest", ...).

  Raises:
    IncompleteOutputError: no marker (the job failed, is still running, or predates
      markers), an unreadable or unknown-version marker, or files added, removed or
      resized since the marker was written (listed by name).
  """
  path = marker_path(data_dir)
  rerun = "Re-run " + RERUN.format(data_dir=data_dir) + "."
  if "://" in path:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
    exists, open_file = tf.io.gfile.exists, tf.io.gfile.GFile
    read_errors = (ValueError, tf.errors.OpError)
  else:
    exists, read_errors = os.path.exists, (ValueError, OSError)
    open_file = functools.partial(open, encoding="utf-8")
  if not exists(path):
    raise IncompleteOutputError(
        f"{data_dir} has no {MARKER_FILE}: the pipeline.preprocess job that writes it "
        f"failed or is still running (the marker is written last, after every check "
        f"passed), so its output may be incomplete. {rerun}")
  try:
    with open_file(path) as f:
      marker = json.load(f)
  except read_errors as e:
    raise IncompleteOutputError(f"{path}: unreadable success marker ({e}). {rerun}") from e
  if not isinstance(marker, dict) or marker.get("format_version") != FORMAT_VERSION:
    version = marker.get("format_version") if isinstance(marker, dict) else None
    raise IncompleteOutputError(f"{path}: format_version {version!r}, this code reads "
                                f"{FORMAT_VERSION}. {rerun}")
  expected = marker.get("files")
  if not isinstance(expected, dict) or marker.get("digest") != files_digest(expected):
    raise IncompleteOutputError(f"{path}: its file list does not match its digest (the "
                                f"marker was edited). {rerun}")
  changes = _changes(expected, list_output_files(data_dir))
  if changes:
    shown = changes[:20] + ([f"... and {len(changes) - 20} more"] if len(changes) > 20 else [])
    raise IncompleteOutputError(
        f"{data_dir}: files changed since {MARKER_FILE} was written ({len(changes)}): "
        + "; ".join(shown) + f". {rerun}")
  return marker
