"""AITM (Xi et al., KDD 2021): adaptive information transfer along a conversion chain.

Flow position: one of the registered models (models.registry), on the shared blocks
(models.multitask.build_towers with vector towers) and models.layers.ait.

Chain [paper]: T steps on the entire space, e.g. impression -> click -> purchase (the
default, model.params.chain: [click, purchase]) or impression -> click -> action ->
purchase ([click, action, purchase], where the data has the action label). Step t's
label is "every step up to t happened", over all exposures: y_1 = click, y_2 = click *
action (or click * purchase), ...

Graph [paper]: one vector tower per step on the bottom (q_t, float32 [batch, k], k =
model.tower_units[-1]); z_1 = q_1; for t >= 2, p_{t-1} = g_{t-1}(z_{t-1}) (transfer
layer: Dense(k, ReLU) [reading: the authors add batch norm and dropout; we use the
model's dropout and no batch norm]) and z_t = AIT([p_{t-1}, q_t]); yhat_t =
sigmoid(Dense(1)(z_t)).

Outputs (float32 [batch, 1]): one per step, named by its last label: `ctr` (click),
`ctavr` (action), `ctmicro` (micro), `ctcvr` (purchase); and
  cvr = clip(ctcvr / ctr, 1e-7, 1 - 1e-7)   [reading]
since AITM models joint probabilities only and does not guarantee ctcvr <= ctr (the
calibrator below only discourages the opposite). `ctcvr == ctr * cvr` therefore holds
only where ctcvr <= ctr (to float32 rounding); the exported ctcvr is the step's own.

Loss [paper]: sum_t BCE(y_t, yhat_t) over all exposures + alpha * L_lc, the behavioural
expectation calibrator L_lc = mean over the batch of sum_{t>=2} max(yhat_t - yhat_{t-1}, 0)
(we average over exposures, as the authors' code does; alpha = model.params.
calibrator_alpha, default 0.6 as in the authors' README; logged as `calibrator_loss`).
Task `cvr` (purchase over clicked exposures) only reports metrics.
"""

from typing import Any, Dict, Mapping, Sequence

import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import multitask
from models.layers import ait
from models.layers import heads

PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS, chain=["click", "purchase"],
                              calibrator_alpha=0.6)
STEP_OUTPUTS = {"click": "ctr", "action": "ctavr", "micro": "ctmicro", "purchase": "ctcvr"}
# Step t's logit layer `<output>_logit` starts at the rate of its last label over all
# exposures (the chain's labels are nested, so that is the step's joint rate).
CALIBRATOR_OUTPUT = "calibrator_penalty"


def step_outputs(chain: Sequence[str]) -> list:
  """The output name of each step of `chain` (a list of label names)."""
  chain = list(chain)
  if len(chain) < 2 or chain[0] != "click" or chain[-1] != "purchase":
    raise ValueError(f"AITM chain {chain}: must start with 'click' and end with 'purchase' "
                     f"(the ctr / ctcvr contract), with >= 2 steps")
  unknown = sorted(set(chain) - set(STEP_OUTPUTS))
  if unknown or len(set(chain)) != len(chain):
    raise ValueError(f"AITM chain {chain}: steps must be distinct labels of "
                     f"{sorted(STEP_OUTPUTS)}")
  return [STEP_OUTPUTS[label] for label in chain]


def tasks_of(chain: Sequence[str]) -> tuple:
  """One BCE task per step over all exposures, plus metrics-only cvr on clicks."""
  names = step_outputs(chain)
  steps = tuple(multitask.TaskSpec(name, name, multitask.label(*chain[:t + 1]))
                for t, name in enumerate(names))
  return steps + (multitask.TaskSpec("cvr", "cvr", multitask.label("purchase"),
                                     weight_fn=multitask.label("click"), loss_weight=0.0),)


def calibrator_loss(labels: Mapping[str, tf.Tensor], outputs: Mapping[str, tf.Tensor]):
  """Per-exposure calibrator penalty, normalised by the number of exposures."""
  del labels
  penalty = tf.reshape(outputs[CALIBRATOR_OUTPUT], [-1])
  return penalty, tf.cast(tf.size(penalty), tf.float32)


def build(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
          artifacts: artifacts_lib.TransformArtifacts,
          params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """AITM over model.params.chain; `params` are PARAMS resolved by models.registry."""
  chain = list(params["chain"])
  names = step_outputs(chain)
  if not model_config.tower_units:
    raise ValueError("AITM needs model.tower_units (its towers output vectors)")
  units = int(model_config.tower_units[-1])
  graph = multitask.build_towers(model_config, spec, artifacts, names,
                                 bottom=params["bottom"], vector_towers=True)
  fused = graph.logits[names[0]]  # z_1 = q_1
  logits = [tf_keras.layers.Dense(1, name=f"{names[0]}_logit")(fused)]
  for previous, name in zip(names, names[1:]):
    transferred = tf_keras.layers.Dense(units, activation="relu",
                                        name=f"{previous}_transfer")(fused)
    if model_config.dropout > 0:
      transferred = tf_keras.layers.Dropout(model_config.dropout,
                                            name=f"{previous}_transfer_dropout")(transferred)
    fused = ait.AdaptiveInformationTransfer(units, name=f"{name}_ait")(
        [transferred, graph.logits[name]])
    logits.append(tf_keras.layers.Dense(1, name=f"{name}_logit")(fused))
  outputs = {name: heads.sigmoid(logit, name) for name, logit in zip(names, logits)}
  outputs["cvr"] = heads.ratio(outputs["ctcvr"], outputs["ctr"], "cvr")
  alpha = float(params["calibrator_alpha"])
  if alpha < 0:
    raise ValueError(f"AITM calibrator_alpha must be >= 0, got {alpha}")
  training_outputs, auxiliary = {}, ()
  if alpha > 0:
    training_outputs[CALIBRATOR_OUTPUT] = ait.ExpectationCalibratorPenalty(
        name=CALIBRATOR_OUTPUT)(logits)
    auxiliary = (multitask.AuxiliaryLoss("calibrator_loss", calibrator_loss, alpha),)
  priors = [multitask.OutputPrior(f"{name}_logit", label)
            for name, label in zip(names, chain)]
  return multitask.assemble(graph.inputs, outputs, tasks_of(chain), model_config, "aitm",
                            params, auxiliary_losses=auxiliary,
                            training_outputs=training_outputs, output_priors=priors)
