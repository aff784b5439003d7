"""Compute the transform artifacts (vocabularies, mean/variance, bucket boundaries) on train.

Flow: SplitByTime -> train records -> **AnalyzeTransforms -> WriteTransformArtifacts** ->
OUTPUT/transform/ -> `features.artifacts.load_artifacts` -> the model's preprocessing
layers. The layout is documented in `features/artifacts.py`:

  * vocabulary: the `max_tokens` most frequent tokens, ties by token (utf-8 bytes
    ascending); int tokens as decimal strings. Empty tokens and tokens holding a line
    break cannot live in a one-token-per-line file: they are not counted (they map to
    the OOV bucket like any other unknown token).
  * normalize: population mean and variance, of log1p(max(x, 0)) when `log1p: true`.
  * bucketize: `beam.ApproximateQuantiles` with num_buckets + 1 quantiles; the
    num_buckets - 1 interior ones, deduplicated, are the boundaries.
  * hash: nothing to compute, `{"transform": "hash"}`.

Only present values count (a missing feature adds nothing). Work per record is a few
dict updates: a DoFn pre-aggregates per bundle (token counts, moments, batches of
values) and the combiners merge bundles, so the job scales to Dataflow.
"""

import collections
import math
import os
from typing import Any, Dict, List, Tuple

from absl import logging
import apache_beam as beam
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows

from features import artifacts as artifacts_lib
from features import spec as spec_lib

VOCABULARY = "vocabulary"
NORMALIZE = "normalize"
BUCKETIZE = "bucketize"
HASH = "hash"
COUNT = "count"

QUANTILE_BATCH = 10000  # values per feature buffered before they are emitted.
MAX_BUFFERED_TOKENS = 200000  # distinct (feature, token) counts held before a flush.


def vocabulary_token(dtype: str, value: Any) -> str:
  """The vocabulary file token of a coerced value (ints as decimal strings)."""
  return value if dtype == "string" else str(value)


def is_writable_token(token: str) -> bool:
  """Whether a token survives a one-token-per-line vocabulary file."""
  return bool(token) and "\n" not in token and "\r" not in token


def sort_vocabulary(token_counts: List[Tuple[int, str]], max_tokens: int) -> List[str]:
  """Tokens by count descending, ties by utf-8 bytes ascending, at most max_tokens."""
  ordered = sorted(token_counts, key=lambda count_token: (-count_token[0],
                                                          count_token[1].encode("utf-8")))
  return [token for _, token in ordered[:max_tokens]]


def merge_moments(a: Tuple[int, float, float], b: Tuple[int, float, float]
                  ) -> Tuple[int, float, float]:
  """Merges (count, mean, sum of squared deviations) pairs (Chan et al.)."""
  n_a, mean_a, m2_a = a
  n_b, mean_b, m2_b = b
  n = n_a + n_b
  if n == 0:
    return 0, 0.0, 0.0
  delta = mean_b - mean_a
  mean = mean_a + delta * n_b / n
  return n, mean, m2_a + m2_b + delta * delta * n_a * n_b / n


def interior_boundaries(quantiles: List[float]) -> List[float]:
  """Bucket boundaries from [min, q_1, ..., q_{k-1}, max]: interior values, deduplicated."""
  return sorted({float(q) for q in quantiles[1:-1]})


class _MomentsCombineFn(beam.CombineFn):
  """Merges (count, mean, m2) triples."""

  def create_accumulator(self):
    return 0, 0.0, 0.0

  def add_input(self, accumulator, moments):
    return merge_moments(accumulator, moments)

  def merge_accumulators(self, accumulators):
    result = (0, 0.0, 0.0)
    for accumulator in accumulators:
      result = merge_moments(result, accumulator)
    return result

  def extract_output(self, accumulator):
    return accumulator


class _AnalyzerInputsFn(beam.DoFn):
  """Train records -> per-bundle partial statistics on three tagged outputs.

  vocabulary: ((feature, token), count); normalize: (feature, (n, mean, m2));
  bucketize: (feature, [values]).
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._spec = spec
    self._skipped = beam.metrics.Metrics.counter("analyze", "vocabulary_tokens_skipped")

  def setup(self):
    self._vocab = [(f.name, f.dtype, f.multivalent) for f in self._spec
                   if f.transform == VOCABULARY]
    self._normalize = [(f.name, f.log1p) for f in self._spec if f.transform == NORMALIZE]
    self._bucketize = [(f.name, f.multivalent) for f in self._spec if f.transform == BUCKETIZE]

  def start_bundle(self):
    self._counts = collections.Counter()
    self._moments = {name: [0, 0.0, 0.0] for name, _ in self._normalize}
    self._values = {name: [] for name, _ in self._bucketize}

  def process(self, record):
    features = record["features"]
    counts = self._counts
    for name, dtype, multivalent in self._vocab:
      value = features.get(name)
      if value is None:
        continue
      for item in (value if multivalent else (value,)):
        token = vocabulary_token(dtype, item)
        if is_writable_token(token):
          counts[(name, token)] += 1
        else:
          self._skipped.inc()
    for name, log1p in self._normalize:
      value = features.get(name)
      if value is None:
        continue
      if log1p:
        value = math.log1p(max(value, 0.0))
      moments = self._moments[name]  # Welford's update.
      moments[0] += 1
      delta = value - moments[1]
      moments[1] += delta / moments[0]
      moments[2] += delta * (value - moments[1])
    for name, multivalent in self._bucketize:
      value = features.get(name)
      if value is None:
        continue
      buffer = self._values[name]
      if multivalent:
        buffer.extend(value)
      else:
        buffer.append(value)
      if len(buffer) >= QUANTILE_BATCH:
        yield beam.pvalue.TaggedOutput(BUCKETIZE, (name, buffer))
        self._values[name] = []
    if len(counts) >= MAX_BUFFERED_TOKENS:
      for key_count in counts.items():
        yield beam.pvalue.TaggedOutput(VOCABULARY, key_count)
      counts.clear()

  def finish_bundle(self):
    for key_count in self._counts.items():
      yield beam.pvalue.TaggedOutput(VOCABULARY, GlobalWindows.windowed_value(key_count))
    for name, moments in self._moments.items():
      if moments[0]:
        yield beam.pvalue.TaggedOutput(NORMALIZE, GlobalWindows.windowed_value(
            (name, tuple(moments))))
    for name, values in self._values.items():
      if values:
        yield beam.pvalue.TaggedOutput(BUCKETIZE, GlobalWindows.windowed_value((name, values)))


def assemble_artifacts(pieces: List[Tuple[str, Any, Any]],
                       spec: spec_lib.FeatureSpec) -> Dict[str, Any]:
  """Joins the computed pieces into {"train_examples", "features", "vocabularies"}.

  Features without data get empty statistics (an empty vocabulary, mean 0 and
  variance 0, no boundaries), with a warning.
  """
  by_feature = {(kind, name): value for kind, name, value in pieces}
  train_examples = by_feature.get((COUNT, None), 0)
  features: Dict[str, Dict[str, Any]] = {}
  vocabularies: Dict[str, List[str]] = {}
  for feature in spec:
    name = feature.name
    if feature.transform == HASH:
      features[name] = {"transform": HASH}
    elif feature.transform == VOCABULARY:
      tokens = by_feature.get((VOCABULARY, name), [])[:feature.max_tokens]
      vocabularies[name] = tokens
      features[name] = {"transform": VOCABULARY,
                        "vocabulary_file": f"{artifacts_lib.VOCAB_DIR}/{name}.txt",
                        "vocabulary_size": len(tokens)}
      if not tokens:
        logging.warning("Feature %r: no values on train, its vocabulary is empty", name)
    elif feature.transform == NORMALIZE:
      count, mean, m2 = by_feature.get((NORMALIZE, name), (0, 0.0, 0.0))
      if not count:
        logging.warning("Feature %r: no values on train, mean 0 and variance 0", name)
      features[name] = {"transform": NORMALIZE, "mean": float(mean),
                        "variance": float(m2 / count) if count else 0.0}
    elif feature.transform == BUCKETIZE:
      boundaries = interior_boundaries(by_feature.get((BUCKETIZE, name), []))
      if len(boundaries) < feature.num_buckets - 1:
        logging.warning("Feature %r: %d distinct boundaries for %d buckets", name,
                        len(boundaries), feature.num_buckets)
      features[name] = {"transform": BUCKETIZE, "boundaries": boundaries}
  return {"train_examples": int(train_examples), "features": features,
          "vocabularies": vocabularies}


class AnalyzeTransforms(beam.PTransform):
  """Train records -> a single dict {"train_examples", "features", "vocabularies"}.

  `features` is the `transform.json` mapping of `features/artifacts.py`; `vocabularies`
  maps each vocabulary feature to its tokens, most frequent first.

  Args:
    spec: the feature spec.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec

  def expand(self, records):
    spec = self._spec
    partial = records | "Partial" >> beam.ParDo(_AnalyzerInputsFn(spec)).with_outputs(
        VOCABULARY, NORMALIZE, BUCKETIZE)
    pieces = [records
              | "CountExamples" >> beam.combiners.Count.Globally()
              | "CountPiece" >> beam.Map(lambda n: (COUNT, None, n))]

    vocab_features = {f.name: f.max_tokens for f in spec if f.transform == VOCABULARY}
    if vocab_features:
      pieces.append(
          partial[VOCABULARY]
          | "SumTokenCounts" >> beam.CombinePerKey(sum)
          | "ByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[1], kv[0][1])))
          | "TopTokens" >> beam.combiners.Top.PerKey(
              max(vocab_features.values()),
              key=lambda count_token: (-count_token[0], count_token[1].encode("utf-8")),
              reverse=True)
          | "VocabularyPiece" >> beam.Map(lambda kv: (VOCABULARY, kv[0], sort_vocabulary(
              kv[1], vocab_features[kv[0]]))))

    if any(f.transform == NORMALIZE for f in spec):
      pieces.append(
          partial[NORMALIZE]
          | "MergeMoments" >> beam.CombinePerKey(_MomentsCombineFn())
          | "NormalizePiece" >> beam.Map(lambda kv: (NORMALIZE, kv[0], kv[1])))

    for feature in spec:
      if feature.transform != BUCKETIZE:
        continue
      name = feature.name
      pieces.append(
          partial[BUCKETIZE]
          | f"Values_{name}" >> beam.FlatMap(
              lambda kv, name=name: [kv[1]] if kv[0] == name else [])
          | f"Quantiles_{name}" >> beam.ApproximateQuantiles.Globally(
              feature.num_buckets + 1, input_batched=True)
          | f"BucketizePiece_{name}" >> beam.Map(lambda q, name=name: (BUCKETIZE, name, q)))

    return (pieces
            | "FlattenPieces" >> beam.Flatten()
            | "Gather" >> beam.combiners.ToList()
            | "Assemble" >> beam.Map(assemble_artifacts, spec))


def write_artifacts(analysis: Dict[str, Any], directory: str) -> str:
  """Writes vocab/<feature>.txt files and transform.json; returns the directory."""
  vocab_dir = os.path.join(directory, artifacts_lib.VOCAB_DIR)
  tf.io.gfile.makedirs(vocab_dir)
  for name, tokens in analysis["vocabularies"].items():
    with tf.io.gfile.GFile(os.path.join(vocab_dir, f"{name}.txt"), "w") as f:
      f.write("".join(token + "\n" for token in tokens))
  artifacts_lib.TransformArtifacts(directory=directory, features=analysis["features"],
                                   train_examples=analysis["train_examples"]).write()
  logging.info("Wrote transform artifacts of %d features (%d train examples) to %s",
               len(analysis["features"]), analysis["train_examples"], directory)
  return directory


class WriteTransformArtifacts(beam.PTransform):
  """The output of AnalyzeTransforms -> files under `directory` (OUTPUT/transform)."""

  def __init__(self, directory: str):
    super().__init__()
    self._directory = directory

  def expand(self, analysis):
    return analysis | "Write" >> beam.Map(write_artifacts, self._directory)
