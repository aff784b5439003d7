"""Entry point: a starter experiment config and feature spec from your own raw logs.

  python -m pipeline.init --impressions 'logs/impressions/*.jsonl.gz' \
      --events 'logs/events/*.jsonl.gz' --out my_experiment \
      [--sample_rows 100000] [--max_vocabulary 1000] [--max_hash_buckets 1048576] \
      [--map_event view_details=micro] [--overwrite]

Flow: raw logs (the raw log contract) -> **pipeline.init** (features/spec_inference.py) ->
OUT/config.yaml + OUT/features.yaml -> pipeline.preprocess --config OUT/config.yaml ->
pipeline.train --config OUT/config.yaml -> pipeline.evaluate / pipeline.predict.
Every field of the impressions gets a type and a transform chosen from a sample's
statistics, every event name a label where the name says it (the others are listed in
the config for you to map), and the split dates come from the logs: data.eval_from is the
last day, train.validation_from the day before. A comment beside each choice says why.
"""

import glob
import os
import time

from absl import flags
from absl import logging

from configs import config as config_lib
from pipeline import cli

# features.spec_inference (Beam's file systems, pyarrow, TensorFlow through the parsers)
# is imported in main after the flags, --out and the local globs are checked: start-up
# time of --help and of a user error (0.3 s instead of 4 s idle).

FLAGS = flags.FLAGS
flags.DEFINE_string("impressions", None, "Glob(s), comma-separated, of the impression logs "
                    "(.jsonl, .jsonl.gz or .parquet; local or gs://).", required=True)
flags.DEFINE_string("events", None, "Glob(s), comma-separated, of the behaviour event logs.",
                    required=True)
flags.DEFINE_string("out", None, "Directory to write config.yaml and features.yaml into.",
                    required=True)
flags.DEFINE_integer("sample_rows", config_lib.DEFAULT_SAMPLE_ROWS, "Impressions sampled "
                     "(uniformly, over every file) for the feature statistics; the last day "
                     "and the event names are read from every row.", lower_bound=1)
flags.DEFINE_integer("max_vocabulary", config_lib.DEFAULT_MAX_VOCABULARY, "A string or id "
                     "field with at most this many distinct values (estimated over the whole "
                     "log) gets a vocabulary; more are hashed.", lower_bound=1)
flags.DEFINE_integer("max_hash_buckets", config_lib.DEFAULT_MAX_HASH_BUCKETS, "Largest "
                     "hash_buckets written (buckets = the power of two at or above twice the "
                     "distinct values).", lower_bound=2)
flags.DEFINE_multi_string("map_event", [], "NAME=LABEL, repeatable: map the event name NAME to "
                          "the label click, micro, action or purchase (for names init cannot "
                          "read).")
flags.DEFINE_integer("seed", 0, "Seed of the sample (the same logs and seed give the same "
                     "files).")
flags.DEFINE_bool("overwrite", False, "Replace config.yaml / features.yaml already in --out.")

CONFIG_FILE = "config.yaml"
SPEC_FILE = "features.yaml"


def _event_map(values):
  mapping = {}
  for value in values:
    name, sep, label = value.partition("=")
    if not sep or not name or not label:
      raise cli.UserError(f"--map_event {value!r}: expected NAME=LABEL, e.g. clk=click")
    mapping[name] = label
  return mapping


def _patterns(flag: str, value: str):
  """The comma-separated globs of --FLAG (configs.config.split_patterns).

  A local glob that matches no file fails here, before Beam is imported to read it
  (glob's recursive match is a superset of Beam's local one); gs:// globs are checked
  when they are read.
  """
  patterns = config_lib.split_patterns(value)
  for pattern in patterns:
    if "://" not in pattern and not glob.glob(pattern, recursive=True):
      raise cli.UserError(f"--{flag} {pattern}: no file matches")
  return patterns


def main(argv):
  del argv
  config_path = os.path.join(FLAGS.out, CONFIG_FILE)
  spec_path = os.path.join(FLAGS.out, SPEC_FILE)
  existing = [path for path in (config_path, spec_path) if os.path.exists(path)]
  if existing and not FLAGS.overwrite:
    raise cli.UserError(f"{existing[0]} exists: pass --overwrite to replace it")
  event_map = _event_map(FLAGS.map_event)
  impressions = _patterns("impressions", FLAGS.impressions)
  events = _patterns("events", FLAGS.events)
  from features import spec_inference  # pylint: disable=g-import-not-at-top  # start-up time
  start = time.time()
  try:
    starter = spec_inference.infer_starter(
        impressions, events, sample_rows=FLAGS.sample_rows,
        max_vocabulary=FLAGS.max_vocabulary, max_hash_buckets=FLAGS.max_hash_buckets,
        user_event_map=event_map, seed=FLAGS.seed, spec_file=SPEC_FILE)
  except spec_inference.InferenceError as e:
    raise cli.UserError(str(e)) from e
  os.makedirs(FLAGS.out, exist_ok=True)
  with open(spec_path, "w") as f:
    f.write(starter.spec_yaml)
  with open(config_path, "w") as f:
    f.write(starter.config_yaml)
  logging.info("Read %d impressions and %d events in %.1fs; %d features (%d fields not), "
               "labels %s, unmapped events %s, eval_from %s -> %s, %s",
               starter.impressions.rows, starter.events.rows, time.time() - start,
               len(starter.features), len(starter.skipped), starter.mapping.events_of,
               list(starter.mapping.unmapped), starter.dates.eval_from, config_path, spec_path)


if __name__ == "__main__":
  cli.run_main(main)
