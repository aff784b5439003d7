"""Per-day analyzer states: the transform artifacts of a rolling window of days, computed
from one day's train batches and the stored states of the earlier days.

Flow of the daily job (issue 30; the shape of tf.Transform's analyzer cache and TFX's
spans, /work/shared/STYLE.md "Daily data"):

    day D's train batches -> **AnalyzeBatchesToState** -> **write_state**(STATE_DIR/D)
    **read_state** of the last W days' files -> **merge_states** -> analyze.write_artifacts

A state holds what `transforms/analyze.py` sums before it reduces anything, so merging
is exact integer addition and the merged artifacts are byte-for-byte those of one
`AnalyzeBatches` pass over all the days' batches (tests/test_analyzer_state.py):

  * vocabulary: every writable token of the day with its count (not cut to
    `max_tokens`: a token outside each day's top can be inside the window's top).
  * normalize: `ExactMomentsCombineFn`'s accumulator (count, sum x 2^1074,
    sum x^2 2^2148), Python ints, of log1p(max(x, 0)) when `log1p: true`.
  * bucketize: the (histogram_value, count) histogram.
  * the train example count and the count of unwritable tokens left out.

`max_tokens` and `num_buckets` are applied when merging, so they may change without
re-analysing a day; a change of an analysed feature's name, transform, dtype,
multivalent or log1p makes the stored states refuse to merge (`AnalyzerStateError`
names the file and the feature).

File: gzip (mtime 0) of compact UTF-8 JSON with sorted keys, so the same state gives
the same bytes; written to a temporary name and renamed (local or gs://, tf.io.gfile):

    {"format": "cvr-pipeline/analyzer-state", "format_version": 1,
     "features": {name: {"transform", "dtype", "multivalent"[, "log1p"]}},
     "train_examples": n, "skipped_tokens": n,
     "vocabulary": {name: {token: count}},
     "normalize": {name: [count, "scaled sum", "scaled squares"]},  # decimal strings
     "bucketize": {name: [[value, count], ...]}}                      # value ascending

Memory and time, measured (Python 3.11, 2 shared cores, DirectRunner in one process;
one string vocabulary feature of 8-character ids): an `AnalyzerState` holds about
100 bytes per distinct token (tracemalloc: 96 B, so 10 MB for a day of 100k distinct
ids) and a bucketize histogram about 52 bytes per distinct value; its file about
4.4 bytes per random id (gzip). `AnalyzeBatchesToState`'s peak RSS grows by about
1.1 KB per distinct token of the day (300k ids seen 3 times: +323 MB, 18.3 CPU s),
the same as `analyze.AnalyzeBatches` on those batches (+320 MB, 19.5 CPU s): the
per-bundle counters and the runner's buffers dominate, not the state. The last merge
of the combine holds every distinct token of the day on one worker, and
`merge_states` the union of the window's tokens plus one day's state (0.4 s for three
states of 100k tokens; writing a state of 100k tokens and 100k histogram values takes
1.3 s, reading it 0.5 s).
"""

import dataclasses
import gzip
import json
import os
import uuid
from typing import Any, Dict, Iterable, List, Tuple

from absl import logging
import apache_beam as beam
import tensorflow as tf

from features import spec as spec_lib
from transforms import analyze

FORMAT = "cvr-pipeline/analyzer-state"
FORMAT_VERSION = 1
_TEMPORARY = ".tmp-"  # write_state's temporary files: <path>.tmp-<hex>.
ANALYSED = (analyze.VOCABULARY, analyze.NORMALIZE, analyze.BUCKETIZE)


class AnalyzerStateError(ValueError):
  """An analyzer state file is unreadable or was written for another feature spec."""


def state_features(spec: spec_lib.FeatureSpec) -> Dict[str, Dict[str, Any]]:
  """What a state records of the spec: per analysed feature, the fields its content
  depends on ({"transform", "dtype", "multivalent"}, plus "log1p" for normalize)."""
  features = {}
  for feature in spec:
    if feature.transform in ANALYSED:
      entry = {"transform": feature.transform, "dtype": feature.dtype,
               "multivalent": feature.multivalent}
      if feature.transform == analyze.NORMALIZE:
        entry["log1p"] = feature.log1p
      features[feature.name] = entry
  return features


@dataclasses.dataclass
class AnalyzerState:
  """The mergeable statistics of one day's train batches (module docstring).

  Attributes:
    features: `state_features` of the spec it was computed with.
    train_examples: number of train rows.
    skipped_tokens: vocabulary values left out (empty or holding a line break).
    token_counts: vocabulary feature -> {token: count}, every writable token.
    moments: normalize feature -> ExactMomentsCombineFn accumulator (count,
      scaled sum, scaled squares), (0, 0, 0) without values.
    histograms: bucketize feature -> {histogram_value: count}.
    source: the file it was read from ("" when computed), for error messages.
  """

  features: Dict[str, Dict[str, Any]]
  train_examples: int = 0
  skipped_tokens: int = 0
  token_counts: Dict[str, Dict[str, int]] = dataclasses.field(default_factory=dict)
  moments: Dict[str, Tuple[int, int, int]] = dataclasses.field(default_factory=dict)
  histograms: Dict[str, Dict[float, int]] = dataclasses.field(default_factory=dict)
  source: str = dataclasses.field(default="", compare=False)


def empty_state(spec: spec_lib.FeatureSpec) -> AnalyzerState:
  """The state of no batches: an empty entry for every analysed feature of the spec."""
  features = state_features(spec)
  by_transform = lambda transform: [name for name, entry in features.items()
                                    if entry["transform"] == transform]
  return AnalyzerState(
      features=features,
      token_counts={name: {} for name in by_transform(analyze.VOCABULARY)},
      moments={name: (0, 0, 0) for name in by_transform(analyze.NORMALIZE)},
      histograms={name: {} for name in by_transform(analyze.BUCKETIZE)})


_MOMENTS = analyze.ExactMomentsCombineFn()


def _add_counts(into: Dict[Any, int], key: Any, count: int) -> None:
  into[key] = into.get(key, 0) + count


def add_piece(state: AnalyzerState, kind: str, value: Any) -> None:
  """Adds one (kind, partial) piece of `analyze.analyzer_pieces` to the state in place."""
  if kind == analyze.COUNT:
    state.train_examples += value
  elif kind == analyze.SKIPPED:
    state.skipped_tokens += value
  elif kind == analyze.VOCABULARY:
    (name, token), count = value
    _add_counts(state.token_counts[name], token, count)
  elif kind == analyze.NORMALIZE:
    name, accumulator = value
    state.moments[name] = _MOMENTS.merge_accumulators([state.moments[name], accumulator])
  elif kind == analyze.BUCKETIZE:
    (name, histogram_value), count = value
    _add_counts(state.histograms[name], histogram_value, count)


def add_state(state: AnalyzerState, other: AnalyzerState) -> None:
  """Adds `other` to `state` in place (exact: integer sums); same features assumed."""
  state.train_examples += other.train_examples
  state.skipped_tokens += other.skipped_tokens
  for name, counts in other.token_counts.items():
    for token, count in counts.items():
      _add_counts(state.token_counts[name], token, count)
  for name, accumulator in other.moments.items():
    state.moments[name] = _MOMENTS.merge_accumulators([state.moments[name], accumulator])
  for name, histogram in other.histograms.items():
    for value, count in histogram.items():
      _add_counts(state.histograms[name], value, count)


class _StateCombineFn(beam.CombineFn):
  """(kind, partial) pieces -> their AnalyzerState. Accumulators are states, merged by
  exact addition, so Beam may lift the combine onto every worker."""

  def __init__(self, spec: spec_lib.FeatureSpec):
    self._spec = spec

  def create_accumulator(self) -> AnalyzerState:
    return empty_state(self._spec)

  def add_input(self, state, piece):
    add_piece(state, *piece)
    return state

  def merge_accumulators(self, states):
    states = iter(states)
    merged = next(states)
    for state in states:
      add_state(merged, state)
    return merged

  def extract_output(self, state):
    return state


class AnalyzeBatchesToState(beam.PTransform):
  """One day's labelled train batches -> a PCollection of one `AnalyzerState`.

  The per-bundle partials of `analyze.AnalyzeBatches` (`analyze.analyzer_pieces`),
  summed whole by one lifted combine instead of reduced to artifacts; the last merge
  holds every distinct token of the day on one worker (module docstring: memory). A day
  without batches gives an empty state. Write it with
  `state | beam.Map(write_state, path)`.
  """

  def __init__(self, spec: spec_lib.FeatureSpec):
    super().__init__()
    self._spec = spec

  def expand(self, batches):
    return (analyze.analyzer_pieces(batches, self._spec)
            | "SumState" >> beam.CombineGlobally(_StateCombineFn(self._spec)))


def _where(state: AnalyzerState, index: int) -> str:
  return state.source or f"analyzer state #{index}"


def check_state(state: AnalyzerState, spec: spec_lib.FeatureSpec, where: str) -> None:
  """Raises AnalyzerStateError, naming `where` and the first differing feature, unless
  the state was computed with the same analysed features as `spec`."""
  expected = state_features(spec)
  for name in sorted(set(expected) | set(state.features)):
    if state.features.get(name) != expected.get(name):
      raise AnalyzerStateError(
          f"{where}: feature {name!r} is {state.features.get(name) or 'absent'} in the "
          f"analyzer state but {expected.get(name) or 'not analysed'} in the feature spec "
          f"{spec.source}: the state was written for another spec; re-run that day's "
          f"preprocessing with this spec")


def merge_states(states: Iterable[AnalyzerState],
                 spec: spec_lib.FeatureSpec) -> Dict[str, Any]:
  """The states of a window of days -> `analyze.AnalyzeBatches`' dict {"train_examples",
  "features", "vocabularies"} over all their batches, for `analyze.write_artifacts`.

  Token and value counts and moment accumulators are summed exactly, then reduced by
  analyze's rules (`sort_vocabulary` with the spec's max_tokens, `histogram_quantiles`
  with its num_buckets, `ExactMomentsCombineFn.extract_output`). States are added one
  at a time: pass a generator (`read_state(path, spec) for path in paths`) to hold only
  the union of the window's tokens and one day's state.
  """
  total = empty_state(spec)
  merged = 0
  for index, state in enumerate(states):
    check_state(state, spec, _where(state, index))
    add_state(total, state)
    merged += 1
  if not merged:
    raise AnalyzerStateError("merge_states: no analyzer states (an empty window)")
  pieces: List[Tuple[str, Any, Any]] = [(analyze.COUNT, None, total.train_examples)]
  for feature in spec:
    name = feature.name
    if feature.transform == analyze.VOCABULARY:
      pieces.append((analyze.VOCABULARY, name, analyze.sort_vocabulary(
          [(count, token) for token, count in total.token_counts[name].items()],
          feature.max_tokens)))
    elif feature.transform == analyze.NORMALIZE:
      pieces.append((analyze.NORMALIZE, name, _MOMENTS.extract_output(total.moments[name])))
    elif feature.transform == analyze.BUCKETIZE:
      pieces.append((analyze.BUCKETIZE, name, analyze.histogram_quantiles(
          total.histograms[name].items(), feature.num_buckets)))
  logging.info("Merged %d analyzer states: %d train examples, %d vocabulary values "
               "skipped (empty or holding a line break)", merged, total.train_examples,
               total.skipped_tokens)
  return analyze.assemble_artifacts(pieces, spec)


def encode_state(state: AnalyzerState) -> bytes:
  """The file bytes of a state (module docstring): the same state, the same bytes."""
  data = {
      "format": FORMAT, "format_version": FORMAT_VERSION, "features": state.features,
      "train_examples": state.train_examples, "skipped_tokens": state.skipped_tokens,
      "vocabulary": state.token_counts,
      "normalize": {name: [count, str(scaled_sum), str(scaled_squares)]
                    for name, (count, scaled_sum, scaled_squares) in state.moments.items()},
      "bucketize": {name: sorted([value, count] for value, count in histogram.items())
                    for name, histogram in state.histograms.items()}}
  text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
  return gzip.compress(text.encode("utf-8"), compresslevel=6, mtime=0)


def decode_state(content: bytes, source: str) -> AnalyzerState:
  """A state from its file bytes; AnalyzerStateError naming `source` when malformed."""
  try:
    data = json.loads(gzip.decompress(content).decode("utf-8"))
  except (OSError, EOFError, UnicodeDecodeError, ValueError) as error:
    raise AnalyzerStateError(f"{source}: not an analyzer state file (gzip JSON): "
                             f"{error}") from error
  if not isinstance(data, dict) or data.get("format") != FORMAT:
    raise AnalyzerStateError(f"{source}: not an analyzer state file (format "
                             f"{data.get('format') if isinstance(data, dict) else None!r})")
  if data.get("format_version") != FORMAT_VERSION:
    raise AnalyzerStateError(f"{source}: analyzer state format_version "
                             f"{data.get('format_version')!r}, this code reads "
                             f"{FORMAT_VERSION}; re-run that day's preprocessing")
  try:
    state = AnalyzerState(
        features=data["features"], train_examples=int(data["train_examples"]),
        skipped_tokens=int(data["skipped_tokens"]),
        token_counts={name: {token: int(count) for token, count in counts.items()}
                      for name, counts in data["vocabulary"].items()},
        moments={name: (int(count), int(scaled_sum), int(scaled_squares))
                 for name, (count, scaled_sum, scaled_squares) in data["normalize"].items()},
        histograms={name: {float(value): int(count) for value, count in pairs}
                    for name, pairs in data["bucketize"].items()},
        source=source)
    expected = {kind: sorted(name for name, entry in state.features.items()
                             if entry["transform"] == kind) for kind in ANALYSED}
  except (KeyError, TypeError, ValueError, AttributeError) as error:
    raise AnalyzerStateError(f"{source}: malformed analyzer state: "
                             f"{type(error).__name__}: {error}") from error
  for kind, entries in ((analyze.VOCABULARY, state.token_counts),
                        (analyze.NORMALIZE, state.moments),
                        (analyze.BUCKETIZE, state.histograms)):
    if sorted(entries) != expected[kind]:
      raise AnalyzerStateError(f"{source}: malformed analyzer state: {kind} statistics of "
                               f"{sorted(entries)} for the {kind} features {expected[kind]}")
  return state


def write_state(state: AnalyzerState, path: str) -> str:
  """Writes the state to `path` (local or gs://) atomically: a temporary name beside it
  (`<path>.tmp-<hex>`), then a rename, so a reader sees the old file or the whole new
  one. Temporaries a killed earlier write left at `path` are removed first. Returns path."""
  directory = os.path.dirname(path)
  if directory:
    tf.io.gfile.makedirs(directory)
  for stale in tf.io.gfile.glob(f"{path}{_TEMPORARY}*"):
    logging.info("Removing %s, left by an interrupted write", stale)
    tf.io.gfile.remove(stale)
  temporary = f"{path}{_TEMPORARY}{uuid.uuid4().hex}"
  try:
    with tf.io.gfile.GFile(temporary, "wb") as f:
      f.write(encode_state(state))
    tf.io.gfile.rename(temporary, path, overwrite=True)
  finally:
    if tf.io.gfile.exists(temporary):
      tf.io.gfile.remove(temporary)
  logging.info("Wrote the analyzer state of %d train examples to %s", state.train_examples,
               path)
  return path


def read_state(path: str, spec: spec_lib.FeatureSpec) -> AnalyzerState:
  """Reads a state written by `write_state` and checks it was computed with `spec`'s
  analysed features (AnalyzerStateError naming the file and the feature if not)."""
  if not tf.io.gfile.exists(path):
    raise AnalyzerStateError(f"{path}: no analyzer state file; preprocess that day first")
  with tf.io.gfile.GFile(path, "rb") as f:
    state = decode_state(f.read(), path)
  check_state(state, spec, path)
  return state
