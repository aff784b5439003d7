"""Compact shuffle payloads: RecordBatches and lists of bytes as zstd-compressed bytes.

Flow: used on both sides of the job's two shuffles, the join (join.py, aliccp_join.py:
batches keyed by bucket) and the shard writer (write.py: lists of serialized Examples
keyed by shard).

What crosses a shuffle is held, encoded, by the runner (on DirectRunner every element of
a GroupByKey's input sits in the runner's memory at once). Beam would pickle a
RecordBatch uncompressed and code Examples as they are; zstd-compressed Arrow IPC and
Example lists take about 4.6x and 10x fewer bytes (docs/SCALING.md), as plain bytes that
every runner's coders move without pickling.
"""

import io
from typing import List, Sequence

import numpy as np
import pyarrow as pa

CODEC = "zstd"
_HEADER = np.dtype("<i8")


def _compress(raw: bytes) -> bytes:
  """int64 uncompressed size, then zstd of `raw` (one call: a batch's IPC buffers
  compressed one by one, as IpcWriteOptions(compression=...) does, cost 3.5x the time
  on the join's small sub-batches)."""
  return (np.array([len(raw)], dtype=_HEADER).tobytes()
          + pa.compress(raw, codec=CODEC, asbytes=True))


def unpacked_size(data: bytes) -> int:
  """Bytes of a packed payload once decompressed."""
  return int(np.frombuffer(data, dtype=_HEADER, count=1)[0])


def _decompress(data: bytes) -> bytes:
  return pa.decompress(memoryview(data)[_HEADER.itemsize:], unpacked_size(data),
                       codec=CODEC, asbytes=True)


def pack_batch(batch: pa.RecordBatch) -> bytes:
  """A RecordBatch as a zstd-compressed Arrow IPC stream."""
  sink = io.BytesIO()
  with pa.ipc.new_stream(sink, batch.schema) as writer:
    writer.write_batch(batch)
  return _compress(sink.getvalue())


def unpack_batch(data: bytes) -> pa.RecordBatch:
  """`pack_batch`'s inverse (same schema, same values)."""
  return pa.ipc.open_stream(_decompress(data)).read_next_batch()


def pack_bytes_list(items: Sequence[bytes]) -> bytes:
  """A list of byte strings as zstd of (int64 count, int64 length of each item, the
  items concatenated)."""
  lengths = np.fromiter((len(item) for item in items), dtype=_HEADER, count=len(items))
  return _compress(np.array([len(items)], dtype=_HEADER).tobytes() + lengths.tobytes()
                   + b"".join(items))


def unpack_bytes_list(data: bytes) -> List[bytes]:
  """`pack_bytes_list`'s inverse."""
  raw = _decompress(data)
  count = int(np.frombuffer(raw, dtype=_HEADER, count=1)[0])
  raw = raw[_HEADER.itemsize:]
  ends = np.cumsum(np.frombuffer(raw, dtype=_HEADER, count=count)) + count * _HEADER.itemsize
  starts = np.r_[count * _HEADER.itemsize, ends[:-1]].astype(np.int64)
  return [raw[start:end] for start, end in zip(starts.tolist(), ends.tolist())]
