"""The command-line entry points speak like one tool (pipeline/cli.py; issues 29 and 33).

Each entry point, run as a subprocess from a folder that holds `models/`, `features/` and
`configs/` folders of its own (as runs/demo/ does), turns a user error into ONE line on
stderr, `error: <what and where>`, exit status 2: no traceback (unless --verbose), no
TensorFlow C++ start-up lines, no google.api_core FutureWarning. The same runs prove the
project's packages are not shadowed by those folders (a shadowed import fails with an
AttributeError / ImportError traceback long before the expected error), both under
`python -m pipeline.<step>` and under the console scripts `cvr-<step>`.
"""

import json
import os
import re
import subprocess
import sys

import pytest

from configs import config as config_lib
from features import success_marker
from pipeline import cli
from transforms import errors

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.dirname(sys.executable)
STEPS = ("init", "simulate", "preprocess", "train", "evaluate", "predict", "demo", "daily")
# The noise every command printed before (issue 29).
NOISE = ("Traceback", "Unable to register", "FutureWarning", "cuda_")


def _env() -> dict:
  # As `make` exports it: level 2 still let the cuFFT/cuDNN/cuBLAS errors through.
  env = {k: v for k, v in os.environ.items()
         if k not in ("PYTHONWARNINGS", "PYTHONSAFEPATH", "PYTHONPATH")}
  env.update(TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONHASHSEED="0")
  return env


def shadowing_folder(root, with_init: bool, pipeline: bool = True) -> str:
  """A working directory with models/, features/, configs/ (and pipeline/) of its own.

  `python -m pipeline.x` itself needs the working directory's `pipeline/`, if any, to be
  a namespace folder (the console scripts do not care).
  """
  folder = root / ("with_init" if with_init else "namespace")
  for name in ("models", "features", "configs") + (("pipeline",) if pipeline else ()):
    (folder / name).mkdir(parents=True)
    if with_init:
      (folder / name / "__init__.py").write_text("SHADOW = True\n")
  return str(folder)


def run(command, cwd, timeout=300, env=None) -> subprocess.CompletedProcess:
  return subprocess.run(command, cwd=cwd, env={**_env(), **(env or {})}, capture_output=True,
                        text=True, timeout=timeout, check=False)


# With PYTHONPROFILEIMPORTTIME=1 Python writes one `import time: ... | <module>` line per
# import to stderr: which heavy libraries a run loaded.
IMPORT_TIMES = {"PYTHONPROFILEIMPORTTIME": "1"}
_IMPORT_LINE = re.compile(r"^import time:\s+[^|]*\|[^|]*\|\s*(\S+)\s*$")


def split_import_lines(stderr: str):
  """(modules imported, the other stderr lines) of a run with IMPORT_TIMES."""
  modules, other = set(), []
  for line in stderr.splitlines():
    match = _IMPORT_LINE.match(line)
    if match:
      modules.add(match.group(1))
    elif not line.startswith("import time:"):
      other.append(line)
  return modules, other


def module_command(step: str, *args: str) -> list:
  return [sys.executable, "-m", f"pipeline.{step}", *args]


def script_command(step: str, *args: str) -> list:
  return [os.path.join(SCRIPTS, f"cvr-{step}"), *args]


def _bad_config(tmp_path) -> str:
  path = tmp_path / "typo.yaml"
  path.write_text(f"base: {REPO}/configs/esmm.yaml\ntrain:\n  lerning_rate: 0.1\n")
  return str(path)


def user_error_case(step: str, tmp_path):
  """(arguments, the text the one error line must contain) of a typical mistake per step."""
  missing = str(tmp_path / "missing")
  if step == "init":  # logs that are not there
    return ["--impressions", f"{missing}/*.jsonl", "--events", f"{missing}/*.jsonl", "--out",
            str(tmp_path / "exp")], f"--impressions {missing}/*.jsonl"
  if step == "simulate":  # an impossible date
    return ["--output", str(tmp_path / "raw"), "--start_date", "2026-13-01"], "start_date"
  if step == "preprocess":  # a near-miss of --eval_from, once silently dropped by Beam
    return ["--impressions", missing, "--events", missing, "--output", missing,
            "--eval_form", "2026-03-02"], "did you mean --eval_from?"
  if step == "train":  # a config path relative to the project, data that is not there
    return ["--config", "configs/esmm.yaml", "--data", missing, "--model_dir",
            str(tmp_path / "model")], f"--data {missing}: no such directory"
  if step == "evaluate":
    return ["--saved_model", f"esmm={missing}", "--data", missing, "--output_dir",
            str(tmp_path / "metrics")], missing
  if step == "predict":
    (tmp_path / "in.jsonl").write_text("{}\n")
    return ["--saved_model", missing, "--input", str(tmp_path / "in.jsonl"), "--output",
            str(tmp_path / "out.jsonl")], missing
  if step == "daily":  # days the wrong way round
    return ["--raw", missing, "--workdir", str(tmp_path / "work"), "--config",
            "configs/esmm_daily.yaml", "--start", "2026-01-05", "--end", "2026-01-02"], "--end"
  assert step == "demo"
  return ["--workdir", str(tmp_path / "demo"), "--models", "esmm,esnn"], "--models esnn"


def assert_one_error_line(result: subprocess.CompletedProcess, expected: str) -> None:
  _, lines = split_import_lines(result.stderr)
  assert result.returncode == cli.USER_ERROR_EXIT, result.stderr[-3000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), lines
  assert expected in lines[0], lines[0]
  for noise in NOISE:
    assert noise not in "\n".join(lines) + result.stdout, noise


@pytest.mark.parametrize("step", STEPS)
def test_a_user_error_is_one_line_from_a_shadowing_folder(step, tmp_path):
  """... and is found before TensorFlow is imported (Beam only for preprocess's unknown
  flag: its option list names the flags it may pass on)."""
  args, expected = user_error_case(step, tmp_path)
  result = run(module_command(step, *args), shadowing_folder(tmp_path, with_init=False),
               env=IMPORT_TIMES)
  assert_one_error_line(result, expected)
  modules, _ = split_import_lines(result.stderr)
  assert "tensorflow" not in modules
  assert ("apache_beam" in modules) == (step == "preprocess")


@pytest.mark.parametrize("step", ["train", "evaluate"])
def test_local_data_without_a_success_marker_is_refused_before_tensorflow(step, tmp_path):
  """features/success_marker.py checks a local folder with os: pipeline.train / evaluate
  refuse data pipeline.preprocess did not finish before they import TensorFlow."""
  data = tmp_path / "data"
  data.mkdir()
  args = {"train": ["--data", str(data), "--model_dir", str(tmp_path / "model")],
          "evaluate": ["--saved_model", str(tmp_path), "--data", str(data), "--output",
                       str(tmp_path / "metrics.json")]}[step]
  result = run(module_command(step, *args), REPO, env=IMPORT_TIMES)
  assert_one_error_line(result, f"{data} has no _SUCCESS.json")
  assert "tensorflow" not in split_import_lines(result.stderr)[0]


@pytest.mark.parametrize("step", ["predict", "evaluate"])
def test_a_local_export_without_a_complete_version_is_refused_before_tensorflow(step,
                                                                                  tmp_path):
  """serving/versions.py reads a local export base with os: an empty version directory
  (a half-finished copy) and nothing else is one line, before TensorFlow is imported."""
  base = tmp_path / "model" / "export"
  (base / "7").mkdir(parents=True)
  data = tmp_path / "data"
  data.mkdir()
  success_marker.write_success_marker(str(data), {})
  (tmp_path / "in.jsonl").write_text("{}\n")
  args = {"predict": ["--saved_model", str(tmp_path / "model"), "--input",
                      str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")],
          "evaluate": ["--saved_model", str(tmp_path / "model"), "--data", str(data),
                       "--output", str(tmp_path / "metrics.json")]}[step]
  result = run(module_command(step, *args), REPO, env=IMPORT_TIMES)
  assert result.returncode == cli.USER_ERROR_EXIT, result.stderr[-3000:]
  _, lines = split_import_lines(result.stderr)
  assert lines[-1].startswith(f"error: {base}: no complete SavedModel version directory "
                              f"(7 lacks saved_model.pb"), lines
  assert "tensorflow" not in split_import_lines(result.stderr)[0]


def test_the_heavy_imports_are_not_shadowed_either(tmp_path):
  """The user errors above are found before TensorFlow and the project's model code are
  imported; this one (marked data without transform artifacts) is found after
  training.trainer imported models/, features/ and configs/ through the console script,
  from a folder whose packages of those names have an __init__.py."""
  data = tmp_path / "data"
  data.mkdir()
  success_marker.write_success_marker(str(data), {})  # a marker, nothing else
  result = run(script_command("train", "--data", str(data), "--model_dir",
                              str(tmp_path / "model")), shadowing_folder(tmp_path, with_init=True))
  assert result.returncode == cli.USER_ERROR_EXIT, result.stderr[-3000:]
  lines = result.stderr.strip().splitlines()  # the training's log lines, then the error
  assert lines[-1].startswith(f"error: {data}/transform: no transform.json"), lines[-3:]
  for noise in NOISE:
    assert noise not in result.stderr, result.stderr[-3000:]


def test_verbose_prints_the_traceback_and_the_same_line(tmp_path):
  command = module_command("train", "--config", _bad_config(tmp_path), "--data", "d",
                           "--model_dir", "m", "--verbose")
  result = run(command, shadowing_folder(tmp_path, with_init=True, pipeline=False))
  assert result.returncode == cli.USER_ERROR_EXIT
  assert "Traceback (most recent call last)" in result.stderr
  assert "config.py" in result.stderr   # where it was raised
  assert result.stderr.splitlines()[-1] == (
      f"error: {tmp_path}/typo.yaml: unknown key train.lerning_rate "
      f"(did you mean train.learning_rate?)")


@pytest.mark.parametrize("step", STEPS)
def test_console_scripts_help_from_a_folder_with_packages_of_its_own(step, tmp_path):
  """--help works from a shadowing folder and imports neither TensorFlow nor Beam."""
  result = run(script_command(step, "--help"), shadowing_folder(tmp_path, with_init=True),
               env=IMPORT_TIMES)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"pipeline.{step}" in result.stdout   # the module's own docstring
  assert "--[no]verbose" in result.stdout or "--verbose" in result.stdout
  modules, lines = split_import_lines(result.stderr)
  assert not {"tensorflow", "apache_beam", "pyarrow"} & modules
  for noise in NOISE:
    assert noise not in "\n".join(lines), lines


def test_flags_pass_through_and_stray_words_are_refused(tmp_path):
  """train --validation_from none reaches the config (which then asks for a validation
  split: its early stopping needs one); a word that is not a flag is refused."""
  result = run(module_command("train", "--data", str(tmp_path), "--model_dir",
                              str(tmp_path / "m"), "--validation_from", "none"), REPO)
  assert_one_error_line(result, "but train.validation_from is none")
  result = run(module_command("evaluate", "--include", "x.json", "--report", "r", "stray"),
               REPO)
  assert_one_error_line(result, "unexpected arguments ['stray'] (flags take the form "
                                "--name=value)")


@pytest.mark.slow
def test_console_script_simulates_a_tiny_world_from_a_shadowing_folder(tmp_path):
  cwd = shadowing_folder(tmp_path, with_init=True)
  result = run(script_command("simulate", "--output", "raw", "--impressions", "300",
                              "--days", "2", "--shards", "1"), cwd)
  assert result.returncode == 0, result.stderr
  with open(os.path.join(cwd, "raw", "world.json")) as f:
    assert json.load(f)["sizes"]["impressions"] == 300
  for noise in NOISE:
    assert noise not in result.stderr, result.stderr


# In-process checks of the pieces (no subprocess).

def test_preprocess_as_of_is_a_config_override_for_log_sources_only(tmp_path):
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top
  base = ["--impressions", "i", "--events", "e", "--output", "o"]
  args, _ = preprocess.parse_flags(base + ["--as_of", "2026-01-09T12:00:00+02:00"])
  preprocess.check_source_flags(args)
  config, _ = preprocess.load_checked_config(args)
  assert config.data.as_of == "2026-01-09T12:00:00+02:00"
  assert config.data.as_of_timestamp == 1767952800  # 10:00 UTC
  args, _ = preprocess.parse_flags(base)
  assert preprocess.load_checked_config(args)[0].data.as_of is None  # the config's
  args, _ = preprocess.parse_flags(base + ["--as_of", "2026-01-09T25:00Z"])
  with pytest.raises(config_lib.ConfigError, match=r"data.as_of \(--as_of\)"):
    preprocess.load_checked_config(args)
  args, _ = preprocess.parse_flags(["--source", "aliexpress", "--train", "t", "--eval", "v",
                                    "--output", "o", "--as_of", "2026-01-09"])
  with pytest.raises(errors.PreprocessError,
                     match="--as_of is for --source log; --source aliexpress"):
    preprocess.check_source_flags(args)

def test_config_paths_resolve_as_given_then_relative_to_the_project(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert config_lib.resolve_path("configs/esmm.yaml") == os.path.join(
      config_lib.PROJECT_ROOT, "configs/esmm.yaml")
  (tmp_path / "configs").mkdir()
  (tmp_path / "configs" / "esmm.yaml").write_text("feature_spec: x.yaml\n")
  assert config_lib.resolve_path("configs/esmm.yaml") == "configs/esmm.yaml"  # as given wins
  with pytest.raises(config_lib.ConfigError,
                     match=rf"configs/nope.yaml: config file not found .*{tmp_path}.*"
                           rf"{config_lib.PROJECT_ROOT}"):
    config_lib.load_config("configs/nope.yaml")
  os.remove(tmp_path / "configs" / "esmm.yaml")
  assert config_lib.load_config("configs/esmm.yaml").model.name == "esmm"


def test_unknown_config_keys_name_the_nearest_key(tmp_path):
  path = _bad_config(tmp_path)
  with pytest.raises(config_lib.ConfigError) as raised:
    config_lib.load_config(path)
  assert str(raised.value) == (f"{path}: unknown key train.lerning_rate "
                               f"(did you mean train.learning_rate?)")
  with pytest.raises(config_lib.ConfigError, match=r"unknown key trian \(did you mean train\?\)"):
    config_lib.config_from_dict({"feature_spec": "x.yaml", "trian": {}})
  with pytest.raises(config_lib.ConfigError,
                     match=r"unknown key model.zzz \(allowed in model: \['activation'"):
    config_lib.config_from_dict({"feature_spec": "x.yaml", "model": {"zzz": 1}})


def test_every_registered_library_error_type_exists():
  import importlib  # pylint: disable=g-import-not-at-top
  for module_name, class_name in cli.USER_ERROR_TYPES:
    error_type = getattr(importlib.import_module(module_name), class_name)
    assert issubclass(error_type, Exception), (module_name, class_name)
    assert error_type in cli.user_error_types()


def test_error_line_is_one_line_and_names_the_path():
  assert cli.error_line(FileNotFoundError(2, "No such file or directory", "/x/y.json")) == (
      "error: /x/y.json: No such file or directory")
  assert cli.error_line(cli.UserError("a.yaml: bad\n  line 3\n")) == "error: a.yaml: bad; line 3"


def test_a_bug_keeps_its_traceback_and_a_user_error_exits_2(capsys):
  def buggy(argv):
    del argv
    raise KeyError("internal")
  with pytest.raises(KeyError):
    cli.call_main(buggy, [], verbose=False)

  def wrong_input(argv):
    raise cli.UserError(f"--input {argv[0]}: no such file")
  for verbose in (False, True):
    with pytest.raises(SystemExit) as exited:
      cli.call_main(wrong_input, ["in.jsonl"], verbose=verbose)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1] == "error: --input in.jsonl: no such file"
    assert ("Traceback" in err) == verbose


@pytest.mark.parametrize("argv,verbose", [
    ([], False), (["--verbose"], True), (["--verbose=false"], False),
    (["--verbose", "--noverbose"], False), (["--data", "x", "--verbose=1"], True)])
def test_verbose_is_read_before_the_flags_are_parsed(argv, verbose):
  assert cli.wants_verbose(argv) == verbose


@pytest.mark.slow  # a whole Beam job or CLI run: make test, not make test-fast
def test_preprocess_with_an_empty_eval_split_fails_naming_eval_from(tmp_path, capsys):
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top
  from tests import beam_testing as testing  # pylint: disable=g-import-not-at-top
  config = testing.write_experiment(str(tmp_path / "config"))
  impressions = [testing.impression(i, testing.START + (i % 2) * testing.DAY_S)
                 for i in range(12)]  # two days, both before the eval day below
  testing.write_jsonl(str(tmp_path / "impressions.jsonl"), impressions)
  testing.write_jsonl(str(tmp_path / "events.jsonl"),
                      [testing.event("imp0", testing.START + 5, "click")])
  output = tmp_path / "out"
  with pytest.raises(SystemExit) as exited:
    preprocess.main(["preprocess", "--impressions", str(tmp_path / "impressions.jsonl"),
                     "--events", str(tmp_path / "events.jsonl"), "--output", str(output),
                     "--config", config, "--eval_from", "2030-01-01"])
  assert exited.value.code == 2
  assert capsys.readouterr().err.splitlines()[-1] == (
      f"error: the eval split is empty (train 12, eval 0 examples written); it holds the "
      f"impressions at or after data.eval_from 2030-01-01 (config {config}): set "
      f"--eval_from (or data.eval_from) to a day inside the logs")
  assert (output / "counts.json").exists()        # the job ran ...
  assert not (output / "_SUCCESS.json").exists()  # ... and its output is not vouched for


def test_preprocess_refuses_a_flag_that_is_neither_ours_nor_beams():
  from pipeline import preprocess  # pylint: disable=g-import-not-at-top
  base = ["--impressions", "i", "--events", "e", "--output", "o"]
  for flag, hint in (("--eval_form", "did you mean --eval_from?"),
                     ("--runer=DirectRunner", "did you mean --runner?"),
                     ("--fail_on_anomaly", "did you mean --fail_on_anomalies?"),
                     ("--zzz", "see --help")):
    with pytest.raises(cli.UserError, match=rf"unknown flag {flag.split('=')[0]}: .*{hint}"):
      preprocess.parse_args(base + [flag, "1"])
  args, beam_args = preprocess.parse_args(base + [  # Beam's own options pass untouched
      "--runner", "DirectRunner", "--temp_location=/tmp", "--project", "p",
      "--direct_num_workers", "2", "--save_main_session"])
  assert beam_args == ["--runner", "DirectRunner", "--temp_location=/tmp", "--project", "p",
                       "--direct_num_workers", "2", "--save_main_session"]
  assert args.output == "o"
  assert {"--runner", "--project", "--temp_location", "--region",
          "--direct_running_mode"} <= set(preprocess.beam_option_flags())
  # A word that is neither a flag nor a flag's value, with or without Beam options.
  for extra in (["stray"], ["--runner", "DirectRunner", "stray", "--save_main_session"]):
    with pytest.raises(cli.UserError, match=r"^unexpected arguments \['stray'\] \(flags"):
      preprocess.parse_args(base + extra)
  with pytest.raises(cli.UserError, match="--direct_num_workers: invalid int value: 'x' "
                                          r"\(a Beam pipeline option\)"):
    preprocess.parse_args(base + ["--direct_num_workers", "x"])
