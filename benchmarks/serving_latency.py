"""SavedModel serving latency on CPU: p50/p99 per call and examples/second.

  python -m benchmarks.serving_latency [--quick] [--saved_model DIR]

Flow position: the exported SavedModel (training/export.py), called in-process the way
TF Serving's session would, through both signatures:
  serving_default  serialized tf.Example [batch] (parsing is part of the graph)
  predict_raw      one dense tensor per feature (multivalent padded with the default)
and, for reference, the Python path of pipeline.predict (serving.predictor.Predictor:
JSON record -> codec -> serving_default). Inputs are real eval-split Examples; each
configuration is warmed up, then timed call by call (outputs fetched to numpy).
"""

import os
import time
from typing import Any, Dict, List, Sequence

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import logging  # pylint: disable=g-import-not-at-top
import numpy as np
import tensorflow as tf

from benchmarks import common
from features import example_codec
from features import parsing
from serving import predictor as predictor_lib
from training import data
from training import export as export_lib

NAME = "serving_latency"
BATCH_SIZES = (1, 64, 512)
WARMUP_CALLS = 5


def read_examples(data_dir: str, count: int) -> List[bytes]:
  """Up to `count` serialized eval Examples, repeated to exactly `count` if fewer."""
  files = data.list_files(data.split_pattern(data_dir, "eval"))
  dataset = tf.data.TFRecordDataset(files, compression_type="GZIP").take(count)
  examples = [record.numpy() for record in dataset]
  return [examples[i % len(examples)] for i in range(count)]


def raw_inputs(serialized: Sequence[bytes], spec) -> Dict[str, tf.Tensor]:
  """predict_raw inputs of a batch: scalars [batch], lists [batch, max_len] padded."""
  features, _ = parsing.parse_examples(tf.constant(list(serialized)), spec, label_names=[])
  inputs = {}
  for feature in spec:
    values = features[feature.name]
    if isinstance(values, tf.RaggedTensor):
      values = values.to_tensor(default_value=feature.default_value)
      if feature.weighted:
        inputs[feature.weight_key] = features[feature.weight_key].to_tensor(0.0)
    inputs[feature.name] = values
  return inputs


def time_calls(call, calls: int) -> List[float]:
  """Seconds of each of `calls` calls, after WARMUP_CALLS untimed ones."""
  for _ in range(WARMUP_CALLS):
    call()
  seconds = []
  for _ in range(calls):
    start = time.perf_counter()
    call()
    seconds.append(time.perf_counter() - start)
  return seconds


def _fetch(outputs: Dict[str, tf.Tensor]) -> None:
  for value in outputs.values():
    value.numpy()


def run(saved_model: str, data_dir: str, calls: int = 200, results_dir: str = common.RESULTS_DIR,
        batch_sizes: Sequence[int] = BATCH_SIZES, command: str = None) -> List[Dict[str, Any]]:
  """Times both signatures (and the Predictor) per batch size; writes serving_latency.md."""
  spec = export_lib.load_export_spec(saved_model)
  loaded = tf.saved_model.load(saved_model)
  serving_default = loaded.signatures[export_lib.SERVING_DEFAULT]
  predict_raw = loaded.signatures[export_lib.PREDICT_RAW]
  predictor = predictor_lib.Predictor(saved_model, batch_size=max(batch_sizes))
  codec = example_codec.ExampleCodec(spec)
  examples = read_examples(data_dir, max(batch_sizes))
  records = [{key: value for key, value in codec.to_dict(example).items()
              if key in spec.names} for example in examples]
  rows = []
  for batch_size in batch_sizes:
    serialized = tf.constant(examples[:batch_size])
    raw = raw_inputs(examples[:batch_size], spec)
    # Fewer calls for big batches keeps the run short; p99 needs >= 100 calls to mean much.
    n = max(20, calls if batch_size < 512 else calls // 4)
    paths = {
        "serving_default (serialized tf.Example)":
            lambda: _fetch(serving_default(examples=serialized)),
        "predict_raw (dense tensors)": lambda: _fetch(predict_raw(**raw)),
        "Predictor (JSON dicts -> codec -> serving_default)":
            lambda: list(predictor.score(records[:batch_size])),
    }
    for path, call in paths.items():
      seconds = time_calls(call, n)
      rows.append({"signature": path, "batch": batch_size, "calls": n,
                   "p50_ms": common.percentile_ms(seconds, 50),
                   "p99_ms": common.percentile_ms(seconds, 99),
                   "ex_per_s": batch_size * len(seconds) / sum(seconds)})
      logging.info("%s", rows[-1])
  table = common.markdown_table(
      ["path", "batch", "calls", "p50 ms", "p99 ms", "examples/s"],
      [[r["signature"], r["batch"], r["calls"], f"{r['p50_ms']:.2f}", f"{r['p99_ms']:.2f}",
        f"{r['ex_per_s']:,.0f}"] for r in rows])
  body = (f"SavedModel `{saved_model}` (ESMM: ctr, cvr, ctcvr), loaded in-process with "
          f"tf.saved_model.load, CPU only; inputs are eval-split Examples. Latency is one "
          f"call, outputs fetched to numpy, after {WARMUP_CALLS} warm-up calls. "
          f"TF Serving adds its RPC/REST and batching overhead on top.\n\n{table}")
  common.write_result(NAME, "Serving latency (SavedModel on CPU)", body, results_dir, command)
  print(body)
  return rows


def main(argv=None):
  parser = common.arg_parser(__doc__, "Fewer calls, small model data.")
  parser.add_argument("--saved_model", default=None,
                      help="Export version dir (default: train one on simulated data).")
  parser.add_argument("--data", default=None,
                      help="pipeline.preprocess output to take eval Examples from.")
  parser.add_argument("--impressions", type=int, default=None,
                      help="Simulated impressions when --data is not given (default 50k).")
  parser.add_argument("--calls", type=int, default=None,
                      help="Timed calls per configuration (default 1000, 200 with --quick).")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  data_dir = args.data or common.ensure_data(args.workdir, args.impressions or 50_000)
  saved_model = args.saved_model or common.ensure_model(args.workdir, data_dir)
  run(saved_model, data_dir, args.calls or (200 if args.quick else 1000), args.results_dir,
      command="python -m benchmarks.serving_latency" + (" --quick" if args.quick else ""))


if __name__ == "__main__":
  main()
