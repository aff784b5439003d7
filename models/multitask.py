"""The multi-task model skeleton every paper's model is: a scorer plus weighted tasks.

Flow position: tf.data `(features, labels)` -> **MultiTaskModel** (fit) -> its `scorer`
(the functional Keras model: raw features dict -> dict of probabilities) -> SavedModel.

A paper's model (models/esmm.py, models/naive.py, ...) is a short file that
  1. wires the shared blocks into a scorer with `build_towers` (feature encoder ->
     [cross network] -> bottom -> one MLP tower per name) and probability layers, and
  2. lists its `TaskSpec`s: which output is scored against which label, over which
     exposures (sample weight), with which loss weight (0 = metrics only).

Loss (over the global batch, whatever the number of replicas):
  L = sum_t w_t * [sum_i s_t,i * BCE(label_t,i, p_t,i)] / N_t + sum(scorer.losses)
      + sum_j R_j(V_j)
where s_t,i is the task's sample weight (1 when it has none), w_t its loss weight,
N_t = sum_i s_t,i (model.params.loss_normalization "weights", the default: each task
loss is the mean BCE over the exposures it is defined on, e.g. over clicked exposures
for a click-space CVR task) or N_t = B, the batch size ("batch": the older convention,
which scales a weighted task by the batch's rate of its sample weight), and
(R_j, V_j) the model's parameter ties (e.g. ESMC's TowerTieRegularizer on the CVR
tower's weights; models.layers.regularizers), logged as `constraint_loss` beside
`regularization_loss` (a model without ties logs no constraint_loss). A batch in which
a task has no weight (no clicks) contributes 0 for that task.

The logged `loss` (and so `val_loss`, which early stopping reads) is the same formula
over every batch of the epoch or evaluation at once (SetLoss): per task, the sum of its
weighted BCEs over the whole set over the sum of its weights, not the batches' losses
averaged (which would weight a click-normalised task's batch by its exposures).

Every BCE is computed from the output's log-odds, which the model's `log_odds_model`
computes in log space from the towers' logits (models.layers.log_space): no clipping,
no saturated gradients. Only the exported probabilities are clipped.
"""

import dataclasses
import math
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import tensorflow as tf
import tensorflow_recommenders as tfrs
import tf_keras

from configs import config as config_lib
from features import artifacts as artifacts_lib
from features import preprocessing
from features import spec as spec_lib
from models.layers import bottom as bottom_lib
from models.layers import cross as cross_lib
from models.layers import heads as heads_lib
from models.layers import regularizers as regularizers_lib
from models.layers import tower as tower_lib

# Parameters every model accepts in model.params (a model adds its own to these).
COMMON_PARAMS: Dict[str, Any] = {
    "bottom": "shared",  # see models.layers.bottom.make_bottom
    "loss_normalization": "weights",  # "weights" | "batch", see the module docstring
}
LOSS_NORMALIZATIONS = ("weights", "batch")

# Thresholds of the training-time AUC metrics, evenly spaced on the log-odds scale over
# [-AUC_LOGIT_RANGE, AUC_LOGIT_RANGE] (a step of 0.0032 in log-odds, i.e. 0.3% relative
# in probability near 0), so rare-event probabilities such as ctcvr ~ 3e-4 get as fine a
# resolution as ctr ~ 0.05. pipeline.evaluate computes exact AUCs.
AUC_THRESHOLDS = 10000
AUC_LOGIT_RANGE = 16.0

LabelFn = Callable[[Mapping[str, tf.Tensor]], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class LabelProduct:
  """The product of named 0/1 labels, float32 [batch]: e.g. click * purchase.

  Used as a task's label (click*purchase = "clicked and bought") or sample weight
  (click = "over clicked exposures only"). `names` are the labels it reads.
  """

  names: Tuple[str, ...]

  def __call__(self, labels: Mapping[str, tf.Tensor]) -> tf.Tensor:
    product = None
    for name in self.names:
      if name not in labels:
        raise KeyError(f"label {name!r} is missing from the labels dict; "
                       f"have {sorted(labels)}")
      value = tf.reshape(tf.cast(labels[name], tf.float32), [-1])
      product = value if product is None else product * value
    return product


def label(*names: str) -> LabelProduct:
  """`label("click", "purchase")`: the label (or weight) click * purchase."""
  if not names:
    raise ValueError("label() needs at least one label name")
  return LabelProduct(tuple(names))


@dataclasses.dataclass(frozen=True)
class OutputPrior:
  """The rate an output layer's logit starts at: P(label | given) from label counts.

  Attributes:
    layer: the scorer layer whose bias is set: an MLPTower (`<n>_tower`, its logit
      layer) or a Dense with one unit (e.g. AITM's `ctcvr_logit`).
    label: the label counted in the numerator.
    given: the label counted in the denominator (None: all exposures). The rate is
      count(label) / count(given), which is P(label | given) because the labels are
      nested (purchase, action and micro require a click). A tower whose conditional
      rate the single-label counts cannot give (e.g. P(buy | action)) may use a
      coarser one (P(buy | click)) as its starting point: the aim is a start near the
      right order of magnitude, not the answer.
  """

  layer: str
  label: str
  given: Optional[str] = None


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """One loss/metric term of a multi-task model.

  Attributes:
    name: task name: the key of its loss weight in config.model.loss_weights and the
      prefix of its metrics (`<name>_auc`, `<name>_logloss`).
    output: the scorer output it scores (a probability, float32 [batch, 1]).
    label_fn: labels dict -> float32 [batch] 0/1 target.
    weight_fn: labels dict -> float32 [batch] sample weight, or None for all exposures
      (e.g. `label("click")`: over clicked exposures only).
    loss_weight: the default weight of its loss; 0 = metrics only (no gradient).
    reads: the label names the fns read; derived from `LabelProduct`s when None.
  """

  name: str
  output: str
  label_fn: LabelFn
  weight_fn: Optional[LabelFn] = None
  loss_weight: float = 1.0
  reads: Optional[Tuple[str, ...]] = None

  @property
  def required_labels(self) -> frozenset:
    if self.reads is not None:
      return frozenset(self.reads)
    names = set()
    for fn in (self.label_fn, self.weight_fn):
      if fn is None:
        continue
      if not hasattr(fn, "names"):
        raise ValueError(f"task {self.name!r}: give `reads` (the label names) when "
                         f"label_fn / weight_fn are not LabelProducts")
      names.update(fn.names)
    return frozenset(names)


@tf_keras.saving.register_keras_serializable(package="cvr")
class LogitAUC(tf_keras.metrics.AUC):
  """ROC AUC of log-odds predictions, with thresholds evenly spaced on the log-odds scale.

  update_state takes y_pred = log-odds (float [batch, 1]); it maps them monotonically
  onto [0, 1] by (clip(z, -r, r) + r) / 2r and runs Keras' AUC with `num_thresholds`
  evenly spaced thresholds (its fast bucketed path). AUC depends on ranks only, so this
  is the AUC of the probabilities, at a resolution of 2r / num_thresholds in log-odds
  instead of 1 / num_thresholds in probability (which lumps every rare-event score
  below 1e-4 into one bucket).
  """

  def __init__(self, num_thresholds: Optional[int] = None,
               logit_range: float = AUC_LOGIT_RANGE, **kwargs):
    # None: the module's AUC_THRESHOLDS at construction time (benchmarks vary it).
    super().__init__(num_thresholds=num_thresholds or AUC_THRESHOLDS, **kwargs)
    self.logit_range = float(logit_range)

  def update_state(self, y_true, y_pred, sample_weight=None):
    r = self.logit_range
    scaled = (tf.clip_by_value(tf.cast(y_pred, tf.float32), -r, r) + r) / (2.0 * r)
    return super().update_state(y_true, scaled, sample_weight=sample_weight)

  def get_config(self):
    config = super().get_config()
    config.update(logit_range=self.logit_range)
    return config


AuxiliaryFn = Callable[[Mapping[str, tf.Tensor], Mapping[str, tf.Tensor]],
                       Tuple[tf.Tensor, tf.Tensor]]


@dataclasses.dataclass(frozen=True)
class AuxiliaryLoss:
  """A loss term that is not one output's BCE: AITM's calibrator, ESCM2's IPS / DR terms.

  Attributes:
    name: logged under this name (e.g. "calibrator_loss").
    fn: (labels dict, training outputs dict) -> (per-example loss float32 [batch], this
      replica's normaliser, a scalar). The term is weight * sum(per_example) /
      N, N the global batch's normaliser (its mean over replicas, as for tasks). The
      training outputs are the log_odds_model's (log-odds of the scored outputs plus the
      model's extra training tensors).
    weight: its weight in the total loss (> 0).
    reads: the label names fn reads.
  """

  name: str
  fn: AuxiliaryFn
  weight: float
  reads: Tuple[str, ...] = ()


class SetLoss(tf_keras.metrics.Metric):
  """The training loss's formula applied to every batch seen since the last reset.

  result = sum_k c_k * S_k / N_k + M / E over the batches seen: for each term k (a task's
  or an auxiliary loss's BCE) S_k is the sum of its per-example losses (times their
  sample weights) and N_k the sum of its normalisers (the weights, or the exposures);
  c_k its weight in the loss; M the sum of the model-level terms (regularization and
  constraint loss, scalars) times each batch's exposures, E the exposures. On one batch
  this is the batch's training loss (a term with N_k = 0 counts 0, as in training).
  Under a tf.distribute strategy each replica adds its own sums and result() reads
  their totals, so it is the loss of the global set, whatever the replica count.

  Args:
    coefficients: term name -> c_k (a term with weight 0 is left out by the caller).
    name: the logged name, e.g. "loss".
  """

  def __init__(self, coefficients: Mapping[str, float], name: str, **kwargs):
    super().__init__(name=name, **kwargs)
    self.term_names = tuple(coefficients)
    self.coefficients = tf.constant([float(coefficients[k]) for k in self.term_names])
    terms = len(self.term_names)
    self.sums = self.add_weight(name="sums", shape=[terms], initializer="zeros")
    self.normalisers = self.add_weight(name="normalisers", shape=[terms],
                                       initializer="zeros")
    self.model_terms = self.add_weight(name="model_terms", initializer="zeros")
    self.exposures = self.add_weight(name="exposures", initializer="zeros")

  def update_state(self, term_sums: Mapping[str, Tuple[tf.Tensor, tf.Tensor]],
                   exposures: tf.Tensor, model_term: Any = 0.0) -> None:
    """Adds one batch: term name -> (S, N) scalars of this replica's batch (terms not
    in `coefficients` are ignored), its exposures and its model-level terms' value."""
    pairs = [term_sums[k] for k in self.term_names]
    self.sums.assign_add(tf.stack([tf.cast(total, tf.float32) for total, _ in pairs]))
    self.normalisers.assign_add(tf.stack([tf.cast(n, tf.float32) for _, n in pairs]))
    exposures = tf.cast(exposures, tf.float32)
    self.model_terms.assign_add(tf.cast(model_term, tf.float32) * exposures)
    self.exposures.assign_add(exposures)

  def reset_state(self) -> None:
    for variable in self.variables:  # Metric's own assigns a scalar 0: not to [terms]
      variable.assign(tf.zeros_like(variable))

  def result(self) -> tf.Tensor:
    return (tf.reduce_sum(self.coefficients
                          * tf.math.divide_no_nan(self.sums, self.normalisers))
            + tf.math.divide_no_nan(self.model_terms, self.exposures))


def make_ranking_task(name: str) -> tfrs.tasks.Ranking:
  """A ranking task on log-odds: per-example BCE and `<name>_auc` / `<name>_logloss`.

  Its predictions are log-odds (float32 [batch, 1]), so the BCE is
  sigmoid_cross_entropy_with_logits: exact and unclipped. The loss is unreduced (one
  value per example, times its sample weight) so the model normalises it itself;
  Keras' default reduction fails under a tf.distribute strategy in a custom train_step.
  """
  return tfrs.tasks.Ranking(
      loss=tf_keras.losses.BinaryCrossentropy(from_logits=True,
                                              reduction=tf_keras.losses.Reduction.NONE),
      metrics=[LogitAUC(name=f"{name}_auc"),
               tf_keras.metrics.BinaryCrossentropy(from_logits=True, name=f"{name}_logloss")],
      name=f"{name}_task")


class MultiTaskModel(tfrs.models.Model):
  """A scorer (raw features -> probabilities) trained on a weighted sum of tasks.

  Attributes:
    scorer: functional tf_keras.Model, raw features dict (see
      features.preprocessing.feature_inputs) -> dict of float32 [batch, 1] probabilities.
    tasks: task name -> tfrs.tasks.Ranking (loss and metrics of that task).
    task_specs: task name -> TaskSpec.
    task_loss_weights: task name -> loss weight in effect (0 = metrics only).
    output_names: the scorer's output keys, e.g. ("ctr", "cvr", "ctcvr").
    required_labels: the label names the tasks read.
    parameter_ties: (regularizer, variable) pairs whose sum is `constraint_loss`.
    log_odds_model: functional tf_keras.Model on the scorer's inputs and layers, raw
      features dict -> dict of float32 [batch, 1] log-odds of the outputs the tasks
      score (computed in log space), plus the extra tensors auxiliary losses read.
    loss_normalization: "weights" or "batch" (see the module docstring).

  `model(features)` returns the scorer's dict. `fit` / `evaluate` take batches of
  `(features, labels)`, labels a dict name -> float32 [batch].
  """

  def __init__(self, scorer: tf_keras.Model, tasks: Sequence[TaskSpec],
               log_odds_model: tf_keras.Model,
               loss_weights: Optional[Mapping[str, float]] = None,
               parameter_ties: Sequence[regularizers_lib.ParameterTie] = (),
               loss_normalization: str = "weights",
               auxiliary_losses: Sequence[AuxiliaryLoss] = (),
               output_priors: Sequence[OutputPrior] = (), **kwargs):
    super().__init__(**kwargs)
    if loss_normalization not in LOSS_NORMALIZATIONS:
      raise ValueError(f"loss_normalization {loss_normalization!r}: use one of "
                       f"{list(LOSS_NORMALIZATIONS)}")
    if not isinstance(scorer.output, dict):
      raise ValueError("the scorer must output a dict name -> probability")
    output_names = tuple(scorer.output)
    names = [task.name for task in tasks]
    if len(set(names)) != len(names):
      raise ValueError(f"task names must be unique, got {names}")
    for task in tasks:
      if task.output not in output_names:
        raise ValueError(f"task {task.name!r} scores output {task.output!r}, which the "
                         f"scorer lacks; outputs: {list(output_names)}")
    loss_weights = dict(loss_weights or {})
    unknown = sorted(set(loss_weights) - set(names))
    if unknown:
      raise ValueError(f"loss_weights name unknown task(s) {unknown}; tasks: {names}")
    weights = {t.name: float(loss_weights.get(t.name, t.loss_weight)) for t in tasks}
    negative = sorted(n for n, w in weights.items() if w < 0)
    if negative:
      raise ValueError(f"loss weights must be >= 0; negative for {negative}")
    if not any(weights.values()):
      raise ValueError(f"every task has loss weight 0; nothing to train ({weights})")
    missing = sorted({t.output for t in tasks} - set(log_odds_model.output))
    if missing:
      raise ValueError(f"log_odds_model lacks the log-odds of {missing}")

    self.scorer = scorer
    self.output_names = output_names
    self.task_specs = {task.name: task for task in tasks}
    self.task_loss_weights = weights
    self.tasks = {task.name: make_ranking_task(task.name) for task in tasks}
    aux_names = [aux.name for aux in auxiliary_losses]
    if len(set(aux_names)) != len(aux_names) or set(aux_names) & set(names):
      raise ValueError(f"auxiliary loss names {aux_names} must be unique and differ from "
                       f"the task names {names}")
    bad = sorted(aux.name for aux in auxiliary_losses if not aux.weight > 0)
    if bad:
      raise ValueError(f"auxiliary losses {bad} need a weight > 0")
    self.auxiliary_losses = tuple(auxiliary_losses)
    self.output_priors = tuple(output_priors)
    self.required_labels = frozenset().union(
        *(t.required_labels for t in tasks), *(set(a.reads) for a in auxiliary_losses))
    # The tied variables are the scorer's own (trainable_variables holds each once).
    self._parameter_ties = tuple(parameter_ties)
    # The logged losses cover the epoch's (evaluation's) batches: `loss` and each
    # auxiliary loss as SetLoss over the whole set (a step's own value would make
    # `val_loss`, which early stopping reads, the last batch's loss); the model-level
    # terms as means weighted by each batch's exposures.
    coefficients = {n: w for n, w in weights.items() if w}  # weight 0: metrics only
    coefficients.update({aux.name: aux.weight for aux in auxiliary_losses})
    self.loss_trackers = (
        [SetLoss(coefficients, name="loss")]
        + [tf_keras.metrics.Mean(name=name) for name in ["regularization_loss"] + (
            ["constraint_loss"] if self._parameter_ties else [])]
        + [SetLoss({name: 1.0}, name=name) for name in aux_names])
    self.log_odds_model = log_odds_model
    self.loss_normalization = loss_normalization

  def initialize_output_biases(self, label_counts: Mapping[str, int], examples: int,
                               max_rate: float = 0.5) -> Dict[str, float]:
    """Sets each OutputPrior's logit bias to the log-odds of its rate; returns the rates.

    Args:
      label_counts: label name -> positives in the train split (counts.json "labels").
      examples: exposures in the train split.
      max_rate: rates are clipped into [1e-6, max_rate] (a bias never starts a head
        above its no-information value).
    Priors whose labels are missing from label_counts, or whose denominator is 0, are
    left at 0 and not returned.
    """
    rates = {}
    for prior in self.output_priors:
      if prior.label not in label_counts or (prior.given and prior.given not in label_counts):
        continue
      denominator = label_counts[prior.given] if prior.given else examples
      if not denominator:
        continue
      rate = min(max(label_counts[prior.label] / denominator, 1e-6), max_rate)
      dense = self.output_dense(prior.layer)
      dense.bias.assign(tf.fill(dense.bias.shape, math.log(rate) - math.log1p(-rate)))
      rates[prior.layer] = rate
    return rates

  def output_dense(self, name: str) -> tf_keras.layers.Dense:
    """The 1-unit Dense that makes layer `name`'s logit: an MLPTower's `logit` layer, or
    the layer itself (e.g. AITM's `ctcvr_logit`); looked up in the scorer, then in the
    training-only layers of log_odds_model (e.g. ESCM2's imputation tower)."""
    for model in (self.scorer, self.log_odds_model):
      if name in [layer.name for layer in model.layers]:
        layer = model.get_layer(name)
        return layer.logit if isinstance(layer, tower_lib.MLPTower) else layer
    raise ValueError(f"no layer {name!r} in {self.name}")

  @property
  def parameter_ties(self) -> Tuple[regularizers_lib.ParameterTie, ...]:
    return self._parameter_ties

  def call(self, features, training=None):
    """Raw features dict -> dict name -> float32 [batch, 1] probability."""
    return self.scorer(features, training=training)

  def log_odds(self, features, training=None) -> Dict[str, tf.Tensor]:
    """Raw features dict -> dict name -> float32 [batch, 1] log-odds (what losses read)."""
    return self.log_odds_model(features, training=training)

  def task_losses(self, inputs, training: bool = False) -> Dict[str, tf.Tensor]:
    """Per-task normalised loss (scalar) on a `(features, labels)` batch; updates metrics.

    Each is sum_i s_i * BCE_i / N (see the module docstring), computed so that under a
    strategy with R replicas the mean over replicas of each replica's value is the loss
    of the global batch: replica r returns R * sum_{i in r} s_i BCE_i / N_global.
    """
    return self._forward_losses(inputs, training)[0]

  def auxiliary_loss_values(self, inputs, training: bool = False) -> Dict[str, tf.Tensor]:
    """Each auxiliary loss (unweighted scalar, normalised as AuxiliaryLoss says)."""
    return self._forward_losses(inputs, training)[1]

  def _forward_losses(self, inputs, training: bool) -> Tuple[
      Dict[str, tf.Tensor], Dict[str, tf.Tensor], Dict[str, Tuple[tf.Tensor, tf.Tensor]]]:
    """(task losses, auxiliary losses, term name -> (sum of its per-example losses, its
    normaliser) on this replica's batch) from one forward pass."""
    features, labels = inputs
    log_odds = self.log_odds(features, training=training)
    auxiliary, sums = {}, {}
    for aux in self.auxiliary_losses:
      per_example, normalizer = aux.fn(labels, log_odds)
      sums[aux.name] = (tf.reduce_sum(per_example), normalizer)
      auxiliary[aux.name] = _normalised_sum(*sums[aux.name])
    losses = {}
    for name, spec in self.task_specs.items():
      target = tf.reshape(spec.label_fn(labels), [-1, 1])
      weight = None
      if spec.weight_fn is not None:
        weight = tf.reshape(spec.weight_fn(labels), [-1, 1])
      per_example = self.tasks[name](
          labels=target, predictions=log_odds[spec.output], sample_weight=weight,
          training=training)
      if self.loss_normalization == "weights" and weight is not None:
        normalizer = tf.reduce_sum(tf.cast(weight, per_example.dtype))
      else:
        normalizer = tf.cast(tf.size(per_example), per_example.dtype)
      sums[name] = (tf.reduce_sum(per_example), normalizer)
      losses[name] = _normalised_sum(*sums[name])
    return losses, auxiliary, sums

  def regularization_loss(self) -> tf.Tensor:
    """sum(scorer.losses): the regularizers of the scorer's layers (0 when none)."""
    if not self.scorer.losses:
      return tf.constant(0.0)
    return tf.add_n(self.scorer.losses)

  def constraint_loss(self) -> tf.Tensor:
    """sum of the parameter ties' penalties (0 when none)."""
    return regularizers_lib.tie_loss(self._parameter_ties)

  def _weighted_task_loss(self, inputs, training: bool
                          ) -> Tuple[tf.Tensor, Dict[str, Tuple[tf.Tensor, tf.Tensor]]]:
    """(weighted sum of the task and auxiliary losses, each term's (sum, normaliser) on
    this replica's batch, for the logged SetLosses)."""
    losses, auxiliary, sums = self._forward_losses(inputs, training)
    total = tf.constant(0.0)
    for name, loss in losses.items():
      weight = self.task_loss_weights[name]
      if weight:  # weight 0: metrics only, and no 0 * NaN in the total.
        total += weight * loss
    for aux in self.auxiliary_losses:
      total += aux.weight * auxiliary[aux.name]
    return total, sums

  def compute_loss(self, inputs, training: bool = False) -> tf.Tensor:
    """Weighted task (and auxiliary) losses + the scorer's regularization + the
    constraint loss (scalar)."""
    return (self._weighted_task_loss(inputs, training)[0] + self.regularization_loss()
            + self.constraint_loss())

  def _logs(self, inputs, sums, regularization_loss, constraint_loss):
    """The step's logs: metric results (already global), with `loss_trackers` updated
    by this replica's batch: the SetLosses with its terms' sums, the model-level terms
    (the same on every replica) weighted by its exposures. So an epoch's or an
    evaluation's logs cover all its batches."""
    _, labels = inputs
    exposures = tf.cast(tf.shape(next(iter(labels.values())))[0], tf.float32)
    model_terms = dict(regularization_loss=regularization_loss,
                       constraint_loss=constraint_loss)
    for tracker in self.loss_trackers:
      if isinstance(tracker, SetLoss):
        model_term = (regularization_loss + constraint_loss if tracker.name == "loss"
                      else 0.0)
        tracker.update_state(sums, exposures, model_term)
      else:
        tracker.update_state(model_terms[tracker.name], sample_weight=exposures)
    return {metric.name: metric.result() for metric in self.metrics}

  # tfrs.models.Model adds sum(self.losses) on top of compute_loss; ours already holds
  # the regularizers, so the steps are overridden to count them once. Under a
  # tf.distribute strategy the gradients of each replica are summed, so each replica's
  # loss is divided by the replica count (as Keras' compiled losses do).
  def train_step(self, inputs):
    with tf.GradientTape() as tape:
      task_loss, sums = self._weighted_task_loss(inputs, training=True)
      regularization_loss = self.regularization_loss()
      constraint_loss = self.constraint_loss()
      replicas = tf.distribute.get_strategy().num_replicas_in_sync
      scaled_loss = (task_loss + regularization_loss + constraint_loss) / replicas
    variables = self.trainable_variables
    gradients = tape.gradient(scaled_loss, variables)
    self.optimizer.apply_gradients(
        (g, v) for g, v in zip(gradients, variables) if g is not None)
    return self._logs(inputs, sums, regularization_loss, constraint_loss)

  def make_train_function(self, force=False):
    """Builds the optimizer's slot variables before train_step is first traced.

    tf_keras' optimizers create their slots inside the first apply_gradients, i.e.
    inside the first trace of the train function; a first call that creates variables
    makes tf.function trace train_step a second time (about 40% of a short fit's CPU,
    and every training process pays it). Built here, under the model's strategy as
    fit would build them, the step is traced once. Slots are made for every trainable
    variable (one that never gets a gradient keeps zero slots); the update is the same.
    """
    if (isinstance(self.optimizer, tf_keras.optimizers.Optimizer)
        and not getattr(self.optimizer, "_built", False)):
      with self.distribute_strategy.scope():
        self.optimizer.build(self.trainable_variables)
    return super().make_train_function(force)

  def test_step(self, inputs):
    _, sums = self._weighted_task_loss(inputs, training=False)
    return self._logs(inputs, sums, self.regularization_loss(), self.constraint_loss())


def _normalised_sum(total: tf.Tensor, normalizer: tf.Tensor) -> tf.Tensor:
  """total (this replica's sum of per-example losses) / (the mean over replicas of this
  replica's normalizer): the global batch's normalised loss times the replica count, so
  that train_step's division by the replica count and the summed gradients give the
  global-batch gradient (0 when N = 0)."""
  return tf.math.divide_no_nan(total, _global_mean(tf.cast(normalizer, total.dtype)))


def _global_mean(value: tf.Tensor) -> tf.Tensor:
  """The mean over replicas of a per-replica scalar (itself outside a strategy)."""
  context = tf.distribute.get_replica_context()
  if context is None or context.num_replicas_in_sync == 1:
    return value
  return context.all_reduce(tf.distribute.ReduceOp.MEAN, value)


@dataclasses.dataclass
class TowerGraph:
  """The functional graph up to the towers' logits (see `build_towers`).

  Attributes:
    inputs: raw feature name -> tf_keras.Input (the scorer's inputs).
    encoder: the shared FeatureEncoder (one embedding table per feature).
    logits: tower name -> KerasTensor float32 [batch, 1] (with vector towers: the
      tower's vector, float32 [batch, units[-1]]).
    towers: tower name -> MLPTower (its `dense_layers` for regularisation or tying);
      a Siamese path maps to the same MLPTower object as the tower it shares.
  """

  inputs: Dict[str, Any]
  encoder: preprocessing.FeatureEncoder
  logits: Dict[str, Any]
  towers: Dict[str, tower_lib.MLPTower]

  def head(self, tower_name: str, output_name: Optional[str] = None) -> heads_lib.Head:
    """The probability (sigmoid head named `output_name`) of tower `tower_name`'s logit."""
    return heads_lib.sigmoid(self.logits[tower_name], output_name or tower_name)


def assemble(inputs: Mapping[str, Any], outputs: Mapping[str, heads_lib.Head],
             tasks: Sequence[TaskSpec], model_config: config_lib.ModelConfig, name: str,
             params: Mapping[str, Any],
             parameter_ties: Sequence[regularizers_lib.ParameterTie] = (),
             auxiliary_losses: Sequence[AuxiliaryLoss] = (),
             training_outputs: Optional[Mapping[str, Any]] = None,
             output_priors: Sequence[OutputPrior] = ()) -> MultiTaskModel:
  """The scorer `<name>_scorer` (inputs -> the heads' probabilities) and its log-odds
  twin (inputs -> the log-odds of every head, plus `training_outputs`: extra tensors
  only the auxiliary losses read) in a MultiTaskModel.

  `inputs` are the raw feature inputs (TowerGraph.inputs); `params` the resolved
  model.params (loss_normalization).
  """
  scorer = tf_keras.Model(dict(inputs), {k: h.probability for k, h in outputs.items()},
                          name=f"{name}_scorer")
  training = {k: h.logit() for k, h in outputs.items()}
  clash = sorted(set(training) & set(training_outputs or {}))
  if clash:
    raise ValueError(f"training_outputs {clash} clash with output names")
  training.update(training_outputs or {})
  log_odds_model = tf_keras.Model(dict(inputs), training, name=f"{name}_log_odds")
  return MultiTaskModel(scorer, tasks, loss_weights=model_config.loss_weights,
                        parameter_ties=parameter_ties, log_odds_model=log_odds_model,
                        loss_normalization=params.get("loss_normalization", "weights"),
                        auxiliary_losses=auxiliary_losses, output_priors=output_priors,
                        name=name)


def build_towers(model_config: config_lib.ModelConfig, spec: spec_lib.FeatureSpec,
                 artifacts: artifacts_lib.TransformArtifacts, tower_names: Sequence[str],
                 bottom: Any = "shared", siamese: Optional[Mapping[str, str]] = None,
                 path_context_dim: int = 0, inputs: Optional[Mapping[str, Any]] = None,
                 prefix: str = "", vector_towers: bool = False) -> TowerGraph:
  """Raw inputs -> shared encoder -> [cross network] -> bottom -> one MLP tower each.

  Args:
    model_config: sizes (embedding_dim, tower_units, cross_layers, dropout,
      activation, l2).
    spec, artifacts: the feature spec and its transform statistics.
    tower_names: one bottom output (path) per name; path `n` gets the tower layer
      `<n>_tower`, unless `siamese` maps it to another path whose tower it reuses.
    bottom: the bottom setting (see models.layers.bottom.make_bottom).
    siamese: path name -> the path whose tower (same layer, same weights) it runs,
      e.g. {"purchase_given_action": "cvr"} (ESMS). Every path of a shared tower gets
      its own `PathContext` (`<n>_context`) when path_context_dim > 0.
    path_context_dim: size of those learned per-path context vectors.
    inputs: raw feature inputs to build on (another graph's `inputs`, so that two
      graphs with their own encoders form one scorer); new ones when None.
    prefix: prepended to the names of the encoder, cross network and bottom, so two
      graphs in one scorer have distinct layers (e.g. the naive baseline's "ctr_" and
      "cvr_" models). Tower names stay `<n>_tower`.
    vector_towers: the towers output their last hidden layer (a task vector) instead of
      a logit (AITM).

  Returns:
    A TowerGraph whose logits a model turns into probabilities.
  """
  inputs = dict(inputs) if inputs is not None else preprocessing.feature_inputs(spec)
  encoder = preprocessing.FeatureEncoder.from_artifacts(
      spec, artifacts, model_config.embedding_dim, embedding_l2=model_config.embedding_l2,
      name=f"{prefix}feature_encoder")
  shared = encoder(inputs)
  if model_config.cross_layers > 0:
    shared = cross_lib.CrossNetwork(model_config.cross_layers, l2=model_config.l2,
                                    name=f"{prefix}cross_network")(shared)
  tower_inputs = bottom_lib.make_bottom(bottom, len(tower_names),
                                        name=f"{prefix}bottom")(shared)
  siamese = dict(siamese or {})
  unknown = sorted((set(siamese) | set(siamese.values())) - set(tower_names))
  if unknown or any(owner in siamese for owner in siamese.values()):
    raise ValueError(f"siamese {siamese}: every name must be a tower name {list(tower_names)}"
                     f" and a shared tower must be its own owner")
  with_context = set(siamese) | set(siamese.values()) if path_context_dim else set()
  towers, logits = {}, {}
  for name in sorted(tower_names, key=lambda n: n in siamese):  # owners first
    tower_input = tower_inputs[list(tower_names).index(name)]
    if name in with_context:
      tower_input = tower_lib.PathContext(path_context_dim, name=f"{name}_context")(tower_input)
    if name in siamese:
      towers[name] = towers[siamese[name]]
    else:
      towers[name] = tower_lib.MLPTower(
          model_config.tower_units, activation=model_config.activation,
          dropout=model_config.dropout, l2=model_config.l2,
          output_logit=not vector_towers, name=f"{name}_tower")
    logits[name] = towers[name](tower_input)
  logits = {name: logits[name] for name in tower_names}
  return TowerGraph(inputs=inputs, encoder=encoder, logits=logits, towers=towers)
