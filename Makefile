# Two commands on a fresh machine: `make train` (the main job) and `make test`.
# `make test-fast` is the quick tier for the edit-test loop (no subprocesses, kernels or torchrun).
# An active virtualenv or conda environment is used as it is; otherwise .venv is created with pip.
SHELL := /bin/bash
ACTIVE_ENV := $(or $(VIRTUAL_ENV),$(CONDA_PREFIX))
ifeq ($(ACTIVE_ENV),)
  VENV := .venv
  PY := $(VENV)/bin/python
else
  VENV := $(ACTIVE_ENV)
  PY := python
endif
STAMP := $(VENV)/.ccmix-installed
PYTHON_FOR_VENV ?= python3
PRESET ?=
PAPERMILL_ARGS ?=

.PHONY: setup train test test-fast lab tb lint clean-runs

setup: $(STAMP)

$(STAMP): pyproject.toml
ifeq ($(ACTIVE_ENV),)
	test -x $(PY) || $(PYTHON_FOR_VENV) -m venv $(VENV)
endif
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

# The main job: the training notebook with its default preset, executed headless into papermill_runs/.
# --log-output shows the run header, the time estimate and one line per epoch as they are printed.
train: setup
	mkdir -p papermill_runs
	$(PY) -m papermill --kernel python3 --log-output --no-progress-bar notebooks/train.ipynb \
		papermill_runs/train-$$(date +%Y%m%d-%H%M%S).ipynb $(PAPERMILL_ARGS)

test: setup lint
	$(PY) -m pytest

# Everything except the integration (subprocesses, Jupyter kernels, torchrun, ResNet-32 training),
# slow, gpu and browser tests. pytest keeps the last -m it is given, so this replaces the default filter.
FAST_MARKERS := not integration and not slow and not gpu and not browser
# One process per core (pytest-xdist), each torch on one thread so the processes do not oversubscribe the cores.
test-fast: setup
	OMP_NUM_THREADS=1 $(PY) -m pytest -n auto -m "$(FAST_MARKERS)"

# ruff, and the layering of the package (pyproject.toml [tool.importlinter]): a lower job importing a higher one fails.
lint: setup
	$(PY) -m ruff check ccmix tests benchmarks notebooks
	$(PY) -c "import sys; from importlinter.cli import lint_imports_command; sys.exit(lint_imports_command())" --no-cache

lab: setup
	$(PY) -m jupyter lab notebooks

# TensorBoard on every run's event files: papermill_runs/ and runs/ (curves named folder/run), or DIR=...
tb: setup
ifneq ($(DIR),)
	$(PY) -m tensorboard.main --logdir "$(DIR)"
else
	$(PY) -m tensorboard.main --logdir_spec $$(for d in $(wildcard papermill_runs runs); do echo $$d:$$d; done | paste -sd, -)
endif

clean-runs:
	find papermill_runs -mindepth 1 ! -name README.md -exec rm -rf {} +
