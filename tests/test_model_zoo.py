"""Properties every registered model must have, parametrised over the model zoo.

Each model (esm2, esmc, esms, esmg, hm3, and ESMM on the MMoE and PLE bottoms) is built
on the small spec of tests/test_esmm.py with all four labels (click, micro, action,
purchase) and checked for: outputs float32 [batch, 1] in (0, 1); ctcvr == ctr * cvr;
every output equal to the paper's formula (numpy) of known tower logits (also for esmm,
naive, shared_bottom, aitm, escm2_ips, escm2_dr); a scorer get_config round trip; a
SavedModel round trip through training.export.export_saved_model; a short fit that lowers
the loss. The probability, heads, get_config, SavedModel and short-fit checks of a zoo
entry share one build (the module-scoped `built`: randomly weighted, and the weights it
was built with kept); the heads check and the short fit change its weights and put the
random ones back when they end. The other models' heads are checked on their own builds.
The SavedModel round trips and the short fits (an export or a train_step trace per model)
are `slow`: `make test-fast` skips them. The helpers (`zoo_config`, `build_zoo`,
`make_labelled_batch`) are shared with the per-model tests.
"""

import contextlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

from configs import config as config_lib
from features import parsing
from features import preprocessing
from models import registry
from tests.test_esmm import SPEC, make_artifacts, make_batch, randomize
from training import export as export_lib

LABELS = [
    {"name": "click", "events": ["click"], "after_click": False},
    {"name": "micro", "events": ["view_reviews"]},
    {"name": "action", "events": ["cart", "favorite"]},
    {"name": "purchase", "events": ["purchase"]},
]
# name -> (model.name, extra model section)
ZOO = {
    "esm2": ("esm2", {}),
    "esmc": ("esmc", {}),
    "esms": ("esms", {}),
    "esmg": ("esmg", {}),
    "hm3": ("hm3", {}),
    "esmm_mmoe": ("esmm", {"params": {"bottom": {"name": "mmoe", "num_experts": 3,
                                                 "expert_units": [8]}}}),
    "esmm_ple": ("esmm", {"params": {"bottom": {"name": "ple", "expert_units": [8]}}}),
}


def zoo_config(name, labels=LABELS, **model) -> config_lib.ExperimentConfig:
  """A small config (4-d embeddings, one 16-unit hidden layer) with `labels`."""
  section = {"name": name, "embedding_dim": 4, "tower_units": [16]}
  section.update(model)
  return config_lib.config_from_dict(
      {"feature_spec": "unused.yaml", "data": {"labels": labels}, "model": section})


def build_zoo(name, tmp_path, **model):
  return registry.build_model(zoo_config(name, **model), SPEC,
                              make_artifacts(str(tmp_path / "transform")))


def make_labelled_batch(n, seed=0):
  """make_batch's (features, labels) plus micro and action, both 0 without a click.

  P(micro | click) = 0.4; P(action | click, micro) = 0.5, P(action | click, no micro) = 0.1;
  purchase as in make_batch but never without a click.
  """
  features, labels = make_batch(n, seed)
  rng = np.random.default_rng(seed + 1000)
  click = labels["click"].numpy() > 0
  micro = click & (rng.uniform(size=n) < 0.4)
  action = click & (rng.uniform(size=n) < np.where(micro, 0.5, 0.1))
  labels = dict(labels, micro=tf.constant(micro, tf.float32),
                action=tf.constant(action, tf.float32))
  return features, labels


def outputs_of(model, features):
  return {name: value.numpy() for name, value in model(features).items()}


def _build(key, tmp_path):
  name, model = ZOO[key]
  return build_zoo(name, tmp_path, **model)


@pytest.fixture(scope="module", params=sorted(ZOO))
def built(request, tmp_path_factory) -> dict:
  """Each zoo model built once, with random trainable weights (randomize, seed 1: a
  trained-looking model without the cost of fit): {"key", "model", "initial"}, "initial"
  the values of model.trainable_variables as built (before randomize). Read-only for the
  probability, get_config and SavedModel checks; the heads check and the short fit change
  the weights and restore the random ones (`weights_restored`)."""
  key = request.param
  model = _build(key, tmp_path_factory.mktemp(f"zoo_{key}"))
  initial = [variable.numpy() for variable in model.trainable_variables]
  randomize(model, seed=1)
  return {"key": key, "model": model, "initial": initial}


def _assign(variables, values):
  for variable, value in zip(variables, values, strict=True):
    variable.assign(value)


@contextlib.contextmanager
def weights_restored(model):
  """Puts model.trainable_variables back to their values at entry when the block ends
  (also when it fails), so that a check that changes them leaves `built` as it found it."""
  saved = [(variable, variable.numpy()) for variable in model.trainable_variables]
  try:
    yield model
  finally:
    for variable, value in saved:
      variable.assign(value)


def test_outputs_are_probabilities_with_the_entire_space_identities(built):
  model = built["model"]
  features, _ = make_labelled_batch(200, seed=2)
  outputs = outputs_of(model, features)
  assert {"ctr", "cvr", "ctcvr"} <= set(outputs) == set(model.output_names)
  for name, value in outputs.items():
    assert value.shape == (200, 1) and value.dtype == np.float32, name
    assert np.all(value > 0.0) and np.all(value < 1.0), name
  np.testing.assert_allclose(outputs["ctcvr"], outputs["ctr"] * outputs["cvr"], rtol=1e-6)


def sigmoid(z):
  return 1.0 / (1.0 + np.exp(-np.asarray(z, np.float64)))


# Chosen tower logits: distinct, so a head wired to the wrong tower or formula differs.
TOWER_LOGITS = {
    "ctr": -0.4, "cvr": -1.3, "action": 0.6, "purchase_given_action": 1.1,
    "purchase_given_no_action": -2.2, "micro": 0.3, "macro_given_micro": 0.9,
    "macro_given_no_micro": -1.7, "purchase_given_macro": 1.4,
    "purchase_given_no_macro": -2.6,
    "ctr_logit": -0.4, "ctcvr_logit": -1.3,  # AITM's per-step logit layers
}


def _entire_space(y1, cvr, **conditionals):
  return dict(ctr=y1, cvr=cvr, ctcvr=y1 * cvr, **conditionals)


def _esm2(s):
  y1, y2, y3, y4 = (s["ctr"], s["action"], s["purchase_given_action"],
                    s["purchase_given_no_action"])
  return _entire_space(y1, y2 * y3 + (1 - y2) * y4, ctavr=y1 * y2, p_action_given_click=y2,
                       p_purchase_given_action=y3, p_purchase_given_no_action=y4)


def _esmc(s, cvr_tower="cvr"):
  y1, y2, y3 = s["ctr"], s["action"], s["purchase_given_action"]
  return _entire_space(y1, s[cvr_tower], ctavr=y1 * y2, p_action_given_click=y2,
                       p_purchase_given_action=y3)


def _esmg(s):
  y1, y2 = s["ctr"], s["action"]
  return _entire_space(y1, s["cvr"], ctavr=y1 * y2, p_action_given_click=y2)


def _hm3(s):
  y1, y2, y3, y4, y5, y6 = (s[name] for name in (
      "ctr", "micro", "macro_given_micro", "macro_given_no_micro", "purchase_given_macro",
      "purchase_given_no_macro"))
  macro = y2 * y3 + (1 - y2) * y4
  return _entire_space(y1, macro * y5 + (1 - macro) * y6, ctmicro=y1 * y2,
                       ctmacro=y1 * macro, ctavr=y1 * macro, p_micro_given_click=y2,
                       p_macro_given_micro=y3, p_macro_given_no_micro=y4,
                       p_action_given_click=macro, p_purchase_given_macro=y5,
                       p_purchase_given_no_macro=y6)


def _esmm(s):
  return _entire_space(s["ctr"], s["cvr"])


def _aitm(s):
  """Joint probabilities per step; cvr = ctcvr / ctr clipped into (0, 1)."""
  ctr, ctcvr = s["ctr_logit"], s["ctcvr_logit"]
  return dict(ctr=ctr, ctcvr=ctcvr, cvr=np.clip(ctcvr / ctr, 1e-7, 1 - 1e-7))


# name -> (its towers, numpy formulas: tower sigmoids -> every scorer output), from
# docs/MODELS.md. ESMS runs one tower for the cvr and purchase_given_action paths.
ORACLES = {
    "esm2": (("ctr", "action", "purchase_given_action", "purchase_given_no_action"), _esm2),
    "esmc": (("ctr", "action", "cvr", "purchase_given_action"), _esmc),
    "esms": (("ctr", "action", "purchase_given_action"),
             lambda s: _esmc(s, cvr_tower="purchase_given_action")),
    "esmg": (("ctr", "action", "cvr"), _esmg),
    "hm3": (("ctr", "micro", "macro_given_micro", "macro_given_no_micro",
             "purchase_given_macro", "purchase_given_no_macro"), _hm3),
    "esmm": (("ctr", "cvr"), _esmm),
    "naive": (("ctr", "cvr"), _esmm),
    "aitm": (("ctr_logit", "ctcvr_logit"), _aitm),
}
for _key in ("esmm_mmoe", "esmm_ple", "shared_bottom", "escm2_ips", "escm2_dr"):
  ORACLES[_key] = ORACLES["esmm"]


def fix_tower_logits(model, logits):
  """Each named tower's logit layer (or, for a name ending in _logit, that Dense layer):
  zero kernel, bias = logits[name] (then the logit is that bias for every input)."""
  for name, value in logits.items():
    if name.endswith("_logit"):
      layer = model.scorer.get_layer(name)
    else:
      layer = model.scorer.get_layer(f"{name}_tower").dense_layers[-1]
    layer.kernel.assign(tf.zeros_like(layer.kernel))
    layer.bias.assign(tf.fill(layer.bias.shape, value))


def expected_outputs(key, logits=None):
  """The numpy oracle's outputs (float64 scalars) of model `key` with fixed tower logits."""
  towers, formulas = ORACLES[key]
  logits = logits or TOWER_LOGITS
  return formulas({name: sigmoid(logits[name]) for name in towers})


def check_heads(key, model):
  """Fixes model `key`'s tower logits to TOWER_LOGITS; every output must equal the numpy
  oracle's. `model` has random hidden layers and bottoms: the logits must not care."""
  towers, _ = ORACLES[key]
  fix_tower_logits(model, {tower: TOWER_LOGITS[tower] for tower in towers})
  outputs = outputs_of(model, make_labelled_batch(20, seed=2)[0])
  expected = expected_outputs(key)
  assert set(outputs) == set(expected)
  for output, value in expected.items():
    np.testing.assert_allclose(outputs[output], np.full((20, 1), value), rtol=1e-5,
                               err_msg=output)


def test_heads_match_the_papers_formulas_on_known_tower_logits(built):
  """The zoo's models, on the shared build (randomize seed 1, as the others' below)."""
  with weights_restored(built["model"]) as model:
    check_heads(built["key"], model)


@pytest.mark.parametrize("key", sorted(set(ORACLES) - set(ZOO)))
def test_heads_of_the_models_outside_the_zoo_match_the_papers_formulas(key, tmp_path):
  model = build_zoo(key, tmp_path)
  randomize(model, seed=1)  # hidden layers and bottoms random: the logits must not care
  check_heads(key, model)


def test_aitm_cvr_is_clipped_where_ctcvr_exceeds_ctr(tmp_path):
  """AITM does not guarantee ctcvr <= ctr; its cvr = ctcvr / ctr is clipped below 1."""
  model = build_zoo("aitm", tmp_path)
  randomize(model, seed=1)
  logits = {"ctr_logit": -1.5, "ctcvr_logit": 0.2}
  fix_tower_logits(model, logits)
  outputs = outputs_of(model, make_labelled_batch(10, seed=2)[0])
  expected = expected_outputs("aitm", logits)
  assert expected["ctcvr"] > expected["ctr"]
  for output, value in expected.items():
    np.testing.assert_allclose(outputs[output], np.full((10, 1), value), rtol=1e-5,
                               err_msg=output)


def test_scorer_config_round_trip(built):
  model = built["model"]
  features, _ = make_labelled_batch(30, seed=4)
  clone = tf_keras.Model.from_config(model.scorer.get_config())
  clone.set_weights(model.scorer.get_weights())
  expected = outputs_of(model, features)
  for name, value in outputs_of(clone, features).items():
    np.testing.assert_array_equal(value, expected[name], err_msg=name)


@pytest.mark.slow  # an export per model (~5 CPU s each): `make test-fast` skips it
def test_saved_model_round_trip(built, tmp_path):
  model = built["model"]
  features, _ = make_labelled_batch(40, seed=6)
  expected = outputs_of(model, features)
  export_dir = export_lib.export_saved_model(model.scorer, SPEC, str(tmp_path / "export"),
                                             version=1)
  loaded = tf.saved_model.load(export_dir)
  raw = parsing.raw_input_signature(SPEC)
  padded = {}
  for name in raw:
    value = features[name]
    padded[name] = value.to_tensor() if isinstance(value, tf.RaggedTensor) else value
  served = loaded.signatures[export_lib.PREDICT_RAW](**padded)
  assert set(served) == set(expected)
  for name, value in expected.items():
    np.testing.assert_allclose(served[name].numpy(), value[:, 0], atol=1e-6, err_msg=name)


@pytest.mark.slow  # a train_step trace per model (~5 CPU s each): `make test-fast` skips it
def test_short_fit_reduces_the_loss(built):
  """From the weights the model was built with (the shared build's, before randomize):
  a fresh build's initial state, the model never compiled nor fitted before."""
  with weights_restored(built["model"]) as model:
    _assign(model.trainable_variables, built["initial"])
    model.compile(tf_keras.optimizers.Adam(0.01))
    batch = make_labelled_batch(512, seed=7)
    before = model.compute_loss(batch).numpy()
    dataset = tf.data.Dataset.from_tensor_slices(make_labelled_batch(3000, seed=8)).batch(128)
    history = model.fit(dataset, epochs=2, verbose=0)
    assert np.isfinite(history.history["loss"][-1])
    assert model.compute_loss(batch).numpy() < 0.9 * before


@pytest.mark.parametrize("name", ["esm2", "esmc", "esms", "esmg", "hm3", "esmm_mmoe",
                                  "esmm_ple"])
def test_experiment_configs_build(name, tmp_path):
  import os  # pylint: disable=g-import-not-at-top
  path = os.path.join(os.path.dirname(os.path.dirname(__file__)), "configs", f"{name}.yaml")
  config = config_lib.load_config(path)
  spec = config.load_feature_spec()
  model = registry.build_model(config, spec, make_artifacts(str(tmp_path), spec))
  assert {"ctr", "cvr", "ctcvr"} <= set(model.output_names)
  assert model.required_labels <= set(config.data.label_names)


@pytest.mark.parametrize("name", ["esmm", "naive"])
def test_embedding_l2_is_counted_once_in_the_training_loss(name, tmp_path):
  # The encoder's add_loss must reach MultiTaskModel.regularization_loss under
  # tf.function (train_step / test_step), once per forward pass, and not accumulate.
  model = build_zoo(name, tmp_path, embedding_l2=0.5)
  model.compile(tf_keras.optimizers.SGD(0.0))  # lr 0: the weights stay as they are
  features, labels = make_labelled_batch(64, seed=3)
  encoders = [layer for layer in model.scorer.layers
              if isinstance(layer, preprocessing.FeatureEncoder)]
  assert len(encoders) == (2 if name == "naive" else 1)  # naive: one encoder per model
  expected = 0.0
  for encoder in encoders:
    vectors = encoder.encode(features)
    squares = sum(np.sum(vectors[n].numpy().astype(np.float64) ** 2, axis=-1)
                  for n in encoder.embeddings)
    expected += 0.5 * squares.mean()
  for _ in range(2):
    logs = model.train_on_batch(features, labels, return_dict=True)
    np.testing.assert_allclose(logs["regularization_loss"], expected, rtol=1e-4)
  logs = model.evaluate(tf.data.Dataset.from_tensors((features, labels)), verbose=0,
                        return_dict=True)
  np.testing.assert_allclose(logs["regularization_loss"], expected, rtol=1e-4)
