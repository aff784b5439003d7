"""Write serialized Examples as mixed, deterministic GZIP TFRecord shards in one shuffle.

Flow: EncodeBatches -> **WriteExamples** -> OUTPUT/{train,eval}/*.tfrecord.gz
-> training.data (tf.data).

Each Example goes to shard `mix_key % num_shards` (`mix_key`: an XXH3 hash of its
bytes), and a shard is written in hash order (ties by the bytes). So:
  * the files are the same on every run of the same input, whatever the runner, its
    bundling or the number of workers (which Example lands in which shard included);
  * every stretch of a shard is a hash-random sample of the split, with the split's label
    mix, although upstream the join emits records grouped by label (a trainer's bounded
    shuffle buffer could not undo that);
  * the Examples cross the shuffle once, as zstd-packed lists (one element per upstream
    batch and shard; `transforms.packing`), and are framed and compressed in blocks: no
    per-Example Beam element, and no second shuffle inside a generic sink.

Memory: a writer holds one shard's Examples (split / num_shards); beyond
`sort_bytes` of them it writes the shard in several passes, each over a hash-random
slice ((mix_key // num_shards) % passes) sorted on its own, so a pass holds about
`sort_bytes`. Each file is written under a temporary name and renamed when complete;
shards that receive no Example are written empty, so a split always has `num_shards` files.
"""

import struct
import uuid
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import apache_beam as beam
import numpy as np
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import google_crc32c
import xxhash
from zlib_ng import zlib_ng

from transforms import outputs as outputs_lib
from transforms import packing

SORT_BYTES = 256 << 20  # Example bytes a shard writer sorts at once (module docstring).
BLOCK_BYTES = 4 << 20  # Framed bytes handed to the compressor per write.
GZIP_LEVEL = 6  # zlib's default (Z_DEFAULT_COMPRESSION), as TensorFlow's GZIP writer.
GZIP_WBITS = 31  # A gzip header and trailer around the deflate stream.


def mix_key(serialized: bytes) -> int:
  """A deterministic, well-spread 64-bit hash of a serialized Example (XXH3-64, seed 0:
  the same on every machine and run; not a CRC, whose linearity keeps Examples that
  differ in one label byte in correlated order). A tenth of BLAKE2b's cost per call."""
  return xxhash.xxh3_64_intdigest(serialized)


def shard_path(file_path_prefix: str, shard: int, num_shards: int) -> str:
  """`<prefix>-SSSSS-of-NNNNN.tfrecord.gz` (outputs.SHARD_TEMPLATE)."""
  return f"{file_path_prefix}-{shard:05d}-of-{num_shards:05d}{outputs_lib.TFRECORD_SUFFIX}"


def _masked_crc32c(data: bytes) -> int:
  crc = google_crc32c.value(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


_HEADERS: Dict[int, bytes] = {}  # record length -> its 12-byte frame header
_MAX_HEADERS = 1 << 16


def _frame_header(length: int) -> bytes:
  header = _HEADERS.get(length)
  if header is None:
    packed = struct.pack("<Q", length)
    header = packed + struct.pack("<I", _masked_crc32c(packed))
    if len(_HEADERS) < _MAX_HEADERS:
      _HEADERS[length] = header
  return header


def tfrecord_frames(records: Sequence[bytes]) -> bytes:
  """The records framed as TensorFlow's TFRecordWriter writes them, concatenated: per
  record uint64 length, masked CRC32C of the length, the bytes, their masked CRC32C (all
  little-endian). Length headers are cached per length (Examples of a split have few
  distinct lengths); the data CRCs are masked in numpy."""
  n = len(records)
  crcs = np.fromiter(map(google_crc32c.value, records), dtype=np.uint64, count=n)
  masked = (((crcs >> np.uint64(15)) | (crcs << np.uint64(17))) + np.uint64(0xA282EAD8)
            ) & np.uint64(0xFFFFFFFF)
  tails = masked.astype("<u4").tobytes()
  parts: List[bytes] = [b""] * (3 * n)
  parts[0::3] = [_frame_header(len(record)) for record in records]
  parts[1::3] = records
  parts[2::3] = [tails[i:i + 4] for i in range(0, 4 * n, 4)]
  return b"".join(parts)


def write_tfrecord_file(path: str, records: Iterable[bytes]) -> int:
  """Writes `records` as one GZIP TFRecord file at `path` (`write_tfrecord_chunks`)."""
  return write_tfrecord_chunks(path, [list(records)])


def write_tfrecord_chunks(path: str, chunks: Iterable[Sequence[bytes]]) -> int:
  """Writes the records of `chunks` (lists of records, in order) as one GZIP TFRecord
  file at `path` (any Beam filesystem) under a temporary name, renamed to `path` when
  complete, framing and compressing BLOCK_BYTES at a time. Returns the number of records.

  The gzip stream is zlib-ng's deflate at zlib's default level (GZIP_LEVEL): a standard
  gzip file, which TensorFlow and every gzip reader read, about 1.5-1.7x faster to write
  than with zlib at the same level and a little smaller (benchmarks in docs/SCALING.md 2.5).
  """
  temporary = f"{path}.tmp-{uuid.uuid4().hex}"
  count = 0
  compressor = zlib_ng.compressobj(GZIP_LEVEL, zlib_ng.DEFLATED, GZIP_WBITS)
  with FileSystems.create(temporary, compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    for chunk in chunks:
      sizes = np.fromiter(map(len, chunk), dtype=np.int64, count=len(chunk)) + 16
      # Cut the chunk where the framed bytes pass a multiple of BLOCK_BYTES.
      block_of = np.cumsum(sizes) // BLOCK_BYTES
      cuts = np.flatnonzero(np.diff(block_of)) + 1
      for start, stop in zip([0] + cuts.tolist(), cuts.tolist() + [len(chunk)]):
        if stop > start:
          handle.write(compressor.compress(tfrecord_frames(chunk[start:stop])))
      count += len(chunk)
    handle.write(compressor.flush())
  if FileSystems.exists(path):
    FileSystems.delete([path])
  FileSystems.rename([temporary], [path])
  return count


def shard_lists(examples: Sequence[bytes], num_shards: int, mix_key
                ) -> Iterator[Tuple[int, Tuple[bytes, bytes]]]:
  """(shard, (the mix keys as uint64 bytes, the Examples packed by
  `packing.pack_bytes_list`)) for each shard the Examples of `examples` go to."""
  keys = np.fromiter(map(mix_key, examples), dtype=np.uint64,
                     count=len(examples))
  shards = keys % np.uint64(num_shards)
  for shard in np.unique(shards).tolist():
    rows = np.flatnonzero(shards == shard)
    yield shard, (keys[rows].tobytes(),
                  packing.pack_bytes_list([examples[row] for row in rows.tolist()]))


def _hash_order(keys: np.ndarray, examples: List[bytes]) -> List[int]:
  """Positions of `examples` by (key, bytes)."""
  order = np.argsort(keys, kind="stable")
  ordered_keys = keys[order]
  new_key = np.r_[True, ordered_keys[1:] != ordered_keys[:-1]]
  order = order.tolist()
  if not new_key.all():  # Equal 64-bit keys (next to impossible for distinct bytes).
    starts = np.flatnonzero(new_key)
    stops = np.r_[starts[1:], len(order)]
    for start, stop in zip(starts.tolist(), stops.tolist()):
      order[start:stop] = sorted(order[start:stop], key=examples.__getitem__)
  return order


def ordered_passes(packed_lists: Iterable[Tuple[bytes, bytes]], num_shards: int,
                   sort_bytes: int = SORT_BYTES) -> Iterator[List[bytes]]:
  """A shard's Examples (`packed_lists`, from `shard_lists`, may be iterated more than
  once) in the written order, one list per pass: by (mix key, bytes), in
  ceil(bytes / sort_bytes) passes over hash-random slices ((key // num_shards) % passes)."""
  total = sum(packing.unpacked_size(packed) for _, packed in packed_lists)
  passes = max(1, -(-total // max(sort_bytes, 1)))
  for part in range(passes):
    keys, examples = [], []
    for key_bytes, packed in packed_lists:
      list_keys = np.frombuffer(key_bytes, dtype=np.uint64)
      items = packing.unpack_bytes_list(packed)
      if passes > 1:
        rows = np.flatnonzero((list_keys // np.uint64(num_shards)) % np.uint64(passes) == part)
        list_keys, items = list_keys[rows], [items[row] for row in rows.tolist()]
      keys.append(list_keys)
      examples.extend(items)
    if examples:
      yield [examples[position] for position in _hash_order(np.concatenate(keys), examples)]


class _WriteShardFn(beam.DoFn):

  def __init__(self, file_path_prefix: str, num_shards: int, sort_bytes: int):
    self._prefix = file_path_prefix
    self._num_shards = num_shards
    self._sort_bytes = sort_bytes
    self._written = beam.metrics.Metrics.counter("write", "examples")

  def process(self, shard_and_lists):
    shard, packed_lists = shard_and_lists
    count = write_tfrecord_chunks(
        shard_path(self._prefix, shard, self._num_shards),
        ordered_passes(packed_lists, self._num_shards, self._sort_bytes))
    self._written.inc(count)
    yield shard


def _write_empty_shards(written: List[int], file_path_prefix: str, num_shards: int) -> None:
  for shard in sorted(set(range(num_shards)) - set(written)):
    write_tfrecord_file(shard_path(file_path_prefix, shard, num_shards), [])


class WriteExamples(beam.PTransform):
  """Lists of serialized Examples -> `num_shards` mixed GZIP TFRecord files (docstring):
  `<prefix>-SSSSS-of-NNNNN.tfrecord.gz`. Any grouping of the Examples into lists gives
  the same files.

  Args:
    file_path_prefix: e.g. `OutputPaths(OUTPUT).examples_prefix("train")`.
    num_shards: data.train_shards or data.eval_shards.
    sort_bytes: Example bytes a writer sorts at once (more: several passes).
    key: bytes -> int in [0, 2**64), the hash that places and orders an Example
      (default `mix_key`).

  Returns: a PCollection of the shard indices written (one element per file).
  """

  def __init__(self, file_path_prefix: str, num_shards: int, sort_bytes: int = SORT_BYTES,
               key: Callable[[bytes], int] = mix_key):
    super().__init__()
    if num_shards < 1:
      raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    self._prefix = file_path_prefix
    self._num_shards = num_shards
    self._mix_key = key
    self._sort_bytes = sort_bytes

  def expand(self, example_lists):
    written = (example_lists
               | "KeyByShard" >> beam.FlatMap(shard_lists, self._num_shards, self._mix_key)
               | "GroupByShard" >> beam.GroupByKey()
               | "WriteShard" >> beam.ParDo(_WriteShardFn(
                   self._prefix, self._num_shards, self._sort_bytes)))
    _ = (written
         | "CollectWritten" >> beam.combiners.ToList()
         | "WriteEmptyShards" >> beam.Map(_write_empty_shards, self._prefix, self._num_shards))
    return written
