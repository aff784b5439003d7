"""The files pipeline.preprocess writes under its OUTPUT directory (DESIGN.md section 3).

Flow: raw logs -> Beam preprocessing (writes these) -> training / evaluation (read them).
One place names every path, so the job, its post-run checks and the tests agree.
"""

import dataclasses
import os

from configs import config as config_lib
from features import artifacts as artifacts_lib

SPLITS = ("train", "eval")
# The daily job's Example outputs (transforms/daily.py): the day's new impressions are its
# train split; earlier impressions whose labels changed today, and those whose attribution
# window closed at today's snapshot (final labels), have an output each.
UPDATES = "updates"
CLOSED = "closed"
DAILY_OUTPUTS = ("train", UPDATES, CLOSED)
STATE_KINDS = ("impressions", "events")  # The open impressions and their attributed events.
TFRECORD_SUFFIX = ".tfrecord.gz"
PARQUET_SUFFIX = ".parquet"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"
TEMPORARY_SUFFIX = ".tmp-*"  # A shard being written (write.write_tfrecord_chunks' names).
DAY_FILE = "day.json"


@dataclasses.dataclass(frozen=True)
class OutputPaths:
  """Paths of one preprocess output directory (local or gs://)."""

  root: str

  def _join(self, *parts: str) -> str:
    return os.path.join(self.root, *parts)

  def examples_prefix(self, split: str) -> str:
    """Shard prefix: shards are `<prefix>-SSSSS-of-NNNNN.tfrecord.gz`."""
    return self._join(split, split)

  def examples_pattern(self, split: str) -> str:
    """Glob of a split's TFRecord shards (for tf.data and TFDV)."""
    return self._join(split, f"{split}-*-of-*{TFRECORD_SUFFIX}")

  @property
  def dead_letter_prefix(self) -> str:
    return self._join("dead_letter", "dead_letter")

  @property
  def dead_letter_pattern(self) -> str:
    return self._join("dead_letter", "*.jsonl")

  @property
  def counts(self) -> str:
    return self._join("counts.json")

  @property
  def transform_dir(self) -> str:
    return artifacts_lib.transform_dir(self.root)

  def stats(self, split: str) -> str:
    return self._join("stats", f"{split}_stats.pb")

  @property
  def schema(self) -> str:
    return self._join("schema", "schema.pbtxt")

  def anomalies(self, split: str) -> str:
    return self._join("anomalies", f"{split}_anomalies.pbtxt")

  @property
  def feature_spec(self) -> str:
    return self._join("feature_spec.yaml")

  @property
  def labels(self) -> str:
    return self._join("labels.json")

  def state_prefix(self, kind: str) -> str:
    """The daily job's open-impression state files: `<prefix>-SSSSS-of-NNNNN.parquet`
    (kind "impressions" or "events")."""
    return self._join("state", kind)

  def state_pattern(self, kind: str) -> str:
    return self._join("state", f"{kind}-*-of-*{PARQUET_SUFFIX}")

  @property
  def analyzer_state(self) -> str:
    """The daily job's analyzer state of the day's new impressions
    (transforms/analyzer_state.py)."""
    return self._join("analyzer", "state.json.gz")

  @property
  def day(self) -> str:
    """OUTPUT/day.json: the daily job's day, snapshot, previous day and analyzer window."""
    return self._join(DAY_FILE)

  @property
  def split_dates(self) -> str:
    """OUTPUT/split.json: the eval day the --source log job used."""
    return self._join(config_lib.SPLIT_DATES_FILE)


def shard_patterns(paths: OutputPaths) -> tuple:
  """Globs of every sharded file the job writes (TFRecords of the splits and of the
  daily outputs, the daily state, dead letters) and of their temporaries.

  Their number depends on the config (data.train_shards / eval_shards), so a rerun does
  not necessarily overwrite them all, and a killed run leaves its temporaries
  (`<shard>.tmp-<uuid>`) behind: pipeline.preprocess deletes them at its start.
  """
  patterns = tuple(paths.examples_pattern(split) for split in SPLITS + DAILY_OUTPUTS[1:]) + (
      paths.dead_letter_prefix + "-*-of-*.jsonl",) + tuple(
          paths.state_pattern(kind) for kind in STATE_KINDS)
  return patterns + tuple(pattern + TEMPORARY_SUFFIX for pattern in patterns)
