"""Entry point: evaluate an exported SavedModel on a split of pipeline.preprocess output.

  python -m pipeline.evaluate --saved_model runs/demo/model/export \
      --data runs/demo/data [--split eval] [--truth runs/demo/raw] \
      [--config configs/esmm.yaml] [--output FILE]

Flow: SavedModel + OUTPUT/<split>/ TFRecords [+ simulator truth] -> **pipeline.evaluate**
-> metrics JSON (layout: evaluation/runner.py; per task: evaluation/report.py) and a
readable table in the log. Default --output: beside the SavedModel directory,
`<saved_model_dir>_evaluation_<split>.json`. The library is evaluation.runner.
DATA must hold pipeline.preprocess's `_SUCCESS.json` (features/success_marker.py): an
incomplete or changed output directory is refused before anything is scored.
"""

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from evaluation import runner

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "SavedModel directory (MODEL_DIR/export/<version>), "
                    "or an export base / MODEL_DIR (its newest complete version is used; "
                    "incomplete ones are skipped with a warning).",
                    required=True)
flags.DEFINE_string("data", None, "Output directory of pipeline.preprocess.", required=True)
flags.DEFINE_string("split", "eval", "Split to score: DATA/<split>/<split>-*.tfrecord.gz.")
flags.DEFINE_string("truth", None, "Simulator OUTPUT directory (or its truth file): adds "
                    "Bayes-optimal AUCs, the model's gaps and entire-space CVR metrics.")
flags.DEFINE_string("config", runner.DEFAULT_CONFIG, "Experiment YAML; only read when DATA "
                    "lacks feature_spec.yaml or labels.json. Relative paths that do not "
                    "exist from the working directory resolve against the project root.")
flags.DEFINE_string("output", None, "Metrics JSON to write (default: "
                    "<saved_model_dir>_evaluation_<split>.json beside the SavedModel).")
flags.DEFINE_integer("batch_size", 4096, "Examples per SavedModel call.", lower_bound=1)
flags.DEFINE_integer("ece_bins", 10, "Equal-mass bins of the expected calibration error.",
                     lower_bound=1)


def main(argv):
  del argv
  result = runner.evaluate(FLAGS.saved_model, FLAGS.data, split=FLAGS.split,
                           truth_path=FLAGS.truth, config_path=FLAGS.config,
                           batch_size=FLAGS.batch_size, ece_bins=FLAGS.ece_bins)
  output = FLAGS.output or runner.default_output_path(result["saved_model"], FLAGS.split)
  for line in runner.summary_lines(result):
    for row in line.splitlines():
      logging.info("%s", row)
  runner.write_report(result, output)
  logging.info("Done in %.1fs: %s", result["seconds"], output)


if __name__ == "__main__":
  app.run(main)
