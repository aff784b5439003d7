"""A day's delayed-feedback stream as tf.data over the stored Examples.

Flow position: DAY/{train,updates,closed}/ and D-1's train/ (gzip TFRecord shards of
transforms/daily.py) -> `read_rows` (only the keys the stream needs) ->
training/feedback_days.day_stream (which stored rows enter, how often, with which labels)
-> **`samples_dataset`**: one element per sample, the row's serialized Example with the
sample's click and conversion labels and kind -> parsing and the weighted training step.

Rows are numbered in the order `read_rows` reads them: the output's shards sorted by name,
records in file order; `samples_dataset` reads the same files in the same order, so a
sample's (output, row) is the same record in both.
"""

from typing import Dict, Mapping

import numpy as np
import tensorflow as tf

from features import spec as spec_lib
from training import data
from training import feedback_days
from transforms import label as label_lib

READ_BATCH = 4096
EXPAND_BATCH = 1024  # records expanded into their samples at a time


def records(pattern: str) -> tf.data.Dataset:
  """The serialized records of the shards matching `pattern`, in the order `read_rows`
  numbers them (shards sorted by name, records in file order)."""
  return tf.data.TFRecordDataset(data.list_files(pattern), compression_type=data.COMPRESSION)


def read_rows(pattern: str, click_label: str = "click",
              conversion_label: str = "purchase") -> Dict[str, np.ndarray]:
  """feedback_days Rows of the shards matching `pattern`: impression_id (object [n]),
  timestamp and the two labels' first-event times (int64 [n], -1 for none)."""
  keys = {spec_lib.IMPRESSION_ID_KEY: tf.io.FixedLenFeature([], tf.string),
          spec_lib.TIMESTAMP_KEY: tf.io.FixedLenFeature([], tf.int64)}
  for name in (click_label, conversion_label):
    keys[label_lib.timestamp_column(name)] = tf.io.FixedLenFeature([], tf.int64,
                                                                   default_value=-1)
  columns = {name: [] for name in keys}
  if tf.io.gfile.glob(pattern):  # an output may have no shards on a quiet day
    for batch in records(pattern).batch(READ_BATCH).map(
        lambda serialized: tf.io.parse_example(serialized, keys)):
      for name, values in batch.items():
        columns[name].append(values.numpy())
  rows = {name: (np.concatenate(parts) if parts else np.zeros([0], np.int64))
          for name, parts in columns.items()}
  rows[spec_lib.IMPRESSION_ID_KEY] = np.array(
      [value.decode() for value in rows[spec_lib.IMPRESSION_ID_KEY]], dtype=object)
  return rows


def samples_dataset(patterns: Mapping[str, str],
                    stream: feedback_days.DayStream) -> tf.data.Dataset:
  """The stream's samples as tf.data elements {"example": string, "click", "conversion",
  "kind": int64 (an index into feedback_days.KINDS), and "elapsed" (float32 s) when the
  stream has it (DFM)}, scalars.

  Args:
    patterns: output name ("train", "updates", "closed", "previous") -> the shards'
      glob, the ones `read_rows` read for `stream`.
    stream: feedback_days.day_stream's samples.

  Elements come output by output in the order of `patterns`, records in stored order; a
  record with several samples (an exposure and its duplicate) gives them one after another.
  """
  kind_index = {kind: index for index, kind in enumerate(feedback_days.KINDS)}
  parts = []
  for output, pattern in patterns.items():
    chosen = np.flatnonzero(stream.output == output)
    if not len(chosen):
      continue
    chosen = chosen[np.argsort(stream.row[chosen], kind="stable")]
    rows = stream.row[chosen]
    nrows = int(rows.max()) + 1
    values = {"click": stream.click[chosen], "conversion": stream.conversion[chosen],
              "kind": np.array([kind_index[k] for k in stream.kind[chosen]], np.int64)}
    if stream.elapsed is not None:
      values["elapsed"] = stream.elapsed[chosen].astype(np.float32)
    ragged = {name: tf.RaggedTensor.from_value_rowids(
        tf.constant(value), tf.constant(rows, tf.int64), nrows=nrows)
              for name, value in values.items()}
    counts = tf.constant(np.bincount(rows, minlength=nrows), tf.int64)

    def expand(index, record, ragged=ragged, counts=counts):
      # A block of records -> each record repeated once per sample, with the samples'
      # labels in row order (vectorised: a Dataset per record cost ~170 us a sample).
      labels = {name: tf.gather(value, index).flat_values for name, value in ragged.items()}
      return {"example": tf.repeat(record, tf.gather(counts, index)), **labels}

    parts.append(records(pattern).take(nrows).enumerate().batch(EXPAND_BATCH).map(
        expand).unbatch())
  if not parts:
    raise ValueError("the stream has no samples")
  dataset = parts[0]
  for part in parts[1:]:
    dataset = dataset.concatenate(part)
  return dataset
