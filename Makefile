# recur-golf: two commands on a fresh clone.
#   make workbook   set up .venv, build the default data if absent, run the workbook
#   make test       set up .venv and run the test suite (what .ci/run calls)
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PRESET ?= quick
PYTEST_ARGS ?=

.PHONY: setup data workbook workbook-cpu test bench clean-venv

setup: $(VENV)/.installed

# pip takes torch==2.13.0 (the CPU wheel on our machines' disk) from constraints.txt; the stamp
# is rewritten only after a complete install, so an interrupted setup re-runs.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --progress-bar on -c constraints.txt -e '.[dev]'
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

data: setup
	$(PY) -m recur_lib.cli data build

# The main job: audit the data, then execute the four notebooks at the quick preset into
# results/local/quick/, which git ignores (runs in runs/workbook/ are reused on the next call).
# About 24 minutes on 2 cores on a fresh clone (README "Two commands").
workbook: data
	$(PY) -m recur_lib.cli data audit --preset $(PRESET)
	$(PY) -m recur_lib.cli workbook --preset $(PRESET)

# The published CPU results into results/cpu/: 3 seeds, two runs at a time (recur_lib/workbook.py
# PRESET_PARAMS), 1.8 hours measured on 2 cores; finished runs are reused, an interrupted one resumes.
workbook-cpu: data
	$(PY) -m recur_lib.cli data audit --preset cpu
	$(PY) -m recur_lib.cli workbook --preset cpu

# Throughput, MFU, memory, export compression and scaling -> results/benchmarks/ (about 15 min on 2 cores).
bench: setup
	$(PY) benchmarks/bench.py

# Two test processes (pytest-xdist), each test file on one of them, so a file's module fixtures (the
# smoke workbook, the checkout copy) are built once: most tests wait on subprocesses that start torch.
TEST_WORKERS ?= 2
test: setup
	$(PY) -m pytest -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

clean-venv:
	rm -rf $(VENV)
