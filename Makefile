# Two commands for a newcomer: `make demo` and `make test`. Both create .venv if missing
# and install the pinned stack (constraints.txt) and this project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: install test test-fast demo tensorboard lock clean

install: $(STAMP)

# editable_mode=compat: the project root goes on sys.path (a .pth path entry), so its
# regular packages beat a same-named folder in the working directory (issue 33); the
# console scripts cvr-simulate ... cvr-demo come from setup.py.
$(STAMP): setup.py pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==24.3.1" "setuptools==75.6.0" "wheel==0.45.1"
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]" --config-settings editable_mode=compat
	touch $(STAMP)

# Tests run on TEST_WORKERS pytest-xdist processes; --dist loadscope keeps the tests of a
# module-scoped fixture on one worker (tests/conftest.py), and pytest.ini's --durations=15
# lists the slowest tests at the end.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadscope

## test: the whole suite, end-to-end (slow) tests included, as CI runs it.
test: $(STAMP)
	$(PYTEST)

## test-fast: everything but the end-to-end tests.
test-fast: $(STAMP)
	$(PYTEST) -m "not slow"

## demo: simulate -> Beam preprocess -> train ESMM and naive -> evaluate (report in
## runs/demo/report/index.html) -> score raw examples. Full logs: runs/demo/logs/.
demo: $(STAMP)
	$(PY) -m pipeline.demo --workdir runs/demo

## tensorboard: one board over the demo's runs (per-epoch metrics, HParams), port 6006.
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs/demo/models

## lock: rewrite constraints.txt from the current venv.
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable > constraints.txt

clean:
	rm -rf runs .pytest_cache
