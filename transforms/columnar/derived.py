"""Read the derived layouts (rechub_csv, paddle_esmm, aliexpress) into labelled RecordBatches.

Flow: derived files -> **ReadDerivedBatches** (per file: batches of
`columnar.parse.BATCH_ROWS` lines read in 4 MiB chunks; CSV rows parsed in columns where
plain, `columnar.derived_parse`, every other row, and every paddle_esmm row, by
`derived_sources`' row parsers) -> labelled RecordBatches of one split ->
columnar.job.write_batch_outputs.

The columnar counterpart of `derived_sources.ReadDerived`: the same records and dead
letters (the row parsers decide and word every dead letter), but the element is a batch
of up to that many rows (`columnar.records.labelled_schema`, with AliExpress's `search_id`
as a metadata column), so no later step is per record. Every row of a file goes to that
file's split; a file is read by one worker (the files are the unit of parallelism, as
for the row reader), and its batches are redistributed after reading.
"""

from typing import Any, Dict, Iterator, List, Optional, Sequence, Union

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes
import numpy as np
import pyarrow as pa

from features import spec as spec_lib
from transforms import aliccp
from transforms import dead_letter as dl
from transforms import derived_sources
from transforms import read as read_lib
from transforms.columnar import derived_parse as cderived_parse
from transforms.columnar import parse as cparse
from transforms.columnar import progress
from transforms.columnar import records as crecords

RECORDS = derived_sources.RECORDS
READ = derived_sources.READ


class _ReadDerivedBatchesFn(derived_sources._ReadDerivedFileFn):  # pylint: disable=protected-access
  """One file -> labelled RecordBatches (main), dead letters, and its row count (READ)."""

  def __init__(self, layout: str, spec: spec_lib.FeatureSpec, split: str, infer_click: bool,
               label_names: Sequence[str]):
    super().__init__(layout, spec, split, infer_click)
    self._label_names = tuple(label_names)

  def setup(self):
    super().setup()
    self._batcher = crecords.RecordBatcher(
        self._spec, self._label_names, derived_sources.metadata_keys(self._layout, self._spec))

  def _batch(self, path: str, columns: Optional[pa.Table], lines: np.ndarray,
             records: List[Dict[str, Any]]) -> Iterator[Any]:
    """The columnar rows (their lines) and the row parser's records as batches."""
    named = {} if columns is None else {name: columns.column(name)
                                        for name in columns.column_names}
    named[spec_lib.IMPRESSION_ID_KEY] = pa.array(
        [f"{path}:{line}" for line in lines.tolist()], pa.string())
    batches, dead = self._batcher.with_records(path, lines, named, records, aliccp.TIMESTAMP)
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    yield from batches

  def _rows(self, parser, path: str, lines: Sequence[int], texts: Sequence[str],
            records: List[Dict[str, Any]]) -> Iterator[Any]:
    """Lines through the row parser: records appended, dead letters yielded."""
    for line, text in zip(lines, texts):
      tag, value = self.parse_line(parser, path, int(line), text)
      if tag == RECORDS:
        records.append(value)
      else:
        yield beam.pvalue.TaggedOutput(tag, value)

  def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
    path = readable_file.metadata.path
    rows = 0
    parser = None if self._layout in derived_sources.CSV_LAYOUTS else self.paddle_parser()
    columnar = None
    with readable_file.open(compression_type=CompressionTypes.AUTO) as handle:
      for lines, texts, _ in cparse.json_line_batches(handle):
        if parser is None:  # The first line of a CSV is its header, not a record.
          parser = self.csv_parser(texts[0], path)
          columnar = cderived_parse.CsvLineParser(parser, self._spec)
          lines, texts = lines[1:], texts[1:]
        rows += len(texts)
        records: List[Dict[str, Any]] = []
        if columnar is None:  # paddle_esmm: every line through the row parser.
          yield from self._rows(parser, path, lines, texts, records)
          yield from self._batch(path, None, np.zeros(0, dtype=np.int64), records)
          continue
        columns, plain, odd = columnar.parse(texts)
        numbers = np.asarray(lines, dtype=np.int64)
        yield from self._rows(parser, path, numbers[odd].tolist(),
                              [texts[i] for i in odd.tolist()], records)
        yield from self._batch(path, columns, numbers[plain], records)
    logging.info("Read %d %s rows from %s (%s, columnar)", rows, self._layout, path,
                 self._split)
    yield beam.pvalue.TaggedOutput(READ, rows)


class ReadDerivedBatches(beam.PTransform):
  """Files of one split in a derived layout -> {"records": labelled RecordBatches,
  "dead_letter", "read": rows read per file}.

  Args:
    file_patterns: globs (local or gs://); one matching no file fails the job.
    layout: "rechub_csv", "paddle_esmm" or "aliexpress".
    spec, label_names: the feature spec and the labels (click, purchase).
    split: "train" or "eval", the split of every row of these files.
    infer_click: data.orphan_event_policy == "infer_click".
    progress_interval_s: seconds between a worker's "<split>_parsed" progress lines.
  """

  def __init__(self, file_patterns: Union[str, Sequence[str]], layout: str,
               spec: spec_lib.FeatureSpec, label_names: Sequence[str], split: str,
               infer_click: bool = False,
               progress_interval_s: float = progress.DEFAULT_INTERVAL_S):
    super().__init__()
    self._patterns = read_lib.glob_list(file_patterns)
    self._fn = _ReadDerivedBatchesFn(layout, spec, split, infer_click, label_names)
    self._stage = f"{split}_parsed"
    self._progress_interval_s = progress_interval_s

  def expand(self, pbegin):
    outputs = (pbegin
               | "MatchFiles" >> read_lib.MatchFiles(self._patterns)
               | "ReadParse" >> beam.ParDo(self._fn).with_outputs(
                   dl.DEAD_LETTER, READ, main=RECORDS))
    records = outputs[RECORDS] | "Progress" >> progress.LogProgress(
        self._stage, self._progress_interval_s)
    return {RECORDS: records | "Reshuffle" >> beam.Reshuffle(),
            dl.DEAD_LETTER: outputs[dl.DEAD_LETTER], READ: outputs[READ]}
