"""--source aliexpress: the AITM / MTReclib AliExpress CSV layout through the Beam job.

The release (Tianchi dataId 74690) cannot be downloaded here, so `write_sample` makes a
small train/test pair in its exact layout (header `search_id,categorical_1..16,
numerical_1..63,click,conversion`), deterministically, with a few bad rows whose dead
letter (file, line, reason) is known. tests/data/aliexpress/ holds its output
(`python -m tests.test_aliexpress` rewrites it); a test checks they still agree.
"""

import glob
import json
import os
import random
import sys

import pytest
import tensorflow as tf

from configs import config as config_lib
from features import example_codec
from features import spec as spec_lib
from features import success_marker
from layouts import aliccp
from layouts import derived
from pipeline import preprocess
from simulation import release_layouts
from tests import test_real_samples
from tests import test_transforms_progress
from transforms import dead_letter as dl
from transforms import outputs as outputs_lib
from transforms import parse as parse_lib
from transforms import read as read_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE_DIR = os.path.join(REPO, "tests", "data", "aliexpress", "AliExpress_XX")
CONFIG = os.path.join(REPO, "configs", "aliexpress.yaml")
CATEGORICAL = [f"categorical_{i}" for i in range(1, 17)]
NUMERICAL = [f"numerical_{i}" for i in range(1, 64)]
HEADER = ",".join(["search_id"] + CATEGORICAL + NUMERICAL + ["click", "conversion"])
COLUMNS = len(HEADER.split(","))  # 82
LABELS = ["click", "purchase"]
ROWS = {"train": 60, "test": 20}
# Bad rows: file -> {row index (0-based, header excluded): reason}. Line = index + 2.
BAD_ROWS = {
    "train": {3: dl.MALFORMED_LINE,          # a cell missing
              11: dl.BAD_TYPE,               # numerical_5 = "abc"
              17: dl.BAD_VALUE,              # numerical_9 = "nan"
              23: dl.BAD_LABEL,              # click = 2
              31: dl.PURCHASE_WITHOUT_CLICK,  # click 0, conversion 1
              47: dl.MALFORMED_LINE},        # empty search_id
    "test": {5: dl.PURCHASE_WITHOUT_CLICK, 13: dl.BAD_LABEL},  # conversion = "yes"
}


def sample_rows(name):
  """(rows of the file `name` ("train" or "test"), per row (labels or dead-letter reason)).

  A good row's labels are {"click", "purchase"}; search ids group 1-5 consecutive rows.
  """
  rng = random.Random(f"aliexpress-{name}")
  rows, outcomes = [], []
  for index, cells in enumerate(release_layouts.aliexpress_cells(rng, name, ROWS[name],
                                                                 0.35, 0.4)):
    click, conversion = int(cells[-2]), int(cells[-1])
    reason = BAD_ROWS[name].get(index)
    if reason == dl.MALFORMED_LINE and index == 3:
      del cells[20]
    elif reason == dl.MALFORMED_LINE:
      cells[0] = ""
    elif reason == dl.BAD_TYPE:
      cells[1 + 16 + 4] = "abc"
    elif reason == dl.BAD_VALUE:
      cells[1 + 16 + 8] = "nan"
    elif reason == dl.BAD_LABEL:
      cells[-2 if name == "train" else -1] = "2" if name == "train" else "yes"
    elif reason == dl.PURCHASE_WITHOUT_CLICK:
      cells[-2:] = ["0", "1"]
    rows.append(",".join(cells))
    outcomes.append(reason or {"click": click, "purchase": conversion})
  return rows, outcomes


def write_sample(directory):
  """Writes train.csv and test.csv into `directory`; returns their paths."""
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for name in ROWS:
    paths[name] = os.path.join(directory, f"{name}.csv")
    with open(paths[name], "w") as f:
      f.write("\n".join([HEADER] + sample_rows(name)[0]) + "\n")
  return paths


def _parser(spec_entries=None, header=HEADER):
  spec = (spec_lib.feature_spec_from_dict({"features": spec_entries}) if spec_entries
          else config_lib.load_config(CONFIG).load_feature_spec())
  return derived.CsvRowParser(
      aliccp.FieldFeatures(spec), spec, header, "train.csv", infer_click=False,
      label_columns=derived.ALIEXPRESS_LABEL_COLUMNS,
      id_column=derived.SEARCH_ID)


def test_committed_sample_is_what_the_generator_writes(tmp_path):
  generated = write_sample(str(tmp_path))
  for name, path in generated.items():
    with open(path) as f, open(os.path.join(SAMPLE_DIR, f"{name}.csv")) as committed:
      assert committed.read() == f.read(), f"rerun python -m tests.test_aliexpress ({name})"
  rows, outcomes = sample_rows("train")
  assert len(rows[0].split(",")) == COLUMNS and len(rows[3].split(",")) == COLUMNS - 1
  assert sum(1 for o in outcomes if isinstance(o, dict) and o["purchase"]) >= 2


def test_row_parser_reads_labels_features_and_search_id():
  parser = _parser()
  rows, outcomes = sample_rows("train")
  labels, features, metadata = parser.parse(rows[0])
  assert labels == outcomes[0]
  assert metadata == {"search_id": "train-s1"}
  assert features["categorical_16"] == rows[0].split(",")[16]
  assert features["numerical_63"] == pytest.approx(float(rows[0].split(",")[79]))
  assert "search_id" not in features and "conversion" not in features
  for index, reason in BAD_ROWS["train"].items():
    with pytest.raises((parse_lib.FieldError, example_codec.RecordError)) as raised:
      parser.parse(rows[index])
    assert raised.value.reason == reason, index


def test_search_id_is_a_feature_only_when_the_spec_names_it():
  entries = [{"name": "search_id", "dtype": "string", "transform": "hash", "hash_buckets": 10},
             {"name": "numerical_1", "dtype": "float", "transform": "normalize"}]
  _, features, metadata = _parser(entries).parse(sample_rows("train")[0][0])
  assert features["search_id"] == "train-s1" and metadata == {}


def test_header_without_a_label_column_or_with_a_label_as_feature_is_refused():
  with pytest.raises(ValueError, match="no 'conversion' column"):
    _parser(header=HEADER.replace(",conversion", ",purchase"))
  with pytest.raises(ValueError, match="no 'search_id' column"):
    _parser(header=HEADER.replace("search_id,", "id,"))
  with pytest.raises(ValueError, match="label leak"):
    _parser([{"name": "conversion", "dtype": "float", "transform": "normalize"}])


def _examples(output, split):
  files = sorted(glob.glob(outputs_lib.OutputPaths(output).examples_pattern(split)))
  return [raw.numpy() for raw in tf.data.TFRecordDataset(files, compression_type="GZIP")]


@pytest.mark.slow
def test_aliexpress_through_the_cli_labels_dead_letters_and_trains_esmm(tmp_path, caplog,
                                                                        monkeypatch):
  output = str(tmp_path / "aliexpress")
  paths = outputs_lib.OutputPaths(output)
  # A previous run into the same directory with more shards: its extra shards must go.
  stale = [os.path.join(output, "train", "train-00039-of-00040.tfrecord.gz"),
           os.path.join(output, "eval", "eval-00000-of-00001.tfrecord.gz"),
           os.path.join(output, "dead_letter", "dead_letter-00002-of-00003.jsonl")]
  for path in stale:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(b"old")
  train_csv, test_csv = (os.path.join(SAMPLE_DIR, f"{name}.csv") for name in ("train", "test"))
  # Batches of 8 rows (the bad rows fall in several), each logging its progress line.
  monkeypatch.setattr(read_lib, "BATCH_ROWS", 8)
  with test_transforms_progress.logged_stages(caplog) as stages:
    result = preprocess.run(["--source", "aliexpress", "--output", output,
                             "--train", train_csv, "--eval", test_csv,
                             "--progress_interval_s", "1e-9"])
  assert {"train_parsed", "eval_parsed"} <= stages  # rows parsed per split
  assert not any(os.path.exists(path) for path in stale)
  marker = success_marker.check_success_marker(output)
  assert all(name.endswith("-of-00032.tfrecord.gz") for name in marker["files"]
             if name.startswith("train/"))

  expected = {}  # (file, line) -> labels or reason
  for name, path in (("train", train_csv), ("test", test_csv)):
    for index, outcome in enumerate(sample_rows(name)[1]):
      expected[(path, index + 2)] = outcome
  letters = [json.loads(line) for shard in sorted(glob.glob(paths.dead_letter_pattern))
             for line in open(shard)]
  assert sorted((d["file"], d["line"], d["reason"]) for d in letters) == sorted(
      (file, line, outcome) for (file, line), outcome in expected.items()
      if isinstance(outcome, str))
  assert all(d["source"] == dl.IMPRESSIONS and d["record"] for d in letters)

  counts = result["counts"]
  reasons = [o for o in expected.values() if isinstance(o, str)]
  assert counts["impressions"] == {
      "read": 80, "written": {"train": 54, "eval": 18},
      "dead_letter": {reason: reasons.count(reason) for reason in sorted(set(reasons))}}
  spec = config_lib.load_config(CONFIG).load_feature_spec()
  for split, file, sample in (("train", train_csv, "train"), ("eval", test_csv, "test")):
    rows = sample_rows(sample)[0]
    decoded = {}
    for raw in _examples(output, split):
      example = tf.train.Example.FromString(raw)
      row = example_codec.example_to_dict(raw, spec, LABELS)
      file_of, line = row["impression_id"].rsplit(":", 1)
      assert file_of == file
      decoded[int(line)] = row
      search_id = example.features.feature["search_id"].bytes_list.value
      assert list(search_id) == [rows[int(line) - 2].split(",")[0].encode()]
    good = {line: outcome for (f, line), outcome in expected.items()
            if f == file and isinstance(outcome, dict)}
    assert sorted(decoded) == sorted(good)
    for line, labels in good.items():  # Labels per row, against the generator.
      assert {name: decoded[line][name] for name in LABELS} == labels, (split, line)
    assert counts["labels"][split] == {
        name: sum(labels[name] for labels in good.values()) for name in LABELS}

  transform = json.load(open(os.path.join(paths.transform_dir, "transform.json")))
  assert transform["train_examples"] == 54
  test_real_samples._train("aliexpress", output, tmp_path)  # pylint: disable=protected-access


if __name__ == "__main__":
  written = write_sample(sys.argv[1] if len(sys.argv) > 1 else SAMPLE_DIR)
  print("\n".join(written.values()))
