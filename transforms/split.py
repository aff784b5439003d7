"""Split labelled batches by time into train and eval.

Flow: BucketedJoinAndLabel -> **SplitBatchesByTime** -> EncodeBatches -> write / analyze /
stats. A row with timestamp < eval_from_timestamp (data.eval_from at UTC midnight, or
`--eval_from`) is train, any later one eval, so eval is strictly in train's future. Without
a date (data.eval_from None) the cut is the midnight of the last UTC day present among
the labelled impressions (a global max, used as a side input): that day is eval, every
earlier day train. (The file-split sources take train and eval from separate files
instead.)
"""

from typing import Dict, Iterable, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.compute as pc

from configs import config as config_lib

TRAIN = "train"
EVAL = "eval"
# The output holding one element: the eval split's first instant (unix seconds, a UTC
# midnight), or None when there was no row to split.
EVAL_FROM = "eval_from_timestamp"


def split_batch(batch: pa.RecordBatch, eval_from_timestamp: Optional[int]
                ) -> Dict[str, pa.RecordBatch]:
  """{"train": rows before the cut, "eval": the rest} of one labelled batch.

  A None cut (no labelled row anywhere, so no day to take) puts every row in train.
  """
  if eval_from_timestamp is None:
    return {TRAIN: batch, EVAL: batch.slice(0, 0)}
  timestamps = batch.column(batch.schema.get_field_index("timestamp")).to_numpy()
  is_train = timestamps < eval_from_timestamp
  return {TRAIN: batch.filter(pa.array(is_train)), EVAL: batch.filter(pa.array(~is_train))}


def last_day_start(max_timestamps: Iterable[Optional[int]]) -> Optional[int]:
  """The UTC midnight of the latest of some timestamps (unix s; Nones skipped), or None.

  A CombineGlobally fn: Beam applies it to inputs and to its own partial results.
  """
  latest = max((t for t in max_timestamps if t is not None), default=None)
  return None if latest is None else latest - latest % config_lib.DAY_S


def _batch_max_timestamp(batch: pa.RecordBatch) -> Optional[int]:
  if not batch.num_rows:
    return None
  return pc.max(batch.column(batch.schema.get_field_index("timestamp"))).as_py()


class _SplitFn(beam.DoFn):

  def __init__(self, eval_from_timestamp: Optional[int] = None):
    self._eval_from_timestamp = eval_from_timestamp

  def process(self, batch, eval_from_timestamp=None):
    cut = self._eval_from_timestamp if eval_from_timestamp is None else eval_from_timestamp
    for split, part in split_batch(batch, cut).items():
      if part.num_rows:
        yield beam.pvalue.TaggedOutput(split, part)


class SplitBatchesByTime(beam.PTransform):
  """Labelled batches -> {"train": batches of the rows before the cut, "eval": the rest}.

  Args:
    eval_from_timestamp: unix seconds of the first eval instant; None = the UTC midnight
      of the last day present in the batches.

  Returns (from expand): {"train", "eval"} batches and {EVAL_FROM}: a one-element
  PCollection of the cut used (unix seconds, or None with no rows).
  """

  def __init__(self, eval_from_timestamp: Optional[int]):
    super().__init__()
    self._eval_from_timestamp = (None if eval_from_timestamp is None
                                 else int(eval_from_timestamp))

  def expand(self, batches):
    if self._eval_from_timestamp is not None:
      outputs = batches | "Split" >> beam.ParDo(
          _SplitFn(self._eval_from_timestamp)).with_outputs(TRAIN, EVAL)
      cut = batches.pipeline | "EvalFrom" >> beam.Create([self._eval_from_timestamp])
    else:
      cut = (batches
             | "MaxTimestamps" >> beam.Map(_batch_max_timestamp)
             | "LastDay" >> beam.CombineGlobally(last_day_start))
      outputs = batches | "Split" >> beam.ParDo(
          _SplitFn(), beam.pvalue.AsSingleton(cut)).with_outputs(TRAIN, EVAL)
    return {TRAIN: outputs[TRAIN], EVAL: outputs[EVAL], EVAL_FROM: cut}
