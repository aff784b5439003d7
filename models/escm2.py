"""ESCM2 (Wang et al., SIGIR 2022): entire-space counterfactual CVR, IPS and DR.

Flow position: two registered models, `escm2_ips` and `escm2_dr` (models.registry), on
ESMM's towers (models.esmm.build_heads: shared encoder, CTR and CVR towers; any bottom).

Probabilities (float32 [batch, 1]) as ESMM: ctr, cvr, ctcvr = ctr * cvr [paper].

Loss over the exposures D of a batch [paper]:
  L = L_ctr + lambda_c * L_cf + lambda_g * L_ctcvr
with L_ctr = BCE(click, ctr), L_ctcvr = BCE(click * purchase, ctcvr) (tasks; lambda_g is
the ctcvr task's weight) and, with o = click, e_i = BCE(purchase_i, cvr_i) (from the
log-odds) and the propensity ohat = ctr with its gradient stopped [paper], floored at
model.params.propensity_floor (1e-6) and with 1 / ohat clipped to
model.params.max_inverse_propensity (15, as in the public code) [reading: both from the
public code]:
  IPS [paper]: L_cf = sum_D o_i e_i / ohat_i / N, logged as `cvr_ips_loss`.
  DR  [paper]: an imputation tower predicts ehat_i >= 0 for every exposure,
       L_cf = sum_D [ ehat_i + o_i (e_i - ehat_i) / ohat_i ] / N, logged as `cvr_dr_loss`,
       and the imputation tower is fitted by
       L_imp = sum_D o_i (e_i - ehat_i)^2 / ohat_i / N, logged as `imputation_loss`,
       weighted by lambda_c too (the public code adds both into the lambda_c term).
N = |D| (model.params.ips_normalization "exposures", the paper's) or the number of
clicks in the batch ("clicks", PaddleRec's code: about 1 / CTR times larger, which
changes what lambda_c means).
Gradients [reading]: L_cf trains the CVR tower only (ehat enters it with its gradient
stopped, the propensity too), and L_imp trains the imputation tower only (e enters it
with its gradient stopped), so neither term can lower its value by moving the other
tower. ehat = softplus(logit) [reading]: e is an unbounded BCE >= 0, so a sigmoid in
(0, 1), as in the public code, could not impute errors above 1.
Task `cvr` (purchase over clicked exposures) only reports metrics.
"""

from typing import Any, Dict, Mapping

import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import spec as spec_lib
from models import esmm
from models import multitask

PARAMS: Dict[str, Any] = dict(multitask.COMMON_PARAMS, lambda_c=0.1, lambda_g=1.0,
                              propensity_floor=1e-6, max_inverse_propensity=15.0,
                              ips_normalization="exposures")
IPS_NORMALIZATIONS = ("exposures", "clicks")
IMPUTED_ERROR = "imputed_error"


def tasks_of(lambda_g: float) -> tuple:
  return (multitask.TaskSpec("ctr", "ctr", multitask.label("click")),
          multitask.TaskSpec("ctcvr", "ctcvr", multitask.label("click", "purchase"),
                             loss_weight=lambda_g),
          multitask.TaskSpec("cvr", "cvr", multitask.label("purchase"),
                             weight_fn=multitask.label("click"), loss_weight=0.0))


class CounterfactualLoss:
  """The IPS or DR CVR loss (and DR's imputation loss) as AuxiliaryLoss functions.

  Reads labels click and purchase and the training outputs `ctr`, `cvr` (log-odds) and,
  for DR, `imputed_error` (ehat, float32 [batch, 1]).
  """

  def __init__(self, propensity_floor: float, max_inverse_propensity: float,
               normalization: str):
    if normalization not in IPS_NORMALIZATIONS:
      raise ValueError(f"ESCM2 ips_normalization {normalization!r}: use one of "
                       f"{list(IPS_NORMALIZATIONS)}")
    if not 0 < propensity_floor < 1 or not max_inverse_propensity >= 1:
      raise ValueError(f"ESCM2 needs 0 < propensity_floor < 1 and max_inverse_propensity >= 1,"
                       f" got {propensity_floor}, {max_inverse_propensity}")
    self.floor = float(propensity_floor)
    self.max_inverse = float(max_inverse_propensity)
    self.normalization = normalization

  def _parts(self, labels, outputs):
    """(o, e, 1 / ohat, N), each float32 [batch] but N (a scalar)."""
    click = tf.reshape(tf.cast(labels["click"], tf.float32), [-1])
    purchase = tf.reshape(tf.cast(labels["purchase"], tf.float32), [-1])
    error = tf.nn.sigmoid_cross_entropy_with_logits(
        purchase, tf.reshape(outputs["cvr"], [-1]))
    propensity = tf.maximum(tf.sigmoid(tf.stop_gradient(tf.reshape(outputs["ctr"], [-1]))),
                            self.floor)
    inverse = tf.minimum(1.0 / propensity, self.max_inverse)
    normalizer = (tf.reduce_sum(click) if self.normalization == "clicks"
                  else tf.cast(tf.size(click), tf.float32))
    return click, error, inverse, normalizer

  def ips(self, labels: Mapping[str, tf.Tensor], outputs: Mapping[str, tf.Tensor]):
    """Per exposure o e / ohat, and N."""
    click, error, inverse, normalizer = self._parts(labels, outputs)
    return click * error * inverse, normalizer

  def doubly_robust(self, labels, outputs):
    """Per exposure ehat + o (e - ehat) / ohat (ehat's gradient stopped), and N."""
    click, error, inverse, normalizer = self._parts(labels, outputs)
    imputed = tf.stop_gradient(tf.reshape(outputs[IMPUTED_ERROR], [-1]))
    return imputed + click * (error - imputed) * inverse, normalizer

  def imputation(self, labels, outputs):
    """Per exposure o (e - ehat)^2 / ohat (e's gradient stopped), and N."""
    click, error, inverse, normalizer = self._parts(labels, outputs)
    imputed = tf.reshape(outputs[IMPUTED_ERROR], [-1])
    return click * tf.square(tf.stop_gradient(error) - imputed) * inverse, normalizer


def _build(model_config, spec, artifacts, params, doubly_robust: bool):
  lambda_c = float(params["lambda_c"])
  if not lambda_c > 0:
    raise ValueError(f"ESCM2 lambda_c must be > 0, got {lambda_c}")
  counterfactual = CounterfactualLoss(float(params["propensity_floor"]),
                                      float(params["max_inverse_propensity"]),
                                      params["ips_normalization"])
  towers = ("ctr", "cvr", "imputation") if doubly_robust else ("ctr", "cvr")
  graph, outputs = esmm.build_heads(model_config, spec, artifacts, params, towers=towers)
  reads = ("click", "purchase")
  if doubly_robust:
    training_outputs = {IMPUTED_ERROR: tf_keras.layers.Activation(
        "softplus", name=IMPUTED_ERROR)(graph.logits["imputation"])}
    auxiliary = (multitask.AuxiliaryLoss("cvr_dr_loss", counterfactual.doubly_robust,
                                         lambda_c, reads),
                 multitask.AuxiliaryLoss("imputation_loss", counterfactual.imputation,
                                         lambda_c, reads))
  else:
    training_outputs = {}
    auxiliary = (multitask.AuxiliaryLoss("cvr_ips_loss", counterfactual.ips, lambda_c,
                                         reads),)
  name = "escm2_dr" if doubly_robust else "escm2_ips"
  return multitask.assemble(graph.inputs, outputs, tasks_of(float(params["lambda_g"])),
                            model_config, name, params, auxiliary_losses=auxiliary,
                            training_outputs=training_outputs, output_priors=esmm.PRIORS)


def build_ips(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
              artifacts: artifacts_lib.TransformArtifacts,
              params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """ESCM2-IPS: ESMM + the inverse-propensity-weighted CVR loss."""
  return _build(model_config, spec, artifacts, params, doubly_robust=False)


def build_dr(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
             artifacts: artifacts_lib.TransformArtifacts,
             params: Dict[str, Any]) -> multitask.MultiTaskModel:
  """ESCM2-DR: ESMM + the doubly robust CVR loss and its imputation tower."""
  return _build(model_config, spec, artifacts, params, doubly_robust=True)
