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
from typing import Any, Dict, Iterator, List, Tuple

import apache_beam as beam
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
      partial = moments_of(distinct_counts(column(name)), log1p)
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
