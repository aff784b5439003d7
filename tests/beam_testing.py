"""Small raw-log fixtures for tests of the preprocessing job (transforms/, pipeline.preprocess).

Flow: a test writes raw logs with these helpers -> runs a transform or the whole
pipeline.preprocess job -> checks the outputs. `small_spec` covers every dtype,
multivalent and weighted features; `data_config` has the base config's four labels.
"""

import gzip
import json
import os
from typing import Any, Dict, Iterable, Optional, Union

import yaml

from configs import config as config_lib
from features import spec as spec_lib

# 2026-01-01T00:00:00Z and the default eval cut of the tests, 2026-01-03.
DAY_S = 86400
START = 1767225600
EVAL_FROM = "2026-01-03"

SMALL_SPEC = {"features": [
    {"name": "user_id", "dtype": "string", "transform": "hash", "hash_buckets": 100},
    {"name": "user_age", "dtype": "int", "transform": "bucketize", "num_buckets": 4},
    {"name": "device", "dtype": "string", "transform": "vocabulary", "max_tokens": 3},
    {"name": "tags", "dtype": "string", "transform": "vocabulary", "max_tokens": 10,
     "multivalent": True, "weighted": True},
    {"name": "item_id", "dtype": "string", "transform": "hash", "hash_buckets": 100},
    {"name": "item_price", "dtype": "float", "transform": "normalize", "log1p": True},
    {"name": "position", "dtype": "int", "transform": "vocabulary", "max_tokens": 5},
]}

LABELS = [
    {"name": "click", "events": ["click"], "after_click": False},
    {"name": "micro", "events": ["view_reviews"]},
    {"name": "action", "events": ["cart", "favorite"]},
    {"name": "purchase", "events": ["purchase"]},
]
LABEL_NAMES = [label["name"] for label in LABELS]


def small_spec() -> spec_lib.FeatureSpec:
  return spec_lib.feature_spec_from_dict(SMALL_SPEC, source="tests.beam_testing")


def _data_section(**overrides: Any) -> Dict[str, Any]:
  data = {"labels": LABELS, "attribution_window_s": DAY_S, "eval_from": EVAL_FROM,
          "train_shards": 2, "eval_shards": 1}
  data.update(overrides)
  return data


def data_config(**overrides: Any) -> config_lib.DataConfig:
  """The tests' DataConfig; keyword arguments override data keys (e.g. orphan policy)."""
  return config_lib.config_from_dict({"feature_spec": "unused.yaml",
                                      "data": _data_section(**overrides)}).data


def write_experiment(directory: str, **data_overrides: Any) -> str:
  """Writes small_spec and a config using it under `directory`; returns the config path."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, "spec.yaml"), "w") as f:
    yaml.safe_dump(SMALL_SPEC, f)
  path = os.path.join(directory, "experiment.yaml")
  with open(path, "w") as f:
    yaml.safe_dump({"feature_spec": "spec.yaml", "data": _data_section(**data_overrides)}, f)
  return path


def impression(index: int, timestamp: int, **overrides: Any) -> Dict[str, Any]:
  """A valid raw impression `imp<index>` with every small_spec feature set."""
  record = {"impression_id": f"imp{index}", "timestamp": timestamp,
            "user_id": f"u{index % 7}", "user_age": 20 + index % 40,
            "device": ["ios", "android", "web"][index % 3],
            "tags": [f"t{index % 4}", f"t{index % 5}"], "tags__weight": [0.5, 1.5],
            "item_id": f"i{index % 11}", "item_price": 1.0 + index % 50,
            "position": index % 6}
  record.update(overrides)
  return {key: value for key, value in record.items() if value is not None}


def event(impression_id: str, timestamp: int, event_type: str) -> Dict[str, Any]:
  return {"impression_id": impression_id, "timestamp": timestamp, "event": event_type}


def write_jsonl(path: str, records: Iterable[Union[Dict[str, Any], str]]) -> str:
  """Writes JSON lines (gzip when the path ends in .gz); str items are written verbatim."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "wt") as f:
    for record in records:
      f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")
  return path


def write_parquet(path: str, records: Iterable[Dict[str, Any]],
                  schema: Optional[Any] = None) -> str:
  """Writes records as one Parquet file (pyarrow infers the schema unless given)."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  pq.write_table(pa.Table.from_pylist(list(records), schema=schema), path)
  return path
