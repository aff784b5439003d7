"""Entry point: score raw impression records (JSON Lines, the log contract).

  python -m pipeline.predict --saved_model runs/demo/model/export/<version> \
      --input impressions.jsonl --output scored.jsonl

Each non-blank input line yields one output line, in order:
  {"record": <input>, "line": n, "predictions": {"ctr": ..., "cvr": ..., ...},
   "input_notes": {"defaulted": [...], "unknown_values": {...}}}
or, for a bad record,
  {"record": <input, or the line's text cut to 1000 characters>, "line": n,
   "error": {"field", "reason", "detail"}}.
Bad records (a missing user_id / item_id, a wrong type, and hostile lines: not UTF-8, not
JSON, nested too deep, too long, non-finite numbers; serving/raw_input.py) never stop the
others from being scored. `input_notes` lists the features served with their defaults and
the values that fell into a vocabulary's OOV bucket (serving/predictor.py).
"""

import json
import os

from absl import flags
from absl import logging
import tensorflow as tf

from pipeline import cli
from serving import predictor
from serving import raw_input
from serving import versions

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "An export version directory, or an export base / "
                    "MODEL_DIR (its newest complete version is used; incomplete ones are "
                    "skipped with a warning).", required=True)
flags.DEFINE_string("input", None, "JSON Lines file of raw impression records.", required=True)
flags.DEFINE_string("output", None, "JSON Lines file to write (one line per input record).",
                    required=True)
flags.DEFINE_integer("batch_size", 512, "Records per SavedModel call.", lower_bound=1)


def _check_paths(input_path: str, output_path: str) -> None:
  """One-line user errors (pipeline/cli.py) for an input that is not there or would be lost."""
  if not tf.io.gfile.exists(input_path):
    raise cli.UserError(f"--input {input_path}: no such file")
  if tf.io.gfile.isdir(input_path):
    raise cli.UserError(f"--input {input_path}: is a directory, expected a JSON Lines file")
  if os.path.abspath(output_path) == os.path.abspath(input_path):
    raise cli.UserError(f"--output {output_path} is the --input file; writing it would "
                        f"erase the records before they are read")
  if tf.io.gfile.isdir(output_path):
    raise cli.UserError(f"--output {output_path}: is a directory, expected a file path")


def main(argv):
  if len(argv) > 1:
    raise cli.UserError(f"unexpected arguments {argv[1:]} (flags take the form --name=value)")
  saved_model = versions.resolve_saved_model(FLAGS.saved_model)
  _check_paths(FLAGS.input, FLAGS.output)
  model = predictor.Predictor(saved_model, FLAGS.batch_size)
  output_dir = os.path.dirname(FLAGS.output)
  if output_dir:
    tf.io.gfile.makedirs(output_dir)
  scored = errors = 0
  with tf.io.gfile.GFile(FLAGS.output, "w") as out:
    for result in model.score(raw_input.read_jsonl(FLAGS.input)):
      out.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
      if result.error:
        errors += 1
        logging.warning("%s line %d: %s (%s)", FLAGS.input, result.line,
                        result.error["detail"], result.error["reason"])
      else:
        scored += 1
  logging.info("Scored %d records, %d errors -> %s", scored, errors, FLAGS.output)


if __name__ == "__main__":
  cli.run_main(main)
