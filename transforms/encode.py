"""Encode labelled impressions as serialized tf.train.Example and write TFRecord shards.

Flow: SplitByTime -> **EncodeExamples -> WriteExamples** -> OUTPUT/{train,eval}/*.tfrecord.gz
-> training.data (tf.data). The Example layout is DESIGN.md section 3, built by
`features.example_codec` from the features ParseImpressions already coerced (so they are
not validated twice), plus a record's optional "metadata" (string keys outside the spec,
e.g. AliExpress `search_id`; `add_metadata`). An encoding error would mean a bug; it
still goes to the dead-letter output rather than being lost.

Order inside the shards: upstream of the writer, records arrive grouped by how the join
met them (on DirectRunner every clicked impression, keyed first by its events, came
before every unclicked one), and a trainer's bounded shuffle buffer cannot undo a shard
whose first fifth holds all the clicks. WriteExamples therefore places and orders each
Example by a hash of its bytes (`mix_key`; `transforms.shards`): the same files on every
run of the same input, every stretch of a shard with the split's label mix.
"""

import apache_beam as beam
import xxhash

from features import example_codec
from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import shards as shards_lib

EXAMPLES = "examples"
def mix_key(serialized: bytes) -> int:
  """A deterministic, well-spread 64-bit hash of a serialized Example (XXH3-64, seed 0:
  the same on every machine and run; not a CRC, whose linearity keeps Examples that
  differ in one label byte in correlated order). A tenth of BLAKE2b's cost per call."""
  return xxhash.xxh3_64_intdigest(serialized)


def add_metadata(example, metadata) -> None:
  """Adds a record's extra string metadata (e.g. AliExpress `search_id`) as bytes keys.

  Not spec features: the model and the tf.data parser ignore them; they are there for
  analysis (e.g. grouping the rows of one search).

  Raises:
    ValueError: a key the Example already holds (a feature, label or metadata key).
  """
  feature_map = example.features.feature
  for key, value in sorted(metadata.items()):
    if key in feature_map:
      raise ValueError(f"metadata key {key!r} is already an Example key")
    feature_map[key].bytes_list.value.append(str(value).encode("utf-8"))


class _EncodeFn(beam.DoFn):

  def __init__(self, spec: spec_lib.FeatureSpec, label_names, split: str):
    self._spec = spec
    self._label_names = tuple(label_names)
    self._encoded = beam.metrics.Metrics.counter("encode", f"{split}_examples")
    self._rejected = beam.metrics.Metrics.counter("encode", "dead_letter")

  def setup(self):
    self._codec = example_codec.ExampleCodec(self._spec, self._label_names)

  def process(self, record):
    try:
      example = self._codec.encode(record["features"], record["labels"],
                                   record["impression_id"], record["timestamp"])
      add_metadata(example, record.get("metadata", {}))
    except (example_codec.RecordError, TypeError, ValueError) as e:
      self._rejected.inc()
      reason = getattr(e, "reason", dl.BAD_VALUE)
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, dl.make_dead_letter(
          dl.IMPRESSIONS, record["file"], record["line"], reason,
          f"encoding {record['impression_id']!r}: {e}", record["features"]))
      return
    self._encoded.inc()
    yield example.SerializeToString()


class EncodeExamples(beam.PTransform):
  """Labelled records -> {"examples": serialized tf.train.Example, "dead_letter": ...}.

  Args:
    spec: the feature spec.
    label_names: the configured labels, written as int64 0/1.
    split: split name, for counters.
  """

  def __init__(self, spec: spec_lib.FeatureSpec, label_names, split: str = ""):
    super().__init__()
    self._spec = spec
    self._label_names = tuple(label_names)
    self._split = split

  def expand(self, records):
    outputs = records | "Encode" >> beam.ParDo(
        _EncodeFn(self._spec, self._label_names, self._split)).with_outputs(
            dl.DEAD_LETTER, main=EXAMPLES)
    return {EXAMPLES: outputs[EXAMPLES], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER]}


class WriteExamples(beam.PTransform):
  """Serialized Examples -> `<prefix>-SSSSS-of-NNNNN.tfrecord.gz` (GZIP), `num_shards` files,
  each Example placed and ordered by `mix_key` (`transforms.shards.WriteShards`).

  Args:
    file_path_prefix: e.g. `OutputPaths(OUTPUT).examples_prefix("train")`.
    num_shards: data.train_shards or data.eval_shards.
    sort_bytes: Example bytes a shard writer sorts at once (shards.SORT_BYTES).
  """

  def __init__(self, file_path_prefix: str, num_shards: int,
               sort_bytes: int = shards_lib.SORT_BYTES):
    super().__init__()
    self._file_path_prefix = file_path_prefix
    self._num_shards = num_shards
    self._sort_bytes = sort_bytes

  def expand(self, serialized_examples):
    # Lists of Examples for the shard writer (any batching gives the same files).
    return self._write(serialized_examples | "Batch" >> beam.BatchElements(
        min_batch_size=256, max_batch_size=8192))

  def _write(self, example_lists):
    """Lists of serialized Examples -> the gzip TFRecord shards."""
    return example_lists | "WriteShards" >> shards_lib.WriteShards(
        self._file_path_prefix, self._num_shards, mix_key, self._sort_bytes)
