"""Entry point: score raw impression records (JSON Lines, the log contract).

  python -m pipeline.predict --saved_model runs/demo/model/export/<version> \
      --input impressions.jsonl --output scored.jsonl

Each output line is {"record": <input>, "predictions": {"ctr": ..., "cvr": ..., ...}} or,
for a bad record, {"record": <input>, "error": {"field", "reason", "detail"}}; bad records
never stop the others from being scored. Missing features and unknown categorical values
are served with defaults / the OOV bucket.
"""

import json
import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging
import tensorflow as tf

from serving import predictor
from serving import versions

FLAGS = flags.FLAGS
flags.DEFINE_string("saved_model", None, "An export version directory, or an export base / "
                    "MODEL_DIR (its newest complete version is used; incomplete ones are "
                    "skipped with a warning).", required=True)
flags.DEFINE_string("input", None, "JSON Lines file of raw impression records.", required=True)
flags.DEFINE_string("output", None, "JSON Lines file to write (one line per input record).",
                    required=True)
flags.DEFINE_integer("batch_size", 512, "Records per SavedModel call.")


def main(argv):
  del argv
  model = predictor.Predictor(versions.resolve_saved_model(FLAGS.saved_model), FLAGS.batch_size)
  scored = errors = 0
  with tf.io.gfile.GFile(FLAGS.output, "w") as out:
    for result in model.score(predictor.read_jsonl(FLAGS.input)):
      out.write(json.dumps(result.to_json(), sort_keys=True) + "\n")
      if result.error:
        errors += 1
        logging.warning("record %d: %s", result.index + 1, result.error["detail"])
      else:
        scored += 1
  logging.info("Scored %d records, %d errors -> %s", scored, errors, FLAGS.output)


if __name__ == "__main__":
  app.run(main)
