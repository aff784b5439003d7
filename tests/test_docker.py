"""docker/: the images cannot be built here (no Docker engine), so they are checked by
reading: hadolint passes on each Dockerfile, and the Python images copy every package
that setup.py installs (a missing COPY would make `pip install .` ship an image without it).
"""

import os
import re
import subprocess
import sys

import pytest
import setuptools

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCKERFILES = ("beam-worker.Dockerfile", "trainer.Dockerfile", "serving.Dockerfile")
HADOLINT = os.path.join(os.path.dirname(sys.executable), "hadolint")


@pytest.mark.parametrize("name", DOCKERFILES)
def test_hadolint_passes(name):
  result = subprocess.run([HADOLINT, os.path.join(REPO, "docker", name)],
                          capture_output=True, text=True, check=False)
  assert result.returncode == 0, f"hadolint docker/{name}:\n{result.stdout}{result.stderr}"


def _setup_packages():
  text = open(os.path.join(REPO, "setup.py")).read()
  listed = re.search(r"include=\[(.*?)\]", text, re.S).group(1)
  return {name.split(".")[0] for name in re.findall(r'"([\w.]+)"', listed)}


def test_setup_lists_every_top_level_package():
  found = {p.split(".")[0] for p in setuptools.find_packages(REPO, exclude=["tests*"])}
  assert found <= _setup_packages(), f"packages missing from setup.py: {found - _setup_packages()}"


@pytest.mark.parametrize("name", ["beam-worker.Dockerfile", "trainer.Dockerfile"])
def test_python_images_copy_every_package(name):
  text = open(os.path.join(REPO, "docker", name)).read()
  copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
  missing = _setup_packages() - copied
  assert not missing, f"docker/{name} does not COPY {sorted(missing)}"
  for line in ("COPY constraints.txt setup.py ./", "-c constraints.txt"):
    assert line in text
