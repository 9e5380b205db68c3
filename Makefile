# vilgkit: `make demo` runs the tiny demo end to end; `make test` runs the test suite.
# `make lint` runs ruff (lint rules and formatting, configured in pyproject.toml).
# All create .venv with pip and install the package (core + built-in plugins + dev extra) first.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv lint test test-fast demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[dev]"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow and not distributed" tests

demo: $(STAMP)
	$(VENV)/bin/vilgkit run recipes/shapes_tiny.yaml

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs build *.egg-info
