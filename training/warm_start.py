"""Warm start: a training run that begins from an earlier run's model and optimizer state.

Flow position: every `training.trainer.train_and_export` run ends with `save_state`
(MODEL_DIR/warm_start/); a later run given `warm_start_from=EARLIER_MODEL_DIR`
(`pipeline.train --warm_start_from`, the daily loop's days after the first) calls
`load_state`, builds its model from the new data's transform artifacts with the earlier
model's numeric statistics (`EarlierState.with_its_statistics`), and `restore`s into it
before `fit`:

  earlier run's end --save_state--> EARLIER/warm_start/ --load_state--> EarlierState
  new artifacts + earlier statistics -> registry.build_model -> compile -> restore -> fit

Layout of MODEL_DIR/warm_start/ (the chief writes MODEL_DIR/warm_start.tmp-<uuid>/, then
renames it; `_COMPLETE` is written last, and a state without it is refused):

  state.json                format, model name, optimizer class and slot names, step,
                            "encoders": encoder layer name -> its baked features
                            (features.preprocessing.bake_feature: vocabularies,
                            boundaries, mean/variance), "weights": variable path -> shape,
                            "slots": the paths whose optimizer slots are stored
  state.index, state.data-* a TF checkpoint: weights/<path>, slots/<slot>/<path>, step
  _COMPLETE

Variable paths are tf_keras' `get_weight_paths()` keys of the scorer and the log-odds model
(`<layer>.<attribute path>`, e.g. `feature_encoder.embeddings.item_category.embedding.
embeddings`, `ctr_tower.hidden.0.kernel`): stable across builds and processes.

What `restore` carries (docs/TRAINING.md, "Warm start"):
  - vocabulary embeddings: row i of the new table (id i: 0 = OOV, j + 1 = token j) is the
    earlier row of the same token; the OOV row is the earlier OOV row; a new token keeps
    its freshly initialised row (the layer's initializer); a dropped token's row is dropped.
  - every other variable (hashed and bucketized tables, cross layers, bottoms, towers,
    biases) has the same shape and is copied; a different shape is an error naming it.
  - numeric statistics: the new model is built with the earlier normalize mean/variance and
    bucketize boundaries, so every score of an example whose tokens are in both
    vocabularies is exactly the earlier model's before the first step.
  - optimizer: when both runs' optimizers have the same slots (Adam and LazyAdam: m, v;
    Adagrad: accumulator) every slot follows its variable as above (new rows keep the new
    optimizer's initial value: 0 for Adam, initial_accumulator_value for Adagrad) and the
    iteration counter carries over; the learning-rate schedule then reads the steps of
    this run (a schedule is offset by the carried count). Different slots: the optimizer
    starts fresh (slots initial, counter 0), with a warning.

TensorFlow is imported by the functions that need it: `check_state` on a local directory
needs only `os`, so pipeline.train refuses a missing or incomplete state before
TensorFlow loads (as features/success_marker.py does for data).
"""

import dataclasses
import json
import os
import posixpath
import uuid
from typing import Any, Dict, List, Mapping, Optional, Tuple

from absl import logging
import numpy as np

STATE_DIR = "warm_start"
STATE_FILE = "state.json"
CHECKPOINT_PREFIX = "state"
COMPLETE_MARKER = "_COMPLETE"
FORMAT_VERSION = 1
# tf_keras optimizer attribute holding one slot variable per model variable, by slot name
# (tf_keras 2.16: optimizers/adam.py, adagrad.py; training.optimizers.LazyAdam is an Adam).
_SLOT_LISTS = (("m", "_momentums"), ("v", "_velocities"), ("vhat", "_velocity_hats"),
               ("accumulator", "_accumulators"))
# Baked feature fields that must be equal in both models (all but the vocabulary).
_FIXED_FIELDS = ("transform", "dtype", "multivalent", "weighted", "pooling", "embedding_dim",
                 "num_bins", "boundaries", "mean", "variance", "log1p")


class WarmStartError(ValueError):
  """The earlier model's warm-start state is missing, incomplete or does not fit."""


def _join(root: str, *parts: str) -> str:
  return posixpath.join(root, *parts) if "://" in root else os.path.join(root, *parts)


def state_dir(model_dir: str) -> str:
  """MODEL_DIR/warm_start: where a run leaves the state a later run starts from."""
  return _join(model_dir, STATE_DIR)


def check_state(model_dir: str) -> str:
  """The complete state directory of MODEL_DIR, or WarmStartError naming the path.

  A local path is checked with `os` (no TensorFlow), a remote one with tf.io.gfile.
  """
  if "://" in model_dir:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
    exists, isdir = tf.io.gfile.exists, tf.io.gfile.isdir
  else:
    exists, isdir = os.path.exists, os.path.isdir
  directory = state_dir(model_dir)
  if not isdir(model_dir):
    raise WarmStartError(f"{model_dir}: no such directory (the --model_dir of an earlier "
                         f"pipeline.train run)")
  if not isdir(directory):
    raise WarmStartError(
        f"{directory}: missing: {model_dir} holds no warm-start state (a pipeline.train run "
        f"writes it when it ends; a run that did not finish, or one from before warm "
        f"starts, has none): train that model again, or warm-start from another")
  if not exists(_join(directory, COMPLETE_MARKER)):
    raise WarmStartError(
        f"{_join(directory, COMPLETE_MARKER)}: missing: the warm-start state in {directory} "
        f"is incomplete: train that model again, or warm-start from another")
  return directory


def weight_paths(model) -> Dict[str, Any]:
  """Variable path -> variable of a MultiTaskModel's scorer and log-odds model.

  Raises:
    WarmStartError: a trainable variable of the model is in neither.
  """
  paths, seen = {}, set()
  for network in (model.scorer, model.log_odds_model):
    for path, variable in network.get_weight_paths().items():
      if id(variable) not in seen:
        seen.add(id(variable))
        paths[path] = variable
  unreached = [v.name for v in model.trainable_variables if id(v) not in seen]
  if unreached:
    raise WarmStartError(f"model {model.name!r}: trainable variables {unreached} are not "
                         f"layers of its scorer or log-odds model; warm start cannot name them")
  return paths


def _encoders(model) -> Dict[str, Any]:
  """Encoder layer name -> features.preprocessing.FeatureEncoder of the model."""
  from features import preprocessing  # pylint: disable=g-import-not-at-top  # start-up
  encoders = {}
  for network in (model.scorer, model.log_odds_model):
    for layer in network.layers:
      if isinstance(layer, preprocessing.FeatureEncoder):
        encoders[layer.name] = layer
  return encoders


def _slot_variables(optimizer, variable) -> Dict[str, Any]:
  """Slot name -> the optimizer's slot variable of `variable` (a built tf_keras optimizer)."""
  index = optimizer._index_dict[optimizer._var_key(variable)]  # pylint: disable=protected-access
  return {name: getattr(optimizer, attribute)[index] for name, attribute in _SLOT_LISTS
          if getattr(optimizer, attribute, None)}


def _built_optimizer(model):
  """The model's tf_keras optimizer with its slots built (as fit would build them), or
  None when the model is not compiled."""
  import tf_keras  # pylint: disable=g-import-not-at-top  # start-up (module doc)
  optimizer = model.optimizer
  if optimizer is None:
    return None
  if not isinstance(optimizer, tf_keras.optimizers.Optimizer):
    raise WarmStartError(f"optimizer {type(optimizer).__name__}: warm start carries the "
                         f"state of tf_keras' optimizers (not the legacy ones)")
  if not getattr(optimizer, "_built", False):
    with model.distribute_strategy.scope():
      optimizer.build(model.trainable_variables)
  return optimizer


def save_state(model, model_dir: str) -> str:
  """Writes MODEL_DIR/warm_start/ (module docstring) for a later run; returns its path.

  Called by the chief at the end of a run, on the final weights (the best epoch's with
  train.restore_best_weights: those of the export's uncalibrated scorer) and the optimizer
  as it ended. Earlier temporaries of this directory are removed first; an existing state
  is replaced only after the new one is complete.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
  directory = state_dir(model_dir)
  for stale in tf.io.gfile.glob(directory + ".tmp-*") + tf.io.gfile.glob(directory + ".old-*"):
    tf.io.gfile.rmtree(stale)
  paths = weight_paths(model)
  optimizer = _built_optimizer(model)
  trainable = {id(v) for v in model.trainable_variables}
  with tf.device("CPU:0"):  # local copies: the chief writes alone, under any strategy
    weights = {path: tf.Variable(variable.numpy()) for path, variable in paths.items()}
    slots: Dict[str, Dict[str, Any]] = {}
    slot_paths = []
    if optimizer is not None:
      for path, variable in paths.items():
        if id(variable) in trainable:
          slot_paths.append(path)
          for name, slot in _slot_variables(optimizer, variable).items():
            slots.setdefault(name, {})[path] = tf.Variable(slot.numpy())
    step = int(optimizer.iterations.numpy()) if optimizer is not None else 0
    checkpoint = tf.train.Checkpoint(weights=weights, slots=slots,
                                     step=tf.Variable(step, dtype=tf.int64))
  state = {
      "format_version": FORMAT_VERSION,
      "model": model.name,
      "step": step,
      "optimizer": {"class": type(optimizer).__name__ if optimizer else None,
                    "slots": sorted(slots)},
      "encoders": {name: encoder.get_config()["features"]
                   for name, encoder in _encoders(model).items()},
      "weights": {path: [list(v.shape), v.dtype.name] for path, v in weights.items()},
      "slots": slot_paths,
  }
  temporary = f"{directory}.tmp-{uuid.uuid4().hex}"
  tf.io.gfile.makedirs(temporary)
  checkpoint.write(_join(temporary, CHECKPOINT_PREFIX))
  with tf.io.gfile.GFile(_join(temporary, STATE_FILE), "w") as f:
    json.dump(state, f, indent=1)
  with tf.io.gfile.GFile(_join(temporary, COMPLETE_MARKER), "w") as f:
    f.write("")
  old = None
  if tf.io.gfile.exists(directory):
    old = f"{directory}.old-{uuid.uuid4().hex}"
    tf.io.gfile.rename(directory, old)
  tf.io.gfile.rename(temporary, directory)
  if old:
    tf.io.gfile.rmtree(old)
  logging.info("Warm-start state (step %d, %d variables) written to %s", step, len(weights),
               directory)
  return directory


def row_sources(earlier_vocabulary, vocabulary) -> np.ndarray:
  """int64 [len(vocabulary) + 1]: for each id of the new lookup (0 = OOV, j + 1 = token
  j), the id of the same token in the earlier lookup, or -1 for a token it lacked."""
  earlier_ids = {token: i + 1 for i, token in enumerate(earlier_vocabulary)}
  return np.array([0] + [earlier_ids.get(token, -1) for token in vocabulary], np.int64)


def _carried(path: str, earlier: np.ndarray, fresh: np.ndarray,
             sources: Optional[np.ndarray]) -> np.ndarray:
  """The value a variable starts from: `earlier` itself, or with `sources` (a vocabulary
  table's row_sources) the fresh value with each mapped row taken from its earlier row."""
  if sources is None:
    if earlier.shape != fresh.shape:
      raise WarmStartError(
          f"variable {path} has shape {list(earlier.shape)} in the earlier model and "
          f"{list(fresh.shape)} in this one; warm start needs the same model and sizes "
          f"(model.name, embedding_dim, tower_units, cross_layers, hash_buckets, ...)")
    return earlier
  if earlier.shape[1:] != fresh.shape[1:] or sources.max(initial=0) >= earlier.shape[0]:
    raise WarmStartError(f"embedding {path}: earlier shape {list(earlier.shape)} does not "
                         f"fit its vocabulary, new shape {list(fresh.shape)}")
  value = fresh.copy()
  mapped = sources >= 0
  value[mapped] = earlier[sources[mapped]]
  return value


@dataclasses.dataclass
class EarlierState:
  """An earlier run's warm-start state, read by `load_state`.

  Attributes:
    directory: the MODEL_DIR/warm_start it was read from.
    model_name: the earlier MultiTaskModel's name (e.g. "esmm").
    step: the earlier optimizer's iteration count at its end.
    optimizer_class: its class name (None: it had none).
    encoders: encoder layer name -> list of baked feature dicts.
    weights: variable path -> value.
    slots: slot name -> variable path -> value.
  """

  directory: str
  model_name: str
  step: int
  optimizer_class: Optional[str]
  encoders: Dict[str, List[Dict[str, Any]]]
  weights: Dict[str, np.ndarray]
  slots: Dict[str, Dict[str, np.ndarray]]

  def _baked(self) -> Dict[str, Dict[str, Any]]:
    """Feature name -> its baked config (the same in every encoder of one model)."""
    baked = {}
    for features in self.encoders.values():
      for feature in features:
        baked.setdefault(feature["name"], feature)
    return baked

  def with_its_statistics(self, artifacts):
    """`artifacts` (the new data's) with the earlier model's normalize mean/variance and
    bucketize boundaries in place of their own; vocabularies and the rest are the new."""
    from features import artifacts as artifacts_lib  # pylint: disable=g-import-not-at-top
    features = dict(artifacts.features)
    for name, baked in self._baked().items():
      if baked["transform"] == "normalize":
        features[name] = {"transform": "normalize", "mean": baked["mean"],
                          "variance": baked["variance"]}
      elif baked["transform"] == "bucketize":
        features[name] = {"transform": "bucketize", "boundaries": list(baked["boundaries"])}
    return artifacts_lib.TransformArtifacts(directory=artifacts.directory, features=features,
                                            train_examples=artifacts.train_examples)

  def _row_sources(self, model, paths: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """Embedding variable path -> row_sources, for every vocabulary feature; checks that
    everything but the vocabularies is baked the same in both models."""
    encoders = _encoders(model)
    if sorted(encoders) != sorted(self.encoders):
      raise WarmStartError(f"{self.directory}: the earlier model has feature encoders "
                           f"{sorted(self.encoders)}, this one {sorted(encoders)}")
    path_of = {id(variable): path for path, variable in paths.items()}
    sources = {}
    for encoder_name, encoder in encoders.items():
      earlier = {f["name"]: f for f in self.encoders[encoder_name]}
      features = encoder.get_config()["features"]  # plain lists, as the state's
      names = [f["name"] for f in features]
      if names != list(earlier):
        raise WarmStartError(f"{self.directory}: encoder {encoder_name!r} has features "
                             f"{list(earlier)} in the earlier model, {names} in this one")
      for baked in features:
        before = earlier[baked["name"]]
        for field in _FIXED_FIELDS:
          if before.get(field) != baked.get(field):
            raise WarmStartError(
                f"{self.directory}: feature {baked['name']!r} has {field} "
                f"{before.get(field)!r} in the earlier model and {baked.get(field)!r} in "
                f"this one (change it with a model trained from scratch)")
        if baked["transform"] == "vocabulary":
          table = encoder.embeddings[baked["name"]].embedding.embeddings
          sources[path_of[id(table)]] = row_sources(before["vocabulary"],
                                                    baked["vocabulary"])
    return sources

  def restore(self, model) -> Dict[str, Tuple[int, int, int]]:
    """Sets `model`'s variables and optimizer state from this state (module docstring).

    Call it inside the strategy's scope, after `compile` and before `fit`.

    Returns:
      vocabulary embedding path -> (rows carried, new tokens, tokens dropped).
    Raises:
      WarmStartError: another model type, feature set, transform or size, naming it.
    """
    if model.name != self.model_name:
      raise WarmStartError(f"{self.directory}: the earlier model is {self.model_name!r}, "
                           f"this one {model.name!r}; warm start needs the same model")
    paths = weight_paths(model)
    missing, extra = sorted(set(self.weights) - set(paths)), sorted(set(paths) - set(self.weights))
    if missing or extra:
      raise WarmStartError(f"{self.directory}: variables {extra[:3]} are new and "
                           f"{missing[:3]} are gone ({len(extra)} and {len(missing)} in all); "
                           f"warm start needs the same model and sizes")
    sources = self._row_sources(model, paths)
    for path, variable in paths.items():
      variable.assign(_carried(path, self.weights[path], variable.numpy(), sources.get(path)))
    optimizer = _built_optimizer(model)
    if optimizer is not None:
      self._restore_optimizer(model, optimizer, paths, sources)
    report = {}
    for path, rows in sources.items():
      carried = int((rows >= 0).sum()) - 1  # without the OOV row
      report[path] = (carried, len(rows) - 1 - carried,
                      self.weights[path].shape[0] - 1 - carried)
    logging.info("Warm start from %s (step %d): vocabulary rows (carried, new, dropped) %s",
                 self.directory, self.step, report)
    return report

  def _restore_optimizer(self, model, optimizer, paths, sources) -> None:
    """Carries the slots (rows as their variables') and the step when both optimizers
    have the same slots; else leaves the optimizer fresh, with a warning."""
    slot_names = sorted(_slot_variables(optimizer, model.trainable_variables[0])
                        if model.trainable_variables else [])
    if slot_names != sorted(self.slots):
      logging.warning("Warm start: the earlier optimizer %s has slots %s, this %s has %s: "
                      "the optimizer starts fresh (initial slots, step 0)",
                      self.optimizer_class, sorted(self.slots), type(optimizer).__name__,
                      slot_names)
      return
    path_of = {id(variable): path for path, variable in paths.items()}
    for variable in model.trainable_variables:
      path = path_of[id(variable)]
      for name, slot in _slot_variables(optimizer, variable).items():
        slot.assign(_carried(f"{name}/{path}", self.slots[name][path], slot.numpy(),
                             sources.get(path)))
    optimizer.iterations.assign(self.step)
    _offset_schedule(optimizer, self.step)


def _offset_schedule(optimizer, offset: int) -> None:
  """Makes a learning-rate schedule read `iterations - offset` (this run's own steps);
  a constant rate is left as it is."""
  import tf_keras  # pylint: disable=g-import-not-at-top  # start-up (module doc)
  config = optimizer.get_config()["learning_rate"]
  if not isinstance(config, dict) or not offset:
    return
  schedule = tf_keras.optimizers.schedules.deserialize(config)

  class StepOffset(tf_keras.optimizers.schedules.LearningRateSchedule):
    """`schedule(step - offset)`: the schedule over the steps of the warm-started run."""

    def __call__(self, step):
      return schedule(step - offset)

    def get_config(self):
      return {"schedule": config, "offset": offset}

  optimizer.learning_rate = StepOffset()


def load_state(model_dir: str) -> EarlierState:
  """Reads MODEL_DIR/warm_start (checked complete first).

  Raises:
    WarmStartError: no such directory, no state or an incomplete one, another format.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up (module doc)
  directory = check_state(model_dir)
  with tf.io.gfile.GFile(_join(directory, STATE_FILE)) as f:
    state = json.load(f)
  if state.get("format_version") != FORMAT_VERSION:
    raise WarmStartError(f"{_join(directory, STATE_FILE)}: format_version "
                         f"{state.get('format_version')!r}, this code reads {FORMAT_VERSION}")
  with tf.device("CPU:0"):
    def zeros(path):
      shape, dtype = state["weights"][path]
      return tf.Variable(tf.zeros(shape, dtype))
    weights = {path: zeros(path) for path in state["weights"]}
    slots = {name: {path: zeros(path) for path in state["slots"]}
             for name in state["optimizer"]["slots"]}
    step = tf.Variable(0, dtype=tf.int64)
    tf.train.Checkpoint(weights=weights, slots=slots, step=step).read(
        _join(directory, CHECKPOINT_PREFIX)).assert_consumed()
  return EarlierState(
      directory=directory, model_name=state["model"], step=int(step.numpy()),
      optimizer_class=state["optimizer"]["class"], encoders=state["encoders"],
      weights={path: v.numpy() for path, v in weights.items()},
      slots={name: {path: v.numpy() for path, v in values.items()}
             for name, values in slots.items()})
