# vilgkit: `make demo` runs the tiny demo end to end; `make test` runs the test suite.
# `make lint` runs ruff (lint rules and formatting, configured in pyproject.toml).
# All create .venv and install the package (core + built-in plugins + dev extra) first, with uv (pip if uv fails).
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: venv lint test test-fast test-quality demo bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@# uv installs torch and its 3 GB of CUDA wheels in ≈ 40 s where pip takes ≈ 100 s (docs/performance.md,
	@# "Time"): a third of `make demo`'s install. pip is the fallback when uv cannot be installed or fails.
	$(PY) -m pip install -q uv && $(VENV)/bin/uv pip install -q --python $(PY) -e ".[dev]" || \
	  { $(PY) -m pip install -q --upgrade pip && $(PY) -m pip install -q -e ".[dev]"; }
	@# Chinese captions in grids need a font with CJK glyphs; install Debian's when we may (best effort).
	@fc-list :lang=zh file 2>/dev/null | grep -q . || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && apt-get install -y -qq fonts-wqy-microhei fontconfig) >/dev/null 2>&1; } || \
	  echo "note: no CJK font found; Chinese captions in grids render as boxes (apt-get install fonts-wqy-microhei)"
	touch $(STAMP)

venv: $(STAMP)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# The quality bars of shipped recipes train for minutes each: measured by `make test-quality`
# (and recorded in docs/performance.md), kept out of `make test` so the suite stays near 15 min on 2 cores.
# Two pytest-xdist workers, one test file each at a time (module fixtures stay in one process): many
# tests wait on a single-threaded `vilgkit` subprocess, so one worker left a core idle. On a 2-core
# EPYC the suite took 11.6 min instead of 17.6 (docs/performance.md, "Time"). TEST_WORKERS=0: one process.
TEST_WORKERS ?= 2
XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
test: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q $(XDIST) -m "not quality" tests

test-quality: $(STAMP)
	OMP_NUM_THREADS=2 $(PY) -m pytest -q -m quality tests

test-fast: $(STAMP)
	$(PY) -m pytest -q $(XDIST) -m "not slow and not distributed and not quality" tests

demo: $(STAMP)
	$(VENV)/bin/vilgkit run recipes/shapes_tiny.yaml

bench: $(STAMP)
	for b in benchmarks/bench_*.py; do $(PY) $$b || exit 1; done

clean:
	rm -rf runs build *.egg-info
