"""transforms.columnar.encode: the same train/eval split and byte-identical serialized Examples.

The labelled batches of the columnar join are split and encoded; the row job's split rule
and `encode._EncodeFn` on the row join's records must give the same bytes per split.
Also pins why tfx_bsl's C++ encoder is not used (module docstring of columnar.encode).
"""

import pyarrow as pa
from tensorflow.core.example import example_pb2
from tfx_bsl.coders import example_coder

from transforms import encode
from transforms import split as split_lib
from transforms import testing
from transforms.columnar import encode as cencode
from tests import test_columnar_label as label_test


def test_split_and_encode_match_the_row_job():
  spec = testing.small_spec()
  config = testing.data_config()
  impression_batch, event_batch, labeler, (row_records, _, _) = label_test.parsed_world(config)
  batch, _, _ = labeler.join_and_label(pa.Table.from_batches([impression_batch]),
                                       pa.Table.from_batches([event_batch]))
  cut = testing.START + 60 * 60  # Splits the world's 2 hours of impressions.
  encoder = cencode.BatchEncoder(spec, config.label_names)
  row_fn = encode._EncodeFn(spec, config.label_names, "x")  # pylint: disable=protected-access
  row_fn.setup()
  for split, part in cencode.split_batch(batch, cut).items():
    row_split = [r for r in row_records
                 if (r["timestamp"] < cut) == (split == split_lib.TRAIN)]
    expected = [out for r in row_split for out in row_fn.process(r)]
    found, dead = encoder.encode(part)
    assert not dead and len(found) == len(row_split) > 0
    assert sorted(found) == sorted(expected)


def test_python_values_is_to_pylist():
  arrays = [pa.array(["a", None, "é"]), pa.array([1, None, -3]), pa.array([0.5, None, 1e300]),
            pa.array([[1.5, 2.0], None, []], pa.list_(pa.float64())),
            pa.array([["x"], [], None, ["y", "z"]]).slice(1), pa.array([True, False, None]),
            pa.array([7, 8], pa.int64())]
  for array in arrays:
    values = cencode.python_values(array)
    assert values == array.to_pylist()
    assert [type(v) for v in values] == [type(v) for v in array.to_pylist()]


def test_tfx_bsl_encoder_writes_missing_features_and_another_byte_order():
  """Why encoding stays on the row codec: tfx_bsl 1.16.1's encoder writes a null as a
  present, empty Feature and fills the map in another order than the row job."""
  batch = pa.RecordBatch.from_arrays(
      [pa.array([[b"ios"], None]), pa.array([[1], [2]]), pa.array([[0.5], [1.5]], pa.list_(
          pa.float32()))], ["device", "position", "item_price"])
  examples = [example_pb2.Example.FromString(b)
              for b in example_coder.RecordBatchToExamplesEncoder().encode(batch)]
  assert "device" in examples[1].features.feature
  assert examples[1].features.feature["device"].WhichOneof("kind") is None


def test_write_example_lists_writes_what_write_examples_writes(tmp_path):
  """One mixing group and one shard: both writers emit the whole split in hash order."""
  import apache_beam as beam  # pylint: disable=g-import-not-at-top
  from apache_beam.testing import test_pipeline  # pylint: disable=g-import-not-at-top
  from tests import test_beam_golden as golden_test  # pylint: disable=g-import-not-at-top
  examples = [f"example {i}".encode() * (1 + i % 3) for i in range(300)]
  lists = [examples[start:start + 37] for start in range(0, len(examples), 37)]
  with test_pipeline.TestPipeline() as p:
    _ = p | "Rows" >> beam.Create(examples) | encode.WriteExamples(
        str(tmp_path / "row" / "train"), 1, mix_buckets=1)
    _ = p | "Lists" >> beam.Create(lists) | cencode.WriteExampleLists(
        str(tmp_path / "lists" / "train"), 1, mix_buckets=1)
  row = golden_test._tfrecords(str(tmp_path / "row" / "*"))  # pylint: disable=protected-access
  found = golden_test._tfrecords(str(tmp_path / "lists" / "*"))  # pylint: disable=protected-access
  assert found == row and sorted(found) == sorted(examples)
  assert found != examples  # Mixed, not in arrival order.
  groups = dict(cencode.mixing_groups(examples, 4))
  assert sorted(e for group in groups.values() for e in group) == sorted(examples)
  assert all(encode.mix_key(e) % 4 == g for g, group in groups.items() for e in group)
