"""transforms.split: timestamp < eval_from -> train, else eval."""

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to
import pyarrow as pa

from transforms import split
from tests import beam_testing as testing


def test_split_at_the_eval_cut():
  cut = testing.data_config().eval_from_timestamp
  assert cut == testing.START + 2 * testing.DAY_S
  names, timestamps = zip(*[("early", testing.START), ("last_train", cut - 1),
                            ("first_eval", cut), ("late", cut + 10 * testing.DAY_S)])
  batch = pa.RecordBatch.from_pydict({"impression_id": list(names),
                                      "timestamp": list(timestamps)})
  parts = split.split_batch(batch, cut)
  assert parts[split.TRAIN].column(0).to_pylist() == ["early", "last_train"]
  assert parts[split.EVAL].column(0).to_pylist() == ["first_eval", "late"]
  only_train = batch.slice(0, 2)
  with test_pipeline.TestPipeline() as p:
    outputs = p | beam.Create([batch, only_train]) | split.SplitBatchesByTime(cut)
    assert_that(outputs[split.TRAIN]
                | "TrainIds" >> beam.FlatMap(lambda b: b.column(0).to_pylist()),
                equal_to(["early", "last_train"] * 2), label="CheckTrain")
    assert_that(outputs[split.EVAL] | "EvalRows" >> beam.Map(lambda b: b.num_rows),
                equal_to([2]), label="CheckEval")  # No empty eval batch of only_train.
