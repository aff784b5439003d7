"""Read the derived layouts (rechub_csv, paddle_esmm, aliexpress) into labelled RecordBatches.

Flow: derived files -> **ReadDerivedBatches** (per file: lines in 4 MiB chunks, parsed by
`derived_sources`' row parsers, kept rows gathered into batches of BATCH_ROWS) ->
labelled RecordBatches of one split -> columnar.job.write_batch_outputs.

The columnar counterpart of `derived_sources.ReadDerived`: the same records and dead
letters (the same parsing code decides and words them), but the element is a batch of
up to BATCH_ROWS rows (`columnar.records.labelled_schema`, with AliExpress's `search_id`
as a metadata column), so no later step is per record. Every row of a file goes to that
file's split; a file is read by one worker (the files are the unit of parallelism, as
for the row reader), and its batches are redistributed after reading.
"""

from typing import Any, Iterator, Sequence, Union

from absl import logging
import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystem import CompressionTypes

from features import spec as spec_lib
from transforms import dead_letter as dl
from transforms import derived_sources
from transforms.columnar import parse as cparse
from transforms.columnar import records as crecords

RECORDS = derived_sources.RECORDS
READ = derived_sources.READ
BATCH_ROWS = cparse.BATCH_ROWS


def numbered_lines(handle) -> Iterator[Any]:
  """(line, text) of each non-blank line of a binary stream, as `read.read_json_lines`
  numbers, decodes and strips them (read in chunks: `columnar.parse.json_line_batches`)."""
  for lines, texts, _ in cparse.json_line_batches(handle):
    yield from zip(lines, texts)


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

  def _flush(self, records):
    batch, dead = self._batcher.batch(records)
    for letter in dead:
      yield beam.pvalue.TaggedOutput(dl.DEAD_LETTER, letter)
    if batch.num_rows:
      yield batch

  def process(self, readable_file: fileio.ReadableFile) -> Iterator[Any]:
    path = readable_file.metadata.path
    rows, records = 0, []
    with readable_file.open(compression_type=CompressionTypes.AUTO) as handle:
      for tag, value in self.parse_lines(path, numbered_lines(handle)):
        rows += 1
        if tag != RECORDS:
          yield beam.pvalue.TaggedOutput(tag, value)
          continue
        records.append(value)
        if len(records) == BATCH_ROWS:
          yield from self._flush(records)
          records = []
    if records:
      yield from self._flush(records)
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
  """

  def __init__(self, file_patterns: Union[str, Sequence[str]], layout: str,
               spec: spec_lib.FeatureSpec, label_names: Sequence[str], split: str,
               infer_click: bool = False):
    super().__init__()
    self._patterns = [file_patterns] if isinstance(file_patterns, str) else list(file_patterns)
    self._fn = _ReadDerivedBatchesFn(layout, spec, split, infer_click, label_names)

  def expand(self, pbegin):
    outputs = (pbegin
               | "Patterns" >> beam.Create(self._patterns)
               | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)
               | "Open" >> fileio.ReadMatches()
               | "ReadParse" >> beam.ParDo(self._fn).with_outputs(
                   dl.DEAD_LETTER, READ, main=RECORDS))
    return {RECORDS: outputs[RECORDS] | "Reshuffle" >> beam.Reshuffle(),
            dl.DEAD_LETTER: outputs[dl.DEAD_LETTER], READ: outputs[READ]}
