"""A registered model's training objective under a delayed-feedback method.

Flow position: models.registry.build_model (a MultiTaskModel: scorer, tasks) ->
**`feedback_model`** (the same scorer and log-odds model, tasks rewritten for a method's
stream) -> fit on training/feedback_data.py's samples (labels of `stream_labels`) ->
`serving_scorer` (FNC's correction applied inside the exported model).

A stream sample (training/feedback_streams.py) carries a click label, a conversion label
and its kind; `stream_labels` turns them into the labels dict the tasks read:
  <click label>, <conversion label>   the sample's labels, float32 [batch]
  trains_click                        1 for an exposure's first sample (only it trains the
                                      click task: a duplicate does not count a click twice)
  trains_conversion                   feedback_streams.trains_conversion: 0 for a clicked
                                      exposure's first sample under a windowed method
                                      (its conversion label is not known yet)
  f_dp                                (esdfm, defer) P(delayed positive | click, x) of the
                                      auxiliary classifier, float32 [batch]
  elapsed_days                        (dfm) the delay or the elapsed time, days [batch]

The rewrite, for a model whose labels are the click and the conversion label only:
  - every task that reads the conversion label gets `trains_conversion` in its sample
    weight, every other task `trains_click`;
  - the conversion task (the one trained task that reads the conversion label: ESMM's
    ctcvr on the entire space, the naive baseline's click-space cvr) keeps its metrics
    (loss weight 0) and its loss becomes the auxiliary loss `<task>_feedback`:
      sum_i s_i * [w1_i y_i (-log q_i) + w0_i (1 - y_i) (-log(1 - q_i))] / sum_i s_i
    with q the task's output, y its label, s its sample weight, and (w1, w0) the method's
    count weights (models/layers/delayed_feedback.py) on a clicked sample, (1, 1) on an
    unclicked one (a real negative at once). The weights read p = P(conversion | click,
    x), the model's `cvr` output (stop-gradient), and f_dp.
The loss weight of `<task>_feedback` is the conversion task's.

DFM (Chapelle 2014) adds a delay head beside the conversion head: log lambda(x), a
Dense(1) on the scorer's feature encoding, an extra output of the log-odds model (not
served). Its samples are the clicks as of the snapshot, each once, with `elapsed_days`
(the delay of a conversion, else the time elapsed since the click); its term replaces the
conversion task's: sum_i s_i c_i NLL_i / sum_i s_i, with c the click label and NLL
models/layers/delayed_feedback.dfm_loss on the cvr output and the delay head. With the
click task's BCE this is the entire space's likelihood (an unclicked exposure's is the
click task's alone). The served cvr is p itself.

FNC trains the plain loss on the FNW stream, whose label rate is q = r / (1 + r) for the
rate r of the trained output (r = P(click, convert | x) on the entire space: an unclicked
exposure adds one negative; P(convert | click, x) in the click space), so the served model
outputs r = q / (1 - q) (`serving_scorer`) and the dependent output anew (cvr = ctcvr /
ctr, or ctcvr = ctr * cvr).
"""

from typing import Dict, Mapping

import tensorflow as tf
import tf_keras

from features import preprocessing
from models import multitask
from models.layers import delayed_feedback as losses
from models.layers import log_space
from training import feedback_days
from training import feedback_streams as streams

TRAINS_CLICK = "trains_click"
TRAINS_CONVERSION = "trains_conversion"
DELAYED_POSITIVE = "f_dp"
CVR_OUTPUT = "cvr"  # P(conversion | click, x): the p of the weights
# The streams' methods, and DFM (Chapelle 2014): each click once, with its conversion
# label and its delay or elapsed time as of the snapshot, and a delay-rate head.
DFM = streams.DFM
METHODS = streams.METHODS + (DFM,)
ELAPSED = "elapsed_days"  # DFM: the delay (converted) or the elapsed time, in days
DELAY_OUTPUT = "delay_log_rate"  # DFM's head: log lambda(x), lambda per day
WEIGHTED = ("fnw", "esdfm", "defer")  # methods whose conversion loss has count weights
NEEDS_DELAYED_POSITIVE = ("esdfm", "defer")
FEEDBACK_SUFFIX = "_feedback"  # the conversion task's loss: "<task>_feedback"


def stream_labels(click, conversion, kind, method: str, f_dp=None,
                  click_label: str = "click",
                  conversion_label: str = "purchase", elapsed_days=None
                  ) -> Dict[str, tf.Tensor]:
  """The labels dict of a batch of stream samples (module docstring), float32 [batch].

  Args:
    click, conversion: the samples' labels, int [batch].
    kind: index into feedback_days.KINDS, int [batch].
    method: the stream's method (feedback_streams.METHODS).
    f_dp: P(delayed positive) per sample (esdfm, defer), float [batch].
    click_label, conversion_label: the names the model's tasks read them by.
    elapsed_days: (dfm) per sample the conversion's delay after the click, or the time
      elapsed since the click at the snapshot when not converted, in days, float [batch].
  """
  if method not in METHODS:
    raise ValueError(f"unknown delayed-feedback method {method!r}: one of {METHODS}")
  click = tf.cast(click, tf.float32)
  exposure = tf.cast(tf.equal(kind, feedback_days.KINDS.index("exposure")), tf.float32)
  trains_conversion = tf.ones_like(click)
  if method in streams.WINDOWED:  # a clicked exposure's first sample has no label yet
    trains_conversion = 1.0 - exposure * click
  labels = {click_label: click, conversion_label: tf.cast(conversion, tf.float32),
            TRAINS_CLICK: exposure, TRAINS_CONVERSION: trains_conversion}
  if method in NEEDS_DELAYED_POSITIVE:
    if f_dp is None:
      raise ValueError(f"{method} needs f_dp, the auxiliary classifier's P(delayed "
                       f"positive | click, x)")
    labels[DELAYED_POSITIVE] = tf.cast(f_dp, tf.float32)
  if method == DFM:
    if elapsed_days is None:
      raise ValueError("dfm needs elapsed_days: each click's delay or elapsed time")
    labels[ELAPSED] = tf.cast(elapsed_days, tf.float32)
  return labels


def _conversion_task(model: multitask.MultiTaskModel, conversion_label: str
                     ) -> multitask.TaskSpec:
  trained = [spec for name, spec in model.task_specs.items()
             if model.task_loss_weights[name] and conversion_label in spec.required_labels]
  if len(trained) != 1:
    raise ValueError(f"{model.name}: a delayed-feedback method needs exactly one trained "
                     f"task reading {conversion_label!r} (its conversion task); found "
                     f"{[spec.name for spec in trained]}")
  return trained[0]


def _masked(spec: multitask.TaskSpec, mask: str) -> multitask.TaskSpec:
  """`spec` with `mask` multiplied into its sample weight."""
  names = spec.weight_fn.names if spec.weight_fn is not None else ()
  return multitask.TaskSpec(spec.name, spec.output, spec.label_fn,
                            weight_fn=multitask.label(*names, mask),
                            loss_weight=spec.loss_weight)


def class_weights(method: str, labels: Mapping[str, tf.Tensor],
                  log_odds: Mapping[str, tf.Tensor], click_label: str = "click"):
  """(w1, w0), float32 [batch]: the method's count weights on clicked samples, 1 on
  unclicked ones; p is sigmoid of the `cvr` log-odds, held constant."""
  click = tf.reshape(labels[click_label], [-1])
  ones = tf.ones_like(click)
  if method not in WEIGHTED:
    return ones, ones
  p = tf.sigmoid(tf.reshape(log_odds[CVR_OUTPUT], [-1]))
  if method == "fnw":
    w1, w0 = losses.fnw_weights(p)
  elif method == "esdfm":
    w1, w0 = losses.esdfm_weights(losses.real_negative_rate(
        tf.stop_gradient(p), labels[DELAYED_POSITIVE]))
  else:  # defer
    w1, w0 = losses.defer_weights(p, labels[DELAYED_POSITIVE])
  return click * w1 + (1.0 - click) * ones, click * w0 + (1.0 - click) * ones


def feedback_model(model: multitask.MultiTaskModel, method: str,
                   click_label: str = "click",
                   conversion_label: str = "purchase") -> multitask.MultiTaskModel:
  """`model`'s scorer and log-odds model with the tasks rewritten for `method`'s stream
  (module docstring); the result trains on `stream_labels` batches.

  Raises:
    ValueError: the model reads labels a stream does not carry, or has no single
      conversion task; `cvr` (P(conversion | click)) missing for a weighted method.
  """
  if method not in METHODS:
    raise ValueError(f"unknown delayed-feedback method {method!r}: one of {METHODS}")
  extra = sorted(model.required_labels - {click_label, conversion_label})
  if extra:
    raise ValueError(f"{model.name} reads labels {extra} that a delayed-feedback stream "
                     f"does not carry (it has {click_label!r} and {conversion_label!r})")
  if (method in WEIGHTED or method == DFM) and CVR_OUTPUT not in model.log_odds_model.output:
    raise ValueError(f"{method}: its weights read P(conversion | click, x), the "
                     f"'{CVR_OUTPUT}' output, which {model.name} lacks")
  target = _conversion_task(model, conversion_label)
  log_odds_model = _with_delay_head(model) if method == DFM else model.log_odds_model
  tasks = []
  for spec in model.task_specs.values():
    mask = TRAINS_CONVERSION if conversion_label in spec.required_labels else TRAINS_CLICK
    tasks.append(_masked(spec, mask))
  conversion_spec = _masked(target, TRAINS_CONVERSION)

  def log_pair(log_odds, output):
    return log_space.sigmoid_log_pair(tf.reshape(log_odds[output], [-1, 1]))

  def dfm_term(labels, log_odds):
    # The entire-space likelihood is the click task's times this, per clicked sample.
    pair = log_pair(log_odds, CVR_OUTPUT)
    weight = conversion_spec.weight_fn(labels)
    clicked = tf.reshape(labels[click_label], [-1])
    per_example = weight * clicked * losses.dfm_loss(
        labels[conversion_label], pair, log_odds[DELAY_OUTPUT], labels[ELAPSED])
    return per_example, tf.reduce_sum(weight)

  def feedback_loss(labels, log_odds):
    pair = log_pair(log_odds, conversion_spec.output)
    weight = conversion_spec.weight_fn(labels)
    w1, w0 = class_weights(method, labels, log_odds, click_label)
    per_example = weight * losses.weighted_log_loss(conversion_spec.label_fn(labels), pair,
                                                    w1, w0)
    return per_example, tf.reduce_sum(weight)

  extra = ({DELAYED_POSITIVE} if method in NEEDS_DELAYED_POSITIVE else
           {ELAPSED} if method == DFM else set())
  reads = tuple(sorted(conversion_spec.required_labels | {click_label} | extra))
  weights = dict(model.task_loss_weights)
  auxiliary = multitask.AuxiliaryLoss(f"{target.name}{FEEDBACK_SUFFIX}",
                                      dfm_term if method == DFM else feedback_loss,
                                      weights[target.name], reads=reads)
  weights[target.name] = 0.0
  return multitask.MultiTaskModel(
      model.scorer, tasks, log_odds_model=log_odds_model, loss_weights=weights,
      parameter_ties=model.parameter_ties, loss_normalization=model.loss_normalization,
      auxiliary_losses=tuple(model.auxiliary_losses) + (auxiliary,),
      output_priors=model.output_priors, name=model.name)


def _with_delay_head(model: multitask.MultiTaskModel) -> tf_keras.Model:
  """model.log_odds_model plus DELAY_OUTPUT: log lambda(x) [batch, 1], a Dense(1) on the
  scorer's feature encoding (the conversion model's, when the model has one per task)."""
  encoders = [layer for layer in model.scorer.layers
              if isinstance(layer, preprocessing.FeatureEncoder) and not layer.return_dict]
  if not encoders:
    raise ValueError(f"dfm: {model.name}'s scorer has no feature encoder to put the "
                     f"delay head on")
  encoder = next((layer for layer in encoders if layer.name.startswith("cvr_")),
                 encoders[0])
  outputs = dict(model.log_odds_model.output)
  outputs[DELAY_OUTPUT] = tf_keras.layers.Dense(1, name=DELAY_OUTPUT)(encoder.output)
  return tf_keras.Model(model.log_odds_model.input, outputs,
                        name=f"{model.log_odds_model.name}_dfm")


def serving_scorer(scorer: tf_keras.Model, method: str, trained_output: str,
                   epsilon: float = 1e-7) -> tf_keras.Model:
  """The model to export: `scorer` itself, or for FNC the scorer with the trained output
  q replaced by r = q / (1 - q) (q clipped to <= (1 - epsilon) / 2) and the dependent
  output recomputed: cvr = min(ctcvr / ctr, 1) when ctcvr was trained, ctcvr = ctr * cvr
  when cvr was (module docstring). Outputs float32 [batch, 1] as the scorer's."""
  if method != "fnc":
    return scorer
  outputs = dict(scorer.output)
  if trained_output not in outputs:
    raise ValueError(f"FNC: the scorer has no output {trained_output!r}")
  corrected = dict(outputs)
  corrected[trained_output] = FncCorrection(epsilon, name=f"{trained_output}_fnc")(
      outputs[trained_output])
  if trained_output == "ctcvr" and {"ctr", "cvr"} <= set(outputs):
    corrected["cvr"] = tf_keras.layers.Lambda(
        lambda pair: tf.minimum(tf.math.divide_no_nan(pair[0], pair[1]), 1.0),
        name="cvr_fnc")([corrected["ctcvr"], outputs["ctr"]])
  elif trained_output == "cvr" and {"ctr", "ctcvr"} <= set(outputs):
    corrected["ctcvr"] = tf_keras.layers.Multiply(name="ctcvr_fnc")(
        [outputs["ctr"], corrected["cvr"]])
  return tf_keras.Model(scorer.input, corrected, name=f"{scorer.name}_fnc")


@tf_keras.saving.register_keras_serializable(package="cvr")
class FncCorrection(tf_keras.layers.Layer):
  """q -> q / (1 - q), q clipped to [0, (1 - epsilon) / 2]: FNC's served rate."""

  def __init__(self, epsilon: float = 1e-7, **kwargs):
    super().__init__(**kwargs)
    self.epsilon = float(epsilon)

  def call(self, q):
    q = tf.clip_by_value(q, 0.0, (1.0 - self.epsilon) / 2.0)
    return q / (1.0 - q)

  def get_config(self):
    return dict(super().get_config(), epsilon=self.epsilon)


def trained_output(model: multitask.MultiTaskModel, conversion_label: str = "purchase") -> str:
  """The output the conversion task trains (ctcvr for ESMM, cvr for the naive baseline), of
  a registered model or of its `feedback_model`."""
  for aux in model.auxiliary_losses:
    if aux.name.endswith(FEEDBACK_SUFFIX):
      return model.task_specs[aux.name[:-len(FEEDBACK_SUFFIX)]].output
  return _conversion_task(model, conversion_label).output
