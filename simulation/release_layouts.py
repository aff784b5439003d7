"""Deterministic files in the public releases' layouts, for tests and benchmarks.

The Ali-CCP release and the AliExpress data set cannot be downloaded here, so the engine
golden test (tests/test_file_sources_golden.py) and `benchmarks.beam_preprocess --source`
write files in their exact layouts (layouts/aliccp.py, layouts/derived.py),
sized at will, from a seed, with a known share of bad lines of every kind:

  * `write_aliccp_release`: sample_skeleton + common_features files of train and test.
    Users (md5s) have 1-6 behaviour-history items with counts (weighted multivalent
    fields); a skeleton row holds item, context and cross fields. Every `bad_every`-th
    line is one of the release's dead-letter cases (malformed lines and items, bad
    labels, purchases without a click, count mismatches, repeated scalars, a scalar set
    on both sides of the join, a missing or dead-lettered common-features row), and
    some md5s get a duplicate or an unused common-features row. A few skeleton rows
    also carry a list field the common side holds (the join concatenates them).
  * `write_aliexpress`: train.csv / test.csv with the AITM header, searches of 1-5 rows,
    and the same kind of bad rows.

No claim about realism beyond the layout: the values are uniform random ids.
"""

import os
import random
from typing import Dict, Iterator, List

ALICCP_USER_SCALARS = ("101", "121", "122", "124", "125", "126", "127", "128", "129")
ALICCP_USER_LISTS = ("109_14", "110_14", "127_14", "150_14")
ALICCP_ITEM_SCALARS = ("205", "206", "207", "216", "301")
ALICCP_ITEM_LISTS = ("210", "508", "509", "702", "853")
ALIEXPRESS_HEADER = ",".join(["search_id"] + [f"categorical_{i}" for i in range(1, 17)]
                             + [f"numerical_{i}" for i in range(1, 64)]
                             + ["click", "conversion"])


def _items(triples) -> str:
  return "\x01".join(f"{field}\x02{feature_id}\x03{value}"
                     for field, feature_id, value in triples)


def _user_items(rng: random.Random, user: int) -> List[tuple]:
  triples = [("101", f"u{user}", "1.0")]
  triples += [(field, f"{field}v{rng.randint(0, 9)}", "1.0") for field in ALICCP_USER_SCALARS[1:]]
  for field in ALICCP_USER_LISTS:
    triples += [(field, f"{field}i{rng.randint(0, 500)}", f"{rng.randint(1, 9) / 2:.1f}")
                for _ in range(rng.randint(1, 6))]
  triples.append(("999", "unknown_field", "1.0"))  # A field the spec does not name.
  return triples


def _item_items(rng: random.Random) -> List[tuple]:
  triples = [(field, f"{field}x{rng.randint(0, 2000)}", "1.0") for field in ALICCP_ITEM_SCALARS]
  for field in ALICCP_ITEM_LISTS:
    triples += [(field, f"{field}n{rng.randint(0, 300)}", f"{rng.random():.3f}")
                for _ in range(rng.randint(0, 3))]
  return triples


def _skeleton_line(sample_id, click, buy, md5, triples, count=None) -> str:
  count = len(triples) if count is None else count
  return f"{sample_id},{click},{buy},{md5},{count},{_items(triples)}"


def _common_line(md5, triples, count=None) -> str:
  count = len(triples) if count is None else count
  return f"{md5},{count},{_items(triples)}"


_SKELETON_CASES = ("malformed_line", "bad_label", "purchase_without_click",
                   "feature_count_mismatch", "malformed_item", "repeated_single_valued_field",
                   "scalar_on_both_sides", "missing_common_features", "common_features_rejected",
                   "list_on_both_sides", "blank")


def _release_split(rng: random.Random, split: str, skeleton_rows: int, bad_every: int
                   ) -> Dict[str, List[str]]:
  users = max(skeleton_rows // 4, 2)
  common, skeleton = [], []
  for user in range(users):
    common.append(_common_line(f"{split}md{user}", _user_items(rng, user)))
    if user % 97 == 5:  # A second row for this md5: duplicate_md5.
      common.append(_common_line(f"{split}md{user}", [("101", f"dup{user}", "1.0")]))
  common.append(_common_line(f"{split}mdUnused", [("101", "nobody", "1.0")]))
  common.append(_common_line(f"{split}mdBad", [("101", "bad", "1.0")], count=4))
  common.append("garbage-without-commas")
  case = 0
  for row in range(skeleton_rows):
    click = int(rng.random() < 0.2)
    buy = int(click and rng.random() < 0.3)
    md5 = f"{split}md{rng.randrange(users)}"
    triples = _item_items(rng)
    if bad_every and row % bad_every == bad_every - 1:
      kind = _SKELETON_CASES[case % len(_SKELETON_CASES)]
      case += 1
      if kind == "malformed_line":
        skeleton.append(f"{row},0,0")
      elif kind == "bad_label":
        skeleton.append(_skeleton_line(row, 2, 0, md5, triples))
      elif kind == "purchase_without_click":
        skeleton.append(_skeleton_line(row, 0, 1, md5, triples))
      elif kind == "feature_count_mismatch":
        skeleton.append(_skeleton_line(row, click, buy, md5, triples, count=len(triples) + 1))
      elif kind == "malformed_item":
        skeleton.append(_skeleton_line(row, click, buy, md5, triples + [("210", "z", "abc")]))
      elif kind == "repeated_single_valued_field":
        skeleton.append(_skeleton_line(row, click, buy, md5, triples + [("205", "again", "1")]))
      elif kind == "scalar_on_both_sides":
        skeleton.append(_skeleton_line(row, click, buy, md5, triples + [("101", "me", "1")]))
      elif kind == "missing_common_features":
        skeleton.append(_skeleton_line(row, click, buy, f"{split}mdNone", triples))
      elif kind == "common_features_rejected":
        skeleton.append(_skeleton_line(row, click, buy, f"{split}mdBad", triples))
      elif kind == "list_on_both_sides":
        skeleton.append(_skeleton_line(row, click, buy, md5, triples + [("109_14", "s", "2")]))
      else:
        skeleton.append("")
      continue
    skeleton.append(_skeleton_line(row, click, buy, md5, triples))
  return {"sample_skeleton": skeleton, "common_features": common}


def write_aliccp_release(directory: str, skeleton_rows: int, seed: int = 0,
                         bad_every: int = 50) -> Dict[str, str]:
  """Writes train/ and test/ (eval: a third of the train rows) in the release's layout.

  Returns:
    {"sample_skeleton_train", "common_features_train", "sample_skeleton_test",
     "common_features_test"} -> path.
  """
  rng = random.Random(f"aliccp-{seed}")
  paths = {}
  for folder, rows in (("train", skeleton_rows), ("test", max(skeleton_rows // 3, 1))):
    files = _release_split(rng, folder, rows, bad_every)
    os.makedirs(os.path.join(directory, folder), exist_ok=True)
    for kind, lines in files.items():
      path = os.path.join(directory, folder, f"{kind}_{folder}.csv")
      with open(path, "w", newline="") as f:
        f.write("".join(line + "\n" for line in lines))
      paths[f"{kind}_{folder}"] = path
  return paths


def aliexpress_cells(rng: random.Random, name: str, rows: int, click_rate: float = 0.3,
                     conversion_rate: float = 0.3) -> Iterator[List[str]]:
  """The cells of `rows` good AliExpress rows of file `name`: searches of 1-5 rows
  (search_id `<name>-s<k>`), 16 small categorical ids, 63 gaussian floats, click and
  conversion (conversion only after a click)."""
  search, left = 0, 0
  for _ in range(rows):
    if left == 0:
      search, left = search + 1, rng.randint(1, 5)
    left -= 1
    click = int(rng.random() < click_rate)
    conversion = int(click and rng.random() < conversion_rate)
    yield ([f"{name}-s{search}"] + [str(rng.randint(0, 3 + 2 * i)) for i in range(16)]
           + [f"{rng.gauss(0.0, 1.0):.6f}" for _ in range(63)] + [str(click), str(conversion)])


def _aliexpress_rows(rng: random.Random, name: str, rows: int, bad_every: int) -> List[str]:
  lines = []
  for index, cells in enumerate(aliexpress_cells(rng, name, rows)):
    if bad_every and index % bad_every == bad_every - 1:
      kind = (index // bad_every) % 6
      if kind == 0:
        del cells[20]  # malformed_line
      elif kind == 1:
        cells[0] = ""  # malformed_line (empty search_id)
      elif kind == 2:
        cells[21] = "abc"  # bad_type
      elif kind == 3:
        cells[25] = "nan"  # bad_value
      elif kind == 4:
        cells[-2] = "2"  # bad_label
      else:
        cells[-2:] = ["0", "1"]  # purchase_without_click
    lines.append(",".join(cells))
  return lines


def write_aliexpress(directory: str, train_rows: int, seed: int = 0,
                     bad_every: int = 50) -> Dict[str, str]:
  """Writes train.csv and test.csv (a third of the train rows); returns {"train", "test"}
  -> path."""
  rng = random.Random(f"aliexpress-{seed}")
  os.makedirs(directory, exist_ok=True)
  paths = {}
  for name, rows in (("train", train_rows), ("test", max(train_rows // 3, 1))):
    paths[name] = os.path.join(directory, f"{name}.csv")
    with open(paths[name], "w") as f:
      f.write("\n".join([ALIEXPRESS_HEADER] + _aliexpress_rows(rng, name, rows, bad_every))
              + "\n")
  return paths
