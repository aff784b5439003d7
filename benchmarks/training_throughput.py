"""Training throughput: our ESMM vs DeepCTR's ESMM on the same TFRecords and CPU.

  python -m benchmarks.training_throughput [--quick] [--impressions N] [--data DIR]

Flow position: reads pipeline.preprocess output (TFRecords + transform artifacts).
Ours: models.registry.build_model on training.data.make_dataset, `model.fit` for one
epoch, exactly the pipeline's training path (the raw features go in; hashing, lookups,
normalisation and pooling run inside the model). DeepCTR 0.9.4 (`deepctr.models.
multitask.ESMM`): the same feature set, embedding size, towers, optimizer, learning rate,
batch size and data; its inputs are ids, so the same Keras lookup layers (built from the
same transform artifacts) run in the tf.data map before the model, as DeepCTR expects.
Both get the same training-time metrics (AUC with the same thresholds + log loss per
output) unless `--no_train_metrics`, which removes them from DeepCTR only (ours always
reports them; see `ours_thresholds` for their cost).

Measured: examples/second over the epoch (tracing included) and in steady state (the
steps after the first WARMUP_STEPS), and the exact CTR and CTCVR AUC on the eval split
after the epoch (evaluation.metrics.auc), so speed is not bought with quality.
"""

import argparse
import json
import os
import time
from typing import Any, Dict, List

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf
import tf_keras

from benchmarks import common
from configs import config as config_lib
from evaluation import metrics as metrics_lib
from features import artifacts as artifacts_lib
from features import preprocessing
from models import multitask
from models import registry
from training import data
from training import trainer

NAME = "training_throughput"
WARMUP_STEPS = 5
DEEPCTR_MAXLEN = 8  # the simulator's recent-categories lists hold at most 5 values


def cpu_seconds() -> float:
  """User + system CPU seconds of this process (all its threads) so far."""
  times = os.times()
  return times.user + times.system


class StepTimer(tf_keras.callbacks.Callback):
  """Wall time and process CPU time at the end of every training step.

  CPU time makes the comparison robust to other jobs on a shared machine: examples per
  CPU-second does not drop when another process takes a core, wall rates do.
  """

  def __init__(self):
    super().__init__()
    self.step_ends: List[float] = []
    self.cpu_ends: List[float] = []
    self.start = None

  def on_train_begin(self, logs=None):
    self.start = time.perf_counter()

  def on_train_batch_end(self, batch, logs=None):
    self.step_ends.append(time.perf_counter())
    self.cpu_ends.append(cpu_seconds())


def _rates(timer: StepTimer, examples: int, batch_size: int) -> Dict[str, float]:
  ends = timer.step_ends
  total = ends[-1] - timer.start
  full_steps = examples // batch_size  # the last, partial batch is left out below
  steady = steady_cpu = float("nan")
  if full_steps > WARMUP_STEPS + 1:
    steady_examples = (full_steps - WARMUP_STEPS - 1) * batch_size
    steady = steady_examples / (ends[full_steps - 1] - ends[WARMUP_STEPS])
    steady_cpu = steady_examples / (timer.cpu_ends[full_steps - 1] -
                                    timer.cpu_ends[WARMUP_STEPS])
  return {"epoch_seconds": total, "epoch_ex_per_s": examples / total,
          "steady_ex_per_s": steady, "steady_ex_per_cpu_s": steady_cpu, "steps": len(ends),
          "load_average_1m": os.getloadavg()[0]}


def _eval_aucs(predict_batches) -> Dict[str, float]:
  """Exact AUCs from an iterable of (ctr [b], ctcvr [b], click [b], purchase [b])."""
  ctr, ctcvr, click, purchase = (np.concatenate(parts) for parts in zip(*predict_batches))
  return {"ctr_auc": metrics_lib.auc(click, ctr),
          "ctcvr_auc": metrics_lib.auc(click * purchase, ctcvr),
          "eval_examples": int(click.size)}


def _setup(data_dir: str, batch_size: int, train_overrides: Dict[str, Any] = None):
  config = config_lib.load_config(
      common.ESMM_CONFIG, overrides={"train": dict(train_overrides or {}, batch_size=batch_size)})
  spec = config.load_feature_spec()
  artifacts = artifacts_lib.load_artifacts(artifacts_lib.transform_dir(data_dir))
  examples = trainer.read_counts(data_dir)["impressions"]["written"]["train"]
  return config, spec, artifacts, examples


def train_ours(data_dir: str, batch_size: int, ours_thresholds: int = None,
               train_overrides: Dict[str, Any] = None) -> Dict[str, Any]:
  """One epoch of our ESMM with the pipeline's model and input code.

  Args:
    ours_thresholds: if set, the AUC thresholds of the training-time metrics
      (default: models.multitask.AUC_THRESHOLDS, what the pipeline uses).
    train_overrides: config `train` overrides (e.g. another optimizer), for profiling.
  """
  config, spec, artifacts, examples = _setup(data_dir, batch_size, train_overrides)
  label_names = config.data.label_names
  default_thresholds = multitask.AUC_THRESHOLDS
  if ours_thresholds:
    multitask.AUC_THRESHOLDS = ours_thresholds
  try:
    tf_keras.backend.clear_session()
    tf_keras.utils.set_random_seed(config.train.seed)
    model = registry.build_model(config, spec, artifacts)
    model.compile(optimizer=trainer.make_optimizer(config.train))
  finally:
    multitask.AUC_THRESHOLDS = default_thresholds
  train = data.make_dataset(data.split_pattern(data_dir, "train"), spec, label_names,
                            batch_size, shuffle=True, shuffle_buffer=config.train.shuffle_buffer,
                            seed=config.train.seed)
  timer = StepTimer()
  model.fit(train, epochs=1, callbacks=[timer], verbose=0)
  result = _rates(timer, examples, batch_size)

  scorer = model.scorer
  predict = tf.function(lambda features: scorer(features, training=False))

  def batches():
    for features, labels in data.make_dataset(data.split_pattern(data_dir, "eval"), spec,
                                              label_names, batch_size, shuffle=False):
      outputs = predict(features)
      yield (outputs["ctr"].numpy().ravel(), outputs["ctcvr"].numpy().ravel(),
             labels["click"].numpy(), labels["purchase"].numpy())

  result.update(_eval_aucs(batches()))
  result["params"] = int(scorer.count_params())
  return result


def deepctr_inputs(spec, artifacts, embedding_dim: int):
  """DeepCTR feature columns and a tf.data map: parsed raw features -> DeepCTR inputs.

  Categorical features -> SparseFeat ids (int32 [batch, 1]) from the same lookup layer
  our model uses (features.preprocessing.make_lookup); the multivalent one ->
  VarLenSparseFeat ids + 1 padded with 0 to DEEPCTR_MAXLEN (mean combiner, 0 = mask);
  numeric -> DenseFeat [batch, 1], standardised with the same statistics.
  """
  from deepctr import feature_column as fc  # pylint: disable=g-import-not-at-top
  columns, converters = [], {}
  for feature in spec:
    baked = preprocessing.bake_feature(feature, artifacts, embedding_dim)
    name = feature.name
    if baked["transform"] == "normalize":
      columns.append(fc.DenseFeat(name, 1))
      standardize = preprocessing.Standardize(baked["mean"], baked["variance"],
                                              baked["log1p"])
      converters[name] = lambda x, s=standardize: tf.reshape(s(x), [-1, 1])
      continue
    lookup = preprocessing.make_lookup(baked)
    vocabulary_size = preprocessing.num_ids(baked)
    if feature.multivalent:
      columns.append(fc.VarLenSparseFeat(
          fc.SparseFeat(name, vocabulary_size=vocabulary_size + 1,
                        embedding_dim=embedding_dim),
          maxlen=DEEPCTR_MAXLEN, combiner=feature.pooling))
      converters[name] = lambda x, l=lookup: tf.cast(
          x.with_flat_values(l(x.flat_values) + 1).to_tensor(
              0, shape=[None, DEEPCTR_MAXLEN]), tf.int32)
    else:
      columns.append(fc.SparseFeat(name, vocabulary_size=vocabulary_size,
                                   embedding_dim=embedding_dim))
      converters[name] = lambda x, l=lookup: tf.reshape(tf.cast(l(x), tf.int32), [-1, 1])

  def to_deepctr(features, labels):
    inputs = {name: convert(features[name]) for name, convert in converters.items()}
    targets = {"ctr": tf.reshape(labels["click"], [-1, 1]),
               "ctcvr": tf.reshape(labels["click"] * labels["purchase"], [-1, 1])}
    return inputs, targets

  return columns, to_deepctr


def train_deepctr(data_dir: str, batch_size: int, train_metrics: bool = True
                  ) -> Dict[str, Any]:
  """One epoch of DeepCTR's ESMM on the same data (see the module docstring)."""
  from deepctr.models import multitask as deepctr_multitask  # pylint: disable=g-import-not-at-top
  config, spec, artifacts, examples = _setup(data_dir, batch_size)
  model_config = config.model
  label_names = config.data.label_names
  tf_keras.backend.clear_session()
  tf_keras.utils.set_random_seed(config.train.seed)
  columns, to_deepctr = deepctr_inputs(spec, artifacts, model_config.embedding_dim)
  model = deepctr_multitask.ESMM(
      columns, tower_dnn_hidden_units=tuple(model_config.tower_units),
      l2_reg_embedding=0.0, l2_reg_dnn=model_config.l2, dnn_dropout=model_config.dropout,
      dnn_activation=model_config.activation, seed=config.train.seed)
  metrics = None
  if train_metrics:
    metrics = {name: [tf_keras.metrics.AUC(num_thresholds=multitask.AUC_THRESHOLDS,
                                           name=f"{name}_auc"),
                      tf_keras.metrics.BinaryCrossentropy(name=f"{name}_logloss")]
               for name in ("ctr", "ctcvr")}
  model.compile(optimizer=trainer.make_optimizer(config.train),
                loss={"ctr": "binary_crossentropy", "ctcvr": "binary_crossentropy"},
                metrics=metrics)

  def dataset(split, shuffle):
    return data.make_dataset(
        data.split_pattern(data_dir, split), spec, label_names, batch_size, shuffle=shuffle,
        shuffle_buffer=config.train.shuffle_buffer, seed=config.train.seed).map(
            to_deepctr, num_parallel_calls=tf.data.AUTOTUNE).prefetch(tf.data.AUTOTUNE)

  timer = StepTimer()
  model.fit(dataset("train", True), epochs=1, callbacks=[timer], verbose=0)
  result = _rates(timer, examples, batch_size)
  predict = tf.function(lambda inputs: model(inputs, training=False))

  def batches():
    for inputs, targets in dataset("eval", False):
      ctr, ctcvr = predict(inputs)
      click = targets["ctr"].numpy().ravel()
      clicked_and_bought = targets["ctcvr"].numpy().ravel()
      # _eval_aucs takes click * clicked_and_bought, which is clicked_and_bought (0/1).
      yield ctr.numpy().ravel(), ctcvr.numpy().ravel(), click, clicked_and_bought

  result.update(_eval_aucs(batches()))
  result["params"] = int(model.count_params())
  return result


# variant -> (table label, fn(data_dir, batch_size) -> measurements).
VARIANTS = {
    "ours": ("ours: pipeline ESMM (in-model transforms, 3 tasks x AUC(10000)+logloss)",
             train_ours),
    "deepctr": ("DeepCTR 0.9.4 ESMM (ids from tf.data, 2 outputs x AUC(10000)+logloss)",
                lambda data_dir, batch: train_deepctr(data_dir, batch, train_metrics=True)),
    "deepctr_no_metrics": ("DeepCTR 0.9.4 ESMM, no training-time metrics",
                           lambda data_dir, batch: train_deepctr(data_dir, batch, False)),
    "ours_200_thresholds": ("ours, training-time AUC with 200 thresholds (profiling)",
                            lambda data_dir, batch: train_ours(data_dir, batch, 200)),
    "ours_adagrad": ("ours with Adagrad 0.05 (profiling: sparse optimizer updates)",
                     lambda data_dir, batch: train_ours(
                         data_dir, batch, train_overrides={"optimizer": "adagrad",
                                                           "learning_rate": 0.05})),
}


def run(data_dir: str, batch_size: int = 1024, results_dir: str = common.RESULTS_DIR,
        variants=("ours", "deepctr", "deepctr_no_metrics", "ours_200_thresholds"),
        command: str = None, in_process: bool = False) -> Dict[str, Dict[str, Any]]:
  """Runs the variants one after another and writes results_dir/training_throughput.md.

  Args:
    in_process: run the variants in this process (tests); by default each runs in a
      fresh `python -m benchmarks.training_throughput --one_variant` process.
  """
  os.makedirs(results_dir, exist_ok=True)
  results = {}
  for variant in variants:
    label, fn = VARIANTS[variant]
    logging.info("Training throughput: %s", label)
    if in_process:
      measured = fn(data_dir, batch_size)
    else:  # A fresh process per variant: no shared warm-up, caches or graph state.
      json_path = os.path.join(results_dir, f".{NAME}_{variant}.json")
      common.run_module("benchmarks.training_throughput",
                        ["--data", data_dir, "--batch_size", str(batch_size),
                         "--one_variant", variant, "--json_out", json_path])
      with open(json_path) as f:
        measured = json.load(f)
      os.remove(json_path)
    results[variant] = dict(measured, label=label)
    logging.info("%s: %s", variant, results[variant])
  counts = trainer.read_counts(data_dir)["impressions"]["written"]
  rows = [[r["label"], f"{r['epoch_ex_per_s']:,.0f}", f"{r['steady_ex_per_s']:,.0f}",
           f"{r['steady_ex_per_cpu_s']:,.0f}", f"{r['epoch_seconds']:.1f}",
           f"{r['load_average_1m']:.1f}", f"{r['ctr_auc']:.4f}", f"{r['ctcvr_auc']:.4f}",
           f"{r['params']:,}"] for r in results.values()]
  body = [f"One epoch over {counts['train']:,} train examples ({data_dir}), batch {batch_size}, "
          f"embedding 16, towers [128, 64], Adam 0.002; AUCs exact on the {counts['eval']:,} "
          f"eval examples after the epoch.", "",
          common.markdown_table(["model", "ex/s (epoch, incl. tracing)", "ex/s (steady)",
                                 "ex per CPU-s (steady)", "epoch s", "load avg",
                                 "CTR AUC", "CTCVR AUC", "params"], rows)]
  if "ours" in results and "deepctr" in results:
    ours, theirs = results["ours"], results["deepctr"]
    ratio = ours["steady_ex_per_s"] / theirs["steady_ex_per_s"]
    cpu_ratio = ours["steady_ex_per_cpu_s"] / theirs["steady_ex_per_cpu_s"]
    body += ["", f"Throughput ratio ours / DeepCTR (same metrics), steady state: "
             f"**{cpu_ratio:.2f}x** per CPU-second of the training process, {ratio:.2f}x "
             f"wall (goal >= 1.5x). Per CPU-second is the comparable number when other "
             f"processes share the cores (load averages {ours['load_average_1m']:.1f} and "
             f"{theirs['load_average_1m']:.1f} on {os.cpu_count()} cores); wall rates "
             f"compare only on an idle machine."]
    results["ratio"] = ratio
    results["cpu_ratio"] = cpu_ratio
  common.write_result(NAME, "Training throughput: ESMM, ours vs DeepCTR", "\n".join(body),
                      results_dir, command)
  print("\n".join(body))
  return results


def main(argv=None):
  parser = common.arg_parser(__doc__, "Small data (50k impressions).")
  parser.add_argument("--impressions", type=int, default=None,
                      help="Simulated impressions (default 300k, 50k with --quick).")
  parser.add_argument("--data", default=None, help="Use this pipeline.preprocess output.")
  parser.add_argument("--batch_size", type=int, default=1024, help="Batch size (both models).")
  parser.add_argument("--variants", default="ours,deepctr,deepctr_no_metrics,ours_200_thresholds",
                      help="Comma-separated variants to run.")
  parser.add_argument("--one_variant", default=None, help=argparse.SUPPRESS)
  parser.add_argument("--json_out", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  if args.one_variant:
    with open(args.json_out, "w") as f:
      json.dump(VARIANTS[args.one_variant][1](args.data, args.batch_size), f)
    return
  impressions = args.impressions or (50_000 if args.quick else 300_000)
  data_dir = args.data or common.ensure_data(args.workdir, impressions)
  run(data_dir, args.batch_size, args.results_dir, tuple(args.variants.split(",")),
      command="python -m benchmarks.training_throughput" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
  main()
