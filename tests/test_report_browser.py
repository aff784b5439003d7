"""The HTML report in a real browser: headless Chromium renders index.html from disk.

Checks what a reader sees: every image loaded (the report's inline script records
`img.complete && img.naturalWidth > 0` on <body>, read back with --dump-dom), the
expected sections are in the rendered DOM, and a screenshot is taken (kept in the test's
tmp dir; docs/report_demo.png is the committed one). Network access is disabled for the
page (a proxy that does not exist), so anything fetched from the network would fail to
load. Chromium: Debian's `chromium` package (.ci/run installs it when missing); the tests
skip, saying so, only when no Chromium binary is found.
"""

import os
import pathlib
import re
import shutil
import struct
import subprocess

import pytest

from tests.test_report import written_report

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
CHROMIUM = next((path for path in map(shutil.which, BROWSERS) if path), None)
pytestmark = [pytest.mark.slow,  # a browser per test: `make test-fast` skips them (README)
              pytest.mark.skipif(
                  CHROMIUM is None, reason="no Chromium binary on PATH (apt-get install -y "
                  "chromium; .ci/run does it as root)")]
WINDOW = (1280, 2400)


def chromium(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
  """Runs headless Chromium offline (every request goes to a proxy that does not exist)."""
  command = [CHROMIUM, "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars",
             "--no-first-run", "--disable-extensions", "--proxy-server=http://127.0.0.1:9",
             "--virtual-time-budget=10000", *args]
  return subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)


def rendered_dom(index: str) -> str:
  result = chromium("--dump-dom", f"file://{os.path.abspath(index)}")
  assert result.returncode == 0, result.stderr[-2000:]
  return result.stdout


def body_counts(dom: str):
  body = re.search(r"<body[^>]*>", dom).group(0)
  images = re.search(r'data-images="(\d+)"', body)
  loaded = re.search(r'data-images-loaded="(\d+)"', body)
  assert images and loaded, f"the report's image check did not run: {body}"
  return int(images.group(1)), int(loaded.group(1))


def png_size(path: str):
  with open(path, "rb") as f:
    header = f.read(24)
  assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
  return struct.unpack(">II", header[16:24])


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory):
  """tests/test_report.py's report of its synthetic results (read-only: shared)."""
  return pathlib.Path(os.path.dirname(written_report(tmp_path_factory)))


def test_every_image_loads_and_every_section_renders(report_dir):
  dom = rendered_dom(str(report_dir / "index.html"))
  images, loaded = body_counts(dom)
  assert images == 9 and loaded == images  # 3 per model, the comparison, 2 slice features
  for section in ("overview", "comparison", "model-esmm", "model-naive", "slices"):
    assert f'id="{section}"' in dom
  assert "cvr/all" in dom and "small" in dom


def test_screenshot_of_the_report(report_dir, tmp_path):
  screenshot = tmp_path / "report.png"
  result = chromium(f"--screenshot={screenshot}", f"--window-size={WINDOW[0]},{WINDOW[1]}",
                    f"file://{report_dir / 'index.html'}")
  assert result.returncode == 0, result.stderr[-2000:]
  assert png_size(str(screenshot)) == WINDOW
  assert os.path.getsize(screenshot) > 50_000  # a rendered page, not a blank one


def test_the_image_check_sees_a_missing_or_remote_image(report_dir, tmp_path):
  broken = tmp_path / "broken"
  shutil.copytree(report_dir, broken)
  os.remove(broken / "images" / "comparison_reliability.png")
  index = broken / "index.html"
  text = index.read_text(encoding="utf-8")
  index.write_text(text.replace('src="images/esmm_scores.png"',
                                'src="https://example.com/esmm_scores.png"'), encoding="utf-8")
  images, loaded = body_counts(rendered_dom(str(index)))
  assert (images, loaded) == (9, 7)  # the page is offline: a remote image cannot load
