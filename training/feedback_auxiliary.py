"""ES-DFM's and DEFER's auxiliary classifier: P(delayed positive | click, x), trained anew each
day on the older rows whose labels are complete.

Flow position: DAY/closed of earlier days -> training/feedback_inputs.delayed_positive_dataset
(clicked rows, label 1[c < d <= W]) -> **`train_delayed_positive_model`** -> its scorer ->
feedback_inputs.f_dp_function -> the day's stream (feedback_inputs.stream_dataset) ->
the weights of feedback_objective.

The classifier is the naive baseline's click-space conversion model (models/naive.py):
its cvr tower, trained over clicked rows, learns P(label | click, x); fed clicked rows
only, with the delayed-positive label as the conversion label, it learns f_dp. Its click
tower would learn a constant (every row is clicked), so its click task has loss weight 0.
"""

from typing import Optional

import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import multitask
from models import registry

MODEL = "naive"


def delayed_positive_config(config: config_lib.ExperimentConfig,
                            conversion_label: str = "purchase"
                            ) -> config_lib.ExperimentConfig:
  """`config` with the naive baseline as its model (same sizes), only its click-space
  conversion task trained."""
  model = config.model
  return config_lib.config_from_dict({
      "feature_spec": config.feature_spec_path,
      "data": {"labels": [{"name": label.name, "events": list(label.events),
                           "after_click": label.after_click}
                          for label in config.data.labels
                          if label.name in ("click", conversion_label)]},
      "model": {"name": MODEL, "embedding_dim": model.embedding_dim,
                "tower_units": list(model.tower_units),
                "loss_weights": {"ctr": 0.0, "cvr": 1.0}},
  }, source=f"{config.source} (delayed-positive classifier)")


def train_delayed_positive_model(config: config_lib.ExperimentConfig,
                                 spec: spec_lib.FeatureSpec,
                                 artifacts: artifacts_lib.TransformArtifacts,
                                 dataset: tf.data.Dataset, *, epochs: int = 1,
                                 learning_rate: Optional[float] = None,
                                 conversion_label: str = "purchase"
                                 ) -> multitask.MultiTaskModel:
  """The classifier (module docstring) fitted on `dataset`: batches (features, {click: 1,
  conversion_label: 1[c < d <= W]}) of feedback_inputs.delayed_positive_dataset. Returns
  the trained model; its scorer's "cvr" is f_dp, float32 [batch, 1]."""
  model = registry.build_model(delayed_positive_config(config, conversion_label), spec,
                               artifacts)
  model.compile(optimizer=tf_keras.optimizers.Adam(
      learning_rate or config.train.learning_rate))
  model.fit(dataset, epochs=epochs, verbose=0)
  return model
