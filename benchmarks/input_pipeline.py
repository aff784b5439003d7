"""Input pipeline vs training step: which one bounds training throughput?

  python -m benchmarks.input_pipeline [--quick] [--data DIR]

Flow position: training.data.make_dataset (GZIP TFRecords -> interleave -> shuffle ->
batch -> vectorised parse -> prefetch) feeding our ESMM's train step. Three rates:
  input only      iterate make_dataset (shuffle as in training), no model
  step only       model.fit on a few batches cached in memory and repeated (no input cost)
  end to end      model.fit on make_dataset, as pipeline.train runs it
If "input only" is well above "step only", the train step is the bottleneck.
"""

import os
import time
from typing import Any, Dict

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tf_keras

from benchmarks import common
from benchmarks import training_throughput
from configs import config as config_lib
from features import artifacts as artifacts_lib
from models import registry
from training import data
from training import trainer

NAME = "input_pipeline"
CACHED_BATCHES = 8


def input_rate(data_dir: str, spec, label_names, batch_size: int, passes: int,
               seed: int) -> Dict[str, float]:
  """Examples/second make_dataset delivers (first pass included: no warm data)."""
  dataset = data.make_dataset(data.split_pattern(data_dir, "train"), spec, label_names,
                              batch_size, shuffle=True, seed=seed)
  examples = 0
  start = time.perf_counter()
  for _ in range(passes):
    for _, labels in dataset:
      examples += int(labels["click"].shape[0])
  seconds = time.perf_counter() - start
  return {"examples": examples, "seconds": seconds, "ex_per_s": examples / seconds}


def _fit_rate(model, dataset, steps: int, batch_size: int) -> Dict[str, float]:
  timer = training_throughput.StepTimer()
  model.fit(dataset, epochs=1, steps_per_epoch=steps, callbacks=[timer], verbose=0)
  ends = timer.step_ends
  warm = min(training_throughput.WARMUP_STEPS, len(ends) - 2)
  seconds = ends[-1] - ends[warm]
  return {"examples": (len(ends) - warm - 1) * batch_size, "seconds": seconds,
          "ex_per_s": (len(ends) - warm - 1) * batch_size / seconds}


def run(data_dir: str, batch_size: int = 1024, passes: int = 1,
        results_dir: str = common.RESULTS_DIR, command: str = None) -> Dict[str, Any]:
  """Measures the three rates and writes results_dir/input_pipeline.md."""
  config = config_lib.load_config(common.ESMM_CONFIG,
                                  overrides={"train": {"batch_size": batch_size}})
  spec = config.load_feature_spec()
  label_names = config.data.label_names
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(data_dir))
  train_examples = trainer.read_counts(data_dir)["impressions"]["written"]["train"]
  steps = max(training_throughput.WARMUP_STEPS + 3, passes * train_examples // batch_size)
  seed = config.train.seed

  results = {"input only (make_dataset)": input_rate(data_dir, spec, label_names, batch_size,
                                                     passes, seed)}
  tf_keras.utils.set_random_seed(seed)
  model = registry.build_model(config, spec, artifacts)
  model.compile(optimizer=trainer.make_optimizer(config.train))
  pattern = data.split_pattern(data_dir, "train")
  cached = data.make_dataset(pattern, spec, label_names, batch_size, shuffle=True, seed=seed,
                             drop_remainder=True).take(CACHED_BATCHES).cache().repeat()
  results[f"step only ({CACHED_BATCHES} cached batches)"] = _fit_rate(model, cached, steps,
                                                                     batch_size)
  real = data.make_dataset(pattern, spec, label_names, batch_size, shuffle=True, seed=seed,
                           repeat=True, drop_remainder=True)
  results["end to end (fit on make_dataset)"] = _fit_rate(model, real, steps, batch_size)

  step_rate = results[f"step only ({CACHED_BATCHES} cached batches)"]["ex_per_s"]
  rows = [[name, f"{r['examples']:,}", f"{r['seconds']:.1f}", f"{r['ex_per_s']:,.0f}",
           f"{r['ex_per_s'] / step_rate:.2f}"] for name, r in results.items()]
  body = (f"Train split of {data_dir} ({train_examples:,} examples), batch {batch_size}, "
          f"our ESMM (configs/esmm.yaml). Fit rates exclude the first "
          f"{training_throughput.WARMUP_STEPS} steps (tracing).\n\n" +
          common.markdown_table(["what", "examples", "seconds", "examples/s",
                                 "x step-only rate"], rows))
  common.write_result(NAME, "Input pipeline vs training step", body, results_dir, command)
  print(body)
  return results


def main(argv=None):
  parser = common.arg_parser(__doc__, "Small data (50k impressions).")
  parser.add_argument("--data", default=None, help="Use this pipeline.preprocess output.")
  parser.add_argument("--impressions", type=int, default=None,
                      help="Simulated impressions (default 300k, 50k with --quick).")
  parser.add_argument("--passes", type=int, default=1, help="Passes over the train split.")
  parser.add_argument("--batch_size", type=int, default=1024, help="Batch size.")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  impressions = args.impressions or (50_000 if args.quick else 300_000)
  data_dir = args.data or common.ensure_data(args.workdir, impressions)
  run(data_dir, args.batch_size, args.passes, args.results_dir,
      command="python -m benchmarks.input_pipeline" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
  main()
