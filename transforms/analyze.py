"""Compute the transform artifacts (vocabularies, mean/variance, bucket boundaries) on train.

Flow: SplitBatchesByTime -> train batches -> **AnalyzeBatches -> WriteTransformArtifacts** ->
OUTPUT/transform/ -> `features.artifacts.load_artifacts` -> the model's preprocessing
layers. The daily job sums the same per-bundle partials (`analyzer_pieces`) into one
state per day and merges a window of them (`transforms/analyzer_state.py`), which gives
the artifacts of one pass over the window byte for byte. The layout is documented in
`features/artifacts.py`:

  * vocabulary: the `max_tokens` most frequent tokens, ties by token (utf-8 bytes
    ascending); int tokens as decimal strings. Empty tokens and tokens holding a line
    break cannot live in a one-token-per-line file: they are not counted (they map to
    the OOV bucket like any other unknown token).
  * normalize: population mean and variance, of log1p(max(x, 0)) when `log1p: true`,
    from exact integer sums (`ExactMomentsCombineFn`).
  * bucketize: the k - 1 interior exact quantiles of the feature's (value, count)
    histogram, deduplicated (`histogram_quantiles`). Memory: each bucketize feature's
    histogram is gathered on one worker, one pair per distinct value, cheap for ints
    such as ages but as large as the data for a high-cardinality float.
  * hash: nothing to compute, `{"transform": "hash"}`.

Only present values count (a missing feature adds nothing). Every statistic is a sum of
integers (token and value counts, scaled sums) followed by one computation, so the
artifacts are byte-for-byte the same however the input is ordered and split into
bundles or workers (tests/test_beam_golden.py's Parquet world: 2 processes, the digests of
one worker). Per batch, each analysed column is
reduced to its distinct values with their counts (`pyarrow.compute.value_counts`, in
C++; list columns flattened first), and only the distinct values go through the Python
rules (`vocabulary_token`, `is_writable_token`, `math.log1p(max(x, 0.0))`,
`histogram_value`); plain normalize sums are taken in numpy (`exact_moments`). A DoFn
pre-aggregates per bundle and the combiners merge bundles, so the job scales to Dataflow.

Input: labelled batches (`records.labelled_schema`: one column per spec feature, null =
missing; list<...> when multivalent).
"""

import collections
import math
import os
from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

from absl import logging
import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import tensorflow as tf
from apache_beam.transforms.window import GlobalWindows

from features import artifacts as artifacts_lib
from features import spec as spec_lib

VOCABULARY = "vocabulary"
NORMALIZE = "normalize"
BUCKETIZE = "bucketize"
HASH = "hash"
COUNT = "count"
SKIPPED = "skipped"  # A bundle's count of the tokens no vocabulary file holds.

MAX_BUFFERED_TOKENS = 200000  # distinct (feature, token) counts held before a flush.
MAX_BUFFERED_VALUES = 200000  # distinct (feature, value) counts held before a flush.
SCALE_BITS = 1074  # 2^-1074, the smallest positive float64, divides every finite float64.


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


def histogram_quantiles(histogram: Iterable[Tuple[float, int]], num_buckets: int
                        ) -> List[float]:
  """The num_buckets + 1 exact quantiles [q_0, ..., q_k] of a (value, count) histogram.

  With N the total count, k = num_buckets and C(v) the count of values <= v, q_i is the
  smallest value v with C(v) * k >= i * N (integer arithmetic, so no rounding): q_0 is
  the minimum, q_k the maximum. This is numpy's `quantile(..., method="inverted_cdf")`.
  For 0..100 and k = 4 it gives [0, 25, 50, 75, 100]. A value may appear in several
  pairs (their counts add up); an empty histogram gives [].
  """
  ordered = sorted(histogram)
  total = sum(count for _, count in ordered)
  quantiles: List[float] = []
  if not total:
    return quantiles
  cumulative = 0
  for value, count in ordered:
    cumulative += count
    while len(quantiles) <= num_buckets and cumulative * num_buckets >= len(quantiles) * total:
      quantiles.append(float(value))
  return quantiles


def interior_boundaries(quantiles: List[float]) -> List[float]:
  """Bucket boundaries from [min, q_1, ..., q_{k-1}, max]: interior values, deduplicated."""
  return sorted({float(q) for q in quantiles[1:-1]})


def histogram_value(value: Any) -> float:
  """A bucketize value as its histogram key: a float, with -0.0 folded into 0.0.

  Keys must compare and encode alike on every worker: 7 and 7.0, or 0.0 and -0.0, are
  equal in Python but not as encoded Beam keys.
  """
  return float(value) + 0.0


class ExactMomentsCombineFn(beam.CombineFn):
  """Finite floats -> (count, mean, population variance), exact and order-free.

  The accumulator is (count, S, Q) with S = sum(x) * 2^1074 and Q = sum(x^2) * 2^2148,
  Python ints: every finite float64 is an integer multiple of 2^-1074, so adding an input
  or merging accumulators is exact integer addition and the output does not depend on
  input order or on how inputs are split into accumulators. extract_output computes
  mean = S / (N 2^1074) and variance = (N Q - S^2) / (N^2 2^2148), each rounded once
  (int / int is correctly rounded). About 1 us per input.
  """

  def create_accumulator(self) -> Tuple[int, int, int]:
    return 0, 0, 0

  def add_input(self, accumulator, value):
    numerator, denominator = float(value).as_integer_ratio()
    shift = SCALE_BITS + 1 - denominator.bit_length()  # denominator is 2^(bit_length - 1).
    count, scaled_sum, scaled_squares = accumulator
    return (count + 1, scaled_sum + (numerator << shift),
            scaled_squares + ((numerator * numerator) << (2 * shift)))

  def merge_accumulators(self, accumulators):
    count = scaled_sum = scaled_squares = 0
    for n, s, q in accumulators:
      count, scaled_sum, scaled_squares = count + n, scaled_sum + s, scaled_squares + q
    return count, scaled_sum, scaled_squares

  def extract_output(self, accumulator) -> Tuple[int, float, float]:
    count, scaled_sum, scaled_squares = accumulator
    if not count:
      return 0, 0.0, 0.0
    mean = scaled_sum / (count << SCALE_BITS)
    variance = ((count * scaled_squares - scaled_sum * scaled_sum)
                / ((count * count) << (2 * SCALE_BITS)))
    return count, mean, variance


class _MergeMomentsCombineFn(ExactMomentsCombineFn):
  """ExactMomentsCombineFn whose inputs are its accumulators (per-bundle partials)."""

  def add_input(self, accumulator, partial):
    return self.merge_accumulators([accumulator, partial])


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
      count, mean, variance = by_feature.get((NORMALIZE, name), (0, 0.0, 0.0))
      if not count:
        logging.warning("Feature %r: no values on train, mean 0 and variance 0", name)
      features[name] = {"transform": NORMALIZE, "mean": float(mean),
                        "variance": float(variance)}
    elif feature.transform == BUCKETIZE:
      boundaries = interior_boundaries(by_feature.get((BUCKETIZE, name), []))
      if len(boundaries) < feature.num_buckets - 1:
        logging.warning("Feature %r: %d distinct boundaries for %d buckets", name,
                        len(boundaries), feature.num_buckets)
      features[name] = {"transform": BUCKETIZE, "boundaries": boundaries}
  return {"train_examples": int(train_examples), "features": features,
          "vocabularies": vocabularies}


def distinct_counts(column: pa.Array) -> List[Tuple[Any, int]]:
  """(value, count) of each distinct present value of a column (list columns: of their
  elements); nulls are left out. Values are Python values (str, int, float)."""
  if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
    column = column.flatten()
  column = column.drop_null()
  if not len(column):
    return []
  counted = pc.value_counts(column)
  return list(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))


def _grouped_sums(groups: np.ndarray, size: int, parts: Sequence[np.ndarray]) -> List[List[int]]:
  """Per group, the int64 sum of each part (every |partial sum| stays below 2^63)."""
  sums = []
  for part in parts:
    total = np.zeros(size, dtype=np.int64)
    np.add.at(total, groups, part)
    sums.append(total.tolist())
  return sums


_LIMB = 18  # Bits per limb of a mantissa (3 limbs hold its 53 bits).
_LIMB_MASK = (1 << _LIMB) - 1
_MAX_VALUES = 1 << 25


def exact_moments(values: np.ndarray) -> Tuple[int, int, int]:
  """`ExactMomentsCombineFn`'s accumulator (count, sum of x * 2^S, sum of x^2 * 2^2S,
  S = SCALE_BITS: exact integers) of float64 values, in numpy.

  Each x is m * 2^(e - 53) with an integer |m| < 2^53 (np.frexp), so x * 2^S is
  m shifted by e - 53 + S bits (right only for subnormals, whose m ends in as many
  zeros). Values are grouped by that shift; per group the sums of m and of m^2 are
  taken exactly in int64 by cutting |m| into three 18-bit limbs a, b, c (m^2 = a^2 2^72
  + 2ab 2^54 + (2ac + b^2) 2^36 + 2bc 2^18 + c^2: every product below 2^37, every sum
  of up to 2^25 values below 2^63), then combined as Python integers.
  """
  values = np.asarray(values, dtype=np.float64)
  if not len(values):
    return 0, 0, 0
  if len(values) > _MAX_VALUES:  # Keep every int64 partial sum below 2^63.
    parts = [exact_moments(values[start:start + _MAX_VALUES])
             for start in range(0, len(values), _MAX_VALUES)]
    return tuple(sum(part[i] for part in parts) for i in range(3))
  fraction, exponent = np.frexp(values)
  mantissa = np.ldexp(fraction, 53).astype(np.int64)
  shift = exponent.astype(np.int64) - 53 + SCALE_BITS
  sign = np.sign(mantissa)
  magnitude = np.abs(mantissa)
  a, b, c = magnitude >> (2 * _LIMB), (magnitude >> _LIMB) & _LIMB_MASK, magnitude & _LIMB_MASK
  shifts, groups = np.unique(shift, return_inverse=True)
  groups = groups.reshape(-1)
  sum_a, sum_b, sum_c, aa, ab, ac_bb, bc, cc = _grouped_sums(groups, len(shifts), [
      sign * a, sign * b, sign * c, a * a, 2 * a * b, 2 * a * c + b * b, 2 * b * c, c * c])
  scaled_sum = scaled_squares = 0
  for index, bits in enumerate(shifts.tolist()):
    plain = (sum_a[index] << (2 * _LIMB)) + (sum_b[index] << _LIMB) + sum_c[index]
    squares = ((aa[index] << (4 * _LIMB)) + (ab[index] << (3 * _LIMB))
               + (ac_bb[index] << (2 * _LIMB)) + (bc[index] << _LIMB) + cc[index])
    scaled_sum += plain << bits if bits >= 0 else plain >> -bits
    scaled_squares += squares << (2 * bits) if bits >= 0 else squares >> (-2 * bits)
  return len(values), scaled_sum, scaled_squares


def _present_values(column: pa.Array) -> np.ndarray:
  """The present values of a column (list columns: their elements) as float64, as
  `float(value)` makes them."""
  if pa.types.is_list(column.type) or pa.types.is_large_list(column.type):
    column = column.flatten()
  return column.drop_null().to_numpy(zero_copy_only=False).astype(np.float64)


def moments_of(value_counts: List[Tuple[Any, int]], log1p: bool) -> Tuple[int, int, int]:
  """The `ExactMomentsCombineFn` accumulator of the values (each repeated count times),
  with the normalize transform (`math.log1p(max(x, 0.0))` when log1p)."""
  count = scaled_sum = scaled_squares = 0
  for value, n in value_counts:
    if log1p:
      value = math.log1p(max(value, 0.0))
    numerator, denominator = float(value).as_integer_ratio()
    shift = SCALE_BITS + 1 - denominator.bit_length()
    count += n
    scaled_sum += n * (numerator << shift)
    scaled_squares += n * ((numerator * numerator) << (2 * shift))
  return count, scaled_sum, scaled_squares


class BatchAnalyzer:
  """Partial statistics of labelled batches.

  `add(batch)` accumulates; `token_counts`, `moments`, `histogram` hold the partials
  ({(feature, token): n}, {feature: accumulator}, {(feature, histogram_value): n}) and
  `skipped_tokens` the tokens a vocabulary file cannot hold.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._vocab = [(f.name, f.dtype) for f in spec if f.transform == VOCABULARY]
    self._normalize = [(f.name, f.log1p) for f in spec if f.transform == NORMALIZE]
    self._bucketize = [f.name for f in spec if f.transform == BUCKETIZE]
    self._moments_fn = ExactMomentsCombineFn()
    self.clear()

  def clear(self) -> None:
    self.token_counts: Dict[Tuple[str, str], int] = collections.Counter()
    self.moments = {name: self._moments_fn.create_accumulator() for name, _ in self._normalize}
    self.histogram: Dict[Tuple[str, float], int] = collections.Counter()
    self.skipped_tokens = 0

  def add(self, batch: pa.RecordBatch) -> None:
    column = lambda name: batch.column(batch.schema.get_field_index(name))
    for name, dtype in self._vocab:
      for value, n in distinct_counts(column(name)):
        token = vocabulary_token(dtype, value)
        if is_writable_token(token):
          self.token_counts[(name, token)] += n
        else:
          self.skipped_tokens += n
    for name, log1p in self._normalize:
      if log1p:  # math.log1p per distinct value.
        partial = moments_of(distinct_counts(column(name)), log1p)
      else:
        partial = exact_moments(_present_values(column(name)))
      self.moments[name] = self._moments_fn.merge_accumulators([self.moments[name], partial])
    for name in self._bucketize:
      for value, n in distinct_counts(column(name)):
        self.histogram[(name, histogram_value(value))] += n


class _BatchAnalyzerInputsFn(beam.DoFn):
  """Train batches -> per-bundle partials (`BatchAnalyzer`'s): on the tagged outputs
  (vocabulary, normalize, bucketize), as `combine_partials` reads them; or, with
  `pieces=True`, as (kind, partial) pairs on the main output, as `analyzer_pieces`
  documents them."""

  def __init__(self, spec: spec_lib.FeatureSpec, pieces: bool = False):
    self._spec = spec
    self._pieces = pieces
    self._skipped = beam.metrics.Metrics.counter("analyze", "vocabulary_tokens_skipped")

  def setup(self):
    self._analyzer = BatchAnalyzer(self._spec)

  def start_bundle(self):
    self._analyzer.clear()
    self._rows = 0

  def _output(self, kind: str, partial: Any, windowed: bool = False) -> Any:
    element = (kind, partial) if self._pieces else partial
    if windowed:  # finish_bundle's outputs need a window.
      element = GlobalWindows.windowed_value(element)
    return element if self._pieces else beam.pvalue.TaggedOutput(kind, element)

  def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
    analyzer = self._analyzer
    analyzer.add(batch)
    self._rows += batch.num_rows
    if len(analyzer.token_counts) >= MAX_BUFFERED_TOKENS:
      for key_count in analyzer.token_counts.items():
        yield self._output(VOCABULARY, key_count)
      analyzer.token_counts.clear()
    if len(analyzer.histogram) >= MAX_BUFFERED_VALUES:
      for key_count in analyzer.histogram.items():
        yield self._output(BUCKETIZE, key_count)
      analyzer.histogram.clear()

  def finish_bundle(self):
    analyzer = self._analyzer
    if analyzer.skipped_tokens:
      self._skipped.inc(analyzer.skipped_tokens)
    if self._pieces:
      yield self._output(COUNT, self._rows, windowed=True)
      yield self._output(SKIPPED, analyzer.skipped_tokens, windowed=True)
    for key_count in analyzer.token_counts.items():
      yield self._output(VOCABULARY, key_count, windowed=True)
    for name, moments in analyzer.moments.items():
      if moments[0]:
        yield self._output(NORMALIZE, (name, moments), windowed=True)
    for key_count in analyzer.histogram.items():
      yield self._output(BUCKETIZE, key_count, windowed=True)
    analyzer.clear()


def analyzer_pieces(batches: beam.PCollection, spec: spec_lib.FeatureSpec
                    ) -> beam.PCollection:
  """Labelled train batches -> the per-bundle partials of `AnalyzeBatches`, as
  (kind, partial) pairs: ("count", rows), ("skipped", unwritable tokens),
  ("vocabulary", ((feature, token), count)), ("normalize", (feature,
  ExactMomentsCombineFn accumulator)), ("bucketize", ((feature, histogram_value),
  count)). Every statistic is a sum of these integers, whatever the bundling;
  `analyzer_state.AnalyzeBatchesToState` sums them into a day's state."""
  return batches | "Partial" >> beam.ParDo(_BatchAnalyzerInputsFn(spec, pieces=True))


class AnalyzeBatches(beam.PTransform):
  """Labelled train batches -> the single dict {"train_examples", "features",
  "vocabularies"}: `features` is the `transform.json` mapping of `features/artifacts.py`;
  `vocabularies` maps each vocabulary feature to its tokens, most frequent first."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec

  def expand(self, batches):
    partial = batches | "Partial" >> beam.ParDo(_BatchAnalyzerInputsFn(self._spec)).with_outputs(
        VOCABULARY, NORMALIZE, BUCKETIZE)
    examples = (batches
                | "Rows" >> beam.Map(lambda batch: batch.num_rows)
                | "CountExamples" >> beam.CombineGlobally(sum))
    return combine_partials(partial, examples, self._spec)


def combine_partials(partial, train_examples: beam.PCollection,
                     spec: spec_lib.FeatureSpec) -> beam.PCollection:
  """Per-bundle partial statistics -> the single dict of `AnalyzeBatches`.

  Args:
    partial: {"vocabulary": ((feature, token), count), "normalize": (feature,
      ExactMomentsCombineFn accumulator), "bucketize": ((feature, histogram_value),
      count)}, as `_BatchAnalyzerInputsFn` emits them (any bundling: every merge is exact).
    train_examples: one int, the number of train records.
  """
  pieces = [train_examples | "CountPiece" >> beam.Map(lambda n: (COUNT, None, n))]

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
        | "MergeMoments" >> beam.CombinePerKey(_MergeMomentsCombineFn())
        | "NormalizePiece" >> beam.Map(lambda kv: (NORMALIZE, kv[0], kv[1])))

  num_buckets = {f.name: f.num_buckets for f in spec if f.transform == BUCKETIZE}
  if num_buckets:
    pieces.append(
        partial[BUCKETIZE]
        | "SumValueCounts" >> beam.CombinePerKey(sum)
        | "HistogramByFeature" >> beam.Map(lambda kv: (kv[0][0], (kv[0][1], kv[1])))
        | "GatherHistograms" >> beam.GroupByKey()
        | "BucketizePiece" >> beam.MapTuple(lambda name, histogram: (
            BUCKETIZE, name, histogram_quantiles(histogram, num_buckets[name]))))

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
  """The output of AnalyzeBatches -> files under `directory` (OUTPUT/transform)."""

  def __init__(self, directory: str):
    super().__init__()
    self._directory = directory

  def expand(self, analysis):
    return analysis | "Write" >> beam.Map(write_artifacts, self._directory)
