"""A window view: several days of `pipeline.preprocess --day` output as one data directory.

Flow: WORKDIR/days/<D>/ (one per day, pipeline.preprocess --day) -> **write_window_view**
-> VIEW/ -> training.trainer.train_and_export(config, VIEW, ...). pipeline.daily trains
its first model from scratch on the union of the history days (--history_days K); a
sliding-window retrain (benchmarks.continuous) is the same view over the last K days.

The trainer reads one data directory; a view is the smallest directory it accepts, made
of links and small copies, never of copied shards:

  VIEW/train/train-<day>-<shard>.tfrecord.gz  a symbolic link (relative) to
                                              DAY/train/train-<shard>.tfrecord.gz of each
                                              day, oldest day first (the trainer's glob
                                              DATA/train/train-*.tfrecord.gz reads them all)
  VIEW/counts.json       the days' counts.json summed leaf by leaf (numbers added; the
                         trainer reads written["train"] and the labels' train counts)
  VIEW/transform/, feature_spec.yaml, labels.json
                         copies of the newest day's: its transform artifacts are merged
                         over data.vocabulary_window_days, so they cover every day of the
                         view when the window is at least the view's length
  VIEW/window.json       {"days": [...], "sources": [DAY dirs]}
  VIEW/_SUCCESS.json     features.success_marker over all of the above, written last
                         (it follows the links: the sizes are the shards')

A view is rebuilt from nothing each time (an earlier, perhaps half-written one is removed
first), so a killed write is redone by the same call. Local directories only: the links
are symbolic links.
"""

import json
import os
import shutil
from typing import Any, Dict, List, Sequence

from absl import logging

from features import success_marker

TRAIN = "train"
SHARD_PREFIX = "train-"
COUNTS_FILE = "counts.json"
WINDOW_FILE = "window.json"
# The newest day's files the trainer reads besides the shards and counts.
COPIED = ("transform", "feature_spec.yaml", "labels.json")


def sum_counts(counts: Sequence[Dict[str, Any]]) -> Dict[str, Any]:
  """Leaf-by-leaf sum of counts.json documents: numbers are added (a key missing from a
  document counts 0); any other leaf is the newest (last) document's."""
  total: Dict[str, Any] = {}
  for document in counts:
    for key, value in document.items():
      if isinstance(value, dict):
        total[key] = sum_counts([total.get(key, {}), value])
      elif isinstance(value, (int, float)) and not isinstance(value, bool):
        total[key] = total.get(key, 0) + value
      else:
        total[key] = value
  return total


def _read_json(path: str) -> Any:
  with open(path) as f:
    return json.load(f)


def write_window_view(view_dir: str, day_dirs: Sequence[str]) -> Dict[str, Any]:
  """Writes VIEW_DIR (module docstring) over DAY_DIRS, oldest first; returns its counts.

  Raises:
    features.success_marker.IncompleteOutputError: a day lacks a valid success marker.
    ValueError: no day, or a remote path.
  """
  if not day_dirs:
    raise ValueError("a window view needs at least one day")
  if any("://" in path for path in [view_dir, *day_dirs]):
    raise ValueError(f"window views are local directories (symbolic links): {view_dir}")
  for day_dir in day_dirs:
    success_marker.check_success_marker(day_dir)
  if os.path.lexists(view_dir):
    shutil.rmtree(view_dir)
  train_dir = os.path.join(view_dir, TRAIN)
  os.makedirs(train_dir)
  links: List[str] = []
  for day_dir in day_dirs:
    day = os.path.basename(os.path.normpath(day_dir))
    shards = sorted(name for name in os.listdir(os.path.join(day_dir, TRAIN))
                    if name.startswith(SHARD_PREFIX) and ".tmp" not in name)
    for name in shards:
      link = os.path.join(train_dir, f"{SHARD_PREFIX}{day}-{name[len(SHARD_PREFIX):]}")
      os.symlink(os.path.relpath(os.path.join(day_dir, TRAIN, name), train_dir), link)
      links.append(link)
  newest = day_dirs[-1]
  for name in COPIED:
    source = os.path.join(newest, name)
    if os.path.isdir(source):
      shutil.copytree(source, os.path.join(view_dir, name))
    else:
      shutil.copy2(source, os.path.join(view_dir, name))
  counts = sum_counts([_read_json(os.path.join(path, COUNTS_FILE)) for path in day_dirs])
  with open(os.path.join(view_dir, COUNTS_FILE), "w") as f:
    json.dump(counts, f, indent=1, sort_keys=True)
  with open(os.path.join(view_dir, WINDOW_FILE), "w") as f:
    json.dump({"days": [os.path.basename(os.path.normpath(p)) for p in day_dirs],
               "sources": [os.path.abspath(p) for p in day_dirs]}, f, indent=1)
  success_marker.write_success_marker(view_dir, counts)
  logging.info("Window view %s: %d day(s), %d train shards, %d train examples", view_dir,
               len(day_dirs), len(links), counts["impressions"]["written"]["train"])
  return counts
