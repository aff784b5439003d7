"""features.spec value limits (issue 33): per-feature max_length / on_too_long, the spec's
`limits:` defaults, their validation, and `fit_lengths`, which the Beam job's line rules
and serving both apply."""

import pytest
import yaml

from features import spec as spec_lib

FEATURES = [
    {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 10},
    {"name": "tags", "dtype": "string", "transform": "vocabulary", "max_tokens": 5,
     "multivalent": True, "weighted": True, "max_length": 3, "on_too_long": "cut"},
    {"name": "title", "dtype": "string", "transform": "hash", "hash_buckets": 10,
     "max_length": 4},
    {"name": "price", "dtype": "float", "transform": "normalize"},
]


def _spec(features=None, **top):
  return spec_lib.feature_spec_from_dict(dict({"features": features or FEATURES}, **top),
                                         source="spec.yaml")


def test_defaults_are_today_s_limits_and_change_nothing():
  spec = spec_lib.load_feature_spec("configs/features/simulated.yaml")
  assert spec.limits == spec_lib.FIXED_LIMIT == spec_lib.ValueLimit(10_000, 100_000,
                                                                   "dead_letter")
  assert set(spec.value_limits().values()) == {spec_lib.FIXED_LIMIT}
  assert spec_lib.limits_to_dict(spec.limits) == {}


def test_feature_limits_fall_back_to_the_spec_s():
  limits = _spec(limits={"max_string_chars": 7, "on_too_long": "cut"}).value_limits()
  assert limits["user_id"] == spec_lib.ValueLimit(10_000, 7, "cut")
  assert limits["tags"] == spec_lib.ValueLimit(3, 7, "cut")  # elements; each string 7
  assert limits["tags__weight"] == spec_lib.ValueLimit(3, 7, "cut", follows="tags")
  assert limits["title"] == spec_lib.ValueLimit(10_000, 4, "cut")  # characters
  assert spec_lib.limits_to_dict(_spec(limits={"max_list_length": 9}).limits) == {
      "max_list_length": 9}


def test_fit_lengths_cuts_refuses_and_reports():
  limits = _spec().value_limits()
  values = {"user_id": "u", "tags": list("abcde"), "tags__weight": [1.0, 2.0, 3.0, 4.0, 5.0],
            "title": "abcd", "price": 2.5, "impression_id": "x" * 100_000}
  assert spec_lib.fit_lengths(values, limits) == {"tags": 5}  # the weights follow tags
  assert values == {"user_id": "u", "tags": list("abc"), "tags__weight": [1.0, 2.0, 3.0],
                    "title": "abcd", "price": 2.5, "impression_id": "x" * 100_000}
  assert spec_lib.fit_lengths(values, limits) == {}  # a cut value keeps its limit
  with pytest.raises(spec_lib.TooLongError) as raised:
    spec_lib.fit_lengths({"title": "abcde"}, limits)
  assert (raised.value.field, raised.value.detail) == (
      "title", "field 'title': a string of 5 characters, more than the limit of 4")
  with pytest.raises(spec_lib.TooLongError) as raised:  # outside the spec: FIXED_LIMIT
    spec_lib.fit_lengths({"impression_id": "x" * 100_001}, limits)
  assert raised.value.field == "impression_id"


@pytest.mark.parametrize("change, message", [
    ({"max_length": 0}, "features[2] (title): max_length must be an integer > 0, got 0"),
    ({"max_length": "4"}, "features[2] (title): max_length must be an integer > 0"),
    ({"max_length": True}, "features[2] (title): max_length must be an integer > 0"),
    ({"on_too_long": "drop"}, "features[2] (title): on_too_long 'drop' not in"),
    ({"dtype": "int", "transform": "vocabulary", "max_tokens": 3},
     "features[2] (title): max_length bounds the elements of a list feature"),
])
def test_bad_feature_limits_name_the_file_and_feature(change, message):
  features = [dict(entry, **change) if entry["name"] == "title" else entry
              for entry in FEATURES]
  with pytest.raises(spec_lib.SpecError) as raised:
    _spec(features)
  assert str(raised.value).startswith("spec.yaml: ") and message in str(raised.value)


@pytest.mark.parametrize("limits, message", [
    ({"max_list_length": -1}, "limits: max_list_length must be an integer > 0, got -1"),
    ({"max_string_chars": 2.5}, "limits: max_string_chars must be an integer > 0"),
    ({"on_too_long": "skip"}, "limits: on_too_long 'skip' not in"),
    ({"max_length": 3}, "limits: unknown keys ['max_length']"),
    ([3], "limits: expected a mapping, got list"),
])
def test_bad_spec_limits_name_the_file(limits, message):
  with pytest.raises(spec_lib.SpecError) as raised:
    _spec(limits=limits)
  assert str(raised.value).startswith("spec.yaml: ") and message in str(raised.value)


def test_limits_load_from_a_yaml_file(tmp_path):
  path = tmp_path / "features.yaml"
  path.write_text(yaml.safe_dump({"limits": {"max_list_length": 50}, "features": FEATURES}))
  spec = spec_lib.load_feature_spec(str(path))
  assert spec.limits == spec_lib.ValueLimit(max_elements=50)
  assert spec["tags"].max_length == 3 and spec["tags"].on_too_long == "cut"
  assert spec.value_limits()["user_id"] == spec_lib.ValueLimit(50, 100_000)


@pytest.mark.parametrize("top", [{}, {"limits": {"max_list_length": 7, "on_too_long": "cut"}}])
def test_the_export_s_spec_copy_keeps_every_limit(tmp_path, top):
  """training.export writes the spec beside the SavedModel; serving reads its limits from
  that copy, so per-feature and spec-wide limits must round-trip (defaults stay absent)."""
  from training import export as export_lib  # pylint: disable=g-import-not-at-top
  spec = _spec(**top)
  document = export_lib.spec_document(spec)
  assert ("limits" in document) == bool(top)
  path = tmp_path / "feature_spec.yaml"
  path.write_text(yaml.safe_dump(document, sort_keys=False))
  copy = spec_lib.load_feature_spec(str(path))
  assert copy.limits == spec.limits and copy.value_limits() == spec.value_limits()
