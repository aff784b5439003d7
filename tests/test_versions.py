"""Tests of serving/versions.py: the newest complete SavedModel version of an export base.

Version directories are laid out by hand (the files a complete export holds, or a part
of them); one test checks the definition of complete against a real tf.saved_model.save.
"""

import logging
import os

import pytest
import tensorflow as tf

from evaluation import runner
from serving import versions


def make_version(base, version, skip=()):
  """Writes export `base`/`version` with every required part except those in `skip`."""
  directory = os.path.join(str(base), str(version))
  os.makedirs(directory)
  for part, is_dir in versions.REQUIRED_PARTS:
    if part in skip:
      continue
    path = os.path.join(directory, part)
    if is_dir:
      os.makedirs(path)
    else:
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "w") as f:
        f.write("x")
  return directory


@pytest.fixture
def export_base(tmp_path):
  """Two complete versions (10, 20), a newer empty one (30), a newer one lacking variables."""
  base = tmp_path / "model" / "export"
  make_version(base, 10)
  make_version(base, 20)
  os.makedirs(base / "30")                                    # a half-finished copy
  make_version(base, 40, skip=("variables/variables.index",))
  make_version(base, 50, skip=("assets.extra/feature_spec.yaml",))
  os.makedirs(base / "60.tmp")                                # an export in progress
  return str(base)


def test_the_newest_complete_version_is_picked_and_the_others_reported(export_base, caplog):
  listed = versions.list_versions(export_base)
  assert listed.complete == [10, 20]
  assert listed.incomplete == {
      30: [part for part, _ in versions.REQUIRED_PARTS],
      40: ["variables/variables.index"],
      50: ["assets.extra/feature_spec.yaml"]}
  with caplog.at_level(logging.WARNING):
    chosen = versions.newest_complete_version(export_base)
  assert chosen == os.path.join(export_base, "20")
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert len(warnings) == 3
  for version, lacks in (("30", "saved_model.pb"), ("40", "variables/variables.index"),
                         ("50", "assets.extra/feature_spec.yaml")):
    assert any(os.path.join(export_base, version) in w and lacks in w for w in warnings), \
        (version, warnings)
  assert not any(os.path.join(export_base, "20") in w for w in warnings)


def test_predict_and_evaluate_resolve_the_same_version(export_base):
  model_dir = os.path.dirname(export_base)
  expected = os.path.join(export_base, "20")
  for path in (export_base, export_base + "/", model_dir, expected):
    assert versions.resolve_saved_model(path) == expected, path
    assert runner.resolve_saved_model(path) == expected, path


def test_no_complete_version_names_the_base_and_what_each_lacks(tmp_path):
  base = tmp_path / "export"
  os.makedirs(base / "30")
  make_version(base, 40, skip=("variables/variables.index", "assets"))
  with pytest.raises(versions.IncompleteExportError) as raised:
    versions.resolve_saved_model(str(base))
  message = str(raised.value)
  assert message.startswith(f"{base}: no complete SavedModel version")
  assert "30 lacks saved_model.pb, variables/variables.index, assets, " \
         "assets.extra/feature_spec.yaml" in message
  assert "40 lacks variables/variables.index, assets)" in message
  with pytest.raises(FileNotFoundError, match="no complete SavedModel version"):
    runner.resolve_saved_model(str(tmp_path))  # as MODEL_DIR: its export/ is the base


def test_an_incomplete_version_given_directly_is_an_error(tmp_path):
  directory = make_version(tmp_path / "export", 7, skip=("variables/variables.index",))
  with pytest.raises(versions.IncompleteExportError,
                     match=r"/export/7: incomplete SavedModel version, lacks "
                           r"variables/variables.index$"):
    versions.resolve_saved_model(directory)


def test_a_directory_without_versions_is_an_error(tmp_path):
  os.makedirs(tmp_path / "export" / "not-a-version")
  with pytest.raises(FileNotFoundError, match="no saved_model.pb here nor a numeric version"):
    versions.resolve_saved_model(str(tmp_path))


def test_a_real_save_with_its_feature_spec_is_complete(tmp_path):
  """The required parts are what tf.saved_model.save writes (plus training.export's spec)."""
  module = tf.Module()
  module.scale = tf.Variable(2.0)
  module.double = tf.function(lambda x: module.scale * x,
                              input_signature=[tf.TensorSpec([None], tf.float32)])
  directory = str(tmp_path / "export" / "5")
  tf.saved_model.save(module, directory)
  assert versions.missing_parts(directory) == ["assets.extra/feature_spec.yaml"]
  os.makedirs(os.path.join(directory, "assets.extra"))
  with open(os.path.join(directory, "assets.extra", "feature_spec.yaml"), "w") as f:
    f.write("features: []\n")
  assert versions.missing_parts(directory) == []
  assert versions.resolve_saved_model(str(tmp_path)) == directory
