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


def _setup_patterns():
  text = open(os.path.join(REPO, "setup.py")).read()
  listed = re.search(r"include=\[(.*?)\]", text, re.S).group(1)
  return re.findall(r'"([\w.*]+)"', listed)


def test_setup_lists_every_package_and_subpackage():
  # Full dotted names: a subpackage (e.g. models.layers) left out of setup.py is not
  # installed on Dataflow workers (--setup_file) even when its parent is.
  found = set(setuptools.find_packages(REPO, exclude=["tests*"]))
  installed = set(setuptools.find_packages(REPO, include=_setup_patterns()))
  assert found <= installed, f"packages missing from setup.py: {sorted(found - installed)}"
  assert {"transforms", "models.layers"} <= installed


@pytest.mark.parametrize("name", ["beam-worker.Dockerfile", "trainer.Dockerfile"])
def test_python_images_copy_every_package(name):
  text = open(os.path.join(REPO, "docker", name)).read()
  copied = set(re.findall(r"^COPY (\w+)/ \1/$", text, re.M))
  missing = {pattern.split(".")[0] for pattern in _setup_patterns()} - copied
  assert not missing, f"docker/{name} does not COPY {sorted(missing)}"
  for line in ("COPY constraints.txt setup.py ./", "-c constraints.txt"):
    assert line in text
