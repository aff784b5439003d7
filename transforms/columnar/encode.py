"""Split labelled batches by time and encode them as the row job's serialized tf.Examples.

Flow: BucketedJoinAndLabel -> **SplitBatchesByTime -> EncodeBatches -> WriteExampleLists**
-> OUTPUT/{train,eval}/*.tfrecord.gz (statistics and analyzers read the batches).
Split: the rows of a labelled batch with timestamp < eval_from_timestamp are train, the
others eval (`transforms.split`'s rule), in columns.

Encoding stays per row, through `features.example_codec.ExampleCodec.encode` (the row
job's own encoder), for byte-identical output: the golden digest pins the serialized
bytes, whose feature-map order is the order the Python protobuf (upb) map was filled in.
tfx_bsl's C++ `RecordBatchToExamplesEncoder` gives Examples that parse equal except for
missing features (it writes a null as a present, empty Feature; the row job leaves the
key out) but in another map order, so its bytes differ; re-serializing them in Python
does not restore the row order either (see the report of issue 12 and
tests/test_columnar_encode.py, which pins both facts).
"""

from typing import Any, Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
from apache_beam.io.filesystem import CompressionTypes
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import example_codec
from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import encode as encode_lib
from transforms import outputs as outputs_lib
from transforms import split as split_lib

EXAMPLES = encode_lib.EXAMPLES
_META = ("file", "line", "record", "impression_id", "timestamp")


def python_values(array: pa.Array) -> List[Any]:
  """The column as Python values, like `array.to_pylist()` (None for nulls, lists for list
  arrays) but through numpy, several times faster on the flat types used here."""
  if pa.types.is_list(array.type):
    flat = python_values(array.flatten())
    offsets = array.offsets.to_numpy()
    start = int(offsets[0])
    bounds = (offsets - start).tolist()
    valid = array.is_valid().to_numpy(zero_copy_only=False).tolist()
    return [flat[bounds[i]:bounds[i + 1]] if valid[i] else None for i in range(len(array))]
  if pa.types.is_string(array.type):
    return array.to_numpy(zero_copy_only=False).tolist()  # Nulls come back as None.
  if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
    return array.to_pylist()
  if array.null_count == 0:
    return array.to_numpy(zero_copy_only=False).tolist()
  values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False).tolist()
  for index in np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)).tolist():
    values[index] = None
  return values


def split_batch(batch: pa.RecordBatch, eval_from_timestamp: int
                ) -> Dict[str, pa.RecordBatch]:
  """{"train": rows before the cut, "eval": the rest} of one labelled batch."""
  timestamps = batch.column(batch.schema.get_field_index("timestamp")).to_numpy()
  is_train = timestamps < eval_from_timestamp
  return {split_lib.TRAIN: batch.filter(pa.array(is_train)),
          split_lib.EVAL: batch.filter(pa.array(~is_train))}


class BatchEncoder:
  """Labelled batches -> (serialized Examples, dead letters), as `encode._EncodeFn`."""

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str]):
    self._codec = example_codec.ExampleCodec(spec, label_names)
    self._label_names = tuple(label_names)

  def encode(self, batch: pa.RecordBatch) -> Tuple[List[bytes], List[Dict[str, Any]]]:
    names = batch.schema.names
    feature_names = [n for n in names if n not in _META and n not in self._label_names]
    columns = {name: python_values(batch.column(i)) for i, name in enumerate(names)
               if name != "record"}
    examples, dead = [], []
    for row in range(batch.num_rows):
      features = {name: columns[name][row] for name in feature_names
                  if columns[name][row] is not None}
      labels = {name: columns[name][row] for name in self._label_names}
      impression_id, timestamp = columns["impression_id"][row], columns["timestamp"][row]
      try:
        examples.append(self._codec.encode(features, labels, impression_id,
                                           timestamp).SerializeToString())
      except (example_codec.RecordError, TypeError, ValueError) as e:
        reason = getattr(e, "reason", dl.BAD_VALUE)
        dead.append(dl.make_dead_letter(
            dl.IMPRESSIONS, columns["file"][row], columns["line"][row], reason,
            f"encoding {impression_id!r}: {e}", features))
    return examples, dead


class _SplitFn(beam.DoFn):

  def __init__(self, eval_from_timestamp: int):
    self._eval_from_timestamp = eval_from_timestamp

  def process(self, batch):
    for split, part in split_batch(batch, self._eval_from_timestamp).items():
      if part.num_rows:
        yield beam.pvalue.TaggedOutput(split, part)


class SplitBatchesByTime(beam.PTransform):
  """Labelled batches -> {"train": batches before the cut, "eval": the rest}."""

  def __init__(self, eval_from_timestamp: int):
    super().__init__()
    self._eval_from_timestamp = int(eval_from_timestamp)

  def expand(self, batches):
    outputs = batches | "Split" >> beam.ParDo(_SplitFn(self._eval_from_timestamp)).with_outputs(
        split_lib.TRAIN, split_lib.EVAL)
    return {split_lib.TRAIN: outputs[split_lib.TRAIN], split_lib.EVAL: outputs[split_lib.EVAL]}


class _EncodeFn(beam.DoFn):

  def __init__(self, spec, label_names):
    self._spec = spec
    self._label_names = tuple(label_names)

  def setup(self):
    self._encoder = BatchEncoder(self._spec, self._label_names)

  def process(self, batch) -> Iterator[Any]:
    examples, dead = self._encoder.encode(batch)
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    if examples:
      yield examples


class EncodeBatches(beam.PTransform):
  """Labelled batches -> {"examples": lists of serialized tf.Examples (one list per
  batch, the row job's bytes), "dead_letter"}."""

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str]):
    super().__init__()
    self._spec = spec
    self._label_names = tuple(label_names)

  def expand(self, batches):
    outputs = batches | "Encode" >> beam.ParDo(_EncodeFn(
        self._spec, self._label_names)).with_outputs(dl.DEAD_LETTER, main=EXAMPLES)
    return {EXAMPLES: outputs[EXAMPLES], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER]}


def mixing_groups(examples: Sequence[bytes], mix_buckets: int
                  ) -> Iterator[Tuple[int, List[bytes]]]:
  """(mixing group, its Examples) for each group a list of Examples touches
  (`encode.WriteExamples`' groups: mix_key % mix_buckets)."""
  groups: Dict[int, List[bytes]] = {}
  for example in examples:
    groups.setdefault(encode_lib.mix_key(example) % mix_buckets, []).append(example)
  yield from groups.items()


def _mixed(group: Tuple[int, Iterable[List[bytes]]]) -> List[bytes]:
  """A mixing group's Examples in hash order (ties by the bytes), as `encode.WriteExamples`."""
  _, lists = group
  return sorted((example for examples in lists for example in examples),
                key=lambda example: (encode_lib.mix_key(example), example))


class WriteExampleLists(beam.PTransform):
  """Lists of serialized Examples -> the TFRecord shards of `encode.WriteExamples` (same
  mixing groups, same order inside a group), with one shuffle element per (batch,
  group) instead of one per Example.

  Args:
    file_path_prefix, num_shards, mix_buckets: as `encode.WriteExamples`.
  """

  def __init__(self, file_path_prefix: str, num_shards: int,
               mix_buckets: int = encode_lib.MIX_BUCKETS):
    super().__init__()
    self._file_path_prefix = file_path_prefix
    self._num_shards = num_shards
    self._mix_buckets = mix_buckets

  def expand(self, example_lists):
    mixed = (example_lists
             | "KeyForMixing" >> beam.FlatMap(mixing_groups, self._mix_buckets)
             | "GroupForMixing" >> beam.GroupByKey()
             | "EmitMixed" >> beam.FlatMap(_mixed))
    return mixed | "WriteTFRecord" >> beam.io.WriteToTFRecord(
        self._file_path_prefix,
        file_name_suffix=outputs_lib.TFRECORD_SUFFIX,
        num_shards=self._num_shards,
        shard_name_template=outputs_lib.SHARD_TEMPLATE,
        compression_type=CompressionTypes.GZIP)
