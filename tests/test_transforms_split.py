"""transforms.split: timestamp < eval_from -> train, else eval."""

import apache_beam as beam
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from transforms import split
from transforms import testing


def test_split_at_the_eval_cut():
  cut = testing.data_config().eval_from_timestamp
  assert cut == testing.START + 2 * testing.DAY_S
  records = [{"impression_id": name, "timestamp": timestamp} for name, timestamp in
             [("early", testing.START), ("last_train", cut - 1), ("first_eval", cut),
              ("late", cut + 10 * testing.DAY_S)]]
  with test_pipeline.TestPipeline() as p:
    outputs = p | beam.Create(records) | split.SplitByTime(cut)
    assert_that(outputs[split.TRAIN] | "TrainIds" >> beam.Map(lambda r: r["impression_id"]),
                equal_to(["early", "last_train"]), label="CheckTrain")
    assert_that(outputs[split.EVAL] | "EvalIds" >> beam.Map(lambda r: r["impression_id"]),
                equal_to(["first_eval", "late"]), label="CheckEval")
