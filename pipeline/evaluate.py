"""Entry point: evaluate exported SavedModels on a split of pipeline.preprocess output.

  python -m pipeline.evaluate --saved_model runs/demo/model/export \
      --data runs/demo/data --output runs/demo/metrics.json [--split eval] \
      [--truth runs/demo/raw] [--config configs/esmm.yaml]

  # several models compared, sliced, with the HTML report:
  python -m pipeline.evaluate --saved_model esmm=runs/demo/models/esmm \
      --saved_model naive=runs/demo/models/naive --data runs/demo/data \
      --truth runs/demo/raw --output_dir runs/demo/metrics --report runs/demo/report \
      --slice_by item_category --slice_by device --slice_by position

  # a report from evaluation JSONs written earlier (nothing is scored):
  python -m pipeline.evaluate --include esmm=runs/demo/metrics/esmm.json \
      --include naive=runs/demo/metrics/naive.json --report /tmp/report

Flow: SavedModel(s) + OUTPUT/<split>/ TFRecords [+ simulator truth] -> **pipeline.evaluate**
-> one metrics JSON per model (layout: evaluation/runner.py; per task:
evaluation/report.py; curves: evaluation/curves.py; slices: evaluation/slices.py), a
readable table in the log, and with --report DIR a static report DIR/index.html
(evaluation/html_report.py). Each scored model's JSON goes where the command line says:
--output FILE (one model), else OUTPUT_DIR/<name>.json with --output_dir, else
REPORT/<name>.json beside the report's index.html; with none of the three the command is
refused (it never writes into the model's export folder, which TF Serving watches).
DATA must hold pipeline.preprocess's `_SUCCESS.json` (features/success_marker.py): an
incomplete or changed output directory is refused before anything is scored. User errors
(a bad flag or path, no complete export, unusable data) end in one line (pipeline/cli.py).
"""

import collections
import dataclasses
import json
import os
import re
from typing import List, Optional, Tuple

from absl import app
from absl import flags
from absl import logging

from configs import config as config_lib
from evaluation import slices
from features import success_marker
from pipeline import cli
from serving import versions

# TensorFlow and what imports it (evaluation.runner) are imported in main after the
# flags, the paths, the --include'd JSONs, a local DATA's success marker and a local
# --saved_model's version are checked: start-up time of --help and of a user error (0.3 s
# instead of 4 s idle); a --include-only report needs no TensorFlow at all.

FLAGS = flags.FLAGS


@dataclasses.dataclass
class Settings:
  """What to evaluate and where the results go: one field per flag (`define_flags`)."""
  saved_model: List[str] = dataclasses.field(default_factory=list)
  include: List[str] = dataclasses.field(default_factory=list)
  data: Optional[str] = None
  split: str = "eval"
  truth: Optional[str] = None
  config: str = config_lib.DEFAULT_CONFIG
  output: Optional[str] = None
  output_dir: Optional[str] = None
  report: Optional[str] = None
  slice_by: List[str] = dataclasses.field(default_factory=list)
  min_slice_positives: int = slices.MIN_POSITIVES
  curve_bins: int = 20
  batch_size: int = 4096
  ece_bins: int = 10

  @classmethod
  def from_flags(cls) -> "Settings":
    return cls(**{field.name: FLAGS[field.name].value for field in dataclasses.fields(cls)})


def define_flags() -> None:
  """The command line's flags, one per `Settings` field, with its default.

  Called by `python -m pipeline.evaluate` (and cvr-evaluate) only: a test that imports
  this module to call `run` in-process defines no flag, so pipeline.predict's
  flags of the same names (--saved_model, --output, --batch_size) can live beside it.
  """
  flags.DEFINE_multi_string("saved_model", [], "[NAME=]PATH, repeatable: a SavedModel directory "
                            "(MODEL_DIR/export/<version>), or an export base / MODEL_DIR (its "
                            "newest complete version is used; incomplete ones are skipped with a "
                            "warning). NAME names the model in the report (default: MODEL_DIR's "
                            "name).")
  flags.DEFINE_multi_string("include", [], "[NAME=]FILE, repeatable: an evaluation JSON written "
                            "earlier, added to the --report (and its comparison) as it is.")
  flags.DEFINE_string("data", None, "Output directory of pipeline.preprocess (needed with "
                      "--saved_model).")
  flags.DEFINE_string("split", Settings.split,
                      "Split to score: DATA/<split>/<split>-*.tfrecord.gz.")
  flags.DEFINE_string("truth", None, "Simulator OUTPUT directory (or its truth file): adds "
                      "Bayes-optimal AUCs, the model's gaps and entire-space CVR metrics.")
  flags.DEFINE_string("config", Settings.config, "Experiment YAML; only read when DATA "
                      "lacks feature_spec.yaml or labels.json. Relative paths that do not "
                      "exist from the working directory resolve against the project root.")
  flags.DEFINE_string("output", None, "Metrics JSON to write, with one --saved_model.")
  flags.DEFINE_string("output_dir", None, "Write each model's metrics JSON to "
                      "OUTPUT_DIR/<name>.json.")
  flags.DEFINE_string("report", None, "Directory of the static HTML report (index.html and "
                      "images/) of every model evaluated or --include'd; open index.html in a "
                      "browser, nothing is fetched from the network. Without --output and "
                      "--output_dir, each model's metrics JSON is written beside it, "
                      "REPORT/<name>.json.")
  flags.DEFINE_multi_string("slice_by", [], "Scalar feature to slice the metrics by (per value: "
                            "count, positives, AUC, calibration), repeatable; `new_user` slices "
                            "by whether the user_id is in the train split.")
  flags.DEFINE_integer("min_slice_positives", Settings.min_slice_positives, "Slices with fewer "
                       "positives (or negatives) are marked small (kept, not hidden).",
                       lower_bound=1)
  flags.DEFINE_integer("curve_bins", Settings.curve_bins,
                       "Equal-mass bins of the reliability diagrams.", lower_bound=2)
  flags.DEFINE_integer("batch_size", Settings.batch_size, "Examples per SavedModel call.",
                       lower_bound=1)
  flags.DEFINE_integer("ece_bins", Settings.ece_bins,
                       "Equal-mass bins of the expected calibration error.", lower_bound=1)


NAME_PATTERN = re.compile(r"^([A-Za-z0-9_.-]+)=(.+)$")


def parse_named(value: str):
  """`NAME=PATH` -> (NAME, PATH); a bare PATH -> (None, PATH)."""
  match = NAME_PATTERN.match(value)
  return (match.group(1), match.group(2)) if match else (None, value)


def _check_flags(settings: Settings) -> None:
  if not settings.saved_model and not settings.include:
    raise app.UsageError("give --saved_model (to score) or --include (with --report)")
  if settings.saved_model and not settings.data:
    raise app.UsageError("--saved_model needs --data")
  if settings.output and len(settings.saved_model) > 1:
    raise app.UsageError("--output takes one model's JSON; with several --saved_model use "
                         "--output_dir (or --report, which writes them beside the report)")
  if settings.saved_model and not (settings.output or settings.output_dir or settings.report):
    raise app.UsageError("say where the metrics JSON goes: --output FILE, --output_dir DIR "
                         "or --report DIR (REPORT/<name>.json)")
  if settings.include and not settings.report:
    raise app.UsageError("--include only feeds --report: give --report DIR")


def _check_paths(settings: Settings) -> None:
  """--saved_model and --data paths that are not there fail before TensorFlow is imported.

  Local paths only (os.path); a gs:// path is checked when it is read.
  """
  paths = [("--saved_model", parse_named(value)[1]) for value in settings.saved_model]
  if settings.saved_model:
    paths.append(("--data", settings.data))
  for flag, path in paths:
    if "://" not in path and not os.path.isdir(path):
      raise cli.UserError(f"{flag} {path}: no such directory")


def _included(settings: Settings) -> List[dict]:
  """The evaluation JSONs of --include, read and checked before anything is scored."""
  results = []
  for value in settings.include:
    name, path = parse_named(value)
    with open(path) as f:
      try:
        result = json.load(f)
      except ValueError as e:
        raise cli.UserError(f"--include {path}: not an evaluation JSON: {e}") from e
    if not isinstance(result, dict) or "tasks" not in result:
      raise cli.UserError(f"--include {path}: not an evaluation JSON (no 'tasks')")
    result["name"] = name or result.get("name") or os.path.splitext(os.path.basename(path))[0]
    results.append(result)
  return results


def _named_models(values: List[str]) -> List[Tuple[str, str]]:
  """(name, complete SavedModel version dir) per --saved_model; names must be distinct.

  Resolved before anything is scored, so a bad path or an export without a complete
  version fails at once (serving.versions.IncompleteExportError, one line).
  """
  resolved = [(name, versions.resolve_saved_model(path))  # a local one: before TF too
              for name, path in map(parse_named, values)]
  from evaluation import runner  # pylint: disable=g-import-not-at-top  # start-up time (above)
  models = [(name or runner.model_name(saved_model_dir), saved_model_dir)
            for name, saved_model_dir in resolved]
  counts = collections.Counter(name for name, _ in models)
  repeated = sorted(name for name, count in counts.items() if count > 1)
  if repeated:
    raise app.UsageError(f"several --saved_model are named {repeated}; their JSONs and "
                         f"report sections would collide: name them, --saved_model NAME=PATH")
  return models


def _output_path(settings: Settings, name: str) -> str:
  """Where a scored model's metrics JSON goes (module docstring); never the export folder."""
  if settings.output:
    return settings.output
  return os.path.join(settings.output_dir or settings.report, f"{name}.json")


def run(settings: Settings) -> List[dict]:
  """Scores each --saved_model, writes its JSON, and the --report; returns the results.

  Raises:
    app.UsageError, cli.UserError and the library's input errors (pipeline/cli.py):
      a bad combination of flags, a path that is not there, unusable data.
  """
  _check_flags(settings)
  _check_paths(settings)
  included = _included(settings)
  results = []
  models = []
  if settings.saved_model:
    # unusable data, exports or slices fail before anything is loaded (local data and
    # exports: before TensorFlow too)
    success_marker.check_success_marker(settings.data)
    models = _named_models(settings.saved_model)
    from evaluation import runner  # pylint: disable=g-import-not-at-top  # start-up time (above)
    spec, _ = runner.load_spec_and_labels(settings.data, settings.config)
    runner.check_slice_by(settings.slice_by, spec, settings.truth)
  for name, saved_model_dir in models:
    result = runner.evaluate(saved_model_dir, settings.data, split=settings.split,
                             truth_path=settings.truth, config_path=settings.config,
                             batch_size=settings.batch_size, ece_bins=settings.ece_bins,
                             slice_by=settings.slice_by,
                             min_slice_positives=settings.min_slice_positives,
                             curve_bins=settings.curve_bins, name=name)
    output = _output_path(settings, result["name"])
    for line in runner.summary_lines(result):
      for row in line.splitlines():
        logging.info("%s", row)
    runner.write_report(result, output)
    logging.info("Done in %.1fs: %s", result["seconds"], output)
    results.append(result)
  results += included
  if settings.report:
    from evaluation import html_report  # pylint: disable=g-import-not-at-top
    index = html_report.write_html_report(results, settings.report)
    logging.info("Wrote the report of %s to %s", [r["name"] for r in results], index)
  return results


def main(argv):
  del argv  # cli.run_main refused any argument that is not a flag
  run(Settings.from_flags())


if __name__ == "__main__":
  define_flags()
  cli.run_main(main)
