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
whose first fifth holds all the clicks. WriteExamples therefore mixes before writing:
each Example goes to one of MIX_BUCKETS groups by a hash of its bytes, and each group is
emitted in hash order. A group is a hash-random sample of the split, so every stretch of
a shard has the split's label mix, and the order is the same on every run of the same
input, provided each group is large (split size >> MIX_BUCKETS). Memory: one group
(split size / MIX_BUCKETS Examples) at a time per worker.
"""

import hashlib

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes

from features import example_codec
from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import outputs as outputs_lib

EXAMPLES = "examples"
# Groups for mixing the write order (see the module docstring). A group must be large
# (many Examples) for its emission order not to matter; 256 keeps one group of the full
# Ali-CCP train split (~42M rows) near 170k Examples (~200 MB) on a worker.
MIX_BUCKETS = 256


def mix_key(serialized: bytes) -> int:
  """A deterministic, well-spread 64-bit hash of a serialized Example (BLAKE2b; not a CRC,
  whose linearity keeps Examples that differ in one label byte in correlated order)."""
  return int.from_bytes(hashlib.blake2b(serialized, digest_size=8).digest(), "little")


def _mixed(group):
  """A mixing group's Examples in hash order (ties broken by the bytes: deterministic)."""
  _, examples = group
  return sorted(examples, key=lambda example: (mix_key(example), example))


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
  mixed so that no stretch of a shard is sorted by label (module docstring).

  Args:
    file_path_prefix: e.g. `OutputPaths(OUTPUT).examples_prefix("train")`.
    num_shards: data.train_shards or data.eval_shards.
    mix_buckets: mixing groups (module docstring); fewer for tiny splits.
  """

  def __init__(self, file_path_prefix: str, num_shards: int, mix_buckets: int = MIX_BUCKETS):
    super().__init__()
    self._file_path_prefix = file_path_prefix
    self._num_shards = num_shards
    self._mix_buckets = mix_buckets

  def expand(self, serialized_examples):
    mixed = (serialized_examples
             | "KeyForMixing" >> beam.Map(
                 lambda example, buckets: (mix_key(example) % buckets, example),
                 self._mix_buckets)
             | "GroupForMixing" >> beam.GroupByKey()
             | "EmitMixed" >> beam.FlatMap(_mixed))
    return self._write(mixed)

  def _write(self, mixed_examples):
    """Mixed serialized Examples -> the gzip TFRecord shards."""
    return mixed_examples | "WriteTFRecord" >> beam.io.WriteToTFRecord(
        self._file_path_prefix,
        file_name_suffix=outputs_lib.TFRECORD_SUFFIX,
        num_shards=self._num_shards,
        shard_name_template=outputs_lib.SHARD_TEMPLATE,
        compression_type=CompressionTypes.GZIP)
