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
`ours_lazy_adam` is ours with `train.optimizer: lazy_adam` (training.optimizers.LazyAdam:
Adam that updates only the embedding rows in the batch), everything else equal; the
headline compares both optimizers of ours with DeepCTR (Adam) per CPU-second.
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
GOAL_CPU_RATIO = 1.5  # ours / DeepCTR, examples per CPU-second, at equal AUC
EQUAL_AUC = 0.005  # |AUC difference| that counts as equal on the quick data
DEFAULT_VARIANTS = ("ours", "ours_lazy_adam", "deepctr", "deepctr_no_metrics",
                    "ours_200_thresholds")
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
          "steady_steps": max(full_steps - WARMUP_STEPS - 1, 0),
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
    "ours_lazy_adam": ("ours with LazyAdam (train.optimizer lazy_adam: row-only moments "
                       "for embeddings)",
                       lambda data_dir, batch: train_ours(
                           data_dir, batch, train_overrides={"optimizer": "lazy_adam"})),
    "ours_adagrad": ("ours with Adagrad 0.05 (profiling: sparse optimizer updates)",
                     lambda data_dir, batch: train_ours(
                         data_dir, batch, train_overrides={"optimizer": "adagrad",
                                                           "learning_rate": 0.05})),
}


def run(data_dir: str, batch_size: int = 1024, results_dir: str = common.RESULTS_DIR,
        variants=DEFAULT_VARIANTS, command: str = None, in_process: bool = False
        ) -> Dict[str, Dict[str, Any]]:
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
          f"embedding 16, towers [128, 64], learning rate 0.002, Adam unless the row says "
          f"otherwise; AUCs exact on the {counts['eval']:,} eval examples after the epoch.", "",
          common.markdown_table(["model", "ex/s (epoch, incl. tracing)", "ex/s (steady)",
                                 "ex per CPU-s (steady)", "epoch s", "load avg",
                                 "CTR AUC", "CTCVR AUC", "params"], rows)]
  if "deepctr" in results:
    for variant in ("ours", "ours_lazy_adam"):
      if variant in results:
        suffix = variant[len("ours"):]
        results["ratio" + suffix] = (results[variant]["steady_ex_per_s"] /
                                     results["deepctr"]["steady_ex_per_s"])
        results["cpu_ratio" + suffix] = (results[variant]["steady_ex_per_cpu_s"] /
                                         results["deepctr"]["steady_ex_per_cpu_s"])
    if "ours" in results:
      body += ["", *_headline(results)]
  loads = [r["load_average_1m"] for r in results.values() if isinstance(r, dict)]
  if loads and max(loads) > os.cpu_count():
    body += ["", f"**Shared machine.** Other jobs shared the {os.cpu_count()} cores during "
             f"this run (1-minute load average {min(loads):.1f}-{max(loads):.1f}, see the "
             f"load avg column): wall rates are pessimistic and noisy, and CPU-time rates "
             f"vary too (see the noise estimate above, when `ours_200_thresholds` ran). "
             f"Rerun on an idle machine for clean numbers."]
  if "ours" in results:
    body += ["", PROFILE_SECTION.format(lazy_adam=_lazy_adam_notes(results, batch_size))]
  common.write_result(NAME, "Training throughput: ESMM, ours vs DeepCTR", "\n".join(body),
                      results_dir, command)
  print("\n".join(body))
  return results


def _auc_text(result: Dict[str, Any]) -> str:
  return f"CTR AUC {result['ctr_auc']:.4f}, CTCVR AUC {result['ctcvr_auc']:.4f}"


def _cpu_noise(results: Dict[str, Any]) -> float:
  """Relative run-to-run spread of ex per CPU-s, from two runs of (nearly) the same work.

  `ours` and `ours_200_thresholds` differ only in the training-time AUC thresholds, which
  cost nothing measurable (see the profile), so |a - b| / mean(a, b) estimates the noise
  of one measurement. NaN when either was not run.
  """
  if "ours" not in results or "ours_200_thresholds" not in results:
    return float("nan")
  a = results["ours"]["steady_ex_per_cpu_s"]
  b = results["ours_200_thresholds"]["steady_ex_per_cpu_s"]
  return abs(a - b) / (0.5 * (a + b))


def _headline(results: Dict[str, Any]) -> List[str]:
  """The ratio lines: ours (Adam, and LazyAdam if run) / DeepCTR, with AUCs and the goal."""
  theirs = results["deepctr"]
  noise = _cpu_noise(results)
  lines = ["Throughput ratio ours / DeepCTR (same training-time metrics, DeepCTR with "
           "Adam), steady state, examples per CPU-second of the training process "
           f"(goal >= {GOAL_CPU_RATIO}x at equal AUC, i.e. within {EQUAL_AUC}):", ""]
  verdicts, met, robust = [], False, False
  for variant, optimizer in (("ours", "Adam"), ("ours_lazy_adam", "LazyAdam")):
    if variant not in results:
      continue
    ours = results[variant]
    suffix = variant[len("ours"):]
    cpu_ratio, ratio = results["cpu_ratio" + suffix], results["ratio" + suffix]
    auc_gaps = {name: ours[f"{name}_auc"] - theirs[f"{name}_auc"] for name in ("ctr", "ctcvr")}
    lower = [f"{name.upper()} {gap:+.4f}" for name, gap in auc_gaps.items()
             if gap < -EQUAL_AUC]
    slightly_lower = [f"{name.upper()} {gap:+.4f}" for name, gap in auc_gaps.items()
                      if -EQUAL_AUC <= gap < 0]
    auc_verdict = "AUC equal or better"
    if slightly_lower:
      auc_verdict = (f"AUC slightly lower than DeepCTR's ({', '.join(slightly_lower)}) but "
                     f"within {EQUAL_AUC}, i.e. equal")
    lines.append(f"- ours ({optimizer}) / DeepCTR: **{cpu_ratio:.2f}x** per CPU-second "
                 f"({ratio:.2f}x wall); ours {_auc_text(ours)} vs DeepCTR "
                 f"{_auc_text(theirs)}.")
    if lower:
      verdicts.append(f"ours ({optimizer}) reaches {cpu_ratio:.2f}x but its AUC is lower "
                      f"than DeepCTR's by more than {EQUAL_AUC} ({', '.join(lower)}), so "
                      f"that speed does not count")
    elif cpu_ratio >= GOAL_CPU_RATIO:
      met = True
      verdicts.append(f"ours ({optimizer}) meets it: {cpu_ratio:.2f}x, {auc_verdict}")
      if noise != noise:  # NaN: no second run of the same work
        verdicts[-1] += " (no noise estimate: `ours_200_thresholds` was not run)"
        robust = True
      elif cpu_ratio / GOAL_CPU_RATIO - 1 < 2 * noise:  # two measurements in a ratio
        verdicts[-1] += (f", but only {100 * (cpu_ratio / GOAL_CPU_RATIO - 1):.0f}% above "
                         f"the goal, within this run's noise (below): not a robust result")
      else:
        robust = True
    else:
      verdicts.append(f"ours ({optimizer}) does not: {cpu_ratio:.2f}x < {GOAL_CPU_RATIO}x "
                      f"({auc_verdict})")
  status = "not met"
  if met:
    status = "met" if robust else "met in this run, but not beyond the noise"
  lines += ["", f"**The {GOAL_CPU_RATIO}x goal is {status}**: "
            + "; ".join(verdicts) + ". Per CPU-second is the comparable number when other "
            f"processes share the cores (load averages {results['ours']['load_average_1m']:.1f}"
            f" for ours and {theirs['load_average_1m']:.1f} for DeepCTR on "
            f"{os.cpu_count()} cores); wall rates compare only on an idle machine."]
  if noise == noise:  # not NaN
    lines += ["", f"Noise: `ours` and `ours_200_thresholds` (the same model and optimizer; "
              f"the AUC thresholds cost nothing measurable) differ by {100 * noise:.0f}% in "
              f"ex per CPU-s in this run. Each steady window is only "
              f"{results['ours']['steady_steps']} steps (about one CPU-second), "
              f"so on a loaded machine a ratio of two variants moves by up to about twice "
              f"that from run to run."]
  if "ours_lazy_adam" in results:
    speedup = (results["ours_lazy_adam"]["steady_ex_per_cpu_s"] /
               results["ours"]["steady_ex_per_cpu_s"])
    changes = {name: results["ours_lazy_adam"][f"{name}_auc"] - results["ours"][f"{name}_auc"]
               for name in ("ctr", "ctcvr")}
    if max(changes.values()) < 0:
      direction = "both lower with LazyAdam"
    elif min(changes.values()) < 0:
      direction = "one lower, one higher with LazyAdam"
    else:
      direction = "neither lower with LazyAdam"
    if max(abs(change) for change in changes.values()) <= EQUAL_AUC:
      direction += f"; within {EQUAL_AUC}, i.e. equal"
    lines += ["", f"LazyAdam vs Adam, both ours: {speedup:.2f}x examples per CPU-second; AUC "
              f"change CTR {changes['ctr']:+.4f}, CTCVR {changes['ctcvr']:+.4f} "
              f"({direction})."]
  return lines


def _lazy_adam_notes(results: Dict[str, Any], batch_size: int) -> str:
  """The profile section's LazyAdam bullet, from this run's measurements."""
  if "ours_lazy_adam" not in results:
    return ("- LazyAdam (`train.optimizer: lazy_adam`, training/optimizers.py) was not run "
            "here; run the `ours_lazy_adam` variant to measure it.")

  def cpu_ms(variant):  # CPU-ms per steady step of the whole process, input pipeline included
    return 1000.0 * batch_size / results[variant]["steady_ex_per_cpu_s"]

  lazy = results["ours_lazy_adam"]
  text = (f"- **LazyAdam is now implemented** (`train.optimizer: lazy_adam`, "
          f"training/optimizers.py): Adam on the towers, and for the embedding tables' "
          f"IndexedSlices gradients only the batch's rows of `m`, `v` and the table are "
          f"read and scattered. In this run ours takes {cpu_ms('ours'):.1f} CPU-ms per "
          f"steady step of {batch_size} with Adam and {cpu_ms('ours_lazy_adam'):.1f} with "
          f"LazyAdam (whole process, tf.data parsing included, so larger than the "
          f"train-step-only numbers above)")
  if "deepctr" in results:
    text += f", DeepCTR {cpu_ms('deepctr'):.1f}"
  text += (f"; LazyAdam's AUCs after the epoch: {_auc_text(lazy)} (ours with Adam: "
           f"{_auc_text(results['ours'])}). Rows absent from a batch keep their moments "
           f"and are not moved, unlike Adam, which is the usual lazy-Adam trade-off.")
  return text


# The one-off profile behind the optimizer work (taken with tf_keras' Adam before
# LazyAdam existed; its code is not part of this benchmark). {lazy_adam} is filled in
# from the run.
PROFILE_SECTION = """\
## Why: where a training step's CPU goes

One-off profile (same process, 8 cached batches of 1024 from this data, 30 timed steps
after 3 warm-up steps, CPU-seconds of the process; load average ~7; taken before
LazyAdam existed):

| step | CPU-ms / step | examples per CPU-s |
|---|---|---|
| ours, full `train_step` (3 tasks, AUC(10000) + log loss each) | 19.3 | 52,966 |
| ours, scorer forward + backward + Adam, no tfrs tasks / metrics | 18.7 | 54,857 |
| ours, scorer forward + backward + SGD | 13.3 | 76,800 |
| ours, scorer forward + backward + Adagrad | 13.7 | 74,927 |
| ours, scorer forward + backward, no optimizer | 10.7 | 96,000 |
| ours, feature encoder forward only (lookups, hashing, pooling) | 1.3 | 768,000 |
| DeepCTR `train_step` on precomputed ids (Adam, no metrics) | 20.0 | 51,200 |
| DeepCTR id lookups (its tf.data map) | 1.0 | 1,024,000 |

- Ours has no avoidable overhead in the model: the in-model transforms cost 1.3 ms of a
  19 ms step (DeepCTR pays 1.0 ms for the same lookups in tf.data), and the three tfrs
  tasks with their metrics 0.6 ms (AUC with 200 instead of 10000 thresholds makes no
  measurable difference, see the `ours_200_thresholds` row). Both models run the same
  math (737k parameters, 91% of them in the user_id / item_id / item_brand tables).
- **tf_keras' Adam was 40% of the step** (7.6 of 18.3 CPU-ms): given an IndexedSlices
  gradient it updates the *whole* first/second-moment slots of every embedding table
  each step (dense `m`, `v` decay), not only the rows in the batch. DeepCTR, on the same
  Adam, pays the same cost. Adagrad (sparse row updates) was as fast as SGD but its CTR
  AUC after one epoch fell to 0.533 (lr 0.05, untuned).
{lazy_adam}
- Further steps: `compute_metrics=not training` in the tfrs tasks (training-time AUCs
  only on validation, ~3%); larger batches (4096) amortise the per-step dense work (the
  towers' Adam, the metrics) but need the learning rate retuned.
- Tracing: the first step (tf.function tracing) takes most of the epoch time of both
  models on the 43k-example quick data, hence the "incl. tracing" column is far below
  the steady rate.
"""


def main(argv=None):
  parser = common.arg_parser(__doc__, "Small data (50k impressions).")
  parser.add_argument("--impressions", type=int, default=None,
                      help="Simulated impressions (default 300k, 50k with --quick).")
  parser.add_argument("--data", default=None, help="Use this pipeline.preprocess output.")
  parser.add_argument("--batch_size", type=int, default=1024, help="Batch size (both models).")
  parser.add_argument("--variants", default=",".join(DEFAULT_VARIANTS),
                      help=f"Comma-separated variants to run, of: {', '.join(VARIANTS)}.")
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
