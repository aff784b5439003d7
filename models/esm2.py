"""ESM2 (Wen et al., SIGIR 2020): post-click behaviour decomposition.

Path: exposure -> click -> D-action (purchase-related action: cart, wish list; label
`action`) or O-action (any other) -> purchase [paper].

Flow position: one of the registered models (models.registry), built from the shared
blocks (models.multitask.build_towers): one shared feature encoder [paper], a bottom
(model.params.bottom), four MLP towers [paper].

Probabilities (per exposure x; scorer outputs, float32 [batch, 1]):
  ctr                          y1 = P(click | x)                       [paper]
  p_action_given_click         y2 = P(D-action | click, x)             [paper]
  p_purchase_given_action      y3 = P(buy | D-action, x)               [paper]
  p_purchase_given_no_action   y4 = P(buy | O-action, x)               [paper]
  cvr   = y2 * y3 + (1 - y2) * y4 = P(buy | click, x)                  [paper]
  ctavr = y1 * y2 = P(click, D-action | x)                             [paper]
  ctcvr = y1 * cvr = P(click, buy | x)                                 [paper]

Loss over all exposures (entire space) [paper]:
  L = w_ctr BCE(click, ctr) + w_ctavr BCE(click*action, ctavr)
      + w_ctcvr BCE(click*purchase, ctcvr)
with equal weights by default (the paper weights them; config model.loss_weights).
Task `cvr` (purchase over clicked exposures) only reports metrics (weight 0).
"""

from typing import Any, Dict

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import esmm
from models import multitask
from models.layers import heads

PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS)

CTAVR_TASK = multitask.TaskSpec("ctavr", "ctavr", multitask.label("click", "action"))
TASKS = esmm.TASKS + (CTAVR_TASK,)
TOWERS = ("ctr", "action", "purchase_given_action", "purchase_given_no_action")
# Starting rates; the purchase towers' conditional rates would need joint counts, so
# both start at P(buy | click).
PRIORS = (multitask.OutputPrior("ctr_tower", "click"),
          multitask.OutputPrior("action_tower", "action", "click"),
          multitask.OutputPrior("purchase_given_action_tower", "purchase", "click"),
          multitask.OutputPrior("purchase_given_no_action_tower", "purchase", "click"))


def build(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
          artifacts: artifacts_lib.TransformArtifacts,
          params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """ESM2 with the tasks above; `params` are PARAMS resolved by models.registry."""
  graph = multitask.build_towers(model_config, spec, artifacts, TOWERS,
                                 bottom=params["bottom"])
  ctr = graph.head("ctr")
  action = graph.head("action", "p_action_given_click")
  buy_action = graph.head("purchase_given_action", "p_purchase_given_action")
  buy_no_action = graph.head("purchase_given_no_action", "p_purchase_given_no_action")
  cvr = heads.mixture(action, buy_action, buy_no_action, "cvr")
  outputs = {
      "ctr": ctr, "cvr": cvr,
      "ctcvr": heads.product([ctr, cvr], "ctcvr"),
      "ctavr": heads.product([ctr, action], "ctavr"),
      "p_action_given_click": action,
      "p_purchase_given_action": buy_action,
      "p_purchase_given_no_action": buy_no_action,
  }
  return multitask.assemble(graph.inputs, outputs, TASKS, model_config, "esm2", params,
                            output_priors=PRIORS)
