"""Writes a simulated world as raw logs, truth and world.json (docs/DESIGN.md 2 and 8).

Flow: simulation.world + simulation.behaviour -> **simulation.writer** -> OUTPUT/ ->
pipeline.preprocess (reads impressions/ and events/), evaluation (reads truth/):

  OUTPUT/impressions/impressions-SSSSS-of-NNNNN.jsonl.gz | .parquet
      one record per exposure, keys IMPRESSION_FIELDS (the contract's impression_id,
      timestamp, user_id, item_id and the features of configs/features/simulated.yaml);
      rows shuffled across and within shards.
  OUTPUT/events/events-SSSSS-of-NNNNN.jsonl.gz | .parquet
      one record per behaviour event, keys EVENT_FIELDS; sorted by timestamp, the shards
      cut in time order.
  OUTPUT/truth/truth.jsonl.gz   one row per clean impression (simulation.truth), always JSONL.
  OUTPUT/truth/outcomes.jsonl.gz  dynamic or heavy-tailed worlds only: per clean impression
                                its click / purchase times, purchase delay and final labels
                                (simulation.truth.write_outcomes).
  OUTPUT/world.json             config, solved intercepts, files, sizes, realised rates,
                                selection bias, lifts, late events, Bayes AUCs, corruption
                                counts and the dead letters the Beam job should report.

With layout "daily" the logs are filed by UTC day instead (LAYOUTS; what
`pipeline.preprocess --day D` reads):
  OUTPUT/impressions/YYYY-MM-DD/impressions-SSSSS-of-NNNNN.jsonl.gz | .parquet
      the impressions whose timestamp falls on that day (a bad line: the day of the clean
      impression it was made from); rows in the flat layout's shuffled order.
  OUTPUT/events/YYYY-MM-DD/events-SSSSS-of-NNNNN.jsonl.gz | .parquet
      the events whose timestamp falls on that day, the day they arrive: a purchase made
      late for a day-3 impression is in a later day's folder, also past the world's last
      day (every day from start_date to the last event's has a folder, maybe of empty
      shards). Sorted by timestamp.
Every day folder holds `shards` files; their union is the flat layout's lines.

Same world + same arguments -> byte-identical files (gzip mtime 0, fixed key order,
shuffles from the seed's "layout" stream).
"""

import datetime
import glob
import json
import os
from typing import Any, Dict, List, Optional, Sequence

from absl import logging
import numpy as np

from evaluation import report
from simulation import behaviour as behaviour_lib
from simulation import corruption as corruption_lib
from simulation import files
from simulation import population as population_lib
from simulation import summary as summary_lib
from simulation import truth as truth_lib
from simulation import world as world_lib
from simulation import world_config as config_lib

FORMATS = ("jsonl", "parquet")
LAYOUTS = ("flat", "daily")
EXTENSIONS = {"jsonl": "jsonl.gz", "parquet": "parquet"}
IMPRESSIONS_DIR = "impressions"
EVENTS_DIR = "events"
WORLD_FILE = "world.json"
IMPRESSION_FIELDS = (
    "impression_id", "timestamp", "user_id", "user_age", "user_gender", "user_segment",
    "user_recent_categories", "item_id", "item_category", "item_brand", "item_price",
    "item_rating", "device", "hour_of_day", "position")
FEATURE_FIELDS = IMPRESSION_FIELDS[2:]
EVENT_FIELDS = ("impression_id", "timestamp", "event")
_JSON_SEPARATORS = (",", ":")
_DAY_GLOB = "[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]"


def shard_name(prefix: str, index: int, shards: int, file_format: str) -> str:
  """E.g. "impressions-00000-of-00004.jsonl.gz"."""
  return f"{prefix}-{index:05d}-of-{shards:05d}.{EXTENSIONS[file_format]}"


class ImpressionRecords:
  """The clean impression records of a world, as dicts, JSON lines or columns.

  Every form has the keys of IMPRESSION_FIELDS in that order: impression_id (str),
  timestamp (int), user_* and item_* of the exposure's user and item, device (str),
  hour_of_day (int), position (int); user_recent_categories is a list of str.
  """

  def __init__(self, world: world_lib.World, oracle_features: bool = False):
    self._world = world
    # Opt-in hidden factors (world.ORACLE_FIELDS) after the contract's fields.
    self._oracle = ({name: values.tolist()
                     for name, values in world_lib.oracle_features(world).items()}
                    if oracle_features else {})
    self.fields = IMPRESSION_FIELDS + tuple(self._oracle)
    population = world.population
    self._users = [self._user_fields(population, u)
                   for u in range(len(population.users.ids))]
    self._items = [self._item_fields(population, i)
                   for i in range(len(population.items.ids))]

  @staticmethod
  def _user_fields(population: population_lib.Population, u: int) -> Dict[str, Any]:
    users, names = population.users, population.categories.names
    return {"user_id": users.ids[u], "user_age": int(users.age[u]),
            "user_gender": population_lib.GENDERS[users.gender[u]],
            "user_segment": population_lib.SEGMENTS[users.segment[u]],
            "user_recent_categories": [names[c] for c in users.recent_categories[u]]}

  @staticmethod
  def _item_fields(population: population_lib.Population, i: int) -> Dict[str, Any]:
    items = population.items
    return {"item_id": items.ids[i],
            "item_category": population.categories.names[items.category[i]],
            "item_brand": population.brand_names[items.brand[i]],
            "item_price": float(items.price[i]), "item_rating": float(items.rating[i])}

  def record(self, row: int) -> Dict[str, Any]:
    """The record of one exposure (row of world.exposures)."""
    exposures = self._world.exposures
    return {"impression_id": exposures.impression_id[row],
            "timestamp": int(exposures.timestamp[row]),
            **self._users[exposures.user[row]], **self._items[exposures.item[row]],
            "device": config_lib.DEVICES[exposures.device[row]],
            "hour_of_day": int(exposures.hour_of_day[row]),
            "position": int(exposures.position[row]),
            **{name: values[row] for name, values in self._oracle.items()}}

  def json_lines(self) -> List[str]:
    """[n] compact JSON lines, equal to json.dumps(record(row)) but ~5x faster."""
    exposures = self._world.exposures

    def fragment(fields: Dict[str, Any]) -> str:
      return json.dumps(fields, separators=_JSON_SEPARATORS)[1:-1]

    user_fragments = [fragment(fields) for fields in self._users]
    item_fragments = [fragment(fields) for fields in self._items]
    template = ('{"impression_id":%s,"timestamp":%d,%s,%s,'
                '"device":%s,"hour_of_day":%d,"position":%d}')
    device_names = [json.dumps(name) for name in config_lib.DEVICES]
    lines = [template % row for row in zip(
        map(json.dumps, exposures.impression_id), exposures.timestamp.tolist(),
        [user_fragments[u] for u in exposures.user.tolist()],
        [item_fragments[i] for i in exposures.item.tolist()],
        [device_names[d] for d in exposures.device.tolist()],
        exposures.hour_of_day.tolist(), exposures.position.tolist())]
    if self._oracle:
      oracle_template = "".join(f',"{name}":%r' for name in self._oracle) + "}"
      lines = [line[:-1] + oracle_template % values
               for line, values in zip(lines, zip(*self._oracle.values()))]
    return lines

  def columns(self) -> Dict[str, list]:
    """IMPRESSION_FIELDS -> [n] list of values, for Parquet."""
    exposures = self._world.exposures
    user_columns = {name: [fields[name] for fields in self._users]
                    for name in self._users[0]}
    item_columns = {name: [fields[name] for fields in self._items]
                    for name in self._items[0]}
    users, items = exposures.user.tolist(), exposures.item.tolist()
    columns = {"impression_id": exposures.impression_id.tolist(),
               "timestamp": exposures.timestamp.tolist()}
    columns.update({name: [values[u] for u in users] for name, values in user_columns.items()})
    columns.update({name: [values[i] for i in items] for name, values in item_columns.items()})
    columns["device"] = [config_lib.DEVICES[d] for d in exposures.device.tolist()]
    columns["hour_of_day"] = exposures.hour_of_day.tolist()
    columns["position"] = exposures.position.tolist()
    columns.update(self._oracle)
    return {name: columns[name] for name in self.fields}


def _parquet_schemas(impression_fields: Sequence[str] = IMPRESSION_FIELDS):
  """(impressions, events) pyarrow schemas; every field nullable (corruption nulls some)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  types = {"timestamp": pa.int64(), "user_age": pa.int64(), "hour_of_day": pa.int64(),
           "position": pa.int64(), "item_price": pa.float64(), "item_rating": pa.float64(),
           "user_recent_categories": pa.list_(pa.string()),
           **{name: pa.float64() for name in world_lib.ORACLE_FIELDS}}
  impressions = pa.schema([(name, types.get(name, pa.string()))
                           for name in impression_fields])
  events = pa.schema([(name, types.get(name, pa.string())) for name in EVENT_FIELDS])
  return impressions, events


def _write_parquet(path: str, table) -> None:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  tmp_path = path + ".tmp"
  pq.write_table(table, tmp_path, compression="snappy")
  os.replace(tmp_path, path)


def prepare_output(output_dir: str, overwrite: bool) -> None:
  """Creates the output folders; refuses (or, with overwrite, removes) earlier outputs.

  Earlier outputs: world.json, the truth and outcomes files, and the log shards of
  either layout (flat or daily; emptied day folders are removed too).

  Raises:
    FileExistsError: `output_dir` holds an earlier simulation and overwrite is False.
  """
  patterns = [os.path.join(output_dir, WORLD_FILE),
              os.path.join(output_dir, truth_lib.TRUTH_DIR, truth_lib.TRUTH_FILE),
              os.path.join(output_dir, truth_lib.TRUTH_DIR, truth_lib.OUTCOMES_FILE)]
  for folder in (IMPRESSIONS_DIR, EVENTS_DIR):
    for extension in EXTENSIONS.values():
      patterns.append(os.path.join(output_dir, folder, f"{folder}-*-of-*.{extension}"))
      patterns.append(os.path.join(output_dir, folder, _DAY_GLOB,
                                   f"{folder}-*-of-*.{extension}"))
  existing = sorted(path for pattern in patterns for path in glob.glob(pattern))
  if existing and not overwrite:
    raise FileExistsError(f"{output_dir}: holds an earlier simulation ({existing[0]}, "
                          f"{len(existing)} files); pass overwrite=True (--overwrite)")
  for path in existing:
    os.remove(path)
  for folder in (IMPRESSIONS_DIR, EVENTS_DIR):
    for day_dir in glob.glob(os.path.join(output_dir, folder, _DAY_GLOB)):
      if os.path.isdir(day_dir) and not os.listdir(day_dir):
        os.rmdir(day_dir)
  if existing:
    logging.info("Removed %d files of an earlier simulation in %s", len(existing),
                 output_dir)
  for folder in (IMPRESSIONS_DIR, EVENTS_DIR, truth_lib.TRUTH_DIR):
    os.makedirs(os.path.join(output_dir, folder), exist_ok=True)


def _day_folders(folder: str, day: np.ndarray, start_date: str, days: int
                 ) -> List[tuple]:
  """Daily layout: [(folder/YYYY-MM-DD, [k] int64 positions with that day)] for every day
  0 .. days - 1, from `day` ([m] int64 day numbers, in file order)."""
  start = datetime.date.fromisoformat(start_date)
  return [(os.path.join(folder, (start + datetime.timedelta(days=d)).isoformat()),
           np.flatnonzero(day == d)) for d in range(days)]


def _write_shards(output_dir: str, folders: Sequence[tuple], prefix: str, shards: int,
                  file_format: str, lines: Optional[List[str]] = None, table=None
                  ) -> List[str]:
  """Writes, for each (folder, [k] row numbers) of `folders`, those rows of `lines`
  (JSONL) or `table` (Parquet), in that order, cut into `shards` files; returns paths."""
  paths = []
  for folder, rows in folders:
    os.makedirs(os.path.join(output_dir, folder), exist_ok=True)
    for k, chunk in enumerate(np.array_split(rows, shards)):
      path = os.path.join(output_dir, folder, shard_name(prefix, k, shards, file_format))
      if file_format == "jsonl":
        written = files.write_gzip_lines(path, (lines[r] for r in chunk.tolist()))
      else:
        import pyarrow as pa  # pylint: disable=g-import-not-at-top
        _write_parquet(path, table.take(pa.array(chunk, type=pa.int64())))
        written = len(chunk)
      logging.info("Wrote %d %s lines to %s", written, prefix, path)
      paths.append(path)
  return paths


def _write_impressions(world: world_lib.World, records: ImpressionRecords,
                       corruption: corruption_lib.Corruption, output_dir: str,
                       shards: int, file_format: str, layout: str) -> List[str]:
  """Clean + bad impression lines, shuffled, in `shards` files (per day with the daily
  layout); returns their paths."""
  n = len(world.exposures)
  total = n + len(corruption.impressions)
  order = config_lib.rng_stream(world.config.seed, "layout").permutation(total)
  if layout == "flat":
    folders = [(IMPRESSIONS_DIR, order)]
  else:
    config = world.config
    row_day = (world.exposures.timestamp - config.start_timestamp) // 86400
    line_day = np.concatenate([row_day, row_day[np.asarray(corruption.impression_rows,
                                                           np.int64)]])
    folders = [(folder, order[positions]) for folder, positions in _day_folders(
        IMPRESSIONS_DIR, line_day[order], config.start_date, config.days)]
  if file_format == "jsonl":
    lines = records.json_lines()
    for bad in corruption.impressions:
      if isinstance(bad, int):
        lines.append(lines[bad])
      elif isinstance(bad, dict):
        lines.append(json.dumps(bad, separators=_JSON_SEPARATORS))
      else:
        lines.append(bad)
    return _write_shards(output_dir, folders, IMPRESSIONS_DIR, shards, file_format,
                         lines=lines)

  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  schema, _ = _parquet_schemas(records.fields)
  if any(isinstance(bad, str) for bad in corruption.impressions):
    raise ValueError("Parquet cannot hold malformed JSON lines")
  # Same row order as the JSONL lines: clean rows, then the bad ones in plan order.
  bad_records = [records.record(bad) if isinstance(bad, int) else bad
                 for bad in corruption.impressions]
  table = pa.concat_tables([pa.Table.from_pydict(records.columns(), schema=schema),
                            pa.Table.from_pylist(bad_records, schema=schema)])
  return _write_shards(output_dir, folders, IMPRESSIONS_DIR, shards, file_format,
                       table=table)


def _write_events(world: world_lib.World, behaviour: behaviour_lib.Behaviour,
                  corruption: corruption_lib.Corruption, output_dir: str, shards: int,
                  file_format: str, layout: str) -> List[str]:
  """Clean + bad events, sorted by timestamp, cut into `shards` files (per arrival day
  with the daily layout); returns paths."""
  ids = world.exposures.impression_id
  entries = [(timestamp, {"impression_id": ids[row], "timestamp": timestamp,
                          "event": behaviour_lib.EVENT_TYPES[kind]})
             for row, timestamp, kind in zip(behaviour.event_row.tolist(),
                                             behaviour.event_timestamp.tolist(),
                                             behaviour.event_type.tolist())]
  entries.extend(corruption.events)
  entries.sort(key=lambda entry: entry[0])   # stable: clean events first on ties
  if layout == "flat":
    folders = [(EVENTS_DIR, np.arange(len(entries)))]
  else:
    config = world.config
    day = (np.array([timestamp for timestamp, _ in entries], np.int64)
           - config.start_timestamp) // 86400
    last_day = max(config.days - 1, int(day.max()) if len(day) else 0)
    folders = _day_folders(EVENTS_DIR, day, config.start_date, last_day + 1)
  if file_format == "jsonl":
    lines = [entry if isinstance(entry, str) else json.dumps(entry, separators=_JSON_SEPARATORS)
             for _, entry in entries]
    return _write_shards(output_dir, folders, EVENTS_DIR, shards, file_format, lines=lines)

  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  _, schema = _parquet_schemas()
  if any(isinstance(entry, str) for _, entry in entries):
    raise ValueError("Parquet cannot hold malformed JSON lines")
  table = pa.Table.from_pylist([entry for _, entry in entries], schema=schema)
  return _write_shards(output_dir, folders, EVENTS_DIR, shards, file_format, table=table)


def write_simulation(world: world_lib.World, behaviour: behaviour_lib.Behaviour,
                     output_dir: str, shards: int = 4, file_format: str = "jsonl",
                     corrupt_fraction: float = 0.0, overwrite: bool = False,
                     oracle_features: bool = False, layout: str = "flat") -> Dict[str, Any]:
  """Writes impressions, events, truth and world.json under `output_dir`.

  Args:
    world, behaviour: the clean world and its sampled events.
    output_dir: OUTPUT (created if missing).
    shards: files per log type.
    file_format: "jsonl" (gzip JSON Lines) or "parquet", for impressions and events.
    corrupt_fraction: about this share of bad lines is added (simulation.corruption).
    overwrite: remove an earlier simulation's files in `output_dir` instead of failing.
    oracle_features: also write the hidden factors (world.ORACLE_FIELDS) into every
      impression, for the oracle run (configs/features/simulated_oracle.yaml).
    layout: "flat" (OUTPUT/impressions/*, OUTPUT/events/*) or "daily" (one folder per
      UTC day, module docstring).

  Returns:
    The world.json content.
  """
  if file_format not in FORMATS:
    raise ValueError(f"file_format must be one of {FORMATS}, got {file_format!r}")
  if shards < 1:
    raise ValueError(f"shards must be >= 1, got {shards}")
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  prepare_output(output_dir, overwrite)
  records = ImpressionRecords(world, oracle_features=oracle_features)
  corruption = corruption_lib.plan_corruption(
      world, behaviour, corrupt_fraction, allow_unparseable=file_format == "jsonl",
      impression_record=records.record)
  impression_paths = _write_impressions(world, records, corruption, output_dir, shards,
                                        file_format, layout)
  event_paths = _write_events(world, behaviour, corruption, output_dir, shards, file_format,
                              layout)
  truth_path = os.path.join(output_dir, truth_lib.TRUTH_DIR, truth_lib.TRUTH_FILE)
  truth_lib.write_truth(truth_path, world.exposures.impression_id,
                        world.population.users.ids[world.exposures.user], world.truth)
  config = world.config
  outcomes_path = None
  if config.is_dynamic or config.heavy_tailed:
    outcomes_path = os.path.join(output_dir, truth_lib.TRUTH_DIR, truth_lib.OUTCOMES_FILE)
    truth_lib.write_outcomes(outcomes_path, world.exposures.impression_id,
                             world.exposures.timestamp, behaviour.click_timestamp,
                             behaviour.purchase_timestamp, behaviour.action,
                             config.attribution_window_s)

  def relative(paths: Sequence[str]) -> List[str]:
    return [os.path.relpath(path, output_dir) for path in paths]

  output = {
      "format": file_format,
      "shards": shards,
      "files": {"impressions": relative(impression_paths),
                "events": relative(event_paths),
                "truth": relative([truth_path])[0]},
      "lines": {"impressions": len(world.exposures) + len(corruption.impressions),
                "events": len(behaviour.event_type) + len(corruption.events),
                "truth": len(world.exposures)},
  }
  if layout != "flat":
    output["layout"] = layout
  if outcomes_path:
    output["files"]["outcomes"] = relative([outcomes_path])[0]
    output["lines"]["outcomes"] = len(world.exposures)
  content = {
      "generator": "pipeline.simulate",
      "config": config.as_record(),
      "intercepts": world.intercepts,
      "output": output,
      **summary_lib.summarize(world, behaviour),
      "corruption": corruption.counts,
      "expected_dead_letter": corruption_lib.expected_dead_letter(
          corruption.counts, int(behaviour.late_purchase.sum())),
  }
  content = report.json_ready(content)
  with open(os.path.join(output_dir, WORLD_FILE), "w") as f:
    json.dump(content, f, indent=2)
    f.write("\n")
  logging.info("Wrote %s: %d impression lines, %d event lines, %d of them bad",
               os.path.join(output_dir, WORLD_FILE), content["output"]["lines"]["impressions"],
               content["output"]["lines"]["events"], corruption.counts["total_bad_lines"])
  return content
