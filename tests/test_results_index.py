"""The benchmark results index (benchmarks/results/README.md) against the folder and the docs.

benchmarks/results/ holds one current page per benchmark setting; its README.md lists every
file there (each page with its .json / .png companions, the command that regenerates it, its
date, machine and load). These checks keep that true as pages are added or deleted: the index
lists exactly the folder's files, every page has a row with its command, and every results
page the README or docs/*.md mention (as a `benchmarks/results/...` path, or by its bare file
name) exists. A path after a colon (`git show COMMIT:benchmarks/results/old.md`) names a file
in git history and is not checked. The same holds for the project's own files: every
`transforms/...`, `pipeline/...`, `tests/...` (and other top-level package) file or folder
path the README and docs name exists, so a module that is renamed or retired cannot stay
in the docs.
"""

import fnmatch
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
INDEX = os.path.join(RESULTS, "README.md")
# The benchmarks whose pages live in benchmarks/results/: a bare file name in the docs that
# starts with one of these names a results page.
PAGE_FAMILIES = ("models", "calibration", "sweep", "learning_curve", "tune_", "beam_preprocess",
                 "file_sources", "training_throughput", "input_pipeline", "serving_latency",
                 "continuous", "delayed_feedback")

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RESULTS_PATH = re.compile(r"(?<![:\w/.])(?:\.\./)*benchmarks/results/([^\s)\]`'\"|,;]*)")
BARE_NAME = re.compile(r"(?<![:\w/.<>*-])([a-z0-9_]+\*?(?:_[a-z0-9_]+)?\.(?:md|png|json))\b")
# The project's top-level folders whose paths the docs name (benchmarks/results/ has its
# own checks above).
PROJECT_FOLDERS = ("benchmarks", "configs", "docker", "docs", "evaluation", "features",
                   "models", "pipeline", "serving", "simulation", "tests", "training",
                   "transforms")
# A file path (ends in an extension) or a folder path (ends in "/") under one of them, as
# written or after "../"; not after a colon (git history), a word character, "/" or "."
# (part of a longer path), nor a pattern (`tests/test_<module>.py`, `*.yaml`).
PROJECT_PATH = re.compile(r"(?<![:\w/.-])(?:\.\./)*((?:%s)/(?:[\w.-]+/)*"
                          r"(?:[\w-]+\.[A-Za-z][\w.]*\b|(?![\w<*])))" % "|".join(PROJECT_FOLDERS))


def results_files():
  return sorted(name for name in os.listdir(RESULTS)
                if os.path.isfile(os.path.join(RESULTS, name)) and name != "README.md")


def index_text():
  with open(INDEX, encoding="utf-8") as f:
    return f.read()


def doc_files():
  docs = os.path.join(ROOT, "docs")
  return [os.path.join(ROOT, "README.md")] + sorted(
      os.path.join(docs, name) for name in os.listdir(docs) if name.endswith(".md"))


def exists_in_results(name):
  """True when `name` (a file name, `*` allowed) matches a file in benchmarks/results/."""
  if "*" in name:
    return bool(fnmatch.filter(os.listdir(RESULTS), name))
  return os.path.isfile(os.path.join(RESULTS, name))


def results_mentions(text):
  """(line number, name) of each results page a markdown text mentions, path or bare name."""
  mentions = []
  for number, line in enumerate(text.splitlines(), 1):
    for match in RESULTS_PATH.finditer(line):
      name = match.group(1).rstrip(".")
      if name and "<" not in name:
        mentions.append((number, name))
    for match in BARE_NAME.finditer(line):
      if match.group(1).startswith(PAGE_FAMILIES):
        mentions.append((number, match.group(1)))
  return mentions


def test_index_lists_every_file_in_the_folder_and_nothing_else():
  linked = {target for target in LINK.findall(index_text()) if "/" not in target}
  files = set(results_files())
  assert sorted(files - linked) == [], "files in benchmarks/results/ without an index entry"
  assert sorted(linked - files) == [], "index entries without a file in benchmarks/results/"


def test_every_index_link_resolves():
  for target in LINK.findall(index_text()):
    path = os.path.normpath(os.path.join(RESULTS, target.split("#")[0]))
    assert os.path.exists(path), f"benchmarks/results/README.md links {target}, which is missing"


def test_every_page_has_a_row_with_its_command_date_and_load():
  rows = {}
  for line in index_text().splitlines():
    first_link = LINK.search(line)
    if line.startswith("| [") and first_link:
      rows[first_link.group(1)] = line
  pages = [name for name in results_files() if name.endswith(".md")]
  assert sorted(rows) == pages, "every .md page must start its own row of the index"
  for page, row in rows.items():
    cells = [cell.strip() for cell in row.strip("|").split(" | ")]
    assert len(cells) == 5, f"{page}: expected 5 cells (page, command, date, load, shows)"
    assert "`python -m benchmarks." in cells[1], f"{page}: no regenerating command"
    assert re.match(r"\d\d-\d\d \d\d:\d\d$", cells[2]), f"{page}: date {cells[2]!r}"
    assert re.search(r"\d\.\d|not recorded", cells[3]), f"{page}: no load in {cells[3]!r}"
    assert cells[4], f"{page}: says nothing about what it shows"


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_docs_mention_only_pages_that_exist(doc):
  with open(doc, encoding="utf-8") as f:
    mentions = results_mentions(f.read())
  missing = [f"{os.path.relpath(doc, ROOT)}:{number}: {name}"
             for number, name in mentions if not exists_in_results(name)]
  assert not missing, ("results pages mentioned but not in benchmarks/results/ (a deleted "
                       "page: quote the current page, or cite git history as `git show "
                       "COMMIT:path`):\n" + "\n".join(missing))


def test_mentions_are_found_in_paths_bare_names_and_globs_but_not_git_history():
  text = ("see [models.md](benchmarks/results/models.md) and ../benchmarks/results/gone.png;\n"
          "`learning_curve_3m*.md`, `tune_<model>_model.md`, `counts.json`, sweep_old.md.\n"
          "git show abc:benchmarks/results/models_lazy_eps.md\n")
  assert results_mentions(text) == [(1, "models.md"), (1, "gone.png"), (1, "models.md"),
                                    (2, "learning_curve_3m*.md"), (2, "sweep_old.md")]
  assert exists_in_results("learning_curve_3m*.md")
  assert not exists_in_results("sweep_old.md")


def project_path_mentions(text):
  """(line number, path) of each project file or folder path a markdown text names."""
  mentions = []
  for number, line in enumerate(text.splitlines(), 1):
    for match in PROJECT_PATH.finditer(line):
      path = match.group(1)
      if "<" not in path and "*" not in path and not path.startswith("benchmarks/results/"):
        mentions.append((number, path))
  return mentions


@pytest.mark.parametrize("doc", doc_files(), ids=lambda p: os.path.relpath(p, ROOT))
def test_docs_name_only_project_paths_that_exist(doc):
  with open(doc, encoding="utf-8") as f:
    mentions = project_path_mentions(f.read())
  missing = [f"{os.path.relpath(doc, ROOT)}:{number}: {path}" for number, path in mentions
             if not os.path.exists(os.path.join(ROOT, path))
             and not os.path.exists(os.path.join(os.path.dirname(doc), path))]
  assert not missing, ("paths named in the docs that do not exist (a retired module: "
                       "name what replaced it, or cite history as `git show COMMIT:path`):\n"
                       + "\n".join(missing))


def test_project_paths_are_found_but_not_prose_globs_or_git_history():
  text = ("`transforms/job.py` and transforms/columnar/ (retired); tests/test_x.py:\n"
          "training/serving skew, `tests/test_<module>.py`, git show abc:transforms/shards.py\n"
          "see ../configs/features/simulated.yaml\n")
  assert project_path_mentions(text) == [(1, "transforms/job.py"), (1, "transforms/columnar/"),
                                         (1, "tests/test_x.py"),
                                         (3, "configs/features/simulated.yaml")]
