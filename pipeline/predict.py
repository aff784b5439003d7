"""Entry point: score raw impression records (JSON Lines, the log contract).

  python -m pipeline.predict --saved_model runs/demo/model/export/<version> \
      --input impressions.jsonl --output scored.jsonl

Each non-blank input line yields one output line, in order:
  {"record": <input>, "line": n, "predictions": {"ctr": ..., "cvr": ..., ...},
   "input_notes": {"defaulted": [...], "unknown_values": {...}, "cut": {...}}}
or, for a bad record,
  {"record": <input, or the line's text cut to 1000 characters>, "line": n,
   "error": {"field", "reason", "detail"}}.
Bad records (a missing user_id / item_id, a wrong type, and hostile lines: not UTF-8, not
JSON, nested too deep, too long (over the spec's max_length, or cut per its on_too_long and
listed in input_notes.cut), non-finite numbers; serving/raw_input.py) never stop the others
from being scored. `input_notes` lists the features served with their defaults, the values
that fell into a vocabulary's OOV bucket and the values cut to the spec's max_length
(serving/predictor.py).
"""

import json
import os
from typing import Tuple

from absl import flags
from absl import logging

from pipeline import cli
from serving import versions

# TensorFlow and serving.predictor / serving.raw_input (which import it) are imported by
# the functions that need them, after the flags, the local paths and the export version
# are checked: start-up time of --help and of a user error (0.3 s instead of 4 s idle).

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "An export version directory, or an export base / "
                    "MODEL_DIR (its newest complete version is used; incomplete ones are "
                    "skipped with a warning).", required=True)
flags.DEFINE_string("input", None, "JSON Lines file of raw impression records.", required=True)
flags.DEFINE_string("output", None, "JSON Lines file to write (one line per input record).",
                    required=True)
flags.DEFINE_integer("batch_size", 512, "Records per SavedModel call.", lower_bound=1)


def _is_local(path: str) -> bool:
  return "://" not in path


def check_paths(saved_model: str, input_path: str, output_path: str) -> None:
  """One-line user errors (pipeline/cli.py) for paths that are not there or would be lost.

  Local paths are checked with os.path (no TensorFlow); remote ones (gs://...) with
  tf.io.gfile.
  """
  if all(_is_local(path) for path in (saved_model, input_path, output_path)):
    exists, isdir = os.path.exists, os.path.isdir
  else:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top  # start-up time (above)
    exists, isdir = tf.io.gfile.exists, tf.io.gfile.isdir
  if not isdir(saved_model):  # what is in it: serving.versions.resolve_saved_model
    raise cli.UserError(f"--saved_model {saved_model}: no such directory")
  if not exists(input_path):
    raise cli.UserError(f"--input {input_path}: no such file")
  if isdir(input_path):
    raise cli.UserError(f"--input {input_path}: is a directory, expected a JSON Lines file")
  if os.path.abspath(output_path) == os.path.abspath(input_path):
    raise cli.UserError(f"--output {output_path} is the --input file; writing it would "
                        f"erase the records before they are read")
  if isdir(output_path):
    raise cli.UserError(f"--output {output_path}: is a directory, expected a file path")


def predict_file(saved_model: str, input_path: str, output_path: str,
                 batch_size: int) -> Tuple[int, int]:
  """Scores the JSON Lines file INPUT_PATH into OUTPUT_PATH (module docstring's lines).

  Args:
    saved_model: an export version directory, or an export base / MODEL_DIR.
    input_path: raw impression records, one JSON object a line.
    output_path: the file to write, one line per non-blank input line, in order.
    batch_size: records per SavedModel call.

  Returns:
    (records scored, records refused with an error line).
  """
  check_paths(saved_model, input_path, output_path)
  version_dir = versions.resolve_saved_model(saved_model)  # a local one: before TF too
  # pylint: disable=g-import-not-at-top  # start-up time (above)
  import tensorflow as tf
  from serving import predictor
  from serving import raw_input
  # pylint: enable=g-import-not-at-top
  model = predictor.Predictor(version_dir, batch_size)
  output_dir = os.path.dirname(output_path)
  if output_dir:
    tf.io.gfile.makedirs(output_dir)
  scored = errors = 0
  with tf.io.gfile.GFile(output_path, "w") as out:
    for result in model.score(raw_input.read_jsonl(input_path, model.spec)):
      out.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
      if result.error:
        errors += 1
        logging.warning("%s line %d: %s (%s)", input_path, result.line,
                        result.error["detail"], result.error["reason"])
      else:
        scored += 1
  return scored, errors


def main(argv):
  del argv  # cli.run_main refused any argument that is not a flag
  scored, errors = predict_file(FLAGS.saved_model, FLAGS.input, FLAGS.output,
                                FLAGS.batch_size)
  logging.info("Scored %d records, %d errors -> %s", scored, errors, FLAGS.output)


if __name__ == "__main__":
  cli.run_main(main)
