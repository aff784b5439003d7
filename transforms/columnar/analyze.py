"""Transform analyzers over labelled RecordBatches: the columnar `analyze.AnalyzeTransforms`.

Flow: SplitBatchesByTime -> train batches -> **AnalyzeBatches** ->
analyze.WriteTransformArtifacts -> OUTPUT/transform/ (byte-identical to the row job's).

Per batch, each analysed column is reduced to its distinct values with their counts
(`pyarrow.compute.value_counts`, in C++; list columns are flattened first), and only
the distinct values go through the row job's own Python rules (`analyze.vocabulary_token`,
`is_writable_token`, `math.log1p(max(x, 0.0))`, `histogram_value`,
`ExactMomentsCombineFn`'s exact integer sums, scaled by the count). Every partial is
an exact integer (token and value counts, scaled sums), so the per-bundle partials
are the row job's up to how they are grouped, and `analyze.combine_partials` merges
them into the same vocabularies, moments and boundaries however the batches are
bundled or spread over workers.

Input: labelled impression batches (`columnar.label` output schema: one column per spec
feature, null = missing; list<...> when multivalent).
"""

import collections
import math
from typing import Any, Dict, Iterator, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from apache_beam.transforms.window import GlobalWindows

from features import spec as spec_lib
from transforms import analyze


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
  S = analyze.SCALE_BITS: exact integers) of float64 values, in numpy.

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
  shift = exponent.astype(np.int64) - 53 + analyze.SCALE_BITS
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
  with the row job's transform (`math.log1p(max(x, 0.0))` when log1p)."""
  count = scaled_sum = scaled_squares = 0
  for value, n in value_counts:
    if log1p:
      value = math.log1p(max(value, 0.0))
    numerator, denominator = float(value).as_integer_ratio()
    shift = analyze.SCALE_BITS + 1 - denominator.bit_length()
    count += n
    scaled_sum += n * (numerator << shift)
    scaled_squares += n * ((numerator * numerator) << (2 * shift))
  return count, scaled_sum, scaled_squares


class BatchAnalyzer:
  """Partial statistics of labelled batches, as `analyze._AnalyzerInputsFn` keeps them.

  `add(batch)` accumulates; `token_counts`, `moments`, `histogram` hold the partials
  ({(feature, token): n}, {feature: accumulator}, {(feature, histogram_value): n}) and
  `skipped_tokens` the tokens a vocabulary file cannot hold.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._vocab = [(f.name, f.dtype) for f in spec if f.transform == analyze.VOCABULARY]
    self._normalize = [(f.name, f.log1p) for f in spec if f.transform == analyze.NORMALIZE]
    self._bucketize = [f.name for f in spec if f.transform == analyze.BUCKETIZE]
    self._moments_fn = analyze.ExactMomentsCombineFn()
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
        token = analyze.vocabulary_token(dtype, value)
        if analyze.is_writable_token(token):
          self.token_counts[(name, token)] += n
        else:
          self.skipped_tokens += n
    for name, log1p in self._normalize:
      if log1p:  # math.log1p, as the row job applies it, per distinct value.
        partial = moments_of(distinct_counts(column(name)), log1p)
      else:
        partial = exact_moments(_present_values(column(name)))
      self.moments[name] = self._moments_fn.merge_accumulators([self.moments[name], partial])
    for name in self._bucketize:
      for value, n in distinct_counts(column(name)):
        self.histogram[(name, analyze.histogram_value(value))] += n


class _BatchAnalyzerInputsFn(beam.DoFn):
  """Train batches -> per-bundle partials on the tagged outputs of
  `analyze._AnalyzerInputsFn` (vocabulary, normalize, bucketize)."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._spec = spec
    self._skipped = beam.metrics.Metrics.counter("analyze", "vocabulary_tokens_skipped")

  def setup(self):
    self._analyzer = BatchAnalyzer(self._spec)

  def start_bundle(self):
    self._analyzer.clear()

  def process(self, batch: pa.RecordBatch) -> Iterator[Any]:
    analyzer = self._analyzer
    analyzer.add(batch)
    if len(analyzer.token_counts) >= analyze.MAX_BUFFERED_TOKENS:
      for key_count in analyzer.token_counts.items():
        yield beam.pvalue.TaggedOutput(analyze.VOCABULARY, key_count)
      analyzer.token_counts.clear()
    if len(analyzer.histogram) >= analyze.MAX_BUFFERED_VALUES:
      for key_count in analyzer.histogram.items():
        yield beam.pvalue.TaggedOutput(analyze.BUCKETIZE, key_count)
      analyzer.histogram.clear()

  def finish_bundle(self):
    analyzer = self._analyzer
    if analyzer.skipped_tokens:
      self._skipped.inc(analyzer.skipped_tokens)
    for key_count in analyzer.token_counts.items():
      yield beam.pvalue.TaggedOutput(analyze.VOCABULARY, GlobalWindows.windowed_value(key_count))
    for name, moments in analyzer.moments.items():
      if moments[0]:
        yield beam.pvalue.TaggedOutput(analyze.NORMALIZE,
                                       GlobalWindows.windowed_value((name, moments)))
    for key_count in analyzer.histogram.items():
      yield beam.pvalue.TaggedOutput(analyze.BUCKETIZE, GlobalWindows.windowed_value(key_count))
    analyzer.clear()


class AnalyzeBatches(beam.PTransform):
  """Labelled train batches -> the single dict of `analyze.AnalyzeTransforms`
  ({"train_examples", "features", "vocabularies"}), byte-identical once written."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec

  def expand(self, batches):
    partial = batches | "Partial" >> beam.ParDo(_BatchAnalyzerInputsFn(self._spec)).with_outputs(
        analyze.VOCABULARY, analyze.NORMALIZE, analyze.BUCKETIZE)
    examples = (batches
                | "Rows" >> beam.Map(lambda batch: batch.num_rows)
                | "CountExamples" >> beam.CombineGlobally(sum))
    return analyze.combine_partials(partial, examples, self._spec)
