"""Warm start (training/warm_start.py): an earlier model's scores carry over exactly.

No step is trained: each earlier model (ESMM with Adam, naive with LazyAdam) is built on
the session's small world with its optimizer slots set to random values (distinct rows,
as after training) and saved by warm_start.save_state, what the trainer calls at the end
of every run. The later vocabularies are the small world's edited in a temp copy: tokens
reordered (reversed), removed, and new tokens inserted before the old ones; the copy's
normalize means and bucketize boundaries are moved too (the warm-started model keeps the
earlier ones). Before any step, every example whose tokens are all in both vocabularies
(or in neither: both map them to the OOV row) must score as the earlier model scored it,
to 1e-6 on every output. The oracle is the earlier model's own scores; the tests fail
with positional row copies or with the new statistics.
"""

import os
import shutil

import numpy as np
import pytest
import tensorflow as tf

from configs import config as config_lib
from features import artifacts as artifacts_lib
from models import registry
from tests import test_entry_points as entry_points
from training import data as data_lib
from training import schedules
from training import trainer
from training import warm_start

NEW_TOKENS = {"string": ["zz_new_a", "zz_new_b"], "int": [9901, 9902]}
REMOVED_PER_FEATURE = 2
SMALL_MODEL = {"embedding_dim": 4, "tower_units": [8]}
EARLIER_STEP = 7


def _config(small_world, **overrides):
  """The small world's experiment YAML, no validation split, with `overrides`."""
  base = {"train": {"validation_from": "none", "early_stopping_patience": 0,
                    "calibration": "none", "epochs": 1, "steps_per_epoch": 2},
          "model": dict(SMALL_MODEL)}
  for section, values in overrides.items():
    base.setdefault(section, {}).update(values)
  return config_lib.load_config(small_world["config"], overrides=base)


def _edited_artifacts(data_dir: str, directory: str, spec) -> artifacts_lib.TransformArtifacts:
  """A copy of DATA's transform artifacts with every vocabulary reversed, its two least
  frequent tokens removed and two new tokens first; means, variances and boundaries
  moved (statistics the warm-started model must not take)."""
  shutil.copytree(artifacts_lib.transform_dir(data_dir), directory)
  artifacts = artifacts_lib.load_artifacts(directory)
  dtypes = {f.name: f.dtype for f in spec}
  for name, stats in artifacts.features.items():
    if stats["transform"] == "vocabulary":
      path = os.path.join(directory, stats["vocabulary_file"])
      with open(path) as f:
        tokens = [line.rstrip("\n") for line in f if line.strip()]
      kept = list(reversed(tokens[:-REMOVED_PER_FEATURE]))
      new = [str(t) for t in NEW_TOKENS["int" if dtypes[name] == "int" else "string"]]
      with open(path, "w") as f:
        f.write("\n".join(new + kept) + "\n")
    elif stats["transform"] == "normalize":
      stats.update(mean=stats["mean"] + 0.5, variance=stats["variance"] * 2)
    elif stats["transform"] == "bucketize":
      stats["boundaries"] = [b + 1.5 for b in stats["boundaries"]]
  artifacts.write()
  return artifacts_lib.load_artifacts(directory)


@pytest.fixture(scope="module")
def eval_features(small_world):
  """The small world's eval split (507 examples) as one batch of model inputs."""
  config = _config(small_world)
  dataset = data_lib.make_dataset(data_lib.split_pattern(small_world["data"], "eval"),
                                  config.load_feature_spec(), config.data.label_names, 4096,
                                  shuffle=False, repeat=False)
  features, _ = next(iter(dataset))
  return features


def _rows_in_both_or_neither(features, earlier, later) -> np.ndarray:
  """bool [batch]: every value of every vocabulary feature of the row is in both
  vocabularies or in neither (so both models give it the same row)."""
  keep = None
  for name, tokens in earlier.items():
    before, after = set(tokens), set(later[name])
    values = features[name]
    flat = values.flat_values if isinstance(values, tf.RaggedTensor) else values
    flat = [v.decode() if isinstance(v, bytes) else int(v) for v in flat.numpy()]
    same = np.array([(v in before) == (v in after) for v in flat])
    if isinstance(values, tf.RaggedTensor):
      rows = values.value_rowids().numpy()
      same = np.array([same[rows == r].all() for r in range(int(values.nrows()))])
    keep = same if keep is None else keep & same
  return keep


def _vocabularies(model):
  return {f["name"]: f["vocabulary"] for encoder in warm_start._encoders(model).values()
          for f in encoder.features if f["transform"] == "vocabulary"}


def _earlier(config, small_world, model_dir: str, seed: int):
  """A model built on the small world's artifacts, untrained but with every optimizer slot
  random (distinct rows, as after training) and the step at 7; its state saved."""
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(small_world["data"]))
  model = registry.build_model(config, config.load_feature_spec(), artifacts)
  model.compile(optimizer=trainer.make_optimizer(config.train, 2, 2))
  optimizer = warm_start._built_optimizer(model)
  rng = np.random.default_rng(seed)
  for variable in model.trainable_variables:
    for slot in warm_start._slot_variables(optimizer, variable).values():
      slot.assign(np.abs(rng.normal(size=slot.shape)).astype(np.float32))
  optimizer.iterations.assign(EARLIER_STEP)
  warm_start.save_state(model, model_dir)
  return model


def _warm_started(config, earlier_dir, edited):
  """(model built on the edited vocabularies and restored, its variables' values before
  the restore by path, the restore report)."""
  state = warm_start.load_state(earlier_dir)
  spec = config.load_feature_spec()
  model = registry.build_model(config, spec, state.with_its_statistics(edited))
  model.compile(optimizer=trainer.make_optimizer(config.train, 2, 2))
  fresh = {path: v.numpy() for path, v in warm_start.weight_paths(model).items()}
  return model, fresh, state.restore(model)


def _assert_same_scores(earlier_model, model, features):
  """Every output of every row whose tokens are in both vocabularies or in neither is the
  earlier model's to 1e-6; returns how many rows that is."""
  keep = _rows_in_both_or_neither(features, _vocabularies(earlier_model), _vocabularies(model))
  assert 100 <= keep.sum() < len(keep), keep.sum()  # rows on both sides of the filter
  before = earlier_model.scorer(features, training=False)
  after = model.scorer(features, training=False)
  for name in before:
    diff = np.abs(before[name].numpy() - after[name].numpy()).reshape(-1)
    assert diff[keep].max() <= 1e-6, (name, diff[keep].max())
  return int(keep.sum())


@pytest.fixture(scope="module")
def earlier_esmm(small_world, tmp_path_factory):
  """(config, the earlier ESMM, its MODEL_DIR with the saved state); Adam, cosine schedule
  with a warm-up."""
  config = _config(small_world, train={"lr_schedule": "cosine", "lr_warmup_steps": 3})
  model_dir = str(tmp_path_factory.mktemp("earlier_esmm"))
  return config, _earlier(config, small_world, model_dir, seed=1), model_dir


def test_esmm_scores_carry_over_and_rows_follow_their_tokens(small_world, earlier_esmm,
                                                            eval_features, tmp_path):
  config, earlier, earlier_dir = earlier_esmm
  edited = _edited_artifacts(small_world["data"], str(tmp_path / "transform"),
                             config.load_feature_spec())
  model, fresh, report = _warm_started(config, earlier_dir, edited)
  _assert_same_scores(earlier, model, eval_features)

  # user_recent_categories (multivalent, mean-pooled): the most frequent token (earlier
  # id 1) is now after the 2 new tokens, reversed.
  path = "feature_encoder.embeddings.user_recent_categories.embedding.embeddings"
  old_vocabulary = _vocabularies(earlier)["user_recent_categories"]
  new_id = _vocabularies(model)["user_recent_categories"].index(old_vocabulary[0]) + 1
  assert new_id > 1 + len(NEW_TOKENS["string"])
  old_paths, new_paths = warm_start.weight_paths(earlier), warm_start.weight_paths(model)
  old_table, new_table = old_paths[path].numpy(), new_paths[path].numpy()
  np.testing.assert_array_equal(new_table[new_id], old_table[1])
  np.testing.assert_array_equal(new_table[0], old_table[0])  # OOV row
  # A new token's row is the fresh initialiser's, not any earlier row.
  np.testing.assert_array_equal(new_table[1], fresh[path][1])
  assert np.abs(old_table - new_table[1]).max(axis=1).min() > 1e-6
  assert report[path] == (len(old_vocabulary) - REMOVED_PER_FEATURE, 2, REMOVED_PER_FEATURE)
  hashed = "feature_encoder.embeddings.item_id.embedding.embeddings"
  np.testing.assert_array_equal(new_paths[hashed].numpy(), old_paths[hashed].numpy())

  # Adam's slots follow the row; a new row's slots are Adam's initial zeros.
  old_slots = warm_start._slot_variables(earlier.optimizer, old_paths[path])
  new_slots = warm_start._slot_variables(model.optimizer, new_paths[path])
  assert sorted(new_slots) == ["m", "v"]
  for name, slot in new_slots.items():
    np.testing.assert_array_equal(slot.numpy()[new_id], old_slots[name].numpy()[1])
    np.testing.assert_array_equal(slot.numpy()[1], 0)
  # The step carries over; the schedule reads this run's steps (warm-up from its start).
  assert int(model.optimizer.iterations.numpy()) == EARLIER_STEP
  schedule = schedules.learning_rate(config.train, 2, 2)
  for step in (0, 1, 5):  # pylint: disable-next=protected-access
    assert float(model.optimizer._learning_rate(EARLIER_STEP + step)) == pytest.approx(
        float(schedule(step)), rel=1e-6)


def test_naive_with_lazy_adam_carries_both_encoders(small_world, eval_features, tmp_path):
  """The naive baseline has two encoders (ctr_ and cvr_ models) and LazyAdam slots."""
  config = _config(small_world, model={"name": "naive"}, train={"optimizer": "lazy_adam"})
  earlier = _earlier(config, small_world, str(tmp_path / "earlier"), seed=2)
  edited = _edited_artifacts(small_world["data"], str(tmp_path / "transform"),
                             config.load_feature_spec())
  model, _, report = _warm_started(config, str(tmp_path / "earlier"), edited)
  assert type(model.optimizer).__name__ == "LazyAdam"
  assert {p.split(".")[0] for p in report} == {"ctr_model_feature_encoder",
                                               "cvr_model_feature_encoder"}
  _assert_same_scores(earlier, model, eval_features)
  path = "cvr_model_feature_encoder.embeddings.position.embedding.embeddings"
  new_id = _vocabularies(model)["position"].index(_vocabularies(earlier)["position"][0]) + 1
  old = warm_start._slot_variables(earlier.optimizer, warm_start.weight_paths(earlier)[path])
  new = warm_start._slot_variables(model.optimizer, warm_start.weight_paths(model)[path])
  for name in ("m", "v"):
    np.testing.assert_array_equal(new[name].numpy()[new_id], old[name].numpy()[1])


def test_another_model_or_size_is_refused_naming_it(small_world, earlier_esmm, tmp_path):
  """train_and_export's hook: a naive state into ESMM stops before training; a tower of
  another size names its variable."""
  config, _, earlier_dir = earlier_esmm
  naive = _config(small_world, model={"name": "naive"})
  with pytest.raises(warm_start.WarmStartError, match="the earlier model is 'esmm', this "
                     "one 'naive'"):
    trainer.train_and_export(naive, small_world["data"], str(tmp_path / "model"),
                             export=False, warm_start_from=earlier_dir)
  assert not os.path.exists(tmp_path / "model" / "warm_start")
  state = warm_start.load_state(earlier_dir)
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(small_world["data"]))
  wider = _config(small_world, model={"tower_units": [16]})
  model = registry.build_model(wider, wider.load_feature_spec(), artifacts)
  with pytest.raises(warm_start.WarmStartError, match=r"variable ctr_tower\.logit\.kernel has "
                     r"shape \[8, 1\] in the earlier model and \[16, 1\] in this one"):
    state.restore(model)


def test_another_optimizer_starts_fresh_with_the_weights_carried(small_world, earlier_esmm):
  """Adam's m and v do not map onto Adagrad's accumulator: the weights carry over, the
  optimizer keeps its initial state (accumulators at initial_accumulator_value, step 0)."""
  config, earlier, earlier_dir = earlier_esmm
  adagrad = _config(small_world, train={"optimizer": "adagrad"})
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(small_world["data"]))
  model = registry.build_model(adagrad, adagrad.load_feature_spec(), artifacts)
  model.compile(optimizer=trainer.make_optimizer(adagrad.train))
  warm_start.load_state(earlier_dir).restore(model)
  earlier_paths = warm_start.weight_paths(earlier)
  for path, variable in warm_start.weight_paths(model).items():
    np.testing.assert_array_equal(variable.numpy(), earlier_paths[path].numpy())
    slots = warm_start._slot_variables(model.optimizer, variable)
    np.testing.assert_array_equal(slots["accumulator"].numpy(),
                                  model.optimizer.initial_accumulator_value)
  assert int(model.optimizer.iterations.numpy()) == 0


def test_an_incomplete_or_missing_state_is_one_line_before_tensorflow(small_world,
                                                                      earlier_esmm, tmp_path):
  _, _, earlier_dir = earlier_esmm
  incomplete = tmp_path / "incomplete"
  shutil.copytree(earlier_dir, incomplete)
  os.remove(incomplete / "warm_start" / warm_start.COMPLETE_MARKER)
  with pytest.raises(warm_start.WarmStartError, match="_COMPLETE: missing"):
    warm_start.load_state(str(incomplete))
  for model_dir, expected in (
      (incomplete, f"--warm_start_from: {incomplete}/warm_start/_COMPLETE: missing: the "
                   f"warm-start state in {incomplete}/warm_start is incomplete"),
      (tmp_path, f"--warm_start_from: {tmp_path}/warm_start: missing: {tmp_path} holds no "
                 f"warm-start state")):
    result = entry_points.run(entry_points.module_command(
        "train", "--config", small_world["config"], "--data", small_world["data"],
        "--model_dir", str(tmp_path / "model"), "--warm_start_from", str(model_dir)),
        entry_points.REPO, env=entry_points.IMPORT_TIMES)
    entry_points.assert_one_error_line(result, expected)
    assert "tensorflow" not in entry_points.split_import_lines(result.stderr)[0]
