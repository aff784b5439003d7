"""ESMM (Ma et al., SIGIR 2018): Entire Space Multi-Task Model. Path: exposure -> click -> purchase.

Flow position: one of the registered models (models.registry), built from the shared
blocks: a shared feature encoder (one embedding table per feature, shared by both
towers [paper]), a CTR tower and a CVR tower (models.multitask.build_towers).

Probabilities (all per exposure x; scorer outputs, float32 [batch, 1]):
  ctr   = P(click=1 | x)                      sigmoid of the CTR tower
  cvr   = P(purchase=1 | click=1, x)          sigmoid of the CVR tower
  ctcvr = P(click=1, purchase=1 | x) = ctr * cvr   [paper]

Loss, over all exposures (entire space) [paper]:
  L = w_ctr * BCE(click, ctr) + w_ctcvr * BCE(click * purchase, ctcvr)
with w = 1 by default (config.model.loss_weights). The CVR tower has no loss of its
own: it learns only through ctcvr. Task `cvr` (label purchase, sample weight click: CVR
over clicked exposures) has loss weight 0 and only reports `cvr_auc` / `cvr_logloss`.
"""

from typing import Any, Dict, Sequence, Tuple

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import multitask
from models.layers import heads

PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS)

TASKS = (
    multitask.TaskSpec("ctr", "ctr", multitask.label("click")),
    multitask.TaskSpec("ctcvr", "ctcvr", multitask.label("click", "purchase")),
    multitask.TaskSpec("cvr", "cvr", multitask.label("purchase"),
                       weight_fn=multitask.label("click"), loss_weight=0.0),
)


# Output layers' starting rates (MultiTaskModel.initialize_output_biases).
PRIORS = (multitask.OutputPrior("ctr_tower", "click"),
          multitask.OutputPrior("cvr_tower", "purchase", "click"))


def build_heads(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
                artifacts: artifacts_lib.TransformArtifacts, params: Dict[str, Any],
                towers: Sequence[str] = ("ctr", "cvr")
                ) -> Tuple[multitask.TowerGraph, Dict[str, heads.Head]]:
  """The two-tower graph and its heads {ctr, cvr, ctcvr = ctr * cvr}; `towers` may add
  towers after ctr and cvr whose logits the caller uses (e.g. ESCM2's imputation)."""
  graph = multitask.build_towers(model_config, spec, artifacts, tuple(towers),
                                 bottom=params["bottom"])
  ctr = graph.head("ctr")
  cvr = graph.head("cvr")
  return graph, {"ctr": ctr, "cvr": cvr, "ctcvr": heads.product([ctr, cvr], "ctcvr")}


def build(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
          artifacts: artifacts_lib.TransformArtifacts,
          params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """ESMM with the tasks above; `params` are PARAMS resolved by models.registry."""
  graph, outputs = build_heads(model_config, spec, artifacts, params)
  return multitask.assemble(graph.inputs, outputs, TASKS, model_config, "esmm", params,
                            output_priors=PRIORS)
