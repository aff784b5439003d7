"""Encode labelled batches as serialized tf.train.Examples (DESIGN.md section 3).

Flow: SplitBatchesByTime -> **EncodeBatches** -> write.WriteExamples ->
OUTPUT/{train,eval}/*.tfrecord.gz -> training.data (tf.data). Statistics and analyzers
read the batches, not the Examples.

The Example layout is `features.example_codec`'s (its `ExampleCodec.encode` is the
reference), plus a record's optional metadata (string keys outside the spec, e.g.
AliExpress `search_id`; `add_metadata`). The golden digests pin the serialized bytes,
whose feature-map order is the Python protobuf (upb) map's iteration order (which
depends on the keys present and their insertion order, not on the values). tfx_bsl's
C++ `RecordBatchToExamplesEncoder` gives Examples that parse equal except for missing
features (it writes a null as a present, empty Feature; the codec leaves the key out)
but in another map order, so its bytes differ, and re-serializing them in Python does
not restore the codec's order either (tests/test_transforms_encode.py pins both facts).
So `ColumnarExampleEncoder` writes the wire format itself, in columns, with the codec's
map order; `BatchEncoder` falls back to the codec row by row, which words every
encoding error as a dead letter.
"""

from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import apache_beam as beam
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features import example_codec
from features import spec as spec_lib
from transforms import dead_letter as dl

EXAMPLES = "examples"
_META = ("file", "line", "record", "impression_id", "timestamp")


def python_values(array: pa.Array) -> List[Any]:
  """The column as Python values, like `array.to_pylist()` (None for nulls, lists for list
  arrays) but through numpy, several times faster on the flat types used here."""
  if pa.types.is_list(array.type):
    flat = python_values(array.flatten())
    offsets = array.offsets.to_numpy()
    start = int(offsets[0])
    bounds = (offsets - start).tolist()
    valid = array.is_valid().to_numpy(zero_copy_only=False).tolist()
    return [flat[bounds[i]:bounds[i + 1]] if valid[i] else None for i in range(len(array))]
  if pa.types.is_string(array.type):
    return array.to_numpy(zero_copy_only=False).tolist()  # Nulls come back as None.
  if not (pa.types.is_integer(array.type) or pa.types.is_floating(array.type)):
    return array.to_pylist()
  if array.null_count == 0:
    return array.to_numpy(zero_copy_only=False).tolist()
  values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False).tolist()
  for index in np.flatnonzero(array.is_null().to_numpy(zero_copy_only=False)).tolist():
    values[index] = None
  return values


def add_metadata(example, metadata) -> None:
  """Adds a record's extra metadata as Example keys: ints as int64 keys (e.g. the daily
  job's `click_timestamp`), anything else as a utf-8 bytes key (e.g. AliExpress
  `search_id`).

  Not spec features: the model and the tf.data parser ignore them; they are there for
  analysis (e.g. grouping the rows of one search) and for the delayed-feedback streams.

  Raises:
    ValueError: a key the Example already holds (a feature, label or metadata key).
  """
  feature_map = example.features.feature
  for key, value in sorted(metadata.items()):
    if key in feature_map:
      raise ValueError(f"metadata key {key!r} is already an Example key")
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
      feature_map[key].int64_list.value.append(int(value))
    else:
      feature_map[key].bytes_list.value.append(str(value).encode("utf-8"))


COLUMNAR_MIN_ROWS = 1024  # Smaller batches go through the codec, row by row (BatchEncoder).
_BINARY = pa.large_binary()
_NO_BYTES = pa.scalar(b"", _BINARY)
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _binary_array(offsets: np.ndarray, data: np.ndarray) -> pa.Array:
  """large_binary array of the byte ranges [offsets[i], offsets[i + 1]) of data."""
  return pa.Array.from_buffers(_BINARY, len(offsets) - 1, [
      None, pa.py_buffer(np.ascontiguousarray(offsets, dtype=np.int64)),
      pa.py_buffer(np.ascontiguousarray(data, dtype=np.uint8))])


def _concat_rows(arrays: Sequence[pa.Array]) -> pa.Array:
  """Row-wise concatenation of many equal-length large_binary arrays: interleaved into
  one list per row (a take), then joined (faster than an element-wise join of many)."""
  n, k = len(arrays[0]), len(arrays)
  interleaved = pa.concat_arrays(list(arrays)).take(pa.array(
      (np.arange(k, dtype=np.int64)[None, :] * n + np.arange(n, dtype=np.int64)[:, None])
      .reshape(-1)))
  return _per_row(np.arange(0, n * k + 1, k, dtype=np.int64), interleaved)


def _per_row(offsets: np.ndarray, elements: pa.Array) -> pa.Array:
  """The concatenation of elements[offsets[i]:offsets[i + 1]] per row."""
  lists = pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), elements)
  return pc.binary_join(lists, _NO_BYTES)


_CONST, _VARINT, _RAW = "const", "varint", "raw"
# (kind, bytes / uint64 [n] / uint8 [n, w], rows mask or None)
_Piece = Tuple[str, Any, Optional[np.ndarray]]
_LIST_TAGS = {"string": 0x0A, "float": 0x12, "int": 0x1A}  # Feature's list fields.


class _Entry(NamedTuple):
  """A map entry of every row: `pieces` (its bytes before the payload, `_build`),
  `payload` (large_binary [n] bytes after them, or None) and `size` (int64 [n]: the
  entry's bytes in all, as Features' field 1)."""
  pieces: List[_Piece]
  payload: Optional[pa.Array]
  size: np.ndarray


def _varint_sizes(values: np.ndarray) -> np.ndarray:
  """int64 [n]: bytes of the protobuf varint of each uint64 (or non-negative int)."""
  unsigned = np.asarray(values).astype(np.uint64)
  sizes = np.ones(len(unsigned), dtype=np.int64)
  for k in range(1, 10):
    more = unsigned >= np.uint64(1 << (7 * k))
    if not more.any():
      break
    sizes += more
  return sizes


def _varint_bytes(value: int) -> bytes:
  return _build([(_VARINT, np.array([value], dtype=np.uint64), None)], 1)[0].as_py()


def _binary_lengths(array: pa.Array) -> np.ndarray:
  """int64 [n]: bytes of each value of a large_binary array (0 for a null)."""
  offsets = np.frombuffer(array.buffers()[1], dtype=np.int64)[array.offset:
                                                               array.offset + len(array) + 1]
  return np.diff(offsets)


def _build(pieces: Sequence[_Piece], n: int) -> pa.Array:
  """large_binary [n]: per row, the concatenation of the pieces, in numpy: a constant
  (bytes), a varint of a uint64 [n], raw bytes (uint8 [n, w]); a piece with a rows mask
  is written only where it is True."""
  matrices, valid, masked = [], [], False
  for kind, value, mask in pieces:
    if kind == _CONST:
      matrix = np.broadcast_to(np.frombuffer(value, dtype=np.uint8), (n, len(value)))
      here = None if mask is None else np.broadcast_to(mask[:, None], matrix.shape)
    elif kind == _VARINT:
      sizes = _varint_sizes(value)
      width = int(sizes.max()) if n else 1
      matrix = np.empty((n, width), dtype=np.uint8)
      for k in range(width):
        matrix[:, k] = (((value >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
                        | ((sizes > k + 1).astype(np.uint8) << np.uint8(7)))
      here = np.arange(width)[None, :] < sizes[:, None] if width > 1 else None
      if mask is not None:
        here = (np.broadcast_to(mask[:, None], matrix.shape) if here is None
                else here & mask[:, None])
    else:
      matrix, here = value, None
    matrices.append(matrix)
    valid.append(here)
    masked |= here is not None
  matrix = np.concatenate(matrices, axis=1) if len(matrices) > 1 else np.asarray(matrices[0])
  if not masked:
    lengths = np.full(n, matrix.shape[1], dtype=np.int64)
    data = np.ascontiguousarray(matrix).reshape(-1)
  else:
    here = np.concatenate([np.ones(m.shape, dtype=bool) if v is None else v
                           for m, v in zip(matrices, valid)], axis=1)
    lengths = here.sum(axis=1)
    data = matrix[here]
  offsets = np.zeros(n + 1, dtype=np.int64)
  np.cumsum(lengths, out=offsets[1:])
  return _binary_array(offsets, data)


class ColumnarExampleEncoder:
  """Labelled batches -> serialized tf.Examples, byte for byte the codec's, in columns.

  The wire format is written directly (Example.features = field 1; each map entry =
  field 1 holding key = 1 and value = 2; Feature.bytes_list = 1, float_list = 2 (packed
  float32), int64_list = 3 (packed varints); an empty list is a present, empty list
  message, as `example_codec._fill_list` makes it). The order of the map entries is the
  one thing not given by the format: it is the upb map's iteration order, which depends
  on the set of keys and the insertion order. So rows are grouped by which features are
  present, and for each such pattern the order is read once from an Example the row
  codec itself builds with the same keys in the same order (`_key_order`).

  Metadata keys (columns outside the spec: strings such as AliExpress `search_id`, or
  int64 such as the daily job's event times) come after the labels, as `add_metadata`
  writes them.

  `encode` returns None for a batch it does not cover (a label outside 0/1, a float
  outside float32, a present weighted feature without weights, a missing metadata
  value): the caller then encodes row by row, and the codec words those errors.
  """

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str],
               metadata_keys: Sequence[str] = ()):
    self._codec = example_codec.ExampleCodec(spec, label_names)
    self._features = [(f.name, f.dtype, f.multivalent, f.weight_key if f.weighted else None)
                      for f in spec]
    self._label_names = tuple(label_names)
    self._metadata_keys = tuple(metadata_keys)
    self._orders: Dict[Tuple[bool, ...], List[str]] = {}
    # Key -> its column of the presence matrix (a weight goes with its feature).
    self._presence_column = {name: i for i, (name, _, _, _) in enumerate(self._features)}
    self._presence_column.update({weight_key: i for i, (_, _, _, weight_key)
                                  in enumerate(self._features) if weight_key is not None})

  def _key_order(self, present: Tuple[bool, ...]) -> List[str]:
    """Map-entry order of the codec's Examples with these features present."""
    if present not in self._orders:
      dummy = {"string": "x", "int": 0, "float": 0.0}
      features: Dict[str, Any] = {}
      for (name, dtype, multivalent, weight_key), here in zip(self._features, present):
        if here:
          features[name] = [dummy[dtype]] if multivalent else dummy[dtype]
          if weight_key is not None:
            features[weight_key] = [1.0]
      example = self._codec.encode(features, dict.fromkeys(self._label_names, 0), "x", 0)
      add_metadata(example, dict.fromkeys(self._metadata_keys, "x"))
      self._orders[present] = [key for key, _ in _entry_keys(example.SerializeToString())]
    return self._orders[present]

  def _entry(self, key: str, column: pa.Array, dtype: str, multivalent: bool
             ) -> Optional[_Entry]:
    """The map entry (field 1 of Features) of key -> each row's value (garbage where the
    value is null), as prefix pieces and a payload; None for a value not covered."""
    n = len(column)
    key_bytes = key.encode("utf-8")
    key_part = b"\x0a" + _varint_bytes(len(key_bytes)) + key_bytes
    tail: List[_Piece] = []  # The Feature's list field, inside out: built below.
    payload = None
    if not multivalent:
      if column.null_count:
        column = pc.fill_null(column, {"string": "", "int": 0, "float": 0.0}[dtype])
      if dtype == "string":
        payload = column.cast(_BINARY)
        length = _binary_lengths(payload)
        tail = [(_CONST, b"\x0a", None), (_VARINT, length.astype(np.uint64), None)]
        list_length = 1 + _varint_sizes(length) + length
      elif dtype == "int":
        unsigned = np.ascontiguousarray(column.to_numpy(zero_copy_only=False),
                                        dtype=np.int64).view(np.uint64)
        packed_length = _varint_sizes(unsigned)
        tail = [(_CONST, b"\x0a", None), (_VARINT, packed_length.astype(np.uint64), None),
                (_VARINT, unsigned, None)]
        list_length = 1 + _varint_sizes(packed_length) + packed_length
      else:
        values = column.to_numpy(zero_copy_only=False)
        if n and np.abs(values).max() > _FLOAT32_MAX:
          return None
        tail = [(_CONST, b"\x0a\x04", None),
                (_RAW, values.astype(np.float32).view(np.uint8).reshape(n, 4), None)]
        list_length = np.full(n, 6, dtype=np.int64)
    else:
      offsets = column.offsets.to_numpy().astype(np.int64)
      flat = column.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
      offsets = offsets - offsets[0]
      if dtype == "string":
        elements = flat.cast(_BINARY)
        prefixes = _build([(_CONST, b"\x0a", None),
                           (_VARINT, _binary_lengths(elements).astype(np.uint64), None)],
                          len(elements))
        payload = _per_row(offsets, _concat_rows([prefixes, elements]))
        list_length = _binary_lengths(payload)
      else:
        if dtype == "int":
          unsigned = np.ascontiguousarray(flat.to_numpy(zero_copy_only=False),
                                          dtype=np.int64).view(np.uint64)
          payload = _per_row(offsets, _build([(_VARINT, unsigned, None)], len(unsigned)))
        else:
          values = flat.to_numpy(zero_copy_only=False)
          if len(values) and np.abs(values).max() > _FLOAT32_MAX:
            return None
          payload = _binary_array(offsets * 4, values.astype(np.float32).view(np.uint8))
        packed_length = _binary_lengths(payload)
        has_values = packed_length > 0  # An empty packed field is left out.
        tail = [(_CONST, b"\x0a", has_values),
                (_VARINT, packed_length.astype(np.uint64), has_values)]
        list_length = np.where(has_values, 1 + _varint_sizes(packed_length) + packed_length, 0)
    feature_length = 1 + _varint_sizes(list_length) + list_length
    entry_length = len(key_part) + 1 + _varint_sizes(feature_length) + feature_length
    pieces = [(_CONST, b"\x0a", None), (_VARINT, entry_length.astype(np.uint64), None),
              (_CONST, key_part + b"\x12", None),
              (_VARINT, feature_length.astype(np.uint64), None),
              (_CONST, bytes([_LIST_TAGS[dtype]]), None),
              (_VARINT, list_length.astype(np.uint64), None)] + tail
    return _Entry(pieces, payload, 1 + _varint_sizes(entry_length) + entry_length)

  def encode(self, batch: pa.RecordBatch) -> Optional[List[bytes]]:
    column = lambda name: batch.column(batch.schema.get_field_index(name))
    n = batch.num_rows
    if not n:
      return []
    entries: Dict[str, _Entry] = {}
    present = []
    for name, dtype, multivalent, weight_key in self._features:
      values = column(name)
      here = values.is_valid().to_numpy(zero_copy_only=False)
      present.append(here)
      entry = self._entry(name, values, dtype, multivalent)
      if entry is None:
        return None
      entries[name] = entry
      if weight_key is not None:
        weights = column(weight_key)
        if (weights.is_null().to_numpy(zero_copy_only=False) & here).any():
          return None
        entry = self._entry(weight_key, weights, "float", True)
        if entry is None:
          return None
        entries[weight_key] = entry
    for name in self._label_names:
      labels = column(name)
      if labels.null_count or not pc.all(pc.is_in(labels, pa.array([0, 1]))).as_py():
        return None
      entries[name] = self._entry(name, labels, "int", False)
    for name, dtype in ((spec_lib.IMPRESSION_ID_KEY, "string"),
                        (spec_lib.TIMESTAMP_KEY, "int")):
      if column(name).null_count:
        return None
      entries[name] = self._entry(name, column(name), dtype, False)
    for name in self._metadata_keys:
      if column(name).null_count:
        return None
      dtype = "int" if pa.types.is_integer(column(name).type) else "string"
      entries[name] = self._entry(name, column(name), dtype, False)
    present_matrix = np.stack(present, axis=1)
    patterns, inverse = _presence_patterns(present_matrix)
    if len(patterns) == 1:
      return self._one_pattern(entries, self._key_order(tuple(patterns[0].tolist())), n)
    return self._many_patterns(entries, patterns, inverse, present_matrix, n)

  @staticmethod
  def _one_pattern(entries: Dict[str, _Entry], keys: Sequence[str], n: int) -> List[bytes]:
    """Every row has the same keys: each run of framing pieces between two payloads is
    one numpy build, and a payload is copied once."""
    size = sum(entries[key].size for key in keys)
    pieces: List[_Piece] = [(_CONST, b"\x0a", None), (_VARINT, size.astype(np.uint64), None)]
    arrays = []
    for key in keys:
      entry = entries[key]
      pieces += entry.pieces
      if entry.payload is not None:
        arrays += [_build(pieces, n), entry.payload]
        pieces = []
    if pieces:
      arrays.append(_build(pieces, n))
    return (_concat_rows(arrays) if len(arrays) > 1 else arrays[0]).to_pylist()

  def _many_patterns(self, entries: Dict[str, _Entry], patterns: np.ndarray,
                     inverse: np.ndarray, present: np.ndarray, n: int) -> List[bytes]:
    """Rows with different keys: each entry's bytes are built once for all rows, then
    the patterns whose key orders fit one total order (`_order_groups`; usually all)
    are written together, an absent entry as no bytes."""
    whole = {}
    for key, entry in entries.items():
      framing = _build(entry.pieces, n)
      whole[key] = framing if entry.payload is None else _concat_rows([framing, entry.payload])
    orders = [self._key_order(tuple(pattern.tolist())) for pattern in patterns]
    examples: List[Optional[bytes]] = [None] * n
    for order, members in _order_groups(orders):
      rows = np.flatnonzero(np.isin(inverse, members))
      taken = pa.array(rows, pa.int64())
      items, size = [], np.zeros(len(rows), dtype=np.int64)
      for key in order:
        column = self._presence_column.get(key)
        here = None if column is None else present[rows, column]
        entry = whole[key].take(taken)
        if here is not None and not here.all():
          entry = pc.if_else(pa.array(here), entry, _NO_BYTES)
          size += np.where(here, entries[key].size[rows], 0)
        else:
          size += entries[key].size[rows]
        items.append(entry)
      header = _build([(_CONST, b"\x0a", None), (_VARINT, size.astype(np.uint64), None)],
                      len(rows))
      for row, example in zip(rows.tolist(), _concat_rows([header] + items).to_pylist()):
        examples[row] = example
    return examples


def _order_groups(orders: Sequence[Sequence[str]]) -> List[Tuple[List[str], List[int]]]:
  """Groups of key orders (by pattern index) that are all subsequences of one total
  order, with that order: each order joins the first group it keeps acyclic."""
  groups: List[Tuple[Dict[str, set], List[int]]] = []
  for index, order in enumerate(orders):
    edges = list(zip(order[:-1], order[1:]))
    for graph, members in groups:
      trial = {key: set(after) for key, after in graph.items()}
      for key in order:
        trial.setdefault(key, set())
      for before, after in edges:
        trial[before].add(after)
      if _topological(trial) is not None:
        graph.clear()
        graph.update(trial)
        members.append(index)
        break
    else:
      graph = {key: set() for key in order}
      for before, after in edges:
        graph[before].add(after)
      groups.append((graph, [index]))
  return [(_topological(graph), members) for graph, members in groups]


def _topological(graph: Dict[str, set]) -> Optional[List[str]]:
  """A total order of the keys respecting every edge (Kahn), or None on a cycle."""
  incoming = {key: 0 for key in graph}
  for after in graph.values():
    for key in after:
      incoming[key] += 1
  ready = sorted(key for key, count in incoming.items() if count == 0)
  order = []
  while ready:
    key = ready.pop()
    order.append(key)
    for after in sorted(graph[key]):
      incoming[after] -= 1
      if incoming[after] == 0:
        ready.append(after)
  return order if len(order) == len(graph) else None


def _presence_patterns(present: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """(distinct rows of a bool [n, features] matrix, index of each row's pattern)."""
  if present.all():
    return present[:1], np.zeros(len(present), dtype=np.int64)
  if present.shape[1] <= 63:  # One int per row: a 1-D unique, much faster than axis=0.
    codes = present.astype(np.int64) @ (np.int64(1) << np.arange(present.shape[1],
                                                                 dtype=np.int64))
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    return present[first], inverse.reshape(-1)
  patterns, inverse = np.unique(present, axis=0, return_inverse=True)
  return patterns, inverse.reshape(-1)


def _entry_keys(serialized: bytes) -> Iterator[Tuple[str, bytes]]:
  """(key, value bytes) of each map entry of a serialized Example, in wire order."""
  def varint(buffer, position):
    result = shift = 0
    while True:
      byte = buffer[position]
      position += 1
      result |= (byte & 0x7F) << shift
      shift += 7
      if byte < 0x80:
        return result, position

  _, position = varint(serialized, 0)
  length, position = varint(serialized, position)
  features, position = serialized[position:position + length], 0
  while position < len(features):
    _, position = varint(features, position)
    length, position = varint(features, position)
    entry, position = features[position:position + length], position + length
    _, at = varint(entry, 0)
    key_length, at = varint(entry, at)
    yield entry[at:at + key_length].decode("utf-8"), entry[at + key_length:]


class BatchEncoder:
  """Labelled batches -> (serialized Examples, dead letters).

  A batch goes through `ColumnarExampleEncoder` (no dead letters possible there); one
  it does not cover, or smaller than COLUMNAR_MIN_ROWS (its fixed cost of about a
  hundred pyarrow calls exceeds the codec's), goes row by row through the codec
  (`encode_rows`), which words any encoding error (a bad_value dead letter). Same bytes.
  """

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str],
               metadata_keys: Sequence[str] = ()):
    self._codec = example_codec.ExampleCodec(spec, label_names)
    self._columnar = ColumnarExampleEncoder(spec, label_names, metadata_keys)
    self._label_names = tuple(label_names)
    self._metadata_keys = tuple(metadata_keys)

  def encode(self, batch: pa.RecordBatch) -> Tuple[List[bytes], List[Dict[str, Any]]]:
    if batch.num_rows < COLUMNAR_MIN_ROWS:
      return self.encode_rows(batch)
    examples = self._columnar.encode(batch)
    if examples is not None:
      return examples, []
    return self.encode_rows(batch)

  def encode_rows(self, batch: pa.RecordBatch) -> Tuple[List[bytes], List[Dict[str, Any]]]:
    """Row by row through `example_codec.ExampleCodec.encode`."""
    names = batch.schema.names
    feature_names = [n for n in names if n not in _META and n not in self._label_names
                     and n not in self._metadata_keys]
    columns = {name: python_values(batch.column(i)) for i, name in enumerate(names)
               if name != "record"}
    examples, dead = [], []
    for row in range(batch.num_rows):
      features = {name: columns[name][row] for name in feature_names
                  if columns[name][row] is not None}
      labels = {name: columns[name][row] for name in self._label_names}
      impression_id, timestamp = columns["impression_id"][row], columns["timestamp"][row]
      try:
        example = self._codec.encode(features, labels, impression_id, timestamp)
        add_metadata(example, {key: columns[key][row] for key in self._metadata_keys
                                          if columns[key][row] is not None})
        examples.append(example.SerializeToString())
      except (example_codec.RecordError, TypeError, ValueError) as e:
        reason = getattr(e, "reason", dl.BAD_VALUE)
        dead.append(dl.make_dead_letter(
            dl.IMPRESSIONS, columns["file"][row], columns["line"][row], reason,
            f"encoding {impression_id!r}: {e}", features))
    return examples, dead


class _EncodeFn(beam.DoFn):

  def __init__(self, spec, label_names, metadata_keys):
    self._spec = spec
    self._label_names = tuple(label_names)
    self._metadata_keys = tuple(metadata_keys)

  def setup(self):
    self._encoder = BatchEncoder(self._spec, self._label_names, self._metadata_keys)

  def process(self, batch) -> Iterator[Any]:
    examples, dead = self._encoder.encode(batch)
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    if examples:
      yield examples


class EncodeBatches(beam.PTransform):
  """Labelled batches -> {"examples": lists of serialized tf.Examples (one list per
  batch), "dead_letter"}.

  Args:
    spec, label_names: the feature spec and the configured labels.
    metadata_keys: string or int64 columns written as bytes or int64 keys
      (`add_metadata`).
  """

  def __init__(self, spec: spec_lib.FeatureSpec, label_names: Sequence[str],
               metadata_keys: Sequence[str] = ()):
    super().__init__()
    self._spec = spec
    self._label_names = tuple(label_names)
    self._metadata_keys = tuple(metadata_keys)

  def expand(self, batches):
    outputs = batches | "Encode" >> beam.ParDo(_EncodeFn(
        self._spec, self._label_names, self._metadata_keys)).with_outputs(
            dl.DEAD_LETTER, main=EXAMPLES)
    return {EXAMPLES: outputs[EXAMPLES], dl.DEAD_LETTER: outputs[dl.DEAD_LETTER]}
