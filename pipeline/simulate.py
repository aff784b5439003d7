r"""Entry point: simulate an e-commerce world and write its raw logs and truth.

  python -m pipeline.simulate --output runs/demo/raw --impressions 200000 --seed 42 \
      [--format jsonl|parquet] [--shards 4] [--corrupt_fraction 0.0]

A world shaped like Ali-CCP (issue 32; simulation.profiles), sparser after the click:

  python -m pipeline.simulate --output runs/aliccp/raw --impressions 1000000 \
      --profile aliccp [--target_purchase_per_click 0.0053] [--click_signal_share 0.091]

A world that changes, with conversions that take days, filed by day (issue 30):

  python -m pipeline.simulate --output runs/daily/raw --impressions 1000000 --days 30 \
      --new_users_per_day 0.02 --new_items_per_day 0.02 --user_churn_per_day 0.02 \
      --item_churn_per_day 0.02 --popularity_drift 0.1 --delay_model heavy_tailed \
      --attribution_window_s 604800 --layout daily

Flow: **pipeline.simulate** -> OUTPUT/{impressions,events}/ (raw log contract,
docs/DESIGN.md section 2) -> pipeline.preprocess (Beam); OUTPUT/truth/ and
OUTPUT/world.json -> evaluation (Bayes-optimal AUCs). The world itself is
simulation.world (library); this file only maps flags to a WorldConfig. A bad flag
value or an existing --output ends with one line `error: ...`, exit status 2
(pipeline/cli.py).
"""

import time

from absl import flags
from absl import logging

from pipeline import cli
from simulation import behaviour as behaviour_lib
from simulation import profiles
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
flags.DEFINE_float("late_fraction", None, "Share of purchases that land after the "
                   "attribution window (the Beam labels miss them; the truth does not); "
                   "--delay_model legacy only. Default 0.02 with legacy, 0 with "
                   "heavy_tailed (which refuses any other value).",
                   lower_bound=0.0, upper_bound=1.0)
flags.DEFINE_integer("attribution_window_s", 86400, "Attribution window of the label "
                     "pipeline (data.attribution_window_s), in seconds.", lower_bound=1)
flags.DEFINE_enum("profile", "default", list(profiles.PROFILES), "A named world shape "
                  "(simulation.profiles): default (today's world) or aliccp (Ali-CCP's "
                  "published marginals: CTR 4.05%, 0.53% of clicks buy, 210 impressions per "
                  "user and 19.5 per item). Explicit --users, --items, --target_ctr, "
                  "--target_purchase_per_click and --click_signal_share override it.")
flags.DEFINE_float("target_ctr", None, "Mean click probability over exposures (default "
                   "the profile's, else simulation.world_config.BehaviourParams.target_ctr, "
                   "0.045); lower = sparser clicks, fewer click-space CVR training "
                   "examples.")
flags.DEFINE_float("target_purchase_per_click", None, "Mean P(buy | click) over clicks: "
                   "the post-click sparsity (default the profile's, else 0.07; Ali-CCP "
                   "0.0053).")
flags.DEFINE_float("click_signal_share", None, "Share in [0, 1] of the click logit's item "
                   "spread that the purchase shares (match and quality) rather than "
                   "clickbait (attractiveness), at the default world's total spread "
                   "(simulation.profiles; default world 0.091).")
flags.DEFINE_float("new_users_per_day", 0.0, "Users arriving on each day after the "
                   "first, as a share of the initial users (Poisson count; fresh ids "
                   "continuing the numbering, same generative model). > 0 makes the world "
                   "dynamic (simulation.dynamics).", lower_bound=0.0)
flags.DEFINE_float("new_items_per_day", 0.0, "Items arriving on each day after the first, "
                   "as a share of the initial items (like --new_users_per_day).",
                   lower_bound=0.0)
flags.DEFINE_float("user_churn_per_day", 0.0, "Daily probability that an active user "
                   "stops appearing for good.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_float("item_churn_per_day", 0.0, "Daily probability that an active item "
                   "stops appearing for good.", lower_bound=0.0, upper_bound=0.99)
flags.DEFINE_float("popularity_drift", 0.0, "Std of the daily Gaussian step of a random "
                   "walk on each item's log popularity (day d's exposures use day d's "
                   "popularity renormalised over the items active that day).",
                   lower_bound=0.0)
flags.DEFINE_enum("delay_model", "legacy", list(config_lib.DELAY_MODELS), "Purchase "
                  "timing: legacy (within minutes of the click, --late_fraction of them "
                  "after the window) or heavy_tailed (log-normal delay after the click "
                  "with a feature-dependent median, simulation.delays; a purchase after "
                  "--attribution_window_s is still emitted, its final label is 0; writes "
                  "truth/outcomes.jsonl.gz and the truth column p_purchase_in_window).")
flags.DEFINE_float("purchase_delay_median_s", config_lib.ConversionDelay.median_s,
                   "heavy_tailed: median purchase delay after the click, in seconds, of "
                   "an exposure with price_z = intent = 0.", lower_bound=1.0)
flags.DEFINE_float("purchase_delay_sigma", config_lib.ConversionDelay.sigma,
                   "heavy_tailed: log-space sigma of the purchase delay (the tail: how "
                   "many conversions arrive after a day).", lower_bound=0.01)
flags.DEFINE_float("purchase_delay_price_weight", config_lib.ConversionDelay.price_weight,
                   "heavy_tailed: log median delay per unit of the item's standardised "
                   "log price (> 0: dearer items take longer).")
flags.DEFINE_float("purchase_delay_intent_weight",
                   config_lib.ConversionDelay.intent_weight, "heavy_tailed: log median "
                   "delay per unit of the user's hidden intent (< 0: keen buyers are "
                   "quicker).")
flags.DEFINE_enum("layout", "flat", list(writer.LAYOUTS), "flat: impressions/ and "
                  "events/ hold the shards; daily: impressions/YYYY-MM-DD/ holds that UTC "
                  "day's impressions, events/YYYY-MM-DD/ the events that arrive that day "
                  "(--shards files per day folder; what pipeline.preprocess --day reads).")
flags.DEFINE_bool("oracle_features", False, "Also write the hidden factors every true "
                  "probability depends on (oracle_match, oracle_quality, ...) into each "
                  "impression, for the oracle run (configs/esmm_oracle.yaml).")
flags.DEFINE_bool("overwrite", False, "Replace an earlier simulation in --output instead "
                  "of failing.")


def main(argv):
  del argv
  late_fraction = FLAGS.late_fraction
  if late_fraction is None:
    late_fraction = 0.0 if FLAGS.delay_model == "heavy_tailed" else 0.02
  config = config_lib.WorldConfig(
      num_impressions=FLAGS.impressions, seed=FLAGS.seed, num_users=FLAGS.users,
      num_items=FLAGS.items, num_brands=FLAGS.brands, num_categories=FLAGS.categories,
      days=FLAGS.days, start_date=FLAGS.start_date,
      late_purchase_fraction=late_fraction,
      attribution_window_s=FLAGS.attribution_window_s,
      new_users_per_day=FLAGS.new_users_per_day, new_items_per_day=FLAGS.new_items_per_day,
      user_churn_per_day=FLAGS.user_churn_per_day,
      item_churn_per_day=FLAGS.item_churn_per_day,
      popularity_drift=FLAGS.popularity_drift, delay_model=FLAGS.delay_model,
      conversion_delay=config_lib.ConversionDelay(
          median_s=FLAGS.purchase_delay_median_s, sigma=FLAGS.purchase_delay_sigma,
          price_weight=FLAGS.purchase_delay_price_weight,
          intent_weight=FLAGS.purchase_delay_intent_weight))
  try:
    config = profiles.apply(config, FLAGS.profile, target_ctr=FLAGS.target_ctr,
                            target_purchase_per_click=FLAGS.target_purchase_per_click,
                            click_signal_share=FLAGS.click_signal_share)
    config.validate()
    writer.prepare_output(FLAGS.output, FLAGS.overwrite)   # fail before the work
  except (ValueError, FileExistsError) as e:
    raise cli.UserError(str(e)) from e
  start = time.time()
  try:
    world = world_lib.build_world(config)
  except ValueError as e:   # e.g. a day without any active user (churn too high)
    raise cli.UserError(str(e)) from e
  behaviour = behaviour_lib.sample_behaviour(world)
  logging.info("Simulated %d impressions in %.1fs", FLAGS.impressions, time.time() - start)
  summary = writer.write_simulation(
      world, behaviour, FLAGS.output, shards=FLAGS.shards, file_format=FLAGS.format,
      corrupt_fraction=FLAGS.corrupt_fraction, overwrite=FLAGS.overwrite,
      oracle_features=FLAGS.oracle_features, layout=FLAGS.layout)
  elapsed = time.time() - start
  logging.info("Done in %.1fs (%.0f impressions/s) -> %s: rates %s, selection bias %s, "
               "Bayes AUC %s", elapsed, FLAGS.impressions / max(elapsed, 1e-9),
               FLAGS.output, summary["rates"], summary["selection_bias"],
               summary["bayes_auc"])


if __name__ == "__main__":
  cli.run_main(main)
