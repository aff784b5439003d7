"""Click-space baselines: the ESMM paper's naive CVR model and a shared-bottom variant.

Flow position: two registered models (models.registry); the references every
entire-space model must beat (papers.md, "Baselines").

Both output (float32 [batch, 1]):
  ctr   = P(click=1 | x)
  cvr   = P(purchase=1 | click=1, x)
  ctcvr = ctr * cvr
and train on
  L = w_ctr * BCE(click, ctr) over all exposures
    + w_cvr * BCE(purchase, cvr) over clicked exposures only (sample weight = click,
      mean over the batch's clicks under the default loss normalisation)
so the CVR tower sees only clicked exposures (sample selection bias, few positives).
Task `ctcvr` (label click * purchase, all exposures) has loss weight 0: metrics only.

naive [paper's BASE]: the CVR model is trained on clicked exposures with its OWN
  feature encoder (embeddings), bottom and tower; the CTR model is a separate model with
  its own encoder (the paper's pCTCVR for BASE multiplies the outputs of two separately
  trained models). Here both are built in one scorer and trained in one loop, but share
  no parameter, so each learns only from its own loss.
shared_bottom [reading]: the ESMM scorer (one shared encoder, a CTR and a CVR tower)
  trained with the naive loss: a multi-task click-space model. The CVR tower still sees
  only clicks, but its embeddings also learn from the CTR task on all exposures, so it
  is a stronger, different baseline; the two differ from ESMM only in the loss.
"""

from typing import Any, Dict

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import esmm
from models import multitask
from models.layers import heads

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
  """The paper's naive baseline: independent CTR and click-space CVR models."""
  ctr_model = multitask.build_towers(model_config, spec, artifacts, ("ctr",),
                                     bottom=params["bottom"], prefix="ctr_model_")
  cvr_model = multitask.build_towers(model_config, spec, artifacts, ("cvr",),
                                     bottom=params["bottom"], inputs=ctr_model.inputs,
                                     prefix="cvr_model_")
  ctr = ctr_model.head("ctr")
  cvr = cvr_model.head("cvr")
  outputs = {"ctr": ctr, "cvr": cvr, "ctcvr": heads.product([ctr, cvr], "ctcvr")}
  return multitask.assemble(ctr_model.inputs, outputs, TASKS, model_config, "naive", params,
                            output_priors=esmm.PRIORS)


def build_shared_bottom(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
                        artifacts: artifacts_lib.TransformArtifacts,
                        params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """The shared-bottom click-space model: ESMM's scorer with the naive loss."""
  graph, outputs = esmm.build_heads(model_config, spec, artifacts, params)
  return multitask.assemble(graph.inputs, outputs, TASKS, model_config, "shared_bottom",
                            params, output_priors=esmm.PRIORS)
