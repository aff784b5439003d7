"""Split labelled batches by time into train and eval.

Flow: BucketedJoinAndLabel -> **SplitBatchesByTime** -> EncodeBatches -> write / analyze /
stats. A row with timestamp < eval_from_timestamp (data.eval_from at UTC midnight, or
`--eval_from`) is train, any later one eval, so eval is strictly in train's future. (The
file-split sources take train and eval from separate files instead.)
"""

from typing import Dict

import apache_beam as beam
import pyarrow as pa

TRAIN = "train"
EVAL = "eval"


def split_batch(batch: pa.RecordBatch, eval_from_timestamp: int
                ) -> Dict[str, pa.RecordBatch]:
  """{"train": rows before the cut, "eval": the rest} of one labelled batch."""
  timestamps = batch.column(batch.schema.get_field_index("timestamp")).to_numpy()
  is_train = timestamps < eval_from_timestamp
  return {TRAIN: batch.filter(pa.array(is_train)), EVAL: batch.filter(pa.array(~is_train))}


class _SplitFn(beam.DoFn):

  def __init__(self, eval_from_timestamp: int):
    self._eval_from_timestamp = eval_from_timestamp

  def process(self, batch):
    for split, part in split_batch(batch, self._eval_from_timestamp).items():
      if part.num_rows:
        yield beam.pvalue.TaggedOutput(split, part)


class SplitBatchesByTime(beam.PTransform):
  """Labelled batches -> {"train": batches of the rows before the cut, "eval": the rest}.

  Args:
    eval_from_timestamp: unix seconds of the first eval instant.
  """

  def __init__(self, eval_from_timestamp: int):
    super().__init__()
    self._eval_from_timestamp = int(eval_from_timestamp)

  def expand(self, batches):
    outputs = batches | "Split" >> beam.ParDo(_SplitFn(self._eval_from_timestamp)).with_outputs(
        TRAIN, EVAL)
    return {TRAIN: outputs[TRAIN], EVAL: outputs[EVAL]}
