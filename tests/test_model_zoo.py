"""Properties every registered model must have, parametrised over the model zoo.

Each model (esm2, esmc, esms, esmg, hm3, and ESMM on the MMoE and PLE bottoms) is built
on the small spec of tests/test_esmm.py with all four labels (click, micro, action,
purchase) and checked for: outputs float32 [batch, 1] in (0, 1); ctcvr == ctr * cvr;
ctavr <= ctr; a scorer get_config round trip; a SavedModel round trip through
training.export.export_saved_model; a short fit that lowers the loss. The helpers
(`zoo_config`, `build_zoo`, `make_labelled_batch`) are shared with the per-model tests.
"""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import parsing
from models import registry
from tests.test_esmm import SPEC, make_artifacts, make_batch, randomize
from training import export as export_lib

LABELS = [
    {"name": "click", "events": ["click"], "after_click": False},
    {"name": "micro", "events": ["view_reviews"]},
    {"name": "action", "events": ["cart", "favorite"]},
    {"name": "purchase", "events": ["purchase"]},
]
# name -> (model.name, extra model section)
ZOO = {
    "esm2": ("esm2", {}),
    "esmc": ("esmc", {}),
    "esms": ("esms", {}),
    "esmg": ("esmg", {}),
    "hm3": ("hm3", {}),
    "esmm_mmoe": ("esmm", {"params": {"bottom": {"name": "mmoe", "num_experts": 3,
                                                 "expert_units": [8]}}}),
    "esmm_ple": ("esmm", {"params": {"bottom": {"name": "ple", "expert_units": [8]}}}),
}


def zoo_config(name, labels=LABELS, **model) -> config_lib.ExperimentConfig:
  """A small config (4-d embeddings, one 16-unit hidden layer) with `labels`."""
  section = {"name": name, "embedding_dim": 4, "tower_units": [16]}
  section.update(model)
  return config_lib.config_from_dict(
      {"feature_spec": "unused.yaml", "data": {"labels": labels}, "model": section})


def build_zoo(name, tmp_path, **model):
  return registry.build_model(zoo_config(name, **model), SPEC,
                              make_artifacts(str(tmp_path / "transform")))


def make_labelled_batch(n, seed=0):
  """make_batch's (features, labels) plus micro and action, both 0 without a click.

  P(micro | click) = 0.4; P(action | click, micro) = 0.5, P(action | click, no micro) = 0.1;
  purchase as in make_batch but never without a click.
  """
  features, labels = make_batch(n, seed)
  rng = np.random.default_rng(seed + 1000)
  click = labels["click"].numpy() > 0
  micro = click & (rng.uniform(size=n) < 0.4)
  action = click & (rng.uniform(size=n) < np.where(micro, 0.5, 0.1))
  labels = dict(labels, micro=tf.constant(micro, tf.float32),
                action=tf.constant(action, tf.float32))
  return features, labels


def outputs_of(model, features):
  return {name: value.numpy() for name, value in model(features).items()}


def _build(key, tmp_path):
  name, model = ZOO[key]
  return build_zoo(name, tmp_path, **model)


@pytest.mark.parametrize("key", sorted(ZOO))
def test_outputs_are_probabilities_with_the_entire_space_identities(key, tmp_path):
  model = _build(key, tmp_path)
  randomize(model, seed=1)
  features, _ = make_labelled_batch(200, seed=2)
  outputs = outputs_of(model, features)
  assert {"ctr", "cvr", "ctcvr"} <= set(outputs) == set(model.output_names)
  for name, value in outputs.items():
    assert value.shape == (200, 1) and value.dtype == np.float32, name
    assert np.all(value > 0.0) and np.all(value < 1.0), name
  np.testing.assert_allclose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"], rtol=1e-6)
  assert np.all(outputs["ctcvr"] <= outputs["ctr"])
  if "ctavr" in outputs:
    assert np.all(outputs["ctavr"] <= outputs["ctr"])


@pytest.mark.parametrize("key", sorted(ZOO))
def test_scorer_config_round_trip(key, tmp_path):
  model = _build(key, tmp_path)
  randomize(model, seed=3)
  features, _ = make_labelled_batch(30, seed=4)
  clone = tf_keras.Model.from_config(model.scorer.get_config())
  clone.set_weights(model.scorer.get_weights())
  expected = outputs_of(model, features)
  for name, value in outputs_of(clone, features).items():
    np.testing.assert_array_equal(value, expected[name], err_msg=name)


@pytest.mark.parametrize("key", sorted(ZOO))
def test_saved_model_round_trip(key, tmp_path):
  model = _build(key, tmp_path)
  randomize(model, seed=5)
  features, _ = make_labelled_batch(40, seed=6)
  expected = outputs_of(model, features)
  export_dir = export_lib.export_saved_model(model.scorer, SPEC, str(tmp_path / "export"),
                                             version=1)
  loaded = tf.saved_model.load(export_dir)
  raw = parsing.raw_input_signature(SPEC)
  padded = {}
  for name in raw:
    value = features[name]
    padded[name] = value.to_tensor() if isinstance(value, tf.RaggedTensor) else value
  served = loaded.signatures[export_lib.PREDICT_RAW](**padded)
  assert set(served) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(served[name].numpy(), value[:, 0], atol=1e-6, err_msg=name)


@pytest.mark.parametrize("key", sorted(ZOO))
def test_short_fit_reduces_the_loss(key, tmp_path):
  model = _build(key, tmp_path)
  model.compile(tf_keras.optimizers.Adam(0.01))
  batch = make_labelled_batch(512, seed=7)
  before = model.compute_loss(batch).numpy()
  dataset = tf.data.Dataset.from_tensor_slices(make_labelled_batch(3000, seed=8)).batch(128)
  history = model.fit(dataset, epochs=2, verbose=0)
  assert np.isfinite(history.history["loss"][-1])
  assert model.compute_loss(batch).numpy() < 0.9 * before


@pytest.mark.parametrize("name", ["esm2", "esmc", "esms", "esmg", "hm3", "esmm_mmoe",
                                  "esmm_ple"])
def test_experiment_configs_build(name, tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.yaml")
  config = config_lib.load_config(path)
  spec = config.load_feature_spec()
  model = registry.build_model(config, spec, make_artifacts(str(tmp_path), spec))
  assert {"ctr", "cvr", "ctcvr"} <= set(model.output_names)
  assert model.required_labels <= set(config.data.label_names)
