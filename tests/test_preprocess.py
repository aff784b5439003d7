"""pipeline.preprocess: flags, and the whole job end to end on small files."""

import glob
import json
import os

import pytest
import tensorflow as tf

from configs import config as config_lib
from features import example_codec
from pipeline import preprocess
from transforms import job
from transforms import outputs as outputs_lib
from tests import beam_testing as testing

T0 = testing.START
DAY = testing.DAY_S


def test_flags_and_beam_options_are_split():
  args, beam_args = preprocess.parse_args([
      "prog.py", "--impressions", "i/*", "--events", "e/*", "--output", "out",
      "--direct_num_workers", "2", "--runner", "DirectRunner", "--fail_on_anomalies"])
  assert (args.impressions, args.events, args.output) == ("i/*", "e/*", "out")
  assert args.fail_on_anomalies and args.schema is None and args.eval_from is None
  assert beam_args == ["--direct_num_workers", "2", "--runner", "DirectRunner"]
  assert args.config == preprocess.DEFAULT_CONFIG and os.path.isabs(args.config)
  assert os.path.exists(args.config) and args.config.endswith(os.path.join("configs",
                                                                           "esmm.yaml"))


@pytest.mark.parametrize("flag", [["--engine", "row"], ["--engine=columnar"]])
def test_the_removed_engine_flag_fails_with_one_line_naming_the_one_engine(flag, capsys,
                                                                          tmp_path):
  argv = ["--impressions", "i/*", "--events", "e/*", "--output", str(tmp_path / "out"), *flag]
  with pytest.raises(job.PreprocessError) as raised:
    preprocess.parse_args(argv)
  assert str(raised.value) == ("--engine was removed: pipeline.preprocess has one engine, "
                               "the columnar RecordBatch job")
  with pytest.raises(SystemExit) as exited:
    preprocess.main(["preprocess", *argv])
  assert exited.value.code == 2
  lines = capsys.readouterr().err.strip().splitlines()
  assert len(lines) == 1 and "one engine, the columnar RecordBatch job" in lines[0]
  assert not (tmp_path / "out").exists()


def test_build_transform_gives_the_job_of_each_source_with_the_flags():
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cases = [("log", ["--impressions", "i", "--events", "e"],
            {"impressions": ["i"], "events": ["e"]}, job.Preprocess),
           ("ali_ccp", [], {"skeleton": ["s"], "eval_skeleton": ["es"],
                            "common_features": ["c"], "eval_common_features": ["ec"]},
            job.PreprocessAliCcp),
           ("aliexpress", [], {"train": ["t"], "eval": ["v"]}, job.PreprocessDerived)]
  for source, flags, patterns, expected in cases:
    args, _ = preprocess.parse_args(["--output", "out", "--source", source, *flags,
                                     "--join_buckets", "5", "--progress_interval_s", "2"])
    config = config_lib.load_config(os.path.join(repo, args.config))
    transform = preprocess.build_transform(args, patterns, config, config.load_feature_spec())
    assert type(transform) is expected  # pylint: disable=unidiomatic-typecheck
    assert transform._progress_interval_s == 2.0  # pylint: disable=protected-access
    if expected is not job.PreprocessDerived:
      assert transform._num_buckets == 5  # pylint: disable=protected-access


def test_local_workers_stands_for_the_direct_runner_options():
  base = ["--impressions", "i/*", "--events", "e/*", "--output", "out"]
  _, beam_args = preprocess.parse_args(base + ["--local_workers", "4", "--save_main_session"])
  assert beam_args == ["--save_main_session", "--direct_num_workers=4",
                       "--direct_running_mode=multi_processing"]
  _, beam_args = preprocess.parse_args(base + ["--local_workers=1"])
  assert beam_args == ["--direct_num_workers=1", "--direct_running_mode=in_memory"]
  with pytest.raises(job.PreprocessError, match="drop.*--direct_num_workers"):
    preprocess.parse_args(base + ["--local_workers=2", "--direct_num_workers=3"])
  with pytest.raises(job.PreprocessError, match="DataflowRunner"):
    preprocess.parse_args(base + ["--local_workers=2", "--runner", "DataflowRunner"])
  with pytest.raises(job.PreprocessError, match=">= 0"):
    preprocess.parse_args(base + ["--local_workers=-1"])


def test_the_job_pickles_with_cloudpickle_unless_the_command_says():
  from apache_beam.internal import pickler  # pylint: disable=g-import-not-at-top
  from apache_beam.options import pipeline_options  # pylint: disable=g-import-not-at-top
  for flags, expected in (([], "cloudpickle"), (["--pickle_library=dill"], "dill"),
                          (["--pickle_library", "dill"], "dill")):
    options = preprocess.pipeline_options(flags)
    assert options.view_as(pipeline_options.SetupOptions).pickle_library == expected
  # Beam's Pipeline sets the process's pickler from the options (and the workers' from
  # the job's): the job's DoFns are pickled with cloudpickle.
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  previous = "dill" if pickler.desired_pickle_lib is pickler.dill_pickler else "cloudpickle"
  try:
    beam.Pipeline(options=preprocess.pipeline_options([]))
    assert pickler.desired_pickle_lib is pickler.cloudpickle_pickler
  finally:
    pickler.set_library(previous)


def test_local_workers_on_an_unchecked_beam_version_fails_before_writing(tmp_path,
                                                                         monkeypatch):
  import apache_beam  # pylint: disable=g-import-not-at-top
  impressions, events = _write_logs(str(tmp_path / "logs"))
  monkeypatch.setattr(apache_beam, "__version__", "2.99.0")
  output = tmp_path / "out"
  with pytest.raises(job.PreprocessError, match="apache_beam 2.99.0"):
    preprocess.run(_argv(impressions, events, str(output),
                         testing.write_experiment(str(tmp_path / "config")),
                         "--local_workers", "2"))
  assert not output.exists()


def test_a_glob_matching_nothing_fails_before_the_pipeline(tmp_path):
  with pytest.raises(job.PreprocessError, match="--events"):
    preprocess.run(["--impressions", __file__, "--events", str(tmp_path / "none*.jsonl"),
                    "--output", str(tmp_path / "out"),
                    "--config", testing.write_experiment(str(tmp_path))])


def _write_logs(directory, eval_device=None):
  """3 days of impressions (JSONL.gz + Parquet), the last one eval; clicks and purchases."""
  os.makedirs(directory, exist_ok=True)
  impressions, events = [], []
  for index in range(240):
    day = index // 80
    timestamp = T0 + day * DAY + index
    overrides = {"device": eval_device} if day == 2 and eval_device else {}
    impressions.append(testing.impression(index, timestamp, **overrides))
    if index % 4 == 0:
      events.append(testing.event(f"imp{index}", timestamp + 5, "click"))
    if index % 8 == 0:
      events.append(testing.event(f"imp{index}", timestamp + 9, "purchase"))
  testing.write_jsonl(os.path.join(directory, "impressions-0.jsonl.gz"), impressions[:150])
  testing.write_parquet(os.path.join(directory, "impressions-1.parquet"), impressions[150:])
  testing.write_jsonl(os.path.join(directory, "events.jsonl"), events)
  return os.path.join(directory, "impressions-*"), os.path.join(directory, "events.jsonl")


def _expected_labels(directory, eval_from):
  """split -> label -> positives, from the raw files of `_write_logs`, without the job.

  Plain Python over the written JSONL.gz, Parquet and JSONL files and the rules of
  tests/beam_testing.py LABELS: a label is 1 when its event follows the impression within
  the attribution window (1 day) and, after a click (purchase), follows a click.
  """
  import gzip  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  with gzip.open(os.path.join(directory, "impressions-0.jsonl.gz"), "rt") as f:
    impressions = [json.loads(line) for line in f if line.strip()]
  impressions += pq.read_table(os.path.join(directory, "impressions-1.parquet")).to_pylist()
  with open(os.path.join(directory, "events.jsonl")) as f:
    events = [json.loads(line) for line in f if line.strip()]
  label_of = {event_type: label["name"] for label in testing.LABELS
              for event_type in label["events"]}
  by_impression = {}
  for event in events:
    by_impression.setdefault(event["impression_id"], []).append(event)
  expected = {split: dict.fromkeys(testing.LABEL_NAMES, 0) for split in outputs_lib.SPLITS}
  for impression in impressions:
    split = "eval" if impression["timestamp"] >= eval_from else "train"
    labels, clicked_at = set(), None
    for event in sorted(by_impression.get(impression["impression_id"], []),
                        key=lambda e: e["timestamp"]):
      if not 0 <= event["timestamp"] - impression["timestamp"] <= DAY:
        continue
      if event["event"] == "click":
        clicked_at = event["timestamp"] if clicked_at is None else clicked_at
      elif clicked_at is None:
        continue
      labels.add(label_of[event["event"]])
    for name in labels:
      expected[split][name] += 1
  return expected


def _argv(impressions, events, output, config, *extra):
  return ["--impressions", impressions, "--events", events, "--output", output,
          "--config", config, *extra]


@pytest.mark.slow
def test_end_to_end_then_validate_then_fail_on_anomalies(tmp_path, capsys):
  config = testing.write_experiment(str(tmp_path / "config"))
  impressions, events = _write_logs(str(tmp_path / "logs"))
  output = str(tmp_path / "run1")
  # One in-memory worker (DirectRunner's default). Two worker processes: Parquet logs in
  # tests/test_beam_golden.py (--local_workers 2, the golden digest, which one worker
  # gives too), JSONL.gz logs in tests/test_beam_data_loss.py (every record accounted for).
  result = preprocess.run(_argv(impressions, events, output, config))
  paths = outputs_lib.OutputPaths(output)
  counts = result["counts"]
  assert counts["impressions"]["read"] == 240 and counts["events"]["read"] == 90
  assert counts["impressions"]["written"] == {"train": 160, "eval": 80}
  assert counts["events"] == {"read": 90, "attributed": 90, "dead_letter": {}}
  assert counts == json.load(open(paths.counts))

  spec = testing.small_spec()
  expected_labels = _expected_labels(str(tmp_path / "logs"), T0 + 2 * DAY)
  assert expected_labels["train"]["click"] == 40 and expected_labels["eval"]["purchase"] == 10
  for split in outputs_lib.SPLITS:
    files = sorted(glob.glob(paths.examples_pattern(split)))
    assert len(files) == {"train": 2, "eval": 1}[split]
    decoded = [example_codec.example_to_dict(raw.numpy(), spec, testing.LABEL_NAMES)
               for raw in tf.data.TFRecordDataset(files, compression_type="GZIP")]
    assert len(decoded) == counts["impressions"]["written"][split]
    for name in testing.LABEL_NAMES:  # Examples and counts.json against the raw files.
      assert sum(d[name] for d in decoded) == expected_labels[split][name], (split, name)
    assert counts["labels"][split] == expected_labels[split]
    assert all((d["timestamp"] < T0 + 2 * DAY) == (split == "train") for d in decoded)
    assert os.path.exists(paths.stats(split))
  assert os.path.exists(paths.schema) and result["schema"] == paths.schema
  assert json.load(open(paths.labels)) == testing.LABEL_NAMES
  assert open(paths.feature_spec).read() == open(str(tmp_path / "config" / "spec.yaml")).read()
  assert json.load(open(os.path.join(paths.transform_dir, "transform.json")))[
      "train_examples"] == 160

  validated = preprocess.run(_argv(impressions, events, str(tmp_path / "run2"), config,
                                   "--schema", paths.schema, "--fail_on_anomalies",
                                   "--eval_from", "2026-01-02"))
  assert validated["counts"]["impressions"]["written"] == {"train": 80, "eval": 160}
  assert validated["anomalies"] == {"train": [], "eval": []}
  assert os.path.exists(outputs_lib.OutputPaths(str(tmp_path / "run2")).anomalies("eval"))

  drifted_impressions, drifted_events = _write_logs(str(tmp_path / "drifted"),
                                                    eval_device="toaster")
  capsys.readouterr()
  with pytest.raises(SystemExit) as exited:
    preprocess.main(["preprocess"] + _argv(
        drifted_impressions, drifted_events, str(tmp_path / "run3"), config, "--schema",
        paths.schema, "--fail_on_anomalies"))
  message = capsys.readouterr().err
  assert exited.value.code == 2
  assert "eval: feature 'device'" in message and "toaster" in message
  assert "train:" not in message


def test_previous_shards_are_removed_and_nothing_else(tmp_path):
  """A rerun with fewer shards must not leave the old extra shards for the marker to list."""
  paths = outputs_lib.OutputPaths(str(tmp_path))
  old = ["train/train-00000-of-00040.tfrecord.gz", "train/train-00039-of-00040.tfrecord.gz",
         "eval/eval-00007-of-00008.tfrecord.gz", "dead_letter/dead_letter-00000-of-00001.jsonl"]
  kept = ["counts.json", "train/notes.txt", "train/other-00000-of-00001.tfrecord.gz",
          "eval/eval-00000-of-00001.tfrecord", "schema/schema.pbtxt",
          "transform/vocab/device.txt"]
  for name in old + kept:
    os.makedirs(os.path.dirname(str(tmp_path / name)), exist_ok=True)
    (tmp_path / name).write_bytes(b"x")
  removed = preprocess.remove_previous_shards(paths)
  assert sorted(removed) == sorted(str(tmp_path / name) for name in old)
  assert not any((tmp_path / name).exists() for name in old)
  assert all((tmp_path / name).exists() for name in kept)
  assert preprocess.remove_previous_shards(paths) == []
  assert preprocess.remove_previous_shards(
      outputs_lib.OutputPaths(str(tmp_path / "does_not_exist"))) == []
