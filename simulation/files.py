"""Deterministic gzip JSON Lines files for the simulator's outputs.

Flow: simulation.writer / simulation.truth -> **gzip files on disk** ->
pipeline.preprocess and evaluation. Same lines -> same bytes: the gzip header holds
mtime 0 and no file name.
"""

import gzip
import os
from typing import Iterable

_CHUNK_LINES = 50_000


def write_gzip_lines(path: str, lines: Iterable[str], compresslevel: int = 6) -> int:
  """Writes text lines (without newlines) as gzip; returns the number of lines.

  The file is written beside `path` and renamed into place, so a reader never sees a
  half-written file.
  """
  count, chunk = 0, []
  tmp_path = path + ".tmp"
  with open(tmp_path, "wb") as raw, gzip.GzipFile(
      filename="", mode="wb", fileobj=raw, compresslevel=compresslevel, mtime=0) as out:
    for line in lines:
      chunk.append(line)
      if len(chunk) >= _CHUNK_LINES:
        out.write(("\n".join(chunk) + "\n").encode("utf-8"))
        count += len(chunk)
        chunk = []
    if chunk:
      out.write(("\n".join(chunk) + "\n").encode("utf-8"))
      count += len(chunk)
  os.replace(tmp_path, path)
  return count

