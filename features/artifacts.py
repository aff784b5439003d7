"""Transform artifacts: what the model's preprocessing layers need, computed by Beam.

The Beam job (pipeline.preprocess) computes these on the train split only and writes
them beside the data, under `OUTPUT/transform/`:

    OUTPUT/transform/transform.json        # per-feature statistics, see below
    OUTPUT/transform/vocab/<feature>.txt   # one token per line, most frequent first

`transform.json` layout:

    {"train_examples": 160000,
     "features": {
        "item_price":    {"transform": "normalize", "mean": 3.1, "variance": 0.8},
        "user_age":      {"transform": "bucketize", "boundaries": [21.0, 25.0, ...]},
        "item_category": {"transform": "vocabulary", "vocabulary_file": "vocab/item_category.txt",
                          "vocabulary_size": 57},
        "user_id":       {"transform": "hash"}}}

Normalize statistics are over log1p(max(x, 0)) when the feature has `log1p: true`.
Vocabulary tokens of int features are written as decimal integers. Ties in frequency
are broken by token order (bytes ascending), so the files are deterministic.
The model reads them once, at build time, and bakes them into the SavedModel.
"""

import dataclasses
import json
import os
from typing import Any, Dict, List

import tensorflow as tf

from features import spec as spec_lib

TRANSFORM_DIR = "transform"
TRANSFORM_FILE = "transform.json"
VOCAB_DIR = "vocab"


class ArtifactError(ValueError):
  """Transform artifacts are missing or do not match the feature spec."""


@dataclasses.dataclass
class TransformArtifacts:
  """Per-feature statistics for the model's preprocessing layers.

  Attributes:
    directory: the `OUTPUT/transform` directory they were loaded from (or written to).
    features: feature name -> statistics mapping as in `transform.json`.
    train_examples: number of train examples the statistics were computed on.
  """

  directory: str
  features: Dict[str, Dict[str, Any]]
  train_examples: int = 0

  def stats(self, feature: spec_lib.Feature) -> Dict[str, Any]:
    """The statistics of one feature, checked against its spec."""
    entry = self.features.get(feature.name)
    if entry is None:
      raise ArtifactError(f"{self.directory}: no transform statistics for feature "
                          f"{feature.name!r}; re-run pipeline.preprocess with this spec")
    if entry.get("transform") != feature.transform:
      raise ArtifactError(f"{self.directory}: feature {feature.name!r} has transform "
                          f"{entry.get('transform')!r} in the artifacts but "
                          f"{feature.transform!r} in the spec; re-run pipeline.preprocess")
    return entry

  def vocabulary_path(self, feature: spec_lib.Feature) -> str:
    return os.path.join(self.directory, self.stats(feature)["vocabulary_file"])

  def vocabulary(self, feature: spec_lib.Feature) -> List[str]:
    """The vocabulary tokens of a `vocabulary` feature, most frequent first."""
    with tf.io.gfile.GFile(self.vocabulary_path(feature)) as f:
      return [line.rstrip("\n") for line in f if line.rstrip("\n")]

  def write(self) -> None:
    """Writes transform.json (vocabulary files are written by their producer)."""
    tf.io.gfile.makedirs(self.directory)
    with tf.io.gfile.GFile(os.path.join(self.directory, TRANSFORM_FILE), "w") as f:
      json.dump({"train_examples": self.train_examples, "features": self.features}, f,
                indent=1, sort_keys=True)


def transform_dir(output_dir: str) -> str:
  """The artifacts directory of a preprocess output directory."""
  return os.path.join(output_dir, TRANSFORM_DIR)


def load_artifacts(directory: str) -> TransformArtifacts:
  """Loads artifacts from `OUTPUT/transform` (or from `OUTPUT`, which contains it)."""
  if not tf.io.gfile.exists(os.path.join(directory, TRANSFORM_FILE)):
    if tf.io.gfile.exists(os.path.join(directory, TRANSFORM_DIR, TRANSFORM_FILE)):
      directory = os.path.join(directory, TRANSFORM_DIR)
    else:
      raise ArtifactError(f"{directory}: no {TRANSFORM_FILE}; run pipeline.preprocess first")
  with tf.io.gfile.GFile(os.path.join(directory, TRANSFORM_FILE)) as f:
    data = json.load(f)
  return TransformArtifacts(directory=directory, features=data["features"],
                            train_examples=int(data.get("train_examples", 0)))


def check_artifacts(spec: spec_lib.FeatureSpec, artifacts: TransformArtifacts) -> None:
  """Fails, naming the feature, when any spec feature lacks matching statistics."""
  for feature in spec:
    artifacts.stats(feature)
