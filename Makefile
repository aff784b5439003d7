# Two commands for a newcomer: `make demo` and `make test`. Both create .venv if missing
# and install the pinned stack (constraints.txt) and this project into it.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export TF_USE_LEGACY_KERAS := 1
export TF_CPP_MIN_LOG_LEVEL := 2
export PYTHONHASHSEED := 0

.PHONY: install test test-fast demo daily-demo tensorboard lock clean

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

## daily-demo: a small world that changes (new users and items, churn, popularity drift,
## purchases days after the click), filed by day; then pipeline.daily over 5 days: each day
## preprocessed, a model warm-started from the day before's (the first from scratch on 2
## days), published as a new version in runs/daily/work/serving/, evaluated on the next day
## against the truth. The table is printed as it goes (runs/daily/work/daily.jsonl); the
## log is runs/daily/daily.log. Rerunning resumes: finished days are skipped.
DAILY := runs/daily
daily-demo: $(STAMP)
	mkdir -p $(DAILY)
	$(PY) -m pipeline.simulate --output $(DAILY)/raw --impressions 42000 --days 7 --seed 7 \
	  --layout daily --new_users_per_day 0.05 --new_items_per_day 0.05 \
	  --user_churn_per_day 0.02 --item_churn_per_day 0.02 --popularity_drift 0.2 \
	  --delay_model heavy_tailed --attribution_window_s 604800 --overwrite \
	  2> $(DAILY)/simulate.log
	$(PY) -m pipeline.daily --raw $(DAILY)/raw --workdir $(DAILY)/work \
	  --config configs/esmm_daily.yaml --start 2026-01-02 --end 2026-01-06 --history_days 2 \
	  2> $(DAILY)/daily.log || (tail -n 5 $(DAILY)/daily.log; exit 1)

## tensorboard: one board over the demo's runs (per-epoch metrics, HParams), port 6006.
tensorboard: $(STAMP)
	$(VENV)/bin/tensorboard --logdir runs/demo/models

## lock: rewrite constraints.txt from the current venv.
lock: $(STAMP)
	$(PY) -m pip freeze --exclude-editable > constraints.txt

clean:
	rm -rf runs .pytest_cache
