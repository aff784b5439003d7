"""One evaluation run: SavedModel + a data split [+ simulator truth] -> metrics report.

Flow position: called by `pipeline.evaluate`. Reads a pipeline.preprocess output
directory (TFRecords, feature_spec.yaml, labels.json; refused without a valid
_SUCCESS.json, features/success_marker.py) and a SavedModel (the newest complete
version, serving/versions.py), scores the split
through `serving_default` (evaluation.scoring), joins the truth by impression_id and
builds the per-task table (evaluation.report). The truth is the labels' (simulation.truth
.label_truth: purchases after the attribution window are not labelled, so a purchase
probability is the generative one times 1 - late_purchase_fraction (legacy delays) or
times the row's p_purchase_in_window (heavy-tailed delays)).

Report (the metrics JSON; NaN is written as null):
  {"saved_model": dir, "data": dir, "split": "eval", "file_pattern": glob,
   "feature_spec": path, "labels": [...], "outputs": [...], "examples": n,
   "label_rates": {label: mean},
   "user_ids": "feature" | "truth" | null,       # where GAUC's user ids came from
   "truth": {"path": p, "rows": m, "matched": k, "late_purchase_fraction": f} | null,
   "tasks": {task: {...}},                       # see evaluation/report.py
   "curves": {task: {...}},                      # reliability bins, histograms: curves.py
   "slices": {feature: {...}},                   # with slice_by: evaluation/slices.py
   "name": model name (the CLI's NAME=PATH, else the model directory's name),
   "seconds": wall time}
"""

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf

from configs import config as config_lib
from evaluation import curves
from evaluation import report
from evaluation import scoring
from evaluation import slices as slices_lib
from features import parsing
from features import spec as spec_lib
from features import success_marker
from serving import versions
from training import data
from training import shard_check

SPEC_FILE = "feature_spec.yaml"
METADATA_COLUMNS = ("impression_id", "timestamp", "user_id")


class SliceError(ValueError):
  """A slice_by feature the split cannot be sliced by; the message names it."""


def resolve_saved_model(path: str) -> str:
  """A complete SavedModel version dir from itself, an export base or a MODEL_DIR.

  The newest complete version is used; incomplete ones are skipped with a warning
  (serving.versions.resolve_saved_model, shared with pipeline.predict).
  """
  return versions.resolve_saved_model(path)


def load_spec_and_labels(data_dir: str, config_path: str):
  """The feature spec and label names the data was written with.

  Prefers DATA/feature_spec.yaml and DATA/labels.json (written by pipeline.preprocess);
  falls back to the config's feature spec and data.labels for what is missing. The config
  path resolves as in every entry point (configs.config.resolve_path: as given, else
  relative to the project root).

  Returns:
    (FeatureSpec, label names).
  """
  spec_path = os.path.join(data_dir, SPEC_FILE)
  config = None
  if tf.io.gfile.exists(spec_path):
    spec = spec_lib.load_feature_spec(spec_path)
  else:
    config = config_lib.load_config(config_path)
    spec = config.load_feature_spec()
    logging.warning("%s missing; using the feature spec of %s", spec_path, config.source)
  try:
    label_names = data.read_label_names(data_dir)
  except FileNotFoundError:
    config = config or config_lib.load_config(config_path)
    label_names = config.data.label_names
    logging.warning("%s missing; assuming the labels of %s: %s",
                    os.path.join(data_dir, data.LABELS_FILE), config.source, label_names)
  return spec, list(label_names)


def model_name(saved_model_dir: str) -> str:
  """A readable name of a SavedModel: MODEL_DIR's name for MODEL_DIR/export/<version>."""
  parts = os.path.normpath(saved_model_dir).split(os.sep)
  if len(parts) >= 3 and parts[-2] == "export":
    return parts[-3]
  return parts[-1]


def train_user_ids(data_dir: str, spec: spec_lib.FeatureSpec) -> np.ndarray:
  """The distinct user_id values of the train split (for the `new_user` slice), as str."""
  parse = {report.USER_ID: (parsing.feature_parse_spec(spec)[report.USER_ID]
                            if report.USER_ID in spec.names
                            else tf.io.FixedLenFeature([], tf.string, default_value=""))}
  files = data.list_files(data.split_pattern(data_dir, "train"))
  dataset = (tf.data.TFRecordDataset(files, compression_type=data.COMPRESSION)
             .batch(8192).map(lambda serialized: tf.io.parse_example(serialized, parse)))
  seen = set()
  for batch in dataset:
    seen.update(batch[report.USER_ID].numpy().tolist())
  return np.array(sorted(value.decode("utf-8") if isinstance(value, bytes) else str(value)
                         for value in seen), dtype=object)


def _user_ids(scores: Dict[str, np.ndarray], aligned_truth: Optional[Dict[str, np.ndarray]],
              matched: Optional[np.ndarray]):
  if report.USER_ID in scores:
    return scores[report.USER_ID], "feature"
  if aligned_truth is not None and report.USER_ID in aligned_truth and matched.all():
    return aligned_truth[report.USER_ID].astype(str), "truth"
  return None, None


def check_slice_by(slice_by: Sequence[str], spec: spec_lib.FeatureSpec,
                   truth_path: Optional[str]) -> None:
  """Fails before scoring on a slice feature that is not a scalar feature of the spec.

  Raises:
    SliceError: naming the feature and the scalar features there are (`new_user` also
      needs user_id: a scalar feature, or the truth).
  """
  scalars = [feature.name for feature in spec if not feature.multivalent]
  for name in slice_by:
    if name == slices_lib.NEW_USER:
      if report.USER_ID not in scalars and not truth_path:
        raise SliceError(f"--slice_by {name} needs user_id: {spec.source} has no scalar "
                         f"user_id feature; give --truth")
    elif name not in scalars:
      raise SliceError(f"--slice_by {name}: not a scalar feature of {spec.source}; scalar "
                       f"features: {scalars}, or {slices_lib.NEW_USER}")


def evaluate(saved_model: str, data_dir: str, split: str = "eval",
             truth_path: Optional[str] = None, config_path: str = config_lib.DEFAULT_CONFIG,
             batch_size: int = 4096, ece_bins: int = 10, slice_by: Sequence[str] = (),
             min_slice_positives: int = slices_lib.MIN_POSITIVES, curve_bins: int = 20,
             name: Optional[str] = None) -> Dict[str, Any]:
  """Scores a split with a SavedModel and builds the report (module docstring).

  Args:
    saved_model: SavedModel dir, export base or MODEL_DIR (see resolve_saved_model).
    data_dir: a pipeline.preprocess output directory.
    split: the split to score ("eval" or "train").
    truth_path: optional simulator OUTPUT dir, its truth/ dir or truth file.
    config_path: experiment config, used only when the data lacks feature_spec.yaml or
      labels.json.
    batch_size: records per SavedModel call.
    ece_bins: equal-mass bins of the ECE.
    slice_by: scalar features to slice the metrics by (evaluation/slices.py), and the
      derived `new_user` (user_id not in the train split).
    min_slice_positives: slices with fewer positives or negatives are marked small.
    curve_bins: equal-mass bins of the reliability diagrams (evaluation/curves.py).
    name: the model's name in reports (default: model_name(saved model dir)).

  Raises:
    SliceError: a slice_by feature the split cannot be sliced by (before scoring).
    features.success_marker.IncompleteOutputError: data_dir has no valid _SUCCESS.json
      (the preprocess job failed or is still running, or files changed since).
    serving.versions.IncompleteExportError: no complete SavedModel version.
    training.shard_check.CorruptShardError: a shard of the split is truncated or corrupt.
  """
  start = time.time()
  success_marker.check_success_marker(data_dir)
  saved_model_dir = resolve_saved_model(saved_model)
  spec, label_names = load_spec_and_labels(data_dir, config_path)
  file_pattern = data.split_pattern(data_dir, split)
  # A truncated or corrupt shard fails here naming its path and record offset
  # (training.shard_check.CorruptShardError), not as a bare TensorFlow error mid-scoring.
  shard_check.verify_shards(file_pattern)
  check_slice_by(slice_by, spec, truth_path)
  slice_features = [feature for feature in slice_by if feature != slices_lib.NEW_USER]
  scores = scoring.score_saved_model(saved_model_dir, file_pattern, spec, label_names,
                                     batch_size=batch_size, extra_features=slice_features)
  outputs = [output for output in scores if output not in label_names
             and output not in METADATA_COLUMNS and output not in slice_features]
  labels = {name: scores[name] for name in label_names}
  predictions = {name: scores[name] for name in outputs}

  aligned, matched, truth_info = None, None, None
  if truth_path:
    from simulation import truth as truth_lib  # pylint: disable=g-import-not-at-top
    # The labels' probabilities: purchases after the attribution window are unlabelled.
    late_fraction = truth_lib.late_purchase_fraction(truth_path)
    truth = truth_lib.label_truth(truth_lib.load_truth(truth_path), late_fraction)
    aligned, matched = report.align_truth(scores["impression_id"], truth)
    truth_info = {"path": truth_lib.truth_file_path(truth_path),
                  "rows": int(len(truth["impression_id"])), "matched": int(matched.sum()),
                  "late_purchase_fraction": late_fraction,
                  "purchase_in_window_column": truth_lib.IN_WINDOW_COLUMN in truth}
    if not matched.all():
      logging.warning("%d scored rows have no truth row; truth metrics use the %d matched",
                      int((~matched).sum()), int(matched.sum()))
  user_ids, user_source = _user_ids(scores, aligned, matched)

  tasks = report.task_table(labels, predictions, user_ids=user_ids, truth=aligned,
                            ece_bins=ece_bins)
  slice_columns = {}
  for feature in slice_by:
    if feature == slices_lib.NEW_USER:
      if user_ids is None:
        raise SliceError("--slice_by new_user needs user_id (a scalar feature or the truth, "
                         "with a row for every scored impression)")
      slice_columns[feature] = slices_lib.new_user_values(user_ids, train_user_ids(data_dir, spec))
    else:
      slice_columns[feature] = scores[feature]
  return {
      "name": name or model_name(saved_model_dir),
      "saved_model": saved_model_dir,
      "data": data_dir,
      "split": split,
      "file_pattern": file_pattern,
      "feature_spec": spec.source,
      "labels": label_names,
      "outputs": outputs,
      "examples": int(len(scores["impression_id"])),
      "label_rates": {name: float(np.mean(values, dtype=np.float64)) if len(values) else None
                      for name, values in labels.items()},
      "user_ids": user_source,
      "truth": truth_info,
      "tasks": tasks,
      "curves": curves.task_curves(labels, predictions, truth=aligned, bins=curve_bins),
      "slices": slices_lib.slice_metrics(labels, predictions, slice_columns,
                                         min_positives=min_slice_positives),
      "seconds": round(time.time() - start, 2),
  }


def write_report(result: Dict[str, Any], path: str) -> str:
  """Writes the report as strict JSON (NaN -> null); returns `path`."""
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(report.json_ready(result), f, indent=1, allow_nan=False)
  logging.info("Wrote evaluation metrics to %s", path)
  return path


def summary_lines(result: Dict[str, Any]) -> List[str]:
  """A readable summary: the header facts and the task table."""
  lines = [f"Evaluated {result['saved_model']} on {result['file_pattern']}: "
           f"{result['examples']} examples, outputs {result['outputs']}, "
           f"GAUC users from {result['user_ids'] or 'nowhere (no user_id)'}"]
  if result["truth"]:
    lines.append(f"Truth {result['truth']['path']}: {result['truth']['matched']} of "
                 f"{result['examples']} rows matched")
  lines.append(report.format_table(result["tasks"]))
  return lines
