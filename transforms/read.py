"""Read raw files (JSON Lines or CSV text, optionally compressed, or Parquet) in batches.

Flow: raw files -> **MatchFiles** -> a reader per file: `json_line_batches` (text, read
in 4 MiB chunks) or `parquet_batches` -> the parsers (transforms/parse.py,
layouts/aliccp.py, layouts/derived.py) -> ... Every record keeps its file and
1-based line (or 1-based Parquet row), so any dead letter can say where it came from.
Blank lines are not records and are skipped (but counted in the line numbers).
"""

from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


PARQUET_SUFFIXES = (".parquet", ".pq")
BATCH_ROWS = 8192  # Records per batch read (and per output RecordBatch of the parsers).
READ_CHUNK_BYTES = 4 << 20


def is_parquet(path: str) -> bool:
  return path.lower().endswith(PARQUET_SUFFIXES)


def glob_list(file_patterns: Union[str, Sequence[str]]) -> List[str]:
  """One glob or several, as a list."""
  return [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)


class MatchFiles(beam.PTransform):
  """Pipeline root -> a `fileio.ReadableFile` per file the globs match (local or gs://);
  a glob matching no file fails the job."""

  def __init__(self, file_patterns: Union[str, Sequence[str]]):
    super().__init__()
    self._patterns = glob_list(file_patterns)

  def expand(self, pbegin):
    return (pbegin
            | "Patterns" >> beam.Create(self._patterns)
            | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
            | "Open" >> fileio.ReadMatches())


def open_text(readable_file: fileio.ReadableFile):
  """A binary stream of a matched text file, decompressed by its suffix (.gz, ...)."""
  return readable_file.open(compression_type=CompressionTypes.AUTO)


def parquet_batches(readable_file: fileio.ReadableFile, batch_rows: Optional[int] = None
                    ) -> Iterator[pa.RecordBatch]:
  """The RecordBatches (of up to batch_rows rows, default BATCH_ROWS, in row order) of a
  matched Parquet file."""
  batch_rows = batch_rows or BATCH_ROWS
  with readable_file.open(mime_type="application/octet-stream",
                          compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows)


def _stripped_lines(data: bytes) -> List[str]:
  """The lines of `data` (split on b"\\n"), each decoded (utf-8, errors replaced) and
  stripped; valid utf-8 (the usual case) is decoded whole, which gives the same lines
  as decoding line by line, since b"\\n" is never inside a multi-byte character."""
  try:
    decoded = data.decode("utf-8").split("\n")
  except UnicodeDecodeError:
    decoded = [part.decode("utf-8", errors="replace") for part in data.split(b"\n")]
  return [text.strip() for text in decoded]


def json_line_batches(handle, batch_rows: Optional[int] = None
                      ) -> Iterator[Tuple[List[int], List[str], int]]:
  """(line numbers, stripped texts, lines so far) per batch of batch_rows (default
  BATCH_ROWS) non-blank lines (fewer in the last) of a binary stream; lines split on
  b"\\n", decoded and stripped (`_stripped_lines`). Line numbers count blank lines too,
  so they are the file's."""
  batch_rows = batch_rows or BATCH_ROWS
  line_number = 0
  lines: List[int] = []
  texts: List[str] = []
  rest = b""
  while True:
    chunk = handle.read(READ_CHUNK_BYTES)
    if chunk:
      data = rest + chunk
      cut = data.rfind(b"\n")
      if cut < 0:
        rest = data
        continue
      data, rest = data[:cut], data[cut + 1:]
    elif rest:  # The last line, without its newline.
      data, rest = rest, b""
    else:
      break
    stripped = _stripped_lines(data)
    lines.extend(line_number + 1 + index for index, text in enumerate(stripped) if text)
    texts.extend(text for text in stripped if text)
    line_number += len(stripped)
    while len(texts) >= batch_rows:
      yield lines[:batch_rows], texts[:batch_rows], lines[batch_rows - 1]
      lines, texts = lines[batch_rows:], texts[batch_rows:]
  if texts:
    yield lines, texts, line_number


class ParquetRows:
  """Parquet rows read back by (file, 1-based row), as `to_pylist()` gives them.

  Parquet rows carry no raw record through the job (`record` is null): the few
  that become join dead letters or duplicate candidates are read back here. The last
  MAX_OPEN_FILES files stay open, each with its metadata and its last row group read
  (memory: one row group per open file).
  """

  MAX_OPEN_FILES = 8

  def __init__(self):
    self._files: Dict[str, Tuple[Any, Any, np.ndarray]] = {}
    self._groups: Dict[str, Tuple[int, pa.Table]] = {}

  def row(self, path: str, row: int) -> Dict[str, Any]:
    if path not in self._files:
      if len(self._files) >= self.MAX_OPEN_FILES:  # Close the least recently opened.
        oldest = next(iter(self._files))
        self._files.pop(oldest)[0].close()
        self._groups.pop(oldest, None)
      handle = FileSystems.open(path, mime_type="application/octet-stream",
                                compression_type=CompressionTypes.UNCOMPRESSED)
      parquet = pq.ParquetFile(handle)
      sizes = [parquet.metadata.row_group(i).num_rows
               for i in range(parquet.metadata.num_row_groups)]
      self._files[path] = handle, parquet, np.cumsum([0] + sizes)
    _, parquet, starts = self._files[path]
    group = int(np.searchsorted(starts, row - 1, side="right")) - 1
    if self._groups.get(path, (None,))[0] != group:
      self._groups[path] = group, parquet.read_row_group(group)
    table = self._groups[path][1]
    return table.slice(row - 1 - int(starts[group]), 1).to_pylist()[0]

  def fill_records(self, rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Sets the "record" of Parquet rows (record null) to the row read back, in place, in
    file and row order (each row group is read once per call)."""
    missing = [row for row in rows if row.get("record") is None
               and is_parquet(row["file"])]
    for row in sorted(missing, key=lambda row: (row["file"], row["line"])):
      row["record"] = self.row(row["file"], row["line"])
    return rows
