"""The naive CVR baseline: a CVR tower trained on clicked exposures only.

Flow position: one of the registered models (models.registry); the reference every
entire-space model must beat (papers.md, "Baselines").

Same scorer as ESMM (models.esmm.build_scorer: shared feature encoder, CTR and CVR
towers; outputs float32 [batch, 1]):
  ctr   = P(click=1 | x)
  cvr   = P(purchase=1 | click=1, x)
  ctcvr = ctr * cvr
so the two models differ only in their loss, which isolates the effect of training on
the entire space. Loss:
  L = w_ctr * BCE(click, ctr) over all exposures
    + w_cvr * BCE(purchase, cvr) over clicked exposures only (sample weight = click)
The CVR tower sees only clicked exposures (sample selection bias, few positives).
Task `ctcvr` (label click * purchase, all exposures) has loss weight 0: metrics only.
"""

from typing import Any, Dict

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import esmm
from models import multitask

PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS)

TASKS = (
    multitask.TaskSpec("ctr", "ctr", multitask.label("click")),
    multitask.TaskSpec("cvr", "cvr", multitask.label("purchase"),
                       weight_fn=multitask.label("click")),
    multitask.TaskSpec("ctcvr", "ctcvr", multitask.label("click", "purchase"),
                       loss_weight=0.0),
)


def build(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
          artifacts: artifacts_lib.TransformArtifacts,
          params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """The naive baseline; `params` are PARAMS resolved by models.registry."""
  scorer = esmm.build_scorer(model_config, spec, artifacts, params, name="naive_scorer")
  return multitask.MultiTaskModel(scorer, TASKS, loss_weights=model_config.loss_weights,
                                  name="naive")
