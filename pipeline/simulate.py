r"""Entry point: simulate an e-commerce world and write its raw logs and truth.

  python -m pipeline.simulate --output runs/demo/raw --impressions 200000 --seed 42 \
      [--format jsonl|parquet] [--shards 4] [--corrupt_fraction 0.0]

Flow: **pipeline.simulate** -> OUTPUT/{impressions,events}/ (raw log contract,
docs/DESIGN.md section 2) -> pipeline.preprocess (Beam); OUTPUT/truth/ and
OUTPUT/world.json -> evaluation (Bayes-optimal AUCs). The world itself is
simulation.world (library); this file only maps flags to a WorldConfig. A bad flag
value or an existing --output ends with one line `error: ...`, exit status 2
(pipeline/cli.py).
"""

import dataclasses
import time

from absl import flags
from absl import logging

from pipeline import cli
from simulation import behaviour as behaviour_lib
from simulation import world as world_lib
from simulation import world_config as config_lib
from simulation import writer

FLAGS = flags.FLAGS
flags.DEFINE_string("output", None, "Output directory (impressions/, events/, truth/, "
                    "world.json).", required=True)
flags.DEFINE_integer("impressions", 200_000, "Number of impressions (exposures).",
                     lower_bound=1)
flags.DEFINE_integer("seed", 42, "Seed of every random stream; same flags + seed -> "
                     "byte-identical files.")
flags.DEFINE_integer("users", 0, "Number of users; 0 = max(200, impressions // 40).",
                     lower_bound=0)
flags.DEFINE_integer("items", 0, "Number of items; 0 = max(2 * categories, 100, "
                     "impressions // 100).", lower_bound=0)
flags.DEFINE_integer("brands", 0, "Number of brands; 0 = max(categories, items // 10).",
                     lower_bound=0)
flags.DEFINE_integer("categories", 48, "Number of item categories.", lower_bound=2)
flags.DEFINE_integer("days", 8, "Impressions are spread uniformly over this many UTC "
                     "days; with the defaults the last day is the eval split "
                     "(data.eval_from 2026-01-08).", lower_bound=1)
flags.DEFINE_string("start_date", "2026-01-01", "First day (YYYY-MM-DD, UTC midnight).")
flags.DEFINE_enum("format", "jsonl", list(writer.FORMATS), "File type of impressions "
                  "and events: gzip JSON Lines or Parquet (the truth is always JSONL).")
flags.DEFINE_integer("shards", 4, "Files per log type (impressions, events).",
                     lower_bound=1)
flags.DEFINE_float("corrupt_fraction", 0.0, "Add about this share of bad lines "
                   "(malformed JSON, missing fields, duplicate ids, unknown ids, events "
                   "without a click) for dead-letter tests; counts go to world.json.",
                   lower_bound=0.0, upper_bound=0.5)
flags.DEFINE_float("late_fraction", 0.02, "Share of purchases that land after the "
                   "attribution window (the Beam labels miss them; the truth does not).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("attribution_window_s", 86400, "Attribution window of the label "
                     "pipeline (data.attribution_window_s), in seconds.", lower_bound=1)
flags.DEFINE_float("target_ctr", None, "Mean click probability over exposures (default "
                   "simulation.world_config.BehaviourParams.target_ctr, 0.045); lower = "
                   "sparser clicks, fewer click-space CVR training examples.")
flags.DEFINE_bool("oracle_features", False, "Also write the hidden factors every true "
                  "probability depends on (oracle_match, oracle_quality, ...) into each "
                  "impression, for the oracle run (configs/esmm_oracle.yaml).")
flags.DEFINE_bool("overwrite", False, "Replace an earlier simulation in --output instead "
                  "of failing.")


def main(argv):
  del argv
  config = config_lib.WorldConfig(
      num_impressions=FLAGS.impressions, seed=FLAGS.seed, num_users=FLAGS.users,
      num_items=FLAGS.items, num_brands=FLAGS.brands, num_categories=FLAGS.categories,
      days=FLAGS.days, start_date=FLAGS.start_date,
      late_purchase_fraction=FLAGS.late_fraction,
      attribution_window_s=FLAGS.attribution_window_s)
  if FLAGS.target_ctr is not None:
    config = dataclasses.replace(config, behaviour=dataclasses.replace(
        config.behaviour, target_ctr=FLAGS.target_ctr))
  try:
    config.validate()
    writer.prepare_output(FLAGS.output, FLAGS.overwrite)   # fail before the work
  except (ValueError, FileExistsError) as e:
    raise cli.UserError(str(e)) from e
  start = time.time()
  world = world_lib.build_world(config)
  behaviour = behaviour_lib.sample_behaviour(world)
  logging.info("Simulated %d impressions in %.1fs", FLAGS.impressions, time.time() - start)
  summary = writer.write_simulation(
      world, behaviour, FLAGS.output, shards=FLAGS.shards, file_format=FLAGS.format,
      corrupt_fraction=FLAGS.corrupt_fraction, overwrite=FLAGS.overwrite,
      oracle_features=FLAGS.oracle_features)
  elapsed = time.time() - start
  logging.info("Done in %.1fs (%.0f impressions/s) -> %s: rates %s, selection bias %s, "
               "Bayes AUC %s", elapsed, FLAGS.impressions / max(elapsed, 1e-9),
               FLAGS.output, summary["rates"], summary["selection_bias"],
               summary["bayes_auc"])


if __name__ == "__main__":
  cli.run_main(main)
