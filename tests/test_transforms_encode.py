"""transforms.encode: labelled batches -> serialized tf.Examples, byte for byte the codec's.

The reference is `features.example_codec.ExampleCodec.encode`, one record at a time
(`BatchEncoder.encode_rows`); the columnar encoder must give the same bytes on batches
with every kind of value, and the job's encode + write must give Examples tf.data reads
back. Also pins why tfx_bsl's C++ encoder is not used (module docstring of encode).
"""

import glob

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa
import tensorflow as tf
from tensorflow.core.example import example_pb2
from tfx_bsl.coders import example_coder

from features import example_codec
from tests import test_transforms_label as label_test
from transforms import dead_letter as dl
from transforms import encode
from transforms import label
from transforms import parse
from transforms import split as split_lib
from tests import beam_testing as testing
from transforms import write


def test_split_and_encode_give_the_codec_bytes_of_the_labelled_records():
  spec = testing.small_spec()
  config = testing.data_config()
  impression_batch, event_batch, labeler, (records, _, _) = label_test.parsed_world(config)
  batch, _, _ = labeler.join_and_label(pa.Table.from_batches([impression_batch]),
                                       pa.Table.from_batches([event_batch]))
  cut = testing.START + 60 * 60  # Splits the world's 2 hours of impressions.
  encoder = encode.BatchEncoder(spec, config.label_names)
  codec = example_codec.ExampleCodec(spec, config.label_names)
  for split, part in split_lib.split_batch(batch, cut).items():
    in_split = [r for r in records if (r["timestamp"] < cut) == (split == split_lib.TRAIN)]
    expected = [codec.encode(r["features"], r["labels"], r["impression_id"],
                             r["timestamp"]).SerializeToString() for r in in_split]
    found, dead = encoder.encode(part)
    assert not dead and len(found) == len(in_split) > 0
    assert sorted(found) == sorted(expected)


def test_encode_and_write_shards_tf_data_reads(tmp_path):
  """EncodeBatches -> WriteExamples in a pipeline; a label outside 0/1 is a dead letter."""
  spec, label_names, batch = _random_labelled_batch(40, 5)
  first = batch.slice(0, 1)
  broken = pa.RecordBatch.from_arrays(
      [pa.array([2], pa.int64()) if name == "click" else first.column(index)
       for index, name in enumerate(first.schema.names)], schema=first.schema)
  prefix = str(tmp_path / "train" / "train")
  with test_pipeline.TestPipeline() as p:
    outputs = (p | beam.Create([batch.slice(0, 25), batch.slice(25), broken])
               | encode.EncodeBatches(spec, label_names))
    _ = outputs[encode.EXAMPLES] | write.WriteExamples(prefix, num_shards=3)
    assert_that(outputs[dl.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"])),
                equal_to([(1, dl.BAD_VALUE)]))
  files = sorted(glob.glob(prefix + "*"))
  assert [f[len(prefix):] for f in files] == [f"-0000{i}-of-00003.tfrecord.gz" for i in range(3)]
  written = sorted(raw.numpy() for raw in tf.data.TFRecordDataset(files, compression_type="GZIP"))
  assert written == sorted(encode.BatchEncoder(spec, label_names).encode_rows(batch)[0])
  decoded = [example_codec.example_to_dict(raw, spec, label_names) for raw in written]
  rows = {row["impression_id"]: row for row in batch.to_pylist() if row["impression_id"]}
  assert len(decoded) == 40 and len(rows) == 34  # Every 7th row has an empty id.
  for example in decoded:
    if not example["impression_id"]:
      continue
    row = rows[example["impression_id"]]
    assert example["click"] == row["click"] and example["timestamp"] == row["timestamp"]


def test_python_values_is_to_pylist():
  arrays = [pa.array(["a", None, "é"]), pa.array([1, None, -3]), pa.array([0.5, None, 1e300]),
            pa.array([[1.5, 2.0], None, []], pa.list_(pa.float64())),
            pa.array([["x"], [], None, ["y", "z"]]).slice(1), pa.array([True, False, None]),
            pa.array([7, 8], pa.int64())]
  for array in arrays:
    values = encode.python_values(array)
    assert values == array.to_pylist()
    assert [type(v) for v in values] == [type(v) for v in array.to_pylist()]


def test_tfx_bsl_encoder_writes_missing_features_and_another_byte_order():
  """Why the job writes the wire format itself: tfx_bsl 1.16.1's encoder writes a null as
  a present, empty Feature and fills the map in another order than the codec."""
  batch = pa.RecordBatch.from_arrays(
      [pa.array([[b"ios"], None]), pa.array([[1], [2]]), pa.array([[0.5], [1.5]], pa.list_(
          pa.float32()))], ["device", "position", "item_price"])
  examples = [example_pb2.Example.FromString(b)
              for b in example_coder.RecordBatchToExamplesEncoder().encode(batch)]
  assert "device" in examples[1].features.feature
  assert examples[1].features.feature["device"].WhichOneof("kind") is None


def _random_labelled_batch(rows, seed):
  """A labelled batch of the small spec with every kind of value the encoder meets."""
  import random  # pylint: disable=g-import-not-at-top
  rng = random.Random(seed)
  spec, config = testing.small_spec(), testing.data_config()
  schema = label.BucketLabeler(config, parse.impression_schema(spec)).output_schema
  strings = ["", "a", "é", "日本語", "x" * 200, "line\nbreak"]
  ints = [0, 1, -1, 127, 128, 300, 2**31, -(2**40), 2**63 - 1, -(2**63)]
  floats = [0.0, -0.0, 1.5, -2.25, 1e-45, 3.0e38, -1e-310, 0.1]
  out = []
  for index in range(rows):
    tags = [rng.choice(strings) for _ in range(rng.randrange(0, 4))]
    row = {"file": "f.jsonl", "line": index + 1, "record": None,
           "impression_id": f"imp{index}é" if index % 7 else "", "timestamp": rng.choice(ints),
           "user_id": rng.choice(strings), "user_age": rng.choice(ints),
           "device": rng.choice(strings), "tags": tags,
           "tags__weight": [rng.choice(floats) for _ in tags], "item_id": rng.choice(strings),
           "item_price": rng.choice(floats), "position": rng.choice(ints)}
    for name in ("user_id", "user_age", "device", "tags", "item_price", "position"):
      if rng.random() < 0.3:
        row[name] = None
        if name == "tags":
          row["tags__weight"] = None
    row.update({name: rng.randrange(2) for name in config.label_names})
    out.append(row)
  return spec, config.label_names, pa.RecordBatch.from_pylist(out, schema=schema)


def test_columnar_encoder_writes_the_codec_bytes():
  for seed, rows in ((1, 3000), (2, 1500), (3, 40)):
    spec, label_names, batch = _random_labelled_batch(rows, seed)
    encoder = encode.BatchEncoder(spec, label_names)
    expected, dead = encoder.encode_rows(batch)
    assert not dead and len(expected) == rows
    columnar = encode.ColumnarExampleEncoder(spec, label_names)
    for part in (batch, batch.slice(17, rows // 2)):
      found = columnar.encode(part)
      assert found == encoder.encode_rows(part)[0]
    assert encoder.encode(batch) == (expected, [])


def test_columnar_encoder_leaves_what_it_does_not_cover_to_the_codec():
  spec, label_names, batch = _random_labelled_batch(1200, 4)
  columnar = encode.ColumnarExampleEncoder(spec, label_names)

  def replaced(name, values):
    columns = list(batch.columns)
    columns[batch.schema.get_field_index(name)] = values
    return pa.RecordBatch.from_arrays(columns, schema=batch.schema)

  too_big = replaced("item_price", pa.array(
      [1e300] + batch.column(batch.schema.get_field_index("item_price")).to_pylist()[1:],
      pa.float64()))
  bad_label = replaced("click", pa.array([2] * batch.num_rows, pa.int64()))
  assert columnar.encode(too_big) is None and columnar.encode(bad_label) is None
  encoder = encode.BatchEncoder(spec, label_names)
  examples, dead = encoder.encode(bad_label)
  assert not examples and len(dead) == batch.num_rows
  assert dead[0]["reason"] == "bad_value" and "click" in dead[0]["detail"]


def test_key_orders_are_grouped_under_one_total_order_each():
  orders = [["a", "b", "c"], ["a", "c"], ["b", "a"], ["d", "b"], ["c", "b"]]
  groups = encode._order_groups(orders)  # pylint: disable=protected-access
  covered = sorted(index for _, members in groups for index in members)
  assert covered == list(range(len(orders)))
  for total, members in groups:
    for index in members:  # Each member's order is a subsequence of its group's order.
      assert [key for key in total if key in orders[index]] == orders[index]
  assert len(groups) == 2  # "b" before "a" (and "c" before "b") cannot join the first.
  assert encode._topological({"x": {"y"}, "y": {"x"}}) is None  # pylint: disable=protected-access
