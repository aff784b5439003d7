"""Typed experiment configuration, loaded from the YAML files in this folder.

One YAML file per experiment (`configs/esmm.yaml`, `configs/naive.yaml`, ...). A file may
name a `base:` file (relative to itself) whose keys it overrides, key by key, so the data
and feature settings are written once (`configs/base_simulated.yaml`). Sections:

    base: base_simulated.yaml          # optional
    feature_spec: features/simulated.yaml   # relative to this YAML file
    data:   {...}  -> DataConfig   (used by pipeline.preprocess and the tf.data reader)
    model:  {...}  -> ModelConfig  (used by models.build_model)
    train:  {...}  -> TrainConfig  (used by pipeline.train)

Unknown keys are errors that name the file and the key (with the nearest allowed key,
`did you mean train.learning_rate?`), so a typo never silently falls back to a default.

A config path given on a command line resolves the same way in every entry point
(`resolve_path`): as given (absolute, or relative to the working directory) if it exists,
else relative to the project root, so `--config configs/esmm.yaml` works from any folder.
"""

import dataclasses
import datetime
import difflib
import os
import re
from typing import Any, Dict, List, Optional, Tuple

import yaml

from features import spec as spec_lib


class ConfigError(ValueError):
  """A config file is invalid; the message names the file and the key."""


# The folder holding the `configs` package: the project root (a source checkout or an
# editable install), or site-packages, where the YAML files are installed beside the code.
PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def resolve_path(path: str, what: str = "config file") -> str:
  """A config / feature-spec path as given if it exists, else relative to the project root.

  Absolute paths are returned as they are. E.g. "configs/esmm.yaml" from any working
  directory -> PROJECT_ROOT/configs/esmm.yaml (unless ./configs/esmm.yaml exists).

  Raises:
    ConfigError: neither exists; the message names both places looked in.
  """
  if os.path.isabs(path) or os.path.exists(path):
    return path
  in_project = os.path.join(PROJECT_ROOT, path)
  if os.path.exists(in_project):
    return in_project
  raise ConfigError(f"{path}: {what} not found (looked in the working directory "
                    f"{os.getcwd()} and the project root {PROJECT_ROOT})")


def closest_name(name: str, *candidate_lists, cutoff: float = 0.6) -> Optional[str]:
  """The closest (difflib) of the first candidate list with one close enough, or None.

  The did-you-mean of config keys here and of pipeline.preprocess's flags.
  """
  for candidates in candidate_lists:
    close = difflib.get_close_matches(name, sorted(candidates), n=1, cutoff=cutoff)
    if close:
      return close[0]
  return None


def _nearest(name: str, allowed, prefix: str = "") -> str:
  """' (did you mean <prefix><closest>?)' or '' when nothing is close."""
  close = closest_name(name, allowed)
  return f" (did you mean {prefix}{close}?)" if close else ""


def unknown_keys_message(unknown, allowed, section: str = "") -> str:
  """'unknown key train.lerning_rate (did you mean train.learning_rate?)'.

  Several unknown keys are joined with '; '; a key with no close match lists the
  allowed ones.
  """
  prefix = f"{section}." if section else ""
  parts = []
  for key in sorted(unknown, key=str):
    hint = _nearest(str(key), allowed, prefix)
    parts.append(f"unknown key {prefix}{key}" + (
        hint or f" (allowed in {section or 'the top level'}: {sorted(allowed)})"))
  return "; ".join(parts)


LR_SCHEDULES = ("constant", "cosine", "exponential")
# train.calibration's methods (models.calibration fits them).
CALIBRATIONS = ("none", "bias", "platt", "platt_ctr", "ips_ctr")
# feedback.method: "none" (the trainer's plain path over the split as written) or a
# delayed-feedback method (training/feedback_streams.py, training/feedback_objective.py;
# docs/MODELS.md, "Delayed feedback"). tests/test_feedback_training.py checks it against
# training.feedback_objective.METHODS.
FEEDBACK_METHODS = ("none", "oracle", "vanilla", "waiting", "fnw", "fnc", "esdfm", "defer",
                    "dfm")
FEEDBACK_WINDOWED = ("waiting", "esdfm", "defer")
# pipeline.train --strategy's choices (training.strategy.make_strategy builds them).
STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")
# The experiment config of pipeline.train / pipeline.evaluate without --config
# (resolve_path: as given, else relative to the project root).
DEFAULT_CONFIG = "configs/esmm.yaml"
# pipeline.init's starter (features.spec_inference.infer_starter) without its flags:
# impressions sampled for the statistics, the most distinct values a vocabulary feature
# may have (more are hashed), the largest hash_buckets written.
DEFAULT_SAMPLE_ROWS = 100_000
DEFAULT_MAX_VOCABULARY = 1000
DEFAULT_MAX_HASH_BUCKETS = 1 << 20


def split_patterns(value: str) -> List[str]:
  """A comma-separated list of globs (a command line's --impressions, --train...) as a list."""
  return [part.strip() for part in value.split(",") if part.strip()]


def _utc_midnight(date: str) -> int:
  """"YYYY-MM-DD" -> unix seconds of its UTC midnight (ValueError when malformed)."""
  day = datetime.date.fromisoformat(str(date))
  return int(datetime.datetime(day.year, day.month, day.day,
                               tzinfo=datetime.timezone.utc).timestamp())


DAY_S = 86400
# train.validation_from's value for "the day before the data's eval day" (resolved by
# training.data.resolve_validation_from from OUTPUT/SPLIT_DATES_FILE), its default.
AUTO = "auto"
# train.validation_from's spelling of "no validation split" on a command line (YAML: null).
NONE = "none"
# OUTPUT/split.json: {"eval_from": "YYYY-MM-DD", "eval_from_timestamp": s, "chosen_by":
# "config" | "data"}, written by the --source log job (transforms.job), read by training.
SPLIT_DATES_FILE = "split.json"


_DATE_PATTERN = re.compile(r"\d{4}-\d{2}-\d{2}")
_UNIX_SECONDS_PATTERN = re.compile(r"\d+")


def instant_timestamp(value: Any) -> int:
  """A point in time -> unix seconds.

  Args:
    value: "YYYY-MM-DD" (its UTC midnight), an ISO 8601 datetime with "Z" or an offset
      ("2026-03-02T12:00:00Z", "2026-03-02T14:00:00+02:00"), or unix seconds as a
      non-negative int or a string of digits ("1772496000").

  Raises:
    ValueError: anything else, e.g. a datetime without an offset (its zone is unknown).
  """
  if isinstance(value, bool):
    raise ValueError(f"{value!r} is not a date, a datetime or unix seconds")
  if isinstance(value, int):
    if value < 0:
      raise ValueError(f"unix seconds must be >= 0, got {value}")
    return value
  text = str(value).strip()
  if _UNIX_SECONDS_PATTERN.fullmatch(text):
    return int(text)
  if _DATE_PATTERN.fullmatch(text):
    return _utc_midnight(text)
  try:
    instant = datetime.datetime.fromisoformat(text)
  except ValueError:
    raise ValueError(f"{text!r} is not YYYY-MM-DD, an ISO 8601 datetime with Z or an "
                     f"offset, or unix seconds") from None
  if instant.tzinfo is None:
    raise ValueError(f"{text!r} has no time zone: end it with Z (UTC) or an offset "
                     f"such as +02:00")
  return int(instant.timestamp())


def utc_day(timestamp: int) -> str:
  """Unix seconds -> "YYYY-MM-DD" of its UTC day."""
  return datetime.datetime.fromtimestamp(int(timestamp),
                                         tz=datetime.timezone.utc).date().isoformat()


def utc_iso(timestamp: int) -> str:
  """Unix seconds -> "YYYY-MM-DDTHH:MM:SSZ"."""
  return datetime.datetime.fromtimestamp(int(timestamp), tz=datetime.timezone.utc).strftime(
      "%Y-%m-%dT%H:%M:%SZ")


def day_before(date: str) -> str:
  """"YYYY-MM-DD" -> the previous calendar day, "YYYY-MM-DD"."""
  return (datetime.date.fromisoformat(str(date)) - datetime.timedelta(days=1)).isoformat()


@dataclasses.dataclass(frozen=True)
class LabelConfig:
  """One label derived from behaviour events.

  Attributes:
    name: Example key of the label (0/1 int64), e.g. "click", "action", "purchase".
    events: event types (the raw `event` field) that set this label.
    after_click: the event counts only when it follows a click on the same
      impression; one without a click is an orphan, handled by
      `DataConfig.orphan_event_policy`.
  """

  name: str
  events: Tuple[str, ...]
  after_click: bool = True


DEFAULT_LABELS = (
    LabelConfig("click", ("click",), after_click=False),
    LabelConfig("action", ("cart", "favorite")),
    LabelConfig("purchase", ("purchase",)),
)

ORPHAN_POLICIES = ("dead_letter", "infer_click")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """How raw logs become labelled examples.

  Attributes:
    labels: the labels to derive, in order; the first must be the click label.
    attribution_window_s: an event counts only if 0 <= event.timestamp -
      impression.timestamp <= window. Later events go to the dead-letter output with
      reason `outside_attribution_window`.
    orphan_event_policy: what to do with an `after_click` event on an impression that
      has no click: "dead_letter" (the event is dead-lettered with reason
      `event_without_click`; the impression keeps the labels of its valid events) or
      "infer_click" (the event implies a click; click is set to 1).
    eval_from: UTC date "YYYY-MM-DD"; impressions at or after its midnight go to the
      eval split, earlier ones to train. None (the default) = the last UTC day present
      among the labelled impressions is eval, every earlier day train (the job records
      the day in OUTPUT/split.json). Only --source log splits by date.
    as_of: the snapshot time of the logs: "YYYY-MM-DD" (its UTC midnight), an ISO 8601
      datetime with Z or an offset, or unix seconds (int or string); None = no cut.
      Records (impressions, events) with a timestamp after as_of are dead-lettered as
      bad_value by the log job. eval_from, when set, must be before it.
    train_shards, eval_shards: number of TFRecord files per split.
    vocabulary_window_days: the daily job (pipeline.preprocess --day D): the transform
      artifacts (vocabularies, moments, bucket boundaries) of day D are computed from the
      analyzer states of days D - window + 1 .. D (transforms/analyzer_state.py).
  """

  labels: Tuple[LabelConfig, ...] = DEFAULT_LABELS
  attribution_window_s: int = 86400
  orphan_event_policy: str = "dead_letter"
  eval_from: Optional[str] = None
  as_of: Optional[str] = None
  train_shards: int = 4
  eval_shards: int = 2
  vocabulary_window_days: int = 7

  @property
  def label_names(self) -> List[str]:
    return [label.name for label in self.labels]

  @property
  def click_label(self) -> str:
    """The first label: whether the exposure was clicked."""
    return self.labels[0].name

  @property
  def conversion_label(self) -> str:
    """The last label: the conversion, the one whose late arrival the delayed-feedback
    methods correct (docs/MODELS.md, "Delayed feedback")."""
    return self.labels[-1].name

  @property
  def eval_from_timestamp(self) -> Optional[int]:
    """`eval_from` as unix seconds (UTC midnight), or None (derived from the data)."""
    return None if self.eval_from is None else _utc_midnight(self.eval_from)

  @property
  def as_of_timestamp(self) -> Optional[int]:
    """`as_of` as unix seconds, or None (ValueError when malformed: `instant_timestamp`)."""
    return None if self.as_of is None else instant_timestamp(self.as_of)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The model: which paper's heads, and the shared building blocks' sizes.

  Attributes:
    name: registered model name (see `models.build_model`), e.g. "esmm", "naive".
    embedding_dim: embedding size of every categorical feature (a feature's own
      `embedding_dim` overrides it).
    tower_units: hidden layer sizes of every task tower (MLP); a final 1-unit logit
      layer is added.
    cross_layers: number of DCN-v2 `tfrs.layers.dcn.Cross` layers applied to the
      shared input before the towers (0 = none).
    dropout: dropout rate after each hidden tower layer.
    activation: hidden activation.
    l2: L2 penalty on tower kernels.
    embedding_l2: L2 penalty on the (pooled) embedding vectors a batch uses, batch mean
      of their squared norms (features.preprocessing.FeatureEncoder).
    loss_weights: per-task loss weight, keyed by task name (e.g. ctr, ctcvr); tasks not
      named keep the model's default weight.
    params: model-specific options, validated by the model itself.
  """

  name: str = "esmm"
  embedding_dim: int = 16
  tower_units: Tuple[int, ...] = (128, 64)
  cross_layers: int = 0
  dropout: float = 0.0
  activation: str = "relu"
  l2: float = 0.0
  embedding_l2: float = 0.0
  loss_weights: Dict[str, float] = dataclasses.field(default_factory=dict)
  params: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Optimisation and checkpointing.

  Attributes:
    batch_size: global batch size (split across replicas).
    epochs: passes over the train split.
    steps_per_epoch: if set, an epoch is this many steps over a repeated dataset
      (needed for exact resume and multi-worker runs); else one pass over the data.
    learning_rate, optimizer: "adam", "lazy_adam" (Adam updating only the embedding
      rows in the batch, training.optimizers.LazyAdam) or "adagrad".
    adam_epsilon: the epsilon of "adam" / "lazy_adam" (update ~ lr * m / (sqrt(v) + eps);
      Keras adds it before the bias correction).
      Keras' 1e-7 makes the step of a rarely seen embedding row about lr whatever its
      gradient (sign-like), so the many negatives of a rare event push an id down as hard
      each as its rare positives push it up; an epsilon near the size of those gradients
      restores steps proportional to the gradient (docs/TRAINING.md, "Adam's epsilon").
    shuffle_buffer: examples in the tf.data shuffle buffer.
    seed: seeds TF, file order and shuffling.
    checkpoint_every_steps: BackupAndRestore frequency in steps (0 = every epoch).
    eval_batch_size: batch size of evaluation and export warm-up.
    validation_from: UTC date "YYYY-MM-DD"; train-split examples at or after its
      midnight are the validation split, the earlier ones are trained on (must be
      before data.eval_from: the eval split is never validation). "auto" (the default)
      = the day before the eval day the preprocessing job recorded in DATA/split.json
      (resolved by training.data.resolve_validation_from); on data without one (the
      file-split sources) no split. None or "none" = no split.
    validation_fraction: instead of a date, hold out this fraction (0 < f < 1) of the
      train split by a stable hash of impression_id. At most one of the two; a fraction
      replaces the default "auto".
    early_stopping_patience: stop after this many epochs without a lower validation
      loss (0 = never stop early; the best epoch is still recorded). Needs a split.
    early_stopping_monitor: the validation metric early stopping and the best epoch
      follow: "loss" (the model's total loss, lower is better), a task's
      "<task>_logloss" (lower) or "<task>_auc" (higher), e.g. "ctr_auc".
    restore_best_weights: with a validation split, end with the weights of the best
      epoch (they survive a resume: MODEL_DIR/best/).
    lr_schedule: "constant", "cosine" (cosine decay from learning_rate to
      learning_rate * lr_min_ratio over the run's steps after the warm-up) or
      "exponential" (learning_rate * lr_decay_rate ** (step / steps_per_epoch)).
    lr_warmup_steps: linear warm-up from 0 to learning_rate over these first steps
      (any schedule; 0 = none).
    lr_decay_rate: the per-epoch factor of "exponential".
    lr_min_ratio: the final fraction of learning_rate of "cosine".
    deterministic_ops: tf.config.experimental.enable_op_determinism() (bit-identical
      reruns and resumes on CPU; slower).
    init_output_bias: start each output layer's bias at the log-odds of its label's
      rate in the train split (counts.json), e.g. the CTR tower at logit(clicks /
      exposures), instead of 0 (p = 0.5): the intercept is then right from the first
      step instead of after hundreds (MultiTaskModel.initialize_output_biases).
    calibration: after training, fit a calibration of the exported probabilities on
      the validation split and export it as part of the model: "none", "bias", "platt",
      "platt_ctr" or "ips_ctr" (models.calibration; docs/TRAINING.md, "Calibration"). Needs a
      validation split.
  """

  batch_size: int = 1024
  epochs: int = 2
  steps_per_epoch: Optional[int] = None
  learning_rate: float = 0.001
  optimizer: str = "adam"
  adam_epsilon: float = 1e-7
  shuffle_buffer: int = 20000
  seed: int = 42
  checkpoint_every_steps: int = 200
  eval_batch_size: int = 4096
  validation_from: Optional[str] = AUTO
  validation_fraction: Optional[float] = None
  early_stopping_patience: int = 0
  early_stopping_monitor: str = "loss"
  restore_best_weights: bool = True
  lr_schedule: str = "constant"
  lr_warmup_steps: int = 0
  lr_decay_rate: float = 0.5
  lr_min_ratio: float = 0.0
  deterministic_ops: bool = False
  init_output_bias: bool = True
  calibration: str = "none"

  def __post_init__(self):
    # "none" -> None; the default "auto" gives way to a fraction (an explicit "auto" and
    # a fraction in one config are refused by config_from_dict).
    if isinstance(self.validation_from, str) and self.validation_from.lower() == NONE:
      object.__setattr__(self, "validation_from", None)
    if self.validation_from == AUTO and self.validation_fraction is not None:
      object.__setattr__(self, "validation_from", None)

  @property
  def validation_from_timestamp(self) -> Optional[int]:
    """`validation_from` as unix seconds (UTC midnight), or None.

    Raises:
      ValueError: "auto" not yet resolved against the data, or a malformed date.
    """
    if self.validation_from == AUTO:
      raise ValueError("train.validation_from 'auto' is resolved against the data first "
                       "(training.data.resolve_validation_from)")
    return None if self.validation_from is None else _utc_midnight(self.validation_from)

  @property
  def has_validation(self) -> bool:
    """A validation split is set ("auto" counts: whether it finds one depends on the data)."""
    return self.validation_from is not None or self.validation_fraction is not None


def check_validation_needs(train: TrainConfig, source: str, why: str) -> None:
  """The settings that need a validation split, refused when `train` has none.

  Args:
    train: the train section, "auto" resolved or not ("auto" counts as a split).
    source: the config file, first in the message.
    why: why there is no split, e.g. "train.validation_from is none".

  Raises:
    ConfigError: train.early_stopping_patience > 0 or train.calibration != "none"
      without a validation split; one message naming every such setting.
  """
  if train.has_validation:
    return
  needs = []
  if train.early_stopping_patience:
    needs.append(f"train.early_stopping_patience {train.early_stopping_patience} "
                 f"(0 = never stop early)")
  if train.calibration != "none":
    needs.append(f"train.calibration {train.calibration!r} (fitted on the validation "
                 f"split; 'none' = no calibration)")
  if needs:
    raise ConfigError(
        f"{source}: {' and '.join(needs)} {'needs' if len(needs) == 1 else 'need'} a "
        f"validation split, but {why}: set train.validation_from (--validation_from "
        f"YYYY-MM-DD) or train.validation_fraction")


@dataclasses.dataclass(frozen=True)
class FeedbackConfig:
  """Delayed-feedback training on a day's stream (pipeline.daily, pipeline.train on a
  `pipeline.preprocess --day` output; training/feedback_training.py).

  Attributes:
    method: FEEDBACK_METHODS; "none" trains the model on the day's rows with the labels
      seen at the snapshot, through the trainer's plain path (validation split, early
      stopping, calibration). Any other method trains on the method's stream of the day
      (training/feedback_streams.py): "oracle" (the final labels at once: the
      simulator's, needs its truth), "vanilla", "waiting", "fnw", "fnc", "esdfm",
      "defer", "dfm" (docs/MODELS.md, "Delayed feedback").
    window_s: the elapsed-time window after the click: w of "waiting", c of "esdfm" and
      "defer" (0 < window_s <= data.attribution_window_s and <= one day, the period).
    auxiliary_days: "esdfm", "defer": the classifier of delayed positives is trained anew
      each day on the closed/ rows (final labels) of this many days up to the day.
    auxiliary_epochs: its passes over them.
  """

  method: str = "none"
  window_s: int = 3600
  auxiliary_days: int = 7
  auxiliary_epochs: int = 1

  @property
  def enabled(self) -> bool:
    return self.method != "none"


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
  """An experiment: features, data, model and training settings."""

  feature_spec_path: str
  data: DataConfig
  model: ModelConfig
  train: TrainConfig
  source: str = "<memory>"
  feedback: FeedbackConfig = FeedbackConfig()

  def load_feature_spec(self) -> spec_lib.FeatureSpec:
    spec = spec_lib.load_feature_spec(self.feature_spec_path)
    spec_lib.check_labels_not_features(spec, self.data.label_names)
    return spec


def merge_dicts(base: Dict[str, Any], override: Dict[str, Any]) -> Dict[str, Any]:
  """base with override's keys, nested mappings merged key by key (a new dict)."""
  merged = dict(base)
  for key, value in override.items():
    if isinstance(value, dict) and isinstance(merged.get(key), dict):
      merged[key] = merge_dicts(merged[key], value)
    else:
      merged[key] = value
  return merged


def _read_yaml_with_bases(path: str, seen: Tuple[str, ...] = ()) -> Dict[str, Any]:
  path = os.path.abspath(path)
  if path in seen:
    raise ConfigError(f"{path}: circular 'base:' chain {list(seen)}")
  if not os.path.exists(path):
    raise ConfigError(f"{path}: config file not found")
  with open(path) as f:
    try:
      data = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
      raise ConfigError(f"{path}: not valid YAML: {e}") from e
  if not isinstance(data, dict):
    raise ConfigError(f"{path}: expected a mapping at the top level")
  # Paths inside a file are relative to that file.
  if "feature_spec" in data:
    data["feature_spec"] = os.path.normpath(
        os.path.join(os.path.dirname(path), data["feature_spec"]))
  base = data.pop("base", None)
  if base is None:
    return data
  base_data = _read_yaml_with_bases(os.path.join(os.path.dirname(path), base), seen + (path,))
  return merge_dicts(base_data, data)


def _build(cls, values: Any, source: str, section: str):
  if values is None:
    values = {}
  if not isinstance(values, dict):
    raise ConfigError(f"{source}: section {section!r} must be a mapping")
  fields = {f.name: f for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - set(fields), key=str)
  if unknown:
    raise ConfigError(f"{source}: {unknown_keys_message(unknown, fields, section)}")
  kwargs = {}
  for key, value in values.items():
    if isinstance(value, list) and key != "labels":
      value = tuple(value)
    if isinstance(value, datetime.date):  # YAML reads an unquoted 2026-01-07 as a date
      value = value.isoformat()
    kwargs[key] = value
  try:
    return cls(**kwargs)
  except TypeError as e:
    raise ConfigError(f"{source}: section {section!r}: {e}") from e


def _build_labels(entries: Any, source: str) -> Tuple[LabelConfig, ...]:
  if not isinstance(entries, list) or not entries:
    raise ConfigError(f"{source}: data.labels must be a non-empty list")
  labels = []
  for i, entry in enumerate(entries):
    label = _build(LabelConfig, entry, source, f"data.labels[{i}]")
    labels.append(dataclasses.replace(label, events=tuple(label.events)))
  if labels[0].after_click:
    raise ConfigError(f"{source}: data.labels[0] must be the click label "
                      f"(after_click: false), got {labels[0].name!r}")
  return tuple(labels)


def config_from_dict(data: Dict[str, Any], source: str = "<memory>") -> ExperimentConfig:
  """Builds and validates an ExperimentConfig from merged YAML data."""
  allowed = {"feature_spec", "data", "model", "train", "feedback"}
  unknown = sorted(set(data) - allowed, key=str)
  if unknown:
    raise ConfigError(f"{source}: {unknown_keys_message(unknown, allowed)}")
  if "feature_spec" not in data:
    raise ConfigError(f"{source}: missing 'feature_spec' (path to a feature spec YAML)")
  data_section = dict(data.get("data") or {})
  if "labels" in data_section:
    data_section["labels"] = _build_labels(data_section["labels"], source)
  data_config = _build(DataConfig, data_section, source, "data")
  if not isinstance(data_config.vocabulary_window_days, int) or (
      data_config.vocabulary_window_days < 1):
    raise ConfigError(f"{source}: data.vocabulary_window_days must be an integer >= 1, "
                      f"got {data_config.vocabulary_window_days!r}")
  if data_config.orphan_event_policy not in ORPHAN_POLICIES:
    raise ConfigError(f"{source}: data.orphan_event_policy must be one of {ORPHAN_POLICIES}")
  try:
    eval_from = data_config.eval_from_timestamp
  except ValueError as e:
    raise ConfigError(f"{source}: data.eval_from must be YYYY-MM-DD: {e}") from e
  try:
    as_of = data_config.as_of_timestamp
  except ValueError as e:
    raise ConfigError(f"{source}: data.as_of (--as_of): {e}") from e
  if as_of is not None and eval_from is not None and eval_from >= as_of:
    raise ConfigError(f"{source}: data.eval_from {data_config.eval_from!r} must be before "
                      f"data.as_of (--as_of) {data_config.as_of!r} ({utc_iso(as_of)}): "
                      f"records after as_of are dropped, so the eval split would be empty")
  train_section = data.get("train")
  train_config = _build(TrainConfig, train_section, source, "train")
  if (train_section or {}).get("validation_from") == AUTO and (
      train_config.validation_fraction is not None):
    raise ConfigError(f"{source}: set at most one of train.validation_from "
                      f"'{AUTO}' and train.validation_fraction")
  _check_train(train_config, data_config, source)
  model_config = _build(ModelConfig, data.get("model"), source, "model")
  for name in ("l2", "embedding_l2", "dropout"):
    if getattr(model_config, name) < 0:
      raise ConfigError(f"{source}: model.{name} must be >= 0, got "
                        f"{getattr(model_config, name)!r}")
  feedback_config = _build(FeedbackConfig, data.get("feedback"), source, "feedback")
  _check_feedback(feedback_config, train_config, data_config, source)
  return ExperimentConfig(
      feature_spec_path=data["feature_spec"],
      data=data_config,
      model=model_config,
      train=train_config,
      source=source,
      feedback=feedback_config)


def _check_feedback(feedback: FeedbackConfig, train: TrainConfig, data: DataConfig,
                    source: str) -> None:
  """Validates the feedback section against the data and train sections."""
  if feedback.method not in FEEDBACK_METHODS:
    raise ConfigError(f"{source}: feedback.method {feedback.method!r}: use one of "
                      f"{FEEDBACK_METHODS}")
  if not feedback.enabled:
    return
  if feedback.method in FEEDBACK_WINDOWED and not (
      0 < feedback.window_s <= min(data.attribution_window_s, DAY_S)):
    raise ConfigError(f"{source}: feedback.window_s {feedback.window_s}: {feedback.method}'s "
                      f"window must be in (0, min(data.attribution_window_s "
                      f"{data.attribution_window_s}, one day {DAY_S})] seconds")
  if feedback.auxiliary_days < 1 or feedback.auxiliary_epochs < 1:
    raise ConfigError(f"{source}: feedback.auxiliary_days and auxiliary_epochs must be >= 1")
  refused = [f"train.{name} {value!r}" for name, value, off in (
      ("calibration", train.calibration, "none"),
      ("early_stopping_patience", train.early_stopping_patience, 0)) if value != off]
  if refused:
    raise ConfigError(
        f"{source}: feedback.method {feedback.method!r} trains on its stream without a "
        f"validation split: {' and '.join(refused)} would fit on labels seen at the "
        f"snapshot, whose late conversions are still negatives (undoing the method's "
        f"correction); set train.calibration none and train.early_stopping_patience 0")


def _check_train(train: TrainConfig, data: DataConfig, source: str) -> None:
  """Validates the train section's validation split, early stopping and LR schedule."""
  if train.validation_from is not None and train.validation_fraction is not None:
    raise ConfigError(f"{source}: set at most one of train.validation_from and "
                      f"train.validation_fraction")
  if train.validation_from not in (None, AUTO):
    try:
      start = train.validation_from_timestamp
    except ValueError as e:
      raise ConfigError(f"{source}: train.validation_from must be YYYY-MM-DD, '{AUTO}' or "
                        f"'{NONE}': {e}") from e
    if data.eval_from is not None and start >= data.eval_from_timestamp:
      raise ConfigError(f"{source}: train.validation_from {train.validation_from!r} must be "
                        f"before data.eval_from {data.eval_from!r} (validation days are "
                        f"training days; the eval split stays held out)")
  if train.validation_fraction is not None and not 0.0 < train.validation_fraction < 1.0:
    raise ConfigError(f"{source}: train.validation_fraction must be in (0, 1), got "
                      f"{train.validation_fraction!r}")
  if train.early_stopping_patience < 0:
    raise ConfigError(f"{source}: train.early_stopping_patience must be >= 0")
  if not train.adam_epsilon > 0:
    raise ConfigError(f"{source}: train.adam_epsilon must be > 0, got {train.adam_epsilon!r}")
  monitor = train.early_stopping_monitor
  if monitor != "loss" and not monitor.endswith(("_auc", "_logloss")):
    raise ConfigError(f"{source}: train.early_stopping_monitor {monitor!r}: use 'loss', "
                      f"'<task>_auc' or '<task>_logloss' (e.g. 'ctr_auc')")
  if train.lr_schedule not in LR_SCHEDULES:
    raise ConfigError(f"{source}: train.lr_schedule {train.lr_schedule!r}: use one of "
                      f"{LR_SCHEDULES}")
  if train.calibration not in CALIBRATIONS:
    raise ConfigError(f"{source}: train.calibration {train.calibration!r}: use one of "
                      f"{CALIBRATIONS}")
  check_validation_needs(train, source, "train.validation_from is none")
  if train.lr_warmup_steps < 0 or not 0.0 < train.lr_decay_rate <= 1.0 or not (
      0.0 <= train.lr_min_ratio <= 1.0):
    raise ConfigError(f"{source}: train.lr_warmup_steps must be >= 0, lr_decay_rate in "
                      f"(0, 1] and lr_min_ratio in [0, 1]")


def load_config(path: str, overrides: Optional[Dict[str, Any]] = None) -> ExperimentConfig:
  """Loads an experiment YAML (following `base:`), applying optional overrides.

  Args:
    path: the experiment YAML file, as given or relative to the project root
      (`resolve_path`).
    overrides: nested mapping merged over the file, e.g. {"train": {"epochs": 1}}.
  """
  path = resolve_path(path)
  data = _read_yaml_with_bases(path)
  if overrides:
    data = merge_dicts(data, overrides)
  return config_from_dict(data, source=path)
