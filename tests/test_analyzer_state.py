"""transforms.analyzer_state: per-day analyzer states merged over a window of days.

The oracle is `analyze.AnalyzeBatches` over all the window's batches in one pass: the
artifacts written from `merge_states` of the per-day states must be byte-for-byte its
files (transform.json and every vocabulary), on a spec with every transform kind, for
1 and 3 days and for a window of the last 2 days. Token counts and example counts are
also checked against plain Counters of the records. The states and references are
computed once (module fixture).
"""

import collections
import gzip
import os
import random

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline

from features import spec as spec_lib
from tests import test_transforms_analyze as analyze_test
from transforms import analyze
from transforms import analyzer_state

SPEC = analyze_test.SPEC
TRAP_TOKEN = 100  # position: outside every day's top 10, first over any 2 days.


def _days():
  """Three days of records in random order; each day also holds ten day-specific
  positions 3 times and TRAP_TOKEN twice, so a per-day top 10 would lose TRAP_TOKEN."""
  records = analyze_test._bundling_records() + analyze_test._records()  # pylint: disable=protected-access
  records = random.Random(7).sample(records, len(records))
  days = [records[:300], records[300:350], records[350:]]
  for day, day_records in enumerate(days):
    positions = [1000 * (day + 1) + k for k in range(10)] * 3 + [TRAP_TOKEN] * 2
    day_records += [{"features": {"position": position}} for position in positions]
  return days


def _batches(records):
  return analyze_test._batches(records, 40)  # pylint: disable=protected-access


def _files(directory):
  """{relative path: bytes} of every file under directory."""
  contents = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        contents[os.path.relpath(path, directory)] = f.read()
  return contents


@pytest.fixture(scope="module")
def computed(tmp_path_factory):
  """The state file of each day and of all days, and AnalyzeBatches' artifacts of all
  days and of the last two: six small pipelines, about 4.5 CPU s in all (mostly
  Beam's per-pipeline graph work, not data: batches of 40 rows or of 1000 cost alike)."""
  root = tmp_path_factory.mktemp("analyzer_state")
  days = _days()
  states = {f"day{day}": records for day, records in enumerate(days)}
  states["all"] = sum(days, [])
  references = {"all": sum(days, []), "last_two": days[1] + days[2]}
  for name, records in states.items():
    with test_pipeline.TestPipeline() as p:
      _ = (p | beam.Create(_batches(records)) | analyzer_state.AnalyzeBatchesToState(SPEC)
           | beam.Map(analyzer_state.write_state, str(root / name)))
      if name == "all":  # A day without train batches.
        _ = (p | "NoBatches" >> beam.Create([])
             | "EmptyState" >> analyzer_state.AnalyzeBatchesToState(SPEC)
             | "WriteEmpty" >> beam.Map(analyzer_state.write_state, str(root / "empty")))
  for name, records in references.items():
    with test_pipeline.TestPipeline() as p:
      _ = (p | beam.Create(_batches(records)) | analyze.AnalyzeBatches(SPEC)
           | analyze.WriteTransformArtifacts(str(root / "ref" / name)))
  return {"root": root, "days": days}


def _merged_files(root, state_names, name):
  states = (analyzer_state.read_state(str(root / state), SPEC) for state in state_names)
  directory = analyze.write_artifacts(analyzer_state.merge_states(states, SPEC),
                                      str(root / "merged" / name))
  return _files(directory)


@pytest.mark.parametrize("state_names", [["all"], ["day0", "day1", "day2"],
                                         ["day2", "empty", "day0", "day1"]])
def test_merged_states_are_one_pass_artifacts_byte_for_byte(computed, state_names):
  root = computed["root"]
  merged = _merged_files(root, state_names, "-".join(state_names))
  assert merged == _files(root / "ref" / "all")
  assert sorted(merged) == ["transform.json", "vocab/device.txt", "vocab/position.txt",
                            "vocab/tags.txt"]
  assert merged["vocab/position.txt"].split(b"\n")[0] == str(TRAP_TOKEN).encode()


def test_window_of_last_days_is_those_days_analysed(computed):
  root = computed["root"]
  merged = _merged_files(root, ["day1", "day2"], "window")
  assert merged == _files(root / "ref" / "last_two")
  assert merged != _files(root / "ref" / "all")


def test_day_state_holds_every_token_and_count(computed):
  """Against Counters of the day's records: all tokens (device has 4 > max_tokens 3,
  position 11 > 10 with TRAP_TOKEN outside the day's top), the example and skipped counts."""
  root = computed["root"]
  skipped_days = 0
  for day, records in enumerate(computed["days"]):
    state = analyzer_state.read_state(str(root / f"day{day}"), SPEC)
    assert state.train_examples == len(records)
    values = lambda name: [r["features"][name] for r in records if name in r["features"]]
    devices = collections.Counter(values("device"))
    skipped = devices.pop("", 0) + sum(tags.count("bad\ntoken") for tags in values("tags"))
    assert state.token_counts["device"] == dict(devices)
    positions = collections.Counter(str(position) for position in values("position"))
    assert state.token_counts["position"] == dict(positions)
    assert positions[str(TRAP_TOKEN)] == 2 and len(positions) > 10
    assert state.skipped_tokens == skipped
    skipped_days += skipped
    assert state.moments["rating"][0] == len(values("rating"))
    assert state.histograms["age"] == dict(collections.Counter(
        float(age) for age in values("age")))
  assert skipped_days == 2  # device "" and tags "bad\ntoken" of analyze_test._records.


def test_state_of_all_days_is_the_sum_of_the_day_states(computed):
  """Whole states, not only the top tokens: the same counts, accumulators and file bytes
  from other batches, bundles and insertion orders."""
  root = computed["root"]
  total = analyzer_state.empty_state(SPEC)
  for day in (2, 0, 1):
    analyzer_state.add_state(total, analyzer_state.read_state(str(root / f"day{day}"), SPEC))
  whole = analyzer_state.read_state(str(root / "all"), SPEC)
  positions = {str(r["features"]["position"]) for records in computed["days"]
               for r in records if "position" in r["features"]}
  assert total == whole and set(whole.token_counts["position"]) == positions
  assert len(positions) > 3 * 10  # Ten day-specific positions a day, and more.
  assert analyzer_state.encode_state(total) == (root / "all").read_bytes()


def test_day_without_batches_has_an_empty_state(computed):
  empty = analyzer_state.read_state(str(computed["root"] / "empty"), SPEC)
  assert empty == analyzer_state.empty_state(SPEC)
  assert sorted(empty.token_counts) == ["device", "position", "tags"]
  analysis = analyzer_state.merge_states([empty], SPEC)
  assert analysis["train_examples"] == 0 and analysis["vocabularies"]["device"] == []
  assert analysis["features"]["rating"] == {"transform": "normalize", "mean": 0.0,
                                            "variance": 0.0}


def test_state_file_round_trips_exactly(computed, tmp_path):
  path = str(computed["root"] / "day0")
  state = analyzer_state.read_state(path, SPEC)
  assert state.source == path
  assert state.moments["rating"][2] > 2**2000  # Scaled squares: decimal strings in the file.
  (tmp_path / "nested").mkdir()
  (tmp_path / "nested" / "copy.tmp-killed").write_bytes(b"truncated")  # A killed write's.
  copy = analyzer_state.write_state(state, str(tmp_path / "nested" / "copy"))
  assert analyzer_state.read_state(copy, SPEC) == state
  with open(path, "rb") as f, open(copy, "rb") as g:
    assert f.read() == g.read()
  assert os.listdir(tmp_path / "nested") == ["copy"]  # No temporary left, none kept.


@pytest.mark.parametrize("change, feature", [
    ({"name": "price", "log1p": False}, "price"),
    ({"name": "position", "dtype": "string"}, "position"),
    ({"name": "age", "transform": "hash", "hash_buckets": 10}, "age"),
    ({"name": "extra", "dtype": "string", "transform": "vocabulary", "max_tokens": 5},
     "extra"),
])
def test_state_of_another_spec_is_refused(computed, change, feature):
  entries = [dict(vars(f)) for f in SPEC]
  entries = [{**entry, **change} if entry["name"] == change["name"] else entry
             for entry in entries]
  if change["name"] not in SPEC.names:
    entries.append(change)
  other = spec_lib.feature_spec_from_dict(
      {"features": [{k: v for k, v in entry.items() if v is not None} for entry in entries]})
  path = str(computed["root"] / "day1")
  with pytest.raises(analyzer_state.AnalyzerStateError, match=f"{path}: feature '{feature}'"):
    analyzer_state.read_state(path, other)
  state = analyzer_state.read_state(path, SPEC)
  state.source = ""
  with pytest.raises(analyzer_state.AnalyzerStateError,
                     match=f"analyzer state #0: feature '{feature}'"):
    analyzer_state.merge_states([state], other)


def test_changed_sizes_need_no_new_state(computed):
  """max_tokens and num_buckets apply at merge time: the same states serve a new size."""
  root = computed["root"]
  smaller = spec_lib.feature_spec_from_dict({"features": [
      {**{k: v for k, v in vars(f).items() if v is not None},
       **({"max_tokens": 2} if f.name == "device" else {}),
       **({"num_buckets": 2} if f.name == "age" else {})} for f in SPEC]})
  states = [analyzer_state.read_state(str(root / f"day{day}"), smaller) for day in range(3)]
  analysis = analyzer_state.merge_states(states, smaller)
  assert analysis["vocabularies"]["device"] == analyzer_state.merge_states(
      states, SPEC)["vocabularies"]["device"][:2]
  assert len(analysis["features"]["age"]["boundaries"]) == 1


def test_unreadable_files_name_the_file(tmp_path):
  with pytest.raises(analyzer_state.AnalyzerStateError, match="no analyzer state file"):
    analyzer_state.read_state(str(tmp_path / "missing"), SPEC)
  (tmp_path / "plain").write_text("{}")
  with pytest.raises(analyzer_state.AnalyzerStateError, match=f"{tmp_path}/plain: not an"):
    analyzer_state.read_state(str(tmp_path / "plain"), SPEC)
  state = analyzer_state.empty_state(SPEC)
  text = gzip.decompress(analyzer_state.encode_state(state)).decode()
  assert '"format_version":1' in text
  (tmp_path / "future").write_bytes(gzip.compress(text.replace(
      '"format_version":1', '"format_version":2').encode()))
  with pytest.raises(analyzer_state.AnalyzerStateError,
                     match=f"{tmp_path}/future: analyzer state format_version 2"):
    analyzer_state.read_state(str(tmp_path / "future"), SPEC)
  (tmp_path / "edited").write_bytes(gzip.compress(text.replace(
      '"bucketize":{"age":[],"flat":[]}', '"bucketize":{"age":[]}').encode()))
  with pytest.raises(analyzer_state.AnalyzerStateError,
                     match=r"edited: malformed .* bucketize statistics of \['age'\] for"):
    analyzer_state.read_state(str(tmp_path / "edited"), SPEC)
  with pytest.raises(analyzer_state.AnalyzerStateError, match="no analyzer states"):
    analyzer_state.merge_states([], SPEC)
