"""Model registry: config.model.name -> the builder of that paper's MultiTaskModel.

Flow position: pipeline.train (and tests) call `build_model(config, spec, artifacts)`;
everything a model needs comes from the experiment config, the feature spec and the
transform artifacts. Adding a model is one entry in `MODELS`: its
`build(model_config, spec, artifacts, params)` and its `PARAMS` (the model.params keys
it accepts, with defaults). Registered: naive, shared_bottom, esmm, esm2, esmc, esms, esmg, hm3, aitm,
escm2_ips, escm2_dr
(docs/MODELS.md).
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import aitm
from models import escm2
from models import esm2
from models import esmc
from models import esmm
from models import hm3
from models import multitask
from models import naive

Builder = Callable[[config_lib.ModelConfig, spec_lib.FeatureSpec,
                    artifacts_lib.TransformArtifacts, Dict[str, Any]],
                   multitask.MultiTaskModel]


@dataclasses.dataclass(frozen=True)
class ModelEntry:
  """A registered model: its builder and its model.params keys with their defaults."""

  build: Builder
  params: Mapping[str, Any]


MODELS: Dict[str, ModelEntry] = {
    "esmm": ModelEntry(esmm.build, esmm.PARAMS),
    "naive": ModelEntry(naive.build, naive.PARAMS),
    "shared_bottom": ModelEntry(naive.build_shared_bottom, naive.PARAMS),
    "esm2": ModelEntry(esm2.build, esm2.PARAMS),
    "esmc": ModelEntry(esmc.build_esmc, esmc.ESMC_PARAMS),
    "esms": ModelEntry(esmc.build_esms, esmc.ESMS_PARAMS),
    "esmg": ModelEntry(esmc.build_esmg, esmc.ESMG_PARAMS),
    "hm3": ModelEntry(hm3.build, hm3.PARAMS),
    "aitm": ModelEntry(aitm.build, aitm.PARAMS),
    "escm2_ips": ModelEntry(escm2.build_ips, escm2.PARAMS),
    "escm2_dr": ModelEntry(escm2.build_dr, escm2.PARAMS),
}


def register(name: str, build: Builder, params: Mapping[str, Any]) -> None:
  """Adds a model under `name` (for models defined outside this package)."""
  if name in MODELS:
    raise ValueError(f"model {name!r} is already registered")
  MODELS[name] = ModelEntry(build, dict(params))


def known_models() -> List[str]:
  return sorted(MODELS)


def resolve_params(name: str, params: Mapping[str, Any], source: str = "<memory>"
                   ) -> Dict[str, Any]:
  """model.params over the model's defaults; unknown keys are a ConfigError."""
  allowed = MODELS[name].params
  unknown = sorted(set(params) - set(allowed))
  if unknown:
    raise config_lib.ConfigError(
        f"{source}: unknown key(s) {unknown} in model.params for model {name!r}; "
        f"allowed: {sorted(allowed)}")
  return {**allowed, **params}


def build_model(config: config_lib.ExperimentConfig, spec: spec_lib.FeatureSpec,
                artifacts: artifacts_lib.TransformArtifacts) -> multitask.MultiTaskModel:
  """Builds the model config.model.name names (see the module docstring).

  Raises:
    ConfigError: unknown model name or model.params key, or a task label that
      config.data.labels does not produce.
    ArtifactError: the artifacts lack statistics for a spec feature.
    ValueError: a bad bottom setting or a loss weight for an unknown task.
  """
  model_config = config.model
  name = model_config.name
  if name not in MODELS:
    raise config_lib.ConfigError(
        f"{config.source}: model.name {name!r} is not registered; "
        f"known models: {known_models()}")
  params = resolve_params(name, model_config.params, config.source)
  artifacts_lib.check_artifacts(spec, artifacts)
  model = MODELS[name].build(model_config, spec, artifacts, params)
  missing = sorted(model.required_labels - set(config.data.label_names))
  if missing:
    raise config_lib.ConfigError(
        f"{config.source}: model {name!r} needs label(s) {missing}, which data.labels "
        f"does not produce (it has {config.data.label_names})")
  return model
