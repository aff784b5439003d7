"""The simulator's truth: the true probabilities of every impression, and their file.

Flow: simulation.world (computes them) -> **OUTPUT/truth/truth.jsonl.gz** (this module
writes and reads it) -> evaluation (Bayes-optimal AUC per task, a model's gap to it, CVR
over the entire space), joined to predictions by `impression_id`.

One JSON object per impression, keys in `TRUTH_COLUMNS` order. All probabilities are per
exposure x and follow the post-click graph exposure -> click -> micro -> macro (in-shop
action: cart / favorite) -> purchase:

  p_click                       P(click | x)                                 (CTR)
  p_micro_given_click           P(micro | click, x)
  p_macro_given_micro           P(macro | click, micro, x)
  p_macro_given_no_micro        P(macro | click, no micro, x)
  p_purchase_given_macro        P(buy | click, macro, x)  (= given macro and any micro)
  p_purchase_given_no_macro     P(buy | click, no macro, x)
  p_action_given_click          P(macro | click, x) = p_micro * p_macro_given_micro
                                  + (1 - p_micro) * p_macro_given_no_micro
  p_purchase_given_click        P(buy | click, x) (CVR) = p_action * p_purchase_given_macro
                                  + (1 - p_action) * p_purchase_given_no_macro
  p_purchase_given_click_action     = p_purchase_given_macro     (ESM2 / ESMC names)
  p_purchase_given_click_no_action  = p_purchase_given_no_macro
  p_ctmicro                     P(click, micro | x) = p_click * p_micro_given_click
  p_ctavr                       P(click, macro | x) = p_click * p_action_given_click
  p_ctcvr                       P(click, buy | x)   = p_click * p_purchase_given_click

These are the generative probabilities: they count every purchase, including those the
simulator makes land after the attribution window, which the Beam labels miss.
`label_truth` turns them into the probabilities of the labels as pipeline.preprocess
defines them (a purchase is labelled only when it lands inside the window), which is what
a model trained on the labels is calibrated against (evaluation.runner):
  delay model "legacy"        each purchase column times 1 - late_purchase_fraction;
  delay model "heavy_tailed"  each purchase column times the row's extra truth column
      p_purchase_in_window  P(purchase lands inside the window | purchase, x)
                            (simulation.delays: the log-normal delay's CDF at the window,
                            the click delay integrated out); written only in this mode,
                            so legacy truth files keep their columns and bytes.

A dynamic or heavy-tailed world also writes OUTPUT/truth/outcomes.jsonl.gz
(`write_outcomes`): per clean impression, what happened and when, and its final labels:
  impression_id       str
  timestamp           int, the impression's unix seconds
  click_timestamp     int, or null without a click
  purchase_timestamp  int, or null without a purchase (its event exists even when late)
  purchase_delay_s    int purchase_timestamp - click_timestamp, or null
  click, action       0/1: a click / a cart or favorite event (always inside the window)
  purchase            0/1 final label: a purchase with purchase_timestamp - timestamp
                      <= attribution_window_s (a later one is dead-lettered by the labels)
Values are written with Python's shortest round-trip repr, so a loaded file holds the
exact float64 values and the identities above hold to the last bit.
"""

import json
import os
from typing import Dict, Mapping, Sequence

from absl import logging
import numpy as np

from simulation import files

TRUTH_DIR = "truth"
TRUTH_FILE = "truth.jsonl.gz"
BASE_PROBABILITIES = (
    "p_click", "p_micro_given_click", "p_macro_given_micro", "p_macro_given_no_micro",
    "p_purchase_given_macro", "p_purchase_given_no_macro")
DERIVED_PROBABILITIES = (
    "p_action_given_click", "p_purchase_given_click", "p_purchase_given_click_action",
    "p_purchase_given_click_no_action", "p_ctmicro", "p_ctavr", "p_ctcvr")
PROBABILITY_COLUMNS = BASE_PROBABILITIES + DERIVED_PROBABILITIES
# The probabilities of a purchase: the ones the late purchases (outside the attribution
# window, unlabelled) scale down.
PURCHASE_COLUMNS = ("p_purchase_given_macro", "p_purchase_given_no_macro",
                    "p_purchase_given_click", "p_purchase_given_click_action",
                    "p_purchase_given_click_no_action", "p_ctcvr")
WORLD_FILE = "world.json"
TRUTH_COLUMNS = ("impression_id", "user_id") + PROBABILITY_COLUMNS
# Heavy-tailed delays only: P(purchase lands inside the attribution window | purchase, x).
IN_WINDOW_COLUMN = "p_purchase_in_window"
OUTCOMES_FILE = "outcomes.jsonl.gz"
OUTCOME_COLUMNS = ("impression_id", "timestamp", "click_timestamp", "purchase_timestamp",
                   "purchase_delay_s", "click", "action", "purchase")
# Columns that are null when the event did not happen; load_outcomes reads null as -1.
NULLABLE_OUTCOMES = ("click_timestamp", "purchase_timestamp", "purchase_delay_s")


def compose_truth(base: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """Derives every probability of the graph from its six node probabilities.

  Args:
    base: each name of BASE_PROBABILITIES -> [n] float64 in (0, 1).

  Returns:
    each name of PROBABILITY_COLUMNS -> [n] float64, by the identities of the module
    docstring.
  """
  missing = [name for name in BASE_PROBABILITIES if name not in base]
  if missing:
    raise KeyError(f"compose_truth: missing node probabilities {missing}")
  p = {name: np.asarray(base[name], dtype=np.float64) for name in BASE_PROBABILITIES}
  p_micro = p["p_micro_given_click"]
  p_action = p_micro * p["p_macro_given_micro"] + (1.0 - p_micro) * p["p_macro_given_no_micro"]
  p_purchase = (p_action * p["p_purchase_given_macro"]
                + (1.0 - p_action) * p["p_purchase_given_no_macro"])
  p.update({
      "p_action_given_click": p_action,
      "p_purchase_given_click": p_purchase,
      "p_purchase_given_click_action": p["p_purchase_given_macro"].copy(),
      "p_purchase_given_click_no_action": p["p_purchase_given_no_macro"].copy(),
      "p_ctmicro": p["p_click"] * p_micro,
      "p_ctavr": p["p_click"] * p_action,
      "p_ctcvr": p["p_click"] * p_purchase,
  })
  return {name: p[name] for name in PROBABILITY_COLUMNS}


def write_truth(path: str, impression_id: Sequence[str], user_id: Sequence[str],
                truth: Mapping[str, np.ndarray]) -> int:
  """Writes the truth file (gzip JSON Lines, TRUTH_COLUMNS order); returns its rows.

  Args:
    path: file to write, normally OUTPUT/truth/truth.jsonl.gz.
    impression_id, user_id: [n] str.
    truth: each name of PROBABILITY_COLUMNS -> [n] float64, and IN_WINDOW_COLUMN, written
      last, when present (heavy-tailed delays).
  """
  names = PROBABILITY_COLUMNS + ((IN_WINDOW_COLUMN,) if IN_WINDOW_COLUMN in truth else ())
  template = "{" + ",".join(
      [f'"{name}":%s' for name in TRUTH_COLUMNS[:2]]
      + [f'"{name}":%r' for name in names]) + "}"
  columns = [map(json.dumps, impression_id), map(json.dumps, user_id)]
  columns += [np.asarray(truth[name], dtype=np.float64).tolist() for name in names]
  # Level 1: the digits compress poorly anyway and level 6 costs 3x the time.
  rows = files.write_gzip_lines(path, (template % row for row in zip(*columns)),
                                compresslevel=1)
  logging.info("Wrote %d truth rows to %s", rows, path)
  return rows


def truth_file_path(path: str) -> str:
  """The truth file named by a simulate OUTPUT dir, its truth/ dir or the file itself."""
  candidates = (path, os.path.join(path, TRUTH_FILE),
                os.path.join(path, TRUTH_DIR, TRUTH_FILE))
  for candidate in candidates:
    if os.path.isfile(candidate):
      return candidate
  raise FileNotFoundError(f"{path}: no truth file (looked for {list(candidates)})")


def load_truth(path: str) -> Dict[str, np.ndarray]:
  """Loads the truth file as columns (parsed by pyarrow's JSON reader, exact float64).

  Args:
    path: the simulate OUTPUT directory, its truth/ directory or the truth file.

  Returns:
    column name -> [n] array, in the file's key order (TRUTH_COLUMNS, then
    IN_WINDOW_COLUMN in a heavy-tailed world's file) and row order: "impression_id" and
    "user_id" as object arrays of str, every p_* as float64.
  """
  file_path = truth_file_path(path)
  table = _read_jsonl(file_path, {name: "float64" if name.startswith("p_") else "string"
                                  for name in TRUTH_COLUMNS + (IN_WINDOW_COLUMN,)},
                      optional=(IN_WINDOW_COLUMN,))
  columns = {}
  for name in table.column_names:
    values = table.column(name).to_numpy()
    columns[name] = values.astype(np.float64 if name.startswith("p_") else object)
  logging.info("Loaded %d truth rows from %s", table.num_rows, file_path)
  return columns


def _read_jsonl(path: str, types: Mapping[str, str], optional: Sequence[str] = ()):
  """A gzip JSON Lines file as a pyarrow Table; `types` names the pyarrow type of its
  columns (others are inferred); an `optional` one the file lacks is left out."""
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  from pyarrow import json as pa_json  # pylint: disable=g-import-not-at-top
  schema = pa.schema([(name, getattr(pa, kind)()) for name, kind in types.items()])
  with pa.input_stream(path, compression="gzip") as stream:
    table = pa_json.read_json(stream, parse_options=pa_json.ParseOptions(
        explicit_schema=schema, unexpected_field_behavior="infer"))
  # The explicit schema adds absent columns as all-null.
  absent = [name for name in optional
            if name in table.column_names and table.column(name).null_count == table.num_rows]
  return table.drop(absent) if absent else table


def late_purchase_fraction(path: str) -> float:
  """The world's `late_purchase_fraction` from the world.json beside the truth file
  (OUTPUT/world.json for OUTPUT/truth/truth.jsonl.gz); 0 with a warning when absent."""
  truth_dir = os.path.dirname(os.path.abspath(truth_file_path(path)))
  world_path = os.path.join(os.path.dirname(truth_dir), WORLD_FILE)
  if not os.path.isfile(world_path):
    logging.warning("%s not found: the truth is taken as the labels' (no late purchases)",
                    world_path)
    return 0.0
  with open(world_path) as f:
    return float(json.load(f)["config"].get("late_purchase_fraction", 0.0))


def label_truth(columns: Mapping[str, np.ndarray], late_fraction: float
                ) -> Dict[str, np.ndarray]:
  """The probabilities of the labels: every PURCHASE_COLUMNS times the probability that
  the purchase is labelled.

  Legacy delays: a purchase is late (after the attribution window, so not labelled) with
  probability late_fraction independently of everything else (simulation.behaviour), so
  P(purchase label | ...) = (1 - late_fraction) P(buy | ...). Heavy-tailed delays (the
  columns hold IN_WINDOW_COLUMN; late_fraction is then 0): the delay depends on x only, so
  P(purchase label | ..., x) = P(buy | ..., x) * p_purchase_in_window(x), row by row. The
  other columns are the labels' already. Returns a new dict (the input is not changed).
  """
  if not 0.0 <= late_fraction < 1.0:
    raise ValueError(f"late_fraction must be in [0, 1), got {late_fraction}")
  in_window = columns.get(IN_WINDOW_COLUMN)
  if in_window is not None and late_fraction > 0:
    raise ValueError(f"a truth with {IN_WINDOW_COLUMN} (heavy-tailed delays) has no "
                     f"late_purchase_fraction, got {late_fraction}")
  result = dict(columns)
  for name in PURCHASE_COLUMNS:
    if name in result:
      if in_window is None:
        result[name] = np.asarray(result[name], np.float64) * (1.0 - late_fraction)
      else:
        result[name] = np.asarray(result[name], np.float64) * np.asarray(in_window,
                                                                         np.float64)
  return result


def load_label_truth(path: str) -> Dict[str, np.ndarray]:
  """load_truth(path) as the labels' probabilities (label_truth with the world's late
  purchase fraction)."""
  return label_truth(load_truth(path), late_purchase_fraction(path))


def write_outcomes(path: str, impression_id: Sequence[str], timestamp: np.ndarray,
                   click_timestamp: np.ndarray, purchase_timestamp: np.ndarray,
                   action: np.ndarray, attribution_window_s: int) -> int:
  """Writes the outcomes file (module docstring, OUTCOME_COLUMNS order); returns its rows.

  Args:
    path: normally OUTPUT/truth/outcomes.jsonl.gz.
    impression_id: [n] str; timestamp: [n] int impression unix seconds.
    click_timestamp, purchase_timestamp: [n] int, 0 where there was no such event.
    action: [n] bool, a macro (cart / favorite) event.
    attribution_window_s: the window of the final purchase label.
  """
  timestamp = np.asarray(timestamp, np.int64)
  click_ts, purchase_ts = (np.asarray(column, np.int64)
                           for column in (click_timestamp, purchase_timestamp))
  clicked, bought = click_ts > 0, purchase_ts > 0
  final = bought & (purchase_ts - timestamp <= attribution_window_s)

  def nullable(values: np.ndarray, present: np.ndarray):
    return [str(value) if ok else "null" for value, ok in zip(values.tolist(),
                                                              present.tolist())]

  template = ('{"impression_id":%s,"timestamp":%d,"click_timestamp":%s,'
              '"purchase_timestamp":%s,"purchase_delay_s":%s,"click":%d,"action":%d,'
              '"purchase":%d}')
  rows = zip(map(json.dumps, impression_id), timestamp.tolist(),
             nullable(click_ts, clicked), nullable(purchase_ts, bought),
             nullable(purchase_ts - click_ts, bought), clicked.astype(int).tolist(),
             np.asarray(action, bool).astype(int).tolist(), final.astype(int).tolist())
  count = files.write_gzip_lines(path, (template % row for row in rows), compresslevel=1)
  logging.info("Wrote %d outcome rows to %s", count, path)
  return count


def load_outcomes(path: str) -> Dict[str, np.ndarray]:
  """Loads the outcomes file: OUTCOME_COLUMNS -> [n] int64 (impression_id: object str),
  nulls of NULLABLE_OUTCOMES as -1.

  Args:
    path: the simulate OUTPUT directory, its truth/ directory or the file itself.
  """
  candidates = (path, os.path.join(path, OUTCOMES_FILE),
                os.path.join(path, TRUTH_DIR, OUTCOMES_FILE))
  file_path = next((c for c in candidates if os.path.isfile(c)), None)
  if file_path is None:
    raise FileNotFoundError(f"{path}: no outcomes file (looked for {list(candidates)}; "
                            "only dynamic or heavy-tailed worlds write one)")
  table = _read_jsonl(file_path, {name: "string" if name == "impression_id" else "int64"
                                  for name in OUTCOME_COLUMNS})
  columns = {"impression_id": table.column("impression_id").to_numpy().astype(object)}
  for name in OUTCOME_COLUMNS[1:]:
    columns[name] = table.column(name).fill_null(-1).to_numpy().astype(np.int64)
  return columns
