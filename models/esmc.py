"""ESMC, ESMS, ESMG (Jiang et al., 2023): entire-space CVR via a parameter constraint.

Path: exposure -> click -> in-shop action (label `action`) -> purchase [paper]. The paper
names Probability Space Confusion: chaining conditional probabilities through the action
(as ESM2 does) assumes the chain rule holds on the spaces the towers are trained on,
which it does not always [paper]. ESMC handles "exposure -> click -> action" by
conditional probability and "action -> purchase" by a parameter constraint [paper];
ESMS is the Siamese variant, ESMG the global-domain variant [paper]. The detail below is
our reading (papers.md); each open choice is a config option.

Flow position: three registered models (models.registry) on the shared blocks
(models.multitask.build_towers: shared encoder, a bottom, MLP towers).

ESMC [reading] (per exposure x; scorer outputs, float32 [batch, 1]):
  ctr                      y1 = P(click | x)
  p_action_given_click     y2 = P(action | click, x)
  p_purchase_given_action  y3 = P(buy | click, action, x)   (the action -> buy tower)
  cvr                      P(buy | click, x)                 (its own tower)
  ctavr = y1 * y2 (first path, by conditional probability)
  ctcvr = y1 * cvr (purchase not chained through the action: no PSC)
  Constraint: the CVR tower's weights are tied to the action -> buy tower's by
  lambda * sum_l ||W_cvr[l] - W_buy|action[l]||^2 over the matching Dense layers
  (kernels and biases; models.layers.regularizers.TowerTieRegularizer), logged as
  `constraint_loss`. Options: model.params.constraint_lambda (lambda, default 1e-3),
  model.params.constraint_pull_target (true: both towers move towards each other;
  false: only the CVR tower is pulled), model.params.tie_layers ("all", or indices of
  the towers' Dense layers: hidden layers then the logit layer, -1 = logit),
  model.params.tie_bias (tie the biases too), model.params.init_cvr_from_buy_tower
  (start the CVR tower from the action -> buy tower's initial weights, so the tie does
  not first spend its force aligning permutation-arbitrary hidden units).
  Units of lambda: the task losses are means over the exposures each task is defined
  on (loss_normalization "weights"), so lambda weighs the squared weight distance
  against per-exposure mean BCEs, the same on every data set.
  Loss: BCE(click, ctr) + BCE(click*action, ctavr) + BCE(click*purchase, ctcvr) over all
  exposures, + BCE(purchase, y3) over exposures with click & action (task
  `purchase_given_action`, y3's only direct supervision) + the constraint. Weights:
  model.loss_weights (ctr, ctavr, ctcvr, purchase_given_action; 1 by default).

ESMS [reading]: the hard tie. The CVR path and the action -> buy path run ONE Siamese
  tower (same layer, same weights), each on its own bottom output plus a learned
  per-path context vector (models.layers.tower.PathContext, size
  model.params.path_context_dim, default 8; 0 = none, then the two paths differ only
  through a non-shared bottom such as MMoE). Same outputs and losses as ESMC, no penalty.

ESMG [reading]: every head is a joint probability in the global (exposure) domain:
  ctr = y1, ctavr = ctr * sigmoid(a(x)), ctcvr = ctr * sigmoid(c(x)), so ctavr <= ctr and
  ctcvr <= ctr by construction; cvr = ctcvr / ctr = sigmoid(c(x)) (output as is, so
  ctcvr == ctr * cvr exactly), p_action_given_click = sigmoid(a(x)).
  Loss: BCE(click, ctr) + BCE(click*action, ctavr) + BCE(click*purchase, ctcvr), all
  exposures; no conditional-domain loss.

All three: task `cvr` (purchase over clicked exposures) only reports metrics.
"""

from typing import Any, Dict, Optional, Tuple

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import esm2
from models import multitask
from models.layers import heads
from models.layers import regularizers

ESMC_PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS, constraint_lambda=1e-3,
                                   constraint_pull_target=True, tie_layers="all",
                                   tie_bias=True, init_cvr_from_buy_tower=False)
ESMS_PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS, path_context_dim=8)
ESMG_PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS)

PURCHASE_GIVEN_ACTION_TASK = multitask.TaskSpec(
    "purchase_given_action", "p_purchase_given_action", multitask.label("purchase"),
    weight_fn=multitask.label("click", "action"))
ESMG_TASKS = esm2.TASKS  # ctr, ctcvr, ctavr (+ cvr metrics only)
ESMC_TASKS = ESMG_TASKS + (PURCHASE_GIVEN_ACTION_TASK,)

GLOBAL_TOWERS = ("ctr", "action", "cvr")
# Starting rates (MultiTaskModel.initialize_output_biases). P(buy | action) would need
# joint counts: the action -> buy tower starts at P(buy | click) (ESMS's CVR path runs
# that same tower).
GLOBAL_PRIORS = (multitask.OutputPrior("ctr_tower", "click"),
                 multitask.OutputPrior("action_tower", "action", "click"),
                 multitask.OutputPrior("cvr_tower", "purchase", "click"))
ACTION_PATH_PRIORS = GLOBAL_PRIORS + (
    multitask.OutputPrior("purchase_given_action_tower", "purchase", "click"),)
SIAMESE_PRIORS = GLOBAL_PRIORS[:2] + ACTION_PATH_PRIORS[3:]
ACTION_PATH_TOWERS = GLOBAL_TOWERS + ("purchase_given_action",)


def _global_heads(graph: multitask.TowerGraph) -> Dict[str, Any]:
  """ctr, p_action_given_click, cvr, ctavr = ctr * p_action, ctcvr = ctr * cvr."""
  ctr = graph.head("ctr")
  action = graph.head("action", "p_action_given_click")
  cvr = graph.head("cvr")
  return {
      "ctr": ctr, "cvr": cvr,
      "ctcvr": heads.product([ctr, cvr], "ctcvr"),
      "ctavr": heads.product([ctr, action], "ctavr"),
      "p_action_given_click": action,
  }


def _action_path_outputs(model_config, spec, artifacts, bottom,
                         siamese: Optional[Dict[str, str]] = None, path_context_dim: int = 0
                         ) -> Tuple[multitask.TowerGraph, Dict[str, Any]]:
  """The ESMC/ESMS graph and outputs: the global heads plus y3 = p_purchase_given_action."""
  graph = multitask.build_towers(model_config, spec, artifacts, ACTION_PATH_TOWERS,
                                 bottom=bottom, siamese=siamese,
                                 path_context_dim=path_context_dim)
  outputs = _global_heads(graph)
  outputs["p_purchase_given_action"] = graph.head("purchase_given_action",
                                                  "p_purchase_given_action")
  return graph, outputs


def build_esmc(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
               artifacts: artifacts_lib.TransformArtifacts,
               params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """ESMC: separate CVR and action -> buy towers, tied by TowerTieRegularizer."""
  graph, outputs = _action_path_outputs(model_config, spec, artifacts, params["bottom"])
  # The functional graph has called (built) the towers, so their variables exist.
  cvr_tower, buy_tower = graph.towers["cvr"], graph.towers["purchase_given_action"]
  if params["init_cvr_from_buy_tower"]:
    regularizers.copy_tower_weights(cvr_tower, buy_tower)
  ties = regularizers.tie_towers(cvr_tower, buy_tower, float(params["constraint_lambda"]),
                                 pull_target=bool(params["constraint_pull_target"]),
                                 layers=params["tie_layers"], tie_bias=bool(params["tie_bias"]))
  return multitask.assemble(graph.inputs, outputs, ESMC_TASKS, model_config, "esmc",
                            params, parameter_ties=ties, output_priors=ACTION_PATH_PRIORS)


def build_esms(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
               artifacts: artifacts_lib.TransformArtifacts,
               params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """ESMS: one Siamese tower for the CVR and the action -> buy paths."""
  graph, outputs = _action_path_outputs(model_config, spec, artifacts, params["bottom"],
                                        siamese={"cvr": "purchase_given_action"},
                                        path_context_dim=int(params["path_context_dim"]))
  return multitask.assemble(graph.inputs, outputs, ESMC_TASKS, model_config, "esms", params,
                            output_priors=SIAMESE_PRIORS)


def build_esmg(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
               artifacts: artifacts_lib.TransformArtifacts,
               params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """ESMG: global-domain heads ctr, ctavr = ctr * sigmoid, ctcvr = ctr * sigmoid."""
  graph = multitask.build_towers(model_config, spec, artifacts, GLOBAL_TOWERS,
                                 bottom=params["bottom"])
  return multitask.assemble(graph.inputs, _global_heads(graph), ESMG_TASKS, model_config,
                            "esmg", params, output_priors=GLOBAL_PRIORS)
