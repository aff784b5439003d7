"""pipeline.daily: the day-by-day loop, its table, its versions, and its kill/resume.

Oracles: the records in the days' TFRecord shards (read here) for the rows' example
counts; the config's step counts for the carried optimizer step; serving.versions for
the published versions; an uninterrupted run for a run killed (SIGKILL) in the Beam stage
and then in training and rerun by the same command: identical day data, identical
metrics, the same files (nothing left behind).

The world: the simulator's flat world of 900 impressions over 3 days, split by UTC day
into the daily layout (impressions by their day, events by the day they arrive), with its
truth; a tiny ESMM (tests/small_world.write_small_config) on deterministic ops.
"""

import glob
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from configs import config as config_lib
from features import success_marker
from pipeline import cli
from pipeline import daily
from pipeline import daily_state
from serving import versions
from tests import small_world
from tests import test_entry_points as entry
from training import day_window

DAYS = ("2026-01-01", "2026-01-02", "2026-01-03")
START, END = DAYS[1], DAYS[2]
STEPS, EPOCHS = 10, 2


def write_daily_world(root: str) -> str:
  """pipeline.simulate's flat world split into RAW/{impressions,events}/<day>/; returns RAW
  (with truth/ and world.json)."""
  flat, raw = os.path.join(root, "flat"), os.path.join(root, "raw")
  subprocess.run([sys.executable, "-m", "pipeline.simulate", f"--output={flat}",
                  "--impressions=900", f"--days={len(DAYS)}", "--seed=3"], check=True,
                 cwd=small_world.REPO, env=small_world.subprocess_env(),
                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  for kind in ("impressions", "events"):
    by_day = {}
    for path in sorted(glob.glob(os.path.join(flat, kind, "*.jsonl.gz"))):
      with gzip.open(path, "rt") as f:
        for line in f:
          day = config_lib.utc_iso(json.loads(line)["timestamp"])[:10]
          by_day.setdefault(day, []).append(line)
    for day, lines in by_day.items():
      os.makedirs(os.path.join(raw, kind, day))
      with gzip.open(os.path.join(raw, kind, day, "part.jsonl.gz"), "wt") as f:
        f.writelines(lines)
  shutil.copytree(os.path.join(flat, "truth"), os.path.join(raw, "truth"))
  shutil.copy(os.path.join(flat, "world.json"), raw)
  return raw


def write_config(path: str) -> str:
  """The small experiment YAML, on deterministic ops (reruns give the same model)."""
  small_world.write_small_config(path, steps_per_epoch=STEPS, epochs=EPOCHS)
  with open(path) as f:
    text = f.read()
  with open(path, "w") as f:
    f.write(text.replace("learning_rate: 0.005}", "learning_rate: 0.005,\n"
                         "        deterministic_ops: true}") + "data: {train_shards: 2}\n")
  assert config_lib.load_config(path).train.deterministic_ops
  return path


def loop_args(raw: str, workdir: str, config: str, start: str = START, end: str = END):
  return ["--raw", raw, "--workdir", workdir, "--config", config, "--start", start,
          "--end", end, "--history_days", "2", "--validation_fraction", "0.2"]


def count_records(pattern: str) -> int:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  files = sorted(glob.glob(pattern))
  assert files, pattern
  return sum(1 for _ in tf.data.TFRecordDataset(files, compression_type="GZIP"))


def shard_digests(workdir: str):
  """day -> relative path -> sha256 of every data file a day's job wrote (the
  Examples, state, dead letters, transform artifacts)."""
  digests = {}
  for day_dir in sorted(glob.glob(os.path.join(workdir, "days", "*"))):
    files = {}
    for folder in ("train", "updates", "closed", "state", "dead_letter", "transform"):
      for path in sorted(glob.glob(os.path.join(day_dir, folder, "**", "*"), recursive=True)):
        if os.path.isfile(path):
          with open(path, "rb") as f:
            files[os.path.relpath(path, day_dir)] = hashlib.sha256(f.read()).hexdigest()
    digests[os.path.basename(day_dir)] = files
  return digests


def relative_files(workdir: str):
  """Every file under WORKDIR, sorted, with the names that hold a time (TensorBoard event
  files, the trainer's export version) made generic (so a name can repeat)."""
  names = []
  for directory, _, files in os.walk(workdir):
    for name in files:
      relative = os.path.relpath(os.path.join(directory, name), workdir)
      relative = re.sub(r"events\.out\.tfevents\.[^/]*$", "<events>", relative)
      relative = re.sub(r"/export/\d+/", "/export/<v>/", relative)
      names.append(relative)
  return sorted(names)


def without_times(row):
  return {k: v for k, v in row.items() if not k.endswith(("_wall_s", "_cpu_s"))}


# ---- no TensorFlow, no Beam: settings, view, versions, leftovers, rows ----


@pytest.mark.parametrize("case", ["reversed", "bad_date", "missing_day", "long_history",
                                  "config_typo"])
def test_a_user_error_is_one_line_before_tensorflow(case, tmp_path):
  raw = tmp_path / "raw"
  for kind in ("impressions", "events"):
    for day in DAYS:
      (raw / kind / day).mkdir(parents=True)
  config = small_world.write_small_config(str(tmp_path / "small.yaml"))
  args = {"--raw": str(raw), "--workdir": str(tmp_path / "work"), "--config": config,
          "--start": START, "--end": END}
  expected = {"reversed": "--end 2026-01-02 is before --start 2026-01-03",
              "bad_date": "--start '2026-01-32': must be a date YYYY-MM-DD",
              "missing_day": "no events/<day> folder for 2026-01-04",
              "long_history": "--history_days 8 is longer than data.vocabulary_window_days 7",
              "config_typo": "lerning_rate"}[case]
  if case == "reversed":
    args.update({"--start": END, "--end": START})
  elif case == "bad_date":
    args["--start"] = "2026-01-32"
  elif case == "missing_day":
    (raw / "impressions" / "2026-01-04").mkdir()
    args["--end"] = "2026-01-04"
  elif case == "long_history":
    for kind in ("impressions", "events"):
      for day in daily.day_range("2025-12-26", "2025-12-31"):
        (raw / kind / day).mkdir()
    args["--history_days"] = "8"
  else:
    (tmp_path / "typo.yaml").write_text(f"base: {config}\ntrain: {{lerning_rate: 0.1}}\n")
    args["--config"] = str(tmp_path / "typo.yaml")
  result = entry.run(entry.module_command("daily", *[x for kv in args.items() for x in kv]),
                     str(tmp_path), env=entry.IMPORT_TIMES)
  entry.assert_one_error_line(result, expected)
  modules, _ = entry.split_import_lines(result.stderr)
  assert "tensorflow" not in modules and "apache_beam" not in modules
  assert not (tmp_path / "work").exists()


def _fake_day(root, day, train_records, counts):
  """A day folder as pipeline.preprocess --day writes one (shards hold raw bytes)."""
  day_dir = root / day
  (day_dir / "train").mkdir(parents=True)
  for shard, payload in enumerate(train_records):
    (day_dir / "train" / f"train-0000{shard}-of-00002.tfrecord.gz").write_bytes(payload)
  (day_dir / "train" / "train-00000-of-00002.tfrecord.gz.tmp-dead").write_bytes(b"half")
  (day_dir / "transform" / "vocab").mkdir(parents=True)
  (day_dir / "transform" / "vocab" / "device.txt").write_text(f"{day}\n")
  (day_dir / "feature_spec.yaml").write_text(f"# {day}\n")
  (day_dir / "labels.json").write_text('["click", "purchase"]')
  (day_dir / "counts.json").write_text(json.dumps(counts))
  success_marker.write_success_marker(str(day_dir), counts)
  return str(day_dir)


def test_a_window_view_is_every_days_shards_and_the_newest_days_artifacts(tmp_path):
  first = _fake_day(tmp_path / "days", DAYS[0], [b"a0", b"a1"], {
      "impressions": {"read": 5, "written": {"train": 4, "eval": 0}, "dead_letter": {"x": 1}},
      "labels": {"train": {"click": 2}}, "note": "old"})
  second = _fake_day(tmp_path / "days", DAYS[1], [b"b0", b"b1"], {
      "impressions": {"read": 7, "written": {"train": 7, "eval": 0}, "dead_letter": {}},
      "labels": {"train": {"click": 3, "purchase": 1}}, "note": "new"})
  view = str(tmp_path / "view")
  os.makedirs(os.path.join(view, "train"))
  (tmp_path / "view" / "train" / "train-stale.tfrecord.gz").write_bytes(b"stale")
  counts = day_window.write_window_view(view, [first, second])
  assert counts == {"impressions": {"read": 12, "written": {"train": 11, "eval": 0},
                                    "dead_letter": {"x": 1}},
                    "labels": {"train": {"click": 5, "purchase": 1}}, "note": "new"}
  shards = sorted(glob.glob(os.path.join(view, "train", "train-*.tfrecord.gz")))
  contents = [open(path, "rb").read() for path in shards]
  assert contents == [b"a0", b"a1", b"b0", b"b1"]
  assert all(os.path.islink(path) for path in shards)
  with open(os.path.join(view, "transform", "vocab", "device.txt")) as f:
    assert f.read() == f"{DAYS[1]}\n"
  assert success_marker.check_success_marker(view)["counts"] == counts
  with pytest.raises(success_marker.IncompleteOutputError):
    os.remove(os.path.join(second, success_marker.MARKER_FILE))
    day_window.write_window_view(view, [first, second])


def _fake_version(path):
  for part, is_dir in versions.REQUIRED_PARTS:
    target = os.path.join(path, part)
    os.makedirs(target if is_dir else os.path.dirname(target), exist_ok=True)
    if not is_dir:
      with open(target, "w") as f:
        f.write(path)


def test_versions_appear_whole_and_a_run_removes_what_a_killed_run_left(tmp_path):
  layout = daily_state.Layout(str(tmp_path / "work"))
  for day in DAYS[:2]:
    _fake_version(str(tmp_path / "export" / day))
    daily.publish_version(str(tmp_path / "export" / day), layout.version_dir(day))
  assert versions.list_versions(layout.serving).complete == [20260101, 20260102]
  assert versions.newest_complete_version(layout.serving) == layout.version_dir(DAYS[1])
  # Republishing a version replaces it whole; the source's files are linked, not copied.
  daily.publish_version(str(tmp_path / "export" / DAYS[0]), layout.version_dir(DAYS[1]))
  pb = os.path.join(layout.version_dir(DAYS[1]), versions.SAVED_MODEL_FILE)
  with open(pb) as f:
    assert f.read().endswith(DAYS[0])
  assert os.path.samefile(pb, os.path.join(tmp_path, "export", DAYS[0],
                                           versions.SAVED_MODEL_FILE))
  # What a killed run leaves: a half-copied version, a day, model and view without their
  # stage record, a temporary record; finished ones stay.
  half = f"{layout.version_dir(DAYS[2])}.tmp-0a1b"
  os.makedirs(os.path.join(half, "variables"))
  assert versions.newest_complete_version(layout.serving) == layout.version_dir(DAYS[1])
  daily_state.write_record(layout, DAYS[0], "preprocess", {"done": True})
  daily_state.write_record(layout, DAYS[0], "train", {"done": True})
  kept = [layout.day_dir(DAYS[0]), layout.model_dir(DAYS[0])]
  stale = [half, layout.day_dir(DAYS[1]), layout.model_dir(DAYS[1]),
           layout.history_dir(DAYS[1]), layout.record(DAYS[1], "train") + ".tmp-77"]
  for path in kept + stale[1:-1]:
    os.makedirs(os.path.join(path, "train"))
  os.makedirs(os.path.dirname(stale[-1]))
  open(stale[-1], "w").close()
  assert sorted(daily_state.remove_leftovers(layout)) == sorted(stale)
  assert all(os.path.exists(path) for path in kept)
  assert not any(os.path.lexists(path) for path in stale)
  # Two loops on one WORKDIR: the second is refused.
  with daily_state.workdir_lock(layout):
    with pytest.raises(cli.UserError, match="another pipeline.daily runs in it"):
      with daily_state.workdir_lock(layout):
        pass
  with daily_state.workdir_lock(layout):  # released
    pass


def test_a_row_has_every_column_once_and_prints_missing_values_as_dashes():
  counts = {"impressions": {"read": 10, "written": {"train": 9}, "dead_letter": {"bad": 1}},
            "events": {"read": 4, "attributed": 3, "dead_letter": {"dup": 1}},
            "state": {"updated": 2, "closed": 1, "open_out": 8}}
  cost = {"wall_s": 2.0, "cpu_s": 1.5}
  records = {"preprocess": {"counts": counts, **cost},
             "train": {"mode": "warm", "trained_on": [END], "metrics": {
                 "train_examples": 7, "validation_examples": 2, "final_step": 40,
                 "calibration": {"method": "ips_ctr"}}, **cost},
             "export": {"version": 20260103, **cost},
             "evaluate": {"eval_day": None, "examples": None, "tasks": None, **cost}}
  row = daily_state.make_row(END, records)
  assert tuple(row) == daily_state.COLUMNS
  assert row["impressions_dead_letter"] == 1 and row["events_dead_letter"] == 1
  assert row["ctr_auc"] is None and row["calibration"] == "ips_ctr"
  line = daily_state.format_row(row).split()
  assert line[:4] == [END, "warm", "7", "-"] and line[-1] == "6.0"  # 4 stages x 1.5 CPU s
  assert len(line) == len(daily_state.format_header().split())


# ---- end to end: Beam, training, export, evaluation ----


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """The loop run as a team runs it every day, uninterrupted, in-process: on day 2 (RAW
  has days 1-2 yet: history, first model, no evaluation), then on day 3 when its logs
  have arrived (day 2's model is evaluated now, day 3's trained). {"raw", "config",
  "work", "before_end": a copy of WORK as day 2's run left it, "first", "rows": the
  table, "printed"}."""
  root = str(tmp_path_factory.mktemp("daily"))
  raw = write_daily_world(root)
  config = write_config(os.path.join(root, "small.yaml"))
  later = os.path.join(root, "not_yet")
  for kind in ("impressions", "events"):
    os.makedirs(os.path.join(later, kind))
    shutil.move(os.path.join(raw, kind, END), os.path.join(later, kind, END))
  work = os.path.join(root, "reference")
  printed = io.StringIO()
  first = daily.run(loop_args(raw, work, config, START, START), out=printed)
  before_end = os.path.join(root, "before_end")
  shutil.copytree(work, before_end, symlinks=True)
  for kind in ("impressions", "events"):  # day 3's logs arrive
    shutil.move(os.path.join(later, kind, END), os.path.join(raw, kind, END))
  daily.run(loop_args(raw, work, config, END, END), out=printed)
  return {"raw": raw, "config": config, "work": work, "before_end": before_end,
          "first": first,
          "rows": daily_state.read_table(daily_state.Layout(work).table),
          "printed": printed.getvalue()}


@pytest.mark.slow
def test_each_day_trains_exports_and_evaluates_on_the_next(reference):
  work, rows = reference["work"], reference["rows"]
  layout = daily_state.Layout(work)
  scratch, warm = rows
  assert (scratch["day"], scratch["mode"], scratch["trained_on"]) == (START, "scratch",
                                                                      list(DAYS[:2]))
  assert (warm["day"], warm["mode"], warm["trained_on"]) == (END, "warm", [END])
  history = count_records(os.path.join(layout.day_dir(DAYS[0]), "train", "*")) + count_records(
      os.path.join(layout.day_dir(DAYS[1]), "train", "*"))
  assert scratch["train_examples"] + scratch["validation_examples"] == history
  assert warm["train_examples"] + warm["validation_examples"] == count_records(
      os.path.join(layout.day_dir(END), "train", "*"))
  assert 0 < scratch["validation_examples"] < history / 2
  # The warm model continues the earlier optimizer's step count.
  assert (scratch["final_step"], warm["final_step"]) == (EPOCHS * STEPS, 2 * EPOCHS * STEPS)
  assert daily_state.read_record(layout, END, "train")["warm_start_from"] == layout.model_dir(START)
  # Day 2's model is scored on day 3's new impressions against the truth in RAW; RAW has
  # no day 4, so day 3's model is not evaluated (yet).
  assert scratch["eval_day"] == END and scratch["eval_examples"] == count_records(
      os.path.join(layout.day_dir(END), "train", "*"))
  with open(layout.eval_report(START)) as f:
    report = json.load(f)
  assert report["truth"]["matched"] == scratch["eval_examples"]
  assert scratch["ctr_auc"] == report["tasks"]["ctr"]["auc"]
  assert scratch["ctr_auc_gap"] == report["tasks"]["ctr"]["truth"]["auc_gap"]
  assert warm["eval_day"] is None and warm["ctr_auc"] is None
  assert versions.list_versions(layout.serving).complete == [20260102, 20260103]
  assert versions.newest_complete_version(layout.serving) == layout.version_dir(END)
  assert all(row[f"{stage}_cpu_s"] > 0 for row in rows for stage in ("preprocess", "train"))
  # Day 2's row was printed without an evaluation, then again with it on day 3.
  assert reference["first"][0]["eval_day"] is None
  assert without_times(reference["first"][0]) == without_times(
      {**scratch, **daily_state.metric_columns(None), "eval_day": None, "eval_examples": None})
  assert [line.split()[0] for line in reference["printed"].splitlines()] == [
      "day", START, "day", START, END]
  # The whole range at once: every stage is skipped, the rows are the same.
  records = sorted(glob.glob(os.path.join(work, "stages", "*", "*.json")))
  stamps = [os.stat(path).st_mtime_ns for path in records]
  again = daily.run(loop_args(reference["raw"], work, reference["config"]), out=io.StringIO())
  assert again == rows == daily_state.read_table(layout.table)
  assert [os.stat(path).st_mtime_ns for path in records] == stamps


def _kill_when(command, started, log_path, timeout_s=600):
  """Runs COMMAND until started() holds, then SIGKILLs it; fails if it ends first."""
  with open(log_path, "w") as log:
    process = subprocess.Popen(command, cwd=small_world.REPO, env=small_world.subprocess_env(),
                               stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + timeout_s
    while not started():
      if process.poll() is not None or time.time() > deadline:
        process.kill()
        process.wait()
        with open(log_path) as f:
          pytest.fail(f"the stage never started (exit {process.returncode}): {f.read()[-3000:]}")
      time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()


@pytest.mark.slow
def test_a_run_killed_in_beam_then_in_training_ends_as_an_uninterrupted_one(reference,
                                                                             tmp_path):
  """Day 3's run (`--start D --end D`, on WORK as day 2's run left it, as in
  `reference`): SIGKILL while its Beam job writes, rerun; SIGKILL while its model trains
  (warm), rerun; the last rerun completes: same data, metrics and files as `reference`."""
  work = str(tmp_path / "killed")
  shutil.copytree(reference["before_end"], work, symlinks=True)
  layout = daily_state.Layout(work)
  command = [sys.executable, "-m", "pipeline.daily",
             *loop_args(reference["raw"], work, reference["config"], END, END)]
  day3 = layout.day_dir(END)

  def beam_writing():
    return any(glob.glob(os.path.join(day3, folder, "*"))
               for folder in ("train", "updates", "closed", "state", "dead_letter"))

  _kill_when(command, beam_writing, str(tmp_path / "first.log"))
  assert daily_state.read_record(layout, END, "preprocess") is None
  assert not os.path.exists(success_marker.marker_path(day3))
  _kill_when(command, lambda: os.path.isdir(os.path.join(layout.model_dir(END), "logs")),
             str(tmp_path / "second.log"))
  assert daily_state.read_record(layout, END, "preprocess") is not None
  assert daily_state.read_record(layout, END, "train") is None
  # Meanwhile the serving base serves day 2's version, complete.
  assert versions.newest_complete_version(layout.serving) == layout.version_dir(START)
  # The last rerun in this process (the same command's code, daily.run; this process has
  # TensorFlow and Beam loaded already).
  daily.run(command[3:], out=io.StringIO())

  assert shard_digests(work) == shard_digests(reference["work"])
  rows = daily_state.read_table(layout.table)
  assert [without_times(row) for row in rows] == [
      without_times(row) for row in reference["rows"]]
  assert relative_files(work) == relative_files(reference["work"])
  leftovers = [name for name in relative_files(work) if ".tmp" in name or "beam-temp" in name]
  assert not leftovers
  assert versions.list_versions(layout.serving).incomplete == {}


# ---- delayed feedback: a day's stream from the stored outputs (issue 31) ----


@pytest.mark.slow
def test_a_days_feedback_stream_feeds_the_models_from_the_stored_outputs(reference):
  """Day 3's ES-DFM stream (c = 1 h) read from `reference`'s outputs: every sample once,
  parsed with the day's spec, its labels and kinds those of feedback_days.day_stream on
  the same rows, f_dp the auxiliary scorer's; FNW's stream trains ESMM's objective; the
  auxiliary classifier's labels are 1[c < d <= W] of day 2's closed rows (numpy)."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import tensorflow as tf
  from features import artifacts as artifacts_lib
  from models import registry
  from training import feedback_data
  from training import feedback_inputs
  from training import feedback_objective
  from training import feedback_streams
  from transforms import outputs as outputs_lib
  # pylint: enable=g-import-not-at-top
  layout = daily_state.Layout(reference["work"])
  day_dir = layout.day_dir(END)
  config = config_lib.load_config(reference["config"])
  spec = config.load_feature_spec()
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(day_dir))
  window, attribution = 3600.0, float(config.data.attribution_window_s)
  auxiliary = registry.build_model(config_lib.config_from_dict(
      {"feature_spec": config.feature_spec_path, "model": {"name": "naive",
                                                          "embedding_dim": 4,
                                                          "tower_units": [8]}}),
                                   spec, artifacts)
  f_dp = feedback_inputs.f_dp_function(auxiliary.scorer)
  esdfm = feedback_streams.StreamConfig("esdfm", attribution, window)
  _, stream = feedback_inputs.day_stream(day_dir, esdfm)
  batches = list(feedback_inputs.stream_dataset(day_dir, esdfm, spec, 64, f_dp=f_dp))
  labels = {k: np.concatenate([b[1][k].numpy() for b in batches]) for k in batches[0][1]}
  assert len(labels["click"]) == len(stream) > 0
  # Samples come output by output in stored order; within an output, by row.
  outputs = list(feedback_inputs.day_patterns(day_dir, "esdfm"))  # read once, not per sample
  expected = sorted(zip(stream.output, stream.row, stream.click, stream.conversion,
                        stream.kind), key=lambda s: (outputs.index(s[0]), s[1]))
  np.testing.assert_array_equal(labels["click"], [s[2] for s in expected])
  np.testing.assert_array_equal(labels["purchase"], [s[3] for s in expected])
  np.testing.assert_array_equal(labels["trains_click"],
                                [float(s[4] == "exposure") for s in expected])
  assert set(stream.kind) >= {"exposure", "observed"}
  first_features = batches[0][0]
  np.testing.assert_allclose(labels["f_dp"][:len(first_features["user_id"])],
                             f_dp(first_features).numpy(), rtol=1e-6)
  # FNW's stream trains ESMM's objective (one batch's loss; the objective's numbers are
  # tests/test_feedback_objective.py's).
  esmm = feedback_objective.feedback_model(registry.build_model(config, spec, artifacts),
                                           "fnw")
  fnw = feedback_streams.StreamConfig("fnw", attribution)
  batch = next(iter(feedback_inputs.stream_dataset(day_dir, fnw, spec, 256)))
  assert np.isfinite(esmm.compute_loss(batch).numpy())
  # The auxiliary classifier's examples: day 2's closed rows that were clicked.
  before = layout.day_dir(START)
  rows = feedback_data.read_rows(
      outputs_lib.OutputPaths(before).examples_pattern(outputs_lib.CLOSED))
  clicked = rows["click_timestamp"] >= 0
  delay = rows["purchase_timestamp"] - rows["click_timestamp"]
  expected_labels = ((rows["purchase_timestamp"] >= 0) & (delay > window)
                     & (delay <= attribution))[clicked]
  closed = feedback_inputs.closed_labels([before], window, attribution)
  found = np.concatenate([y["purchase"].numpy() for _, y in
                          feedback_inputs.delayed_positive_dataset(closed, spec, 128)])
  np.testing.assert_array_equal(found, expected_labels.astype(np.float32))
  assert len(found) == clicked.sum() and 0 < found.sum() < len(found)
  # ... and its counts (the classifier's metrics.json) from the label columns alone.
  assert feedback_inputs.delayed_positive_counts(closed) == (len(found), int(found.sum()))


@pytest.mark.slow
def test_a_feedback_method_trains_each_day_on_its_stream_and_serves_the_final_rate(
    reference, tmp_path):
  """pipeline.daily with a config's feedback.method (FNC), on a copy of the reference WORK
  whose days are preprocessed (their stage records kept, the later stages' removed: the
  loop redoes them): the first model trains from scratch on the streams of the 2 history
  days, the second warm on day 3's; metrics.json counts each day's stream as
  feedback_inputs.day_stream builds it; the served version outputs FNC's r = q / (1 - q)
  of the trained ctcvr q (its warm-start state rebuilt here, numpy) and cvr = min(r / ctr,
  1); day 2's version is evaluated on day 3."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import tensorflow as tf
  from features import artifacts as artifacts_lib
  from features import parsing
  from models import registry
  from training import export as export_lib
  from training import feedback_inputs
  from training import feedback_objective
  from training import feedback_training
  from training import warm_start
  # pylint: enable=g-import-not-at-top
  work = str(tmp_path / "fnc")
  shutil.copytree(reference["work"], work, symlinks=True)
  for stage in ("train", "export", "evaluate"):
    for path in glob.glob(os.path.join(work, "stages", "*", f"{stage}.json")):
      os.remove(path)
  steps = 4
  config = str(tmp_path / "fnc.yaml")
  with open(config, "w") as f:
    f.write(f"base: {reference['config']}\n"
            f"train: {{steps_per_epoch: {steps}, epochs: 1, calibration: none,\n"
            "        early_stopping_patience: 0}\nfeedback: {method: fnc}\n")
  rows = daily.run(loop_args(reference["raw"], work, config), out=io.StringIO())
  layout = daily_state.Layout(work)
  scratch, warm = rows
  assert (scratch["mode"], scratch["trained_on"], warm["mode"], warm["trained_on"]) == (
      "scratch", list(DAYS[:2]), "warm", [END])
  assert (scratch["final_step"], warm["final_step"]) == (steps, 2 * steps)
  loaded = config_lib.load_config(config)
  method = feedback_training.stream_config(loaded)
  for day, trained in ((START, DAYS[:2]), (END, [END])):
    with open(os.path.join(layout.model_dir(day), "metrics.json")) as f:
      metrics = json.load(f)
    assert metrics["feedback"]["method"] == "fnc"
    assert [part["samples"] for part in metrics["stream"]] == [
        len(feedback_inputs.day_stream(layout.day_dir(d), method)[1]) for d in trained]
    assert metrics["train_examples"] == sum(part["samples"] for part in metrics["stream"])
  assert scratch["eval_day"] == END and 0 < scratch["ctr_auc"] <= 1
  # The served rate against the trained model, rebuilt from its warm-start state.
  spec = loaded.load_feature_spec()
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(layout.day_dir(END)))
  state = warm_start.load_state(layout.model_dir(END))
  model = feedback_objective.feedback_model(
      registry.build_model(loaded, spec, state.with_its_statistics(artifacts)), "fnc")
  state.restore(model)
  examples = [r.numpy() for r in tf.data.TFRecordDataset(
      sorted(glob.glob(os.path.join(layout.day_dir(END), "train", "*"))),
      compression_type="GZIP").take(64)]
  served = tf.saved_model.load(layout.version_dir(END)).signatures[
      export_lib.SERVING_DEFAULT](examples=tf.constant(examples))
  features, _ = parsing.parse_examples(tf.constant(examples), spec, label_names=[])
  trained = {k: v.numpy().astype(np.float64).ravel()
             for k, v in model.scorer(features, training=False).items()}
  q = np.minimum(trained["ctcvr"], (1 - 1e-7) / 2)
  np.testing.assert_allclose(served["ctcvr"].numpy().ravel(), q / (1 - q), rtol=1e-5)
  np.testing.assert_allclose(served["cvr"].numpy().ravel(),
                             np.minimum(q / (1 - q) / trained["ctr"], 1.0), rtol=1e-5)
  np.testing.assert_allclose(served["ctr"].numpy().ravel(), trained["ctr"], rtol=1e-5)


@pytest.mark.slow
def test_dfm_and_the_oracle_read_their_labels_from_the_days_and_the_outcomes(reference,
                                                                             tmp_path):
  """DFM's input of day 3 holds day 3's exposures and day 2's clicks, the latter with the
  final labels of day 3's closed/ (W is one day: day 2's impressions all close on day 3)
  and their delays or elapsed times; a DFM model trains on it and exports p as its cvr
  (its delay head carried in the warm-start state, not served). The oracle's stream has
  the final labels of the simulator's outcomes file (written here). This world's
  purchases arrive within hours, so no label of day 2 changes on day 3: the merging of
  later days' updates is tests/test_feedback_days.py's."""
  # pylint: disable=g-import-not-at-top
  import numpy as np
  import tensorflow as tf
  from simulation import truth as truth_lib
  from training import feedback_data
  from training import feedback_inputs
  from training import feedback_objective
  from training import feedback_streams
  from training import feedback_training
  from training import warm_start
  from transforms import outputs as outputs_lib
  # pylint: enable=g-import-not-at-top
  layout = daily_state.Layout(reference["work"])
  day_dir = layout.day_dir(END)
  attribution = float(config_lib.load_config(reference["config"]).data.attribution_window_s)
  patterns, stream = feedback_inputs.day_stream(
      day_dir, feedback_streams.StreamConfig("dfm", attribution))
  assert set(patterns) == {"train", "day-1"}
  closed = feedback_data.read_rows(
      outputs_lib.OutputPaths(day_dir).examples_pattern(outputs_lib.CLOSED))
  earlier = feedback_data.read_rows(patterns["day-1"])
  final = dict(zip(closed["impression_id"], zip(closed["click_timestamp"],
                                                closed["purchase_timestamp"])))
  observed = stream.kind == "observed"
  assert set(stream.output[observed]) == {"day-1"}
  assert observed.sum() == (earlier["click_timestamp"] >= 0).sum() > 0
  as_of = feedback_inputs.read_day(day_dir)["as_of"]
  for row, label, elapsed in zip(stream.row[observed], stream.conversion[observed],
                                 stream.elapsed[observed]):
    click, purchase = final[earlier["impression_id"][row]]
    assert label == int(purchase >= 0)
    assert elapsed == (purchase - click if purchase >= 0 else as_of - click)
  assert stream.conversion[observed].sum() > 0
  today = feedback_data.read_rows(patterns["train"])
  assert (stream.kind == "exposure").sum() == len(today["impression_id"])

  config = str(tmp_path / "dfm.yaml")
  with open(config, "w") as f:
    f.write(f"base: {reference['config']}\n"
            "train: {steps_per_epoch: 2, epochs: 1, calibration: none,\n"
            "        early_stopping_patience: 0}\nfeedback: {method: dfm}\n")
  loaded = config_lib.load_config(config)
  result = feedback_training.train_on_streams(loaded, [day_dir], str(tmp_path / "model"))
  assert result.metrics["stream"][0]["kinds"] == {
      "exposure": int((stream.kind == "exposure").sum()), "observed": int(observed.sum())}
  assert result.metrics["final_step"] == 2
  assert any(feedback_objective.DELAY_OUTPUT in path for path in
             warm_start.load_state(str(tmp_path / "model")).weights)
  served = tf.saved_model.load(result.export_dir).signatures["serving_default"](
      examples=tf.constant([r.numpy() for r in tf.data.TFRecordDataset(
          sorted(glob.glob(patterns["train"])), compression_type="GZIP").take(16)]))
  assert set(served) >= {"ctr", "cvr", "ctcvr"} and (
      feedback_objective.DELAY_OUTPUT not in served)

  # The oracle: vanilla's samples with the outcomes' final labels (a third flipped here,
  # so that they differ from the labels at the snapshot).
  clicked = today["click_timestamp"] >= 0
  flipped = np.where(np.arange(len(clicked)) % 3 == 0, today["purchase_timestamp"] < 0,
                     today["purchase_timestamp"] >= 0) & clicked
  outcomes = str(tmp_path / "truth" / truth_lib.OUTCOMES_FILE)
  os.makedirs(os.path.dirname(outcomes))
  truth_lib.write_outcomes(
      outcomes, today["impression_id"], today["timestamp"],
      np.where(clicked, today["click_timestamp"], 0),
      np.where(flipped, today["timestamp"] + 60, 0), np.zeros(len(clicked), bool),
      int(attribution))
  labels = feedback_inputs.final_labels_of(str(tmp_path))
  _, oracle = feedback_inputs.day_stream(
      day_dir, feedback_streams.StreamConfig("oracle", attribution), final_labels=labels)
  assert set(oracle.kind) == {"exposure"} and len(oracle) == len(clicked)
  np.testing.assert_array_equal(oracle.conversion[np.argsort(oracle.row)],
                                flipped.astype(np.int64))
  with pytest.raises(ValueError, match="needs the final labels"):
    feedback_inputs.day_stream(day_dir, feedback_streams.StreamConfig("oracle", attribution))
