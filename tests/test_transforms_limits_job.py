"""The log job's value limits and snapshot time (issue 33), end to end on one TestPipeline.

A spec whose `tags` list is cut at 2 elements and whose `device` string is dead-lettered
over 4 characters, and a data.as_of one hour into the last day: counts.json must count
the cut values per feature and the records after as_of as bad_value dead letters (the
identities still hold), and the written Examples must hold the cut lists. Expected counts
are derived by hand from the lines written below.
"""

import glob
import json

from apache_beam.testing import test_pipeline
import tensorflow as tf

from features import example_codec
from features import spec as spec_lib
from transforms import job
from transforms import outputs as outputs_lib
from tests import beam_testing as testing

DAY = testing.DAY_S
T0 = testing.START
AS_OF = T0 + 2 * DAY + 3600  # 2026-01-03T01:00:00Z, on the eval day.
SPEC = dict(testing.SMALL_SPEC, features=[
    dict(entry, **{"tags": {"max_length": 2, "on_too_long": "cut"},
                   "device": {"max_length": 4}}.get(entry["name"], {}))
    for entry in testing.SMALL_SPEC["features"]])


def test_cut_values_and_records_after_as_of_are_counted(tmp_path):
  long_tags = {"tags": ["a", "b", "c", "d"], "tags__weight": [1.0, 2.0, 3.0, 4.0]}
  impressions = testing.write_jsonl(str(tmp_path / "impressions.jsonl"), [
      testing.impression(0, T0, device="ios"),
      testing.impression(1, T0 + 10, device="ios", **long_tags),        # cut
      testing.impression(2, T0 + DAY, device="web", **long_tags),       # cut
      testing.impression(3, T0 + DAY, device="android"),                # too_long
      testing.impression(4, AS_OF, device="web", **long_tags),          # eval, cut
      testing.impression(5, AS_OF + 1, device="web"),                   # after as_of
  ])
  events = testing.write_jsonl(str(tmp_path / "events.jsonl"), [
      testing.event("imp1", T0 + 20, "click"),
      testing.event("imp4", AS_OF, "click"),                            # at as_of: kept
      testing.event("imp4", AS_OF + 60, "purchase"),                    # after as_of
  ])
  spec = spec_lib.feature_spec_from_dict(SPEC, "limited")
  output = str(tmp_path / "out")
  with test_pipeline.TestPipeline() as p:
    _ = p | job.Preprocess(impressions, events, output,
                           testing.data_config(as_of=str(AS_OF)), spec, statistics=False,
                           num_buckets=2)
  paths = outputs_lib.OutputPaths(output)
  counts = job.check_run(paths, seconds=1.0)  # raises when an identity breaks
  assert counts["impressions"] == {
      "read": 6, "written": {"train": 3, "eval": 1},
      "dead_letter": {"bad_value": 1, "too_long": 1}, "cut": {"tags": 3}}
  assert counts["events"] == {"read": 3, "attributed": 2, "dead_letter": {"bad_value": 1}}
  letters = {(letter["source"], letter["line"]): letter
             for path in glob.glob(paths.dead_letter_pattern) for letter in map(json.loads,
                                                                                open(path))}
  assert set(letters) == {("impressions", 4), ("impressions", 6), ("events", 3)}
  assert "'device': a string of 7 characters" in letters[("impressions", 4)]["detail"]
  for key in (("impressions", 6), ("events", 3)):
    assert "after as_of 2026-01-03T01:00:00Z" in letters[key]["detail"]

  codec = example_codec.ExampleCodec(spec, testing.LABEL_NAMES)
  written = {}
  for split in outputs_lib.SPLITS:
    for record in tf.data.TFRecordDataset(glob.glob(paths.examples_pattern(split)),
                                          compression_type="GZIP"):
      example = codec.to_dict(record.numpy())
      written[example["impression_id"]] = (example["tags"], example["tags__weight"])
  assert written == {"imp0": (["t0", "t0"], [0.5, 1.5]), "imp1": (["a", "b"], [1.0, 2.0]),
                     "imp2": (["a", "b"], [1.0, 2.0]), "imp4": (["a", "b"], [1.0, 2.0])}
