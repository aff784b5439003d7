"""Read raw log files (JSON Lines, optionally compressed, or Parquet) with their provenance.

Flow: **raw logs -> ReadRecords** -> ParseImpressions / ParseEvents -> join/label -> ...
Every record leaves here as `(file, line, payload)`: the file path, the 1-based line of a
JSON Lines file (or 1-based row of a Parquet file) and the payload (the line's text for
JSON Lines, a dict for a Parquet row), so any later dead letter can say where it came
from. Blank lines are not records and are skipped.
"""

from typing import Iterator, List, Sequence, Tuple, Union

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

PARQUET_SUFFIXES = (".parquet", ".pq")
PROGRESS_EVERY = 100000
PARQUET_BATCH_ROWS = 8192

RawRecord = Tuple[str, int, Union[str, dict]]


def is_parquet(path: str) -> bool:
  return path.lower().endswith(PARQUET_SUFFIXES)


def read_json_lines(readable_file: fileio.ReadableFile) -> Iterator[Tuple[str, int, str]]:
  """Yields (path, line number from 1, text) of each non-blank line; compression AUTO."""
  path = readable_file.metadata.path
  with readable_file.open(compression_type=CompressionTypes.AUTO) as handle:
    for line_number, raw_line in enumerate(iter(handle.readline, b""), start=1):
      text = raw_line.decode("utf-8", errors="replace").strip()
      if text:
        yield path, line_number, text
      if line_number % PROGRESS_EVERY == 0:
        logging.info("Reading %s: %d lines so far", path, line_number)


def read_parquet_rows(readable_file: fileio.ReadableFile) -> Iterator[Tuple[str, int, dict]]:
  """Yields (path, row number from 1, row as a dict) of each Parquet row."""
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  path = readable_file.metadata.path
  with readable_file.open(mime_type="application/octet-stream",
                          compression_type=CompressionTypes.UNCOMPRESSED) as handle:
    row_number = 0
    for batch in pq.ParquetFile(handle).iter_batches(batch_size=PARQUET_BATCH_ROWS):
      for row in batch.to_pylist():
        row_number += 1
        yield path, row_number, row


class _ReadFileFn(beam.DoFn):
  """Reads one matched file into raw records, counting them per source."""

  def __init__(self, source: str):
    self._source = source
    self._records = beam.metrics.Metrics.counter("read", f"{source}_records")
    self._files = beam.metrics.Metrics.counter("read", f"{source}_files")

  def process(self, readable_file: fileio.ReadableFile) -> Iterator[RawRecord]:
    path = readable_file.metadata.path
    reader = read_parquet_rows if is_parquet(path) else read_json_lines
    count = 0
    for record in reader(readable_file):
      count += 1
      yield record
    self._records.inc(count)
    self._files.inc()
    logging.info("Read %d %s records from %s", count, self._source, path)


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


class ReadRecords(beam.PTransform):
  """Reads every file matched by the globs -> PCollection[(file, line, payload)].

  Args:
    file_patterns: one or more globs (local or gs://); a glob matching no file fails
      the job.
    source: "impressions" or "events", for counters and logs.
    reshuffle: redistribute records after reading (a file is read by one worker).
  """

  def __init__(self, file_patterns: Union[str, Sequence[str]], source: str,
               reshuffle: bool = True):
    super().__init__()
    self._patterns = glob_list(file_patterns)
    self._source = source
    self._reshuffle = reshuffle

  def expand(self, pbegin):
    records = (pbegin
               | "MatchFiles" >> MatchFiles(self._patterns)
               | "ReadFile" >> beam.ParDo(_ReadFileFn(self._source)))
    if self._reshuffle:
      records = records | "Reshuffle" >> beam.Reshuffle()
    return records


def split_patterns(value: str) -> Sequence[str]:
  """A comma-separated list of globs (as given on the command line) as a list."""
  return [part.strip() for part in value.split(",") if part.strip()]

