"""What every command-line entry point shares: start-up, `--verbose`, one-line errors.

Flow: `python -m pipeline.<step>` or the console script `cvr-<step>` -> pipeline/__init__.py
calls `prepare_process()` (the import path, the start-up noise) before the step's module
imports TensorFlow -> the step's module ends in `run_main(main)` -> main.

A user error (a config, flag, path or input the user can fix) ends the process with ONE
line on stderr, `error: <what and where>`, and exit status 2; `--verbose` prints the
traceback above that line and keeps the library noise. What counts as a user error:
`UserError` (raised by the entry points), absl's flag and usage errors, the library's own
error types (`USER_ERROR_TYPES`: config, feature spec, transform artifacts, success
marker, corrupt shard, incomplete export, preprocessing) and the OS's file errors (a path
that does not exist, or is a file where a folder is expected, ...). Anything else is a
bug: it keeps its traceback.

Start-up: each entry point parses its flags and checks what it can without TensorFlow or
Beam (flag values, unknown flags, the config and feature spec, local paths) before it
imports them (the imports sit in the functions that need them), so `--help` and such a
user error answer in about 0.3 s instead of 4-7 s (tests/test_entry_points.py checks that
no TensorFlow is imported for them).

Start-up noise silenced unless `--verbose`: TensorFlow's C++ log lines (the cuFFT / cuDNN /
cuBLAS "Unable to register factory" errors of every import on a machine without a GPU;
TF_CPP_MIN_LOG_LEVEL=3, even over a 2 in the environment; failing ops still raise Python
exceptions with their message), two FutureWarnings Google's client libraries issue on
import about their own future (google.api_core: the Python version's end of life;
google.auth: grpcio without post-quantum TLS), filtered by module and message, and TFDV's
"Unable to import IPython" lines (`import_quietly`). Other warnings are kept. `--help`
exits 0 (absl's exits 1).

The import path: `python -m` puts the working directory first on sys.path, so a folder
there named like one of the project's packages (`models/`, `features/`, `configs/`, e.g.
runs/demo/models/) would shadow it. `prepare_process` drops the working directory from
sys.path when the project is not there (the entry points never import from it) and sets
PYTHONSAFEPATH=1 so the processes they start (Beam's worker processes, the demo's steps)
do not add it either. The console scripts (`console_script`, setup.py) run the step's
module as `python -m` does, from the venv's bin/ as sys.path[0]: they also work from a
folder that holds a `pipeline/` package of its own.
"""

import argparse
import importlib
import os
import re
import sys
import traceback
import warnings
from typing import Callable, List, Optional, Sequence, Tuple

from absl import app
from absl import flags

VERBOSE_FLAG = "--verbose"
# Exit status of a user error (as argparse's usage errors).
USER_ERROR_EXIT = 2
# The library's error types that mean "the input or the settings are wrong": (module, class).
# Looked up in sys.modules when an error arrives, so this module imports none of them
# (the entry points that can raise one have imported it already).
USER_ERROR_TYPES = (
    ("configs.config", "ConfigError"),
    ("features.spec", "SpecError"),
    ("features.artifacts", "ArtifactError"),
    ("features.success_marker", "IncompleteOutputError"),
    ("training.shard_check", "CorruptShardError"),
    ("serving.versions", "IncompleteExportError"),
    ("evaluation.runner", "SliceError"),
    ("training.warm_start", "WarmStartError"),
    ("transforms.errors", "PreprocessError"),
)
# The OS's errors about a path the user gave (they carry the path in their message).
_PATH_ERRORS = (FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError,
                PermissionError)
# FutureWarnings about Google's client libraries' own future, issued on every import:
# (module that warns, start of its message). google.api_core: Google will stop supporting
# this Python version in new releases; google.auth: the installed grpcio (pinned by
# apache-beam[gcp]) lacks post-quantum TLS.
_LIBRARY_FUTURE_WARNINGS = (
    ("google.api_core._python_version_support", "You are using a Python version"),
    ("google.auth.transport.grpc", "grpcio < 1.83.0 does not support Post-Quantum"),
)
# Lines TFDV writes straight to sys.stderr when it is imported without IPython (only its
# notebook display functions need it).
_IMPORT_NOISE = ("Unable to import IPython",)

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

FLAGS = flags.FLAGS
flags.DEFINE_bool("verbose", False, "On an error, print the traceback too; keep "
                  "TensorFlow's C++ log lines and library warnings at start-up.")


class UserError(Exception):
  """An error the user can fix (a flag, a path, an input); the message names it."""


def wants_verbose(argv: Optional[Sequence[str]] = None) -> bool:
  """Whether the command line asks for --verbose (read before any flag is parsed)."""
  argv = sys.argv[1:] if argv is None else argv
  verbose = False
  for arg in argv:
    if arg == VERBOSE_FLAG:
      verbose = True
    elif arg == "--noverbose":
      verbose = False
    elif arg.startswith(VERBOSE_FLAG + "="):
      verbose = arg.split("=", 1)[1].lower() in ("1", "true", "t", "yes", "y")
  return verbose


def silence_startup_noise() -> None:
  """TF's C++ log lines off (before TF is imported); Google's libraries' FutureWarnings.

  Child processes inherit both through the environment (PYTHONWARNINGS takes the
  warning's module exactly, so only those modules' FutureWarnings are ignored there).
  """
  os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
  inherited = [part for part in os.environ.get("PYTHONWARNINGS", "").split(",") if part]
  for module, message in _LIBRARY_FUTURE_WARNINGS:
    warnings.filterwarnings("ignore", message=re.escape(message), category=FutureWarning,
                            module=re.escape(module))
    child_filter = f"ignore::FutureWarning:{module}"
    if child_filter not in inherited:
      inherited.append(child_filter)
  os.environ["PYTHONWARNINGS"] = ",".join(inherited)


class _DropNoise:
  """A stderr stand-in that drops writes containing one of `_IMPORT_NOISE`."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> int:
    if any(noise in text for noise in _IMPORT_NOISE):
      return len(text)
    return self._stream.write(text)

  def __getattr__(self, name):
    return getattr(self._stream, name)


def import_quietly(module: str) -> None:
  """Imports `module` without the lines `_IMPORT_NOISE` names (unless --verbose).

  For the libraries that print to sys.stderr when imported (TFDV); call it before the
  imports that pull the library in.
  """
  if wants_verbose():
    importlib.import_module(module)
    return
  stderr, sys.stderr = sys.stderr, _DropNoise(sys.stderr)
  try:
    importlib.import_module(module)
  finally:
    sys.stderr = stderr


def isolate_from_working_directory() -> bool:
  """Drops the working directory from sys.path when the project does not live there.

  `python -m` puts the working directory (absolute) first on sys.path; a folder in it
  named `models/`, `features/`, `configs/`... (with or without an __init__.py) would then
  be imported instead of the project's package. The project's packages are found through
  its installation (or PYTHONPATH), never through the working directory, unless the
  working directory is the project root (then nothing changes). PYTHONSAFEPATH=1 keeps
  child processes (Beam's workers, the demo's steps) from adding it back.

  Returns:
    Whether sys.path was changed.
  """
  cwd = os.getcwd()
  if os.path.realpath(cwd) == os.path.realpath(PROJECT_ROOT):
    return False
  removed = False
  for entry in list(sys.path):
    if entry in ("", ".") or (os.path.isabs(entry) and
                              os.path.realpath(entry) == os.path.realpath(cwd)):
      sys.path.remove(entry)
      removed = True
  os.environ["PYTHONSAFEPATH"] = "1"
  return removed


def prepare_process(argv: Optional[Sequence[str]] = None) -> None:
  """Start-up of every entry point; pipeline/__init__.py calls it before any TF import."""
  os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # TFRS needs Keras 2 (tf_keras)
  isolate_from_working_directory()
  if not wants_verbose(argv):
    silence_startup_noise()


def user_error_types() -> Tuple[type, ...]:
  """The exception types reported as one line: ours, absl's, the library's loaded ones."""
  types = [UserError, app.UsageError, flags.Error, *_PATH_ERRORS]
  for module_name, class_name in USER_ERROR_TYPES:
    module = sys.modules.get(module_name)
    if module is not None and hasattr(module, class_name):
      types.append(getattr(module, class_name))
  return tuple(types)


def error_line(error: BaseException) -> str:
  """`error: <message>` on one line (line breaks inside the message become '; ')."""
  message = str(error).strip() or type(error).__name__
  if isinstance(error, OSError) and error.filename and not error.strerror:
    message = f"{error.filename}: {message}"
  elif isinstance(error, OSError) and error.filename and error.strerror:
    message = f"{error.filename}: {error.strerror}"
  parts = [part.strip() for part in message.splitlines() if part.strip()]
  return "error: " + "; ".join(parts)


def exit_on_user_error(error: BaseException, verbose: bool) -> None:
  """Prints the one line (after the traceback with --verbose) and exits with status 2."""
  if verbose:
    traceback.print_exception(error, file=sys.stderr)
  sys.stderr.write(error_line(error) + "\n")
  sys.stderr.flush()
  sys.exit(USER_ERROR_EXIT)


def call_main(main: Callable, argv, verbose: bool):
  """main(argv), with a user error turned into its one line and exit status 2."""
  try:
    return main(argv)
  except user_error_types() as error:  # pylint: disable=catching-non-exception
    exit_on_user_error(error, verbose)


_HELP_FLAGS = ("--help", "--helpshort", "--helpfull", "-h", "-?")


def _parse_flags(argv: List[str]) -> List[str]:
  """absl's flag parsing; a bad flag is one line (absl prints two), --help exits 0."""
  try:
    return FLAGS(argv)
  except flags.Error as error:
    exit_on_user_error(UserError(f"{error} (see --help)"), wants_verbose(argv[1:]))
  except SystemExit as done:  # absl's help flags print the help, then exit with status 1
    if done.code == 1 and any(arg in _HELP_FLAGS for arg in argv[1:]):
      sys.exit(0)
    raise


def refuse_arguments(argv: Sequence[str]) -> None:
  """A word on the command line that is not a flag (absl leaves it in argv) is refused.

  Raises:
    UserError: naming the words (`--name value` or `--name=value` was meant).
  """
  if len(argv) > 1:
    raise UserError(f"unexpected arguments {list(argv[1:])} (flags take the form "
                    f"--name=value)")


def run_main(main: Callable[[List[str]], Optional[int]],
             argv: Optional[Sequence[str]] = None) -> None:
  """`absl.app.run(main)` with one-line user errors and --verbose; never returns.

  The flags are parsed (and a stray word refused, `refuse_arguments`) before main runs,
  so an entry point whose module imports no TensorFlow at the top answers --help and a
  bad flag without it.

  Args:
    main: the entry point's main(argv) (argv: the program name; absl parsed the rest).
    argv: the command line, program name first; None reads sys.argv.
  """
  argv = list(sys.argv if argv is None else argv)
  # --verbose is defined here, so absl files it under this module: list it in the
  # entry point's own --help too.
  FLAGS.register_key_flag_for_module(argv[0], FLAGS["verbose"])

  def checked_main(remaining: List[str]):
    refuse_arguments(remaining)
    return main(remaining)

  app.run(lambda remaining: call_main(checked_main, remaining, FLAGS.verbose), argv=argv,
          flags_parser=_parse_flags)


class ArgumentParser(argparse.ArgumentParser):
  """argparse for the entry points that pass unknown flags on (pipeline.preprocess).

  A bad flag is a UserError (one line) instead of argparse's usage + message; --verbose
  is defined.
  """

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.add_argument(VERBOSE_FLAG, action="store_true",
                      help="On an error, print the traceback too; keep TensorFlow's C++ log "
                           "lines and library warnings at start-up.")

  def error(self, message):
    raise UserError(f"{message} (see --help)")


def run_argv_main(main: Callable[[List[str]], Optional[int]],
                  argv: Optional[Sequence[str]] = None) -> None:
  """For a main that parses its own argv (argparse): one-line user errors, --verbose."""
  argv = list(sys.argv if argv is None else argv)
  sys.exit(call_main(main, argv, wants_verbose(argv[1:])))


def console_script(module: str) -> Callable[[], None]:
  """The console script `cvr-<step>`: runs `module` as `python -m module` would.

  Its sys.path[0] is the scripts folder, not the working directory.
  """
  def run() -> None:
    import runpy  # pylint: disable=g-import-not-at-top
    runpy.run_module(module, run_name="__main__", alter_sys=True)
  run.__doc__ = f"The console script of `python -m {module}`."
  return run


init = console_script("pipeline.init")
simulate = console_script("pipeline.simulate")
preprocess = console_script("pipeline.preprocess")
train = console_script("pipeline.train")
evaluate = console_script("pipeline.evaluate")
predict = console_script("pipeline.predict")
demo = console_script("pipeline.demo")
daily = console_script("pipeline.daily")
