"""Split labelled impressions by time into train and eval.

Flow: JoinAndLabel -> **SplitByTime** -> EncodeExamples -> write / analyze / stats.
An impression with timestamp < eval_from_timestamp (data.eval_from at UTC midnight, or
`--eval_from`) is train, any later one eval, so eval is strictly in train's future.
"""

import apache_beam as beam

TRAIN = "train"
EVAL = "eval"


class _SplitFn(beam.DoFn):

  def __init__(self, eval_from_timestamp: int):
    self._eval_from_timestamp = eval_from_timestamp

  def process(self, record):
    if record["timestamp"] < self._eval_from_timestamp:
      yield beam.pvalue.TaggedOutput(TRAIN, record)
    else:
      yield beam.pvalue.TaggedOutput(EVAL, record)


class SplitByTime(beam.PTransform):
  """Labelled records -> {"train": records before the cut, "eval": the rest}.

  Args:
    eval_from_timestamp: unix seconds of the first eval instant.
  """

  def __init__(self, eval_from_timestamp: int):
    super().__init__()
    self._eval_from_timestamp = int(eval_from_timestamp)

  def expand(self, records):
    outputs = records | "Split" >> beam.ParDo(_SplitFn(self._eval_from_timestamp)).with_outputs(
        TRAIN, EVAL)
    return {TRAIN: outputs[TRAIN], EVAL: outputs[EVAL]}
