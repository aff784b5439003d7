"""Tests of models.registry: building models by name, and clear errors for bad configs."""

import os

import pytest

from configs import config as config_lib
from features import artifacts as artifacts_lib
from models import multitask
from models import registry
from tests.test_esmm import SPEC, make_artifacts, make_config

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs")


@pytest.fixture(name="artifacts")
def _artifacts(tmp_path):
  return make_artifacts(str(tmp_path / "transform"))


@pytest.mark.parametrize("name", ["esmm", "naive", "shared_bottom", "esmm_daily",
                                  "naive_daily"])
def test_builds_the_experiment_configs(tmp_path, name):
  config = config_lib.load_config(os.path.join(CONFIG_DIR, f"{name}.yaml"))
  spec = config.load_feature_spec()
  model = registry.build_model(config, spec, make_artifacts(str(tmp_path), spec))
  assert isinstance(model, multitask.MultiTaskModel)
  assert model.name == config.model.name
  assert set(model.output_names) == {"ctr", "cvr", "ctcvr"}
  assert set(model.scorer.input) == set(spec.example_keys())


def test_unknown_model_lists_the_known_ones(artifacts):
  with pytest.raises(config_lib.ConfigError, match=r"'esm9'.*known models: \['aitm', 'escm2_dr', 'escm2_ips', 'esm2', 'esmc', 'esmg', 'esmm', 'esms', 'hm3', 'naive', 'shared_bottom'\]"):
    registry.build_model(make_config("esm9"), SPEC, artifacts)


def test_unknown_params_are_rejected(artifacts):
  with pytest.raises(config_lib.ConfigError, match=r"\['towers'\].*allowed: \['bottom', 'loss_normalization'\]"):
    registry.build_model(make_config(params={"towers": 3}), SPEC, artifacts)


def test_bottom_param(artifacts):
  model = registry.build_model(make_config(params={"bottom": {"name": "shared"}}), SPEC,
                               artifacts)
  assert model.scorer.get_layer("bottom").num_towers == 2
  with pytest.raises(ValueError, match="unknown bottom 'hydra'"):
    registry.build_model(make_config(params={"bottom": "hydra"}), SPEC, artifacts)


def test_unknown_loss_weight_task(artifacts):
  with pytest.raises(ValueError, match=r"unknown task\(s\) \['ctavr'\]"):
    registry.build_model(make_config(loss_weights={"ctavr": 1.0}), SPEC, artifacts)


def test_label_missing_from_the_data_config(artifacts):
  config = config_lib.config_from_dict({
      "feature_spec": "unused.yaml", "model": {"name": "esmm"},
      "data": {"labels": [{"name": "click", "events": ["click"], "after_click": False}]}})
  with pytest.raises(config_lib.ConfigError, match=r"needs label\(s\) \['purchase'\]"):
    registry.build_model(config, SPEC, artifacts)


def test_artifacts_missing_a_feature(artifacts):
  partial = artifacts_lib.TransformArtifacts(
      artifacts.directory, {k: v for k, v in artifacts.features.items() if k != "user_age"})
  with pytest.raises(artifacts_lib.ArtifactError, match="user_age"):
    registry.build_model(make_config(), SPEC, partial)


def test_register_a_new_model(artifacts, monkeypatch):
  monkeypatch.setattr(registry, "MODELS", dict(registry.MODELS))
  built = []

  def build(model_config, spec, artifacts, params):
    built.append(params)
    return registry.MODELS["esmm"].build(model_config, spec, artifacts,
                                         {"bottom": params["bottom"]})

  registry.register("esmm_copy", build, {"bottom": "shared", "alpha": 0.5})
  assert "esmm_copy" in registry.known_models()
  registry.build_model(make_config("esmm_copy", params={"alpha": 2.0}), SPEC, artifacts)
  assert built == [{"bottom": "shared", "alpha": 2.0}]
  with pytest.raises(ValueError, match="already registered"):
    registry.register("esmm", build, {})
