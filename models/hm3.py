"""HM3 (Wen et al., SIGIR 2021): hierarchical modelling of micro and macro behaviours.

Path graph [paper]: exposure -> click -> micro behaviour (item-page interaction: reviews,
specs, chat, images; label `micro`) or not -> macro behaviour (cart, favourite; label
`action`) or not -> purchase. Six sub-networks predict six probability variables of
explicit sub-paths, which compose by the conditional probability rule into four
auxiliary targets and the final CVR [paper].

Flow position: one of the registered models (models.registry), built from the shared
blocks (models.multitask.build_towers): shared encoder, a bottom (model.params.bottom),
six MLP towers.

The six variables [reading] (per exposure x; scorer outputs, float32 [batch, 1]):
  ctr                       y1 = P(click | x)
  p_micro_given_click       y2 = P(micro | click, x)
  p_macro_given_micro       y3 = P(macro | click, micro, x)
  p_macro_given_no_micro    y4 = P(macro | click, no micro, x)
  p_purchase_given_macro    y5 = P(buy | click, macro, x)
  p_purchase_given_no_macro y6 = P(buy | click, no macro, x)
Compositions [reading]:
  ctmicro  = y1 * y2                                  P(click, micro | x)
  p_macro  = y2 * y3 + (1 - y2) * y4                  P(macro | click, x)
            (output `p_action_given_click`)
  ctmacro  = y1 * p_macro, also output as `ctavr`     P(click, macro | x)
  cvr      = p_macro * y5 + (1 - p_macro) * y6        P(buy | click, x)
  ctcvr    = y1 * cvr                                 P(click, buy | x)

Loss over all exposures [reading], on the four entire-space targets, equal weights by
default (model.loss_weights: ctr, ctmicro, ctmacro, ctcvr):
  BCE(click, ctr) + BCE(click*micro, ctmicro) + BCE(click*action, ctmacro)
  + BCE(click*purchase, ctcvr).
Task `cvr` (purchase over clicked exposures) only reports metrics.
"""

from typing import Any, Dict

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import esmm
from models import multitask
from models.layers import heads

PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS)

TASKS = esmm.TASKS + (
    multitask.TaskSpec("ctmicro", "ctmicro", multitask.label("click", "micro")),
    multitask.TaskSpec("ctmacro", "ctmacro", multitask.label("click", "action")),
)
TOWERS = ("ctr", "micro", "macro_given_micro", "macro_given_no_micro",
          "purchase_given_macro", "purchase_given_no_macro")


# Starting rates; the macro and purchase towers' conditionals would need joint counts,
# so they start at P(macro | click) and P(buy | click).
PRIORS = (multitask.OutputPrior("ctr_tower", "click"),
          multitask.OutputPrior("micro_tower", "micro", "click"),
          multitask.OutputPrior("macro_given_micro_tower", "action", "click"),
          multitask.OutputPrior("macro_given_no_micro_tower", "action", "click"),
          multitask.OutputPrior("purchase_given_macro_tower", "purchase", "click"),
          multitask.OutputPrior("purchase_given_no_macro_tower", "purchase", "click"))


def build(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
          artifacts: artifacts_lib.TransformArtifacts,
          params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """HM3 with the tasks above; `params` are PARAMS resolved by models.registry."""
  graph = multitask.build_towers(model_config, spec, artifacts, TOWERS,
                                 bottom=params["bottom"])
  ctr = graph.head("ctr")
  micro = graph.head("micro", "p_micro_given_click")
  macro_micro = graph.head("macro_given_micro", "p_macro_given_micro")
  macro_no_micro = graph.head("macro_given_no_micro", "p_macro_given_no_micro")
  buy_macro = graph.head("purchase_given_macro", "p_purchase_given_macro")
  buy_no_macro = graph.head("purchase_given_no_macro", "p_purchase_given_no_macro")
  macro = heads.mixture(micro, macro_micro, macro_no_micro, "p_action_given_click")
  cvr = heads.mixture(macro, buy_macro, buy_no_macro, "cvr")
  ctmacro = heads.product([ctr, macro], "ctmacro")
  outputs = {
      "ctr": ctr, "cvr": cvr,
      "ctcvr": heads.product([ctr, cvr], "ctcvr"),
      "ctmicro": heads.product([ctr, micro], "ctmicro"),
      "ctmacro": ctmacro,
      "ctavr": heads.alias(ctmacro, "ctavr"),
      "p_micro_given_click": micro,
      "p_macro_given_micro": macro_micro,
      "p_macro_given_no_micro": macro_no_micro,
      "p_action_given_click": macro,
      "p_purchase_given_macro": buy_macro,
      "p_purchase_given_no_macro": buy_no_macro,
  }
  return multitask.assemble(graph.inputs, outputs, TASKS, model_config, "hm3", params,
                            output_priors=PRIORS)
