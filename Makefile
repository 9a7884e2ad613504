# The two commands: `make demo` and `make test`. Both create or reuse .venv and install
# recurrax with its dev and experiments extras; nothing else needs to be installed beforehand.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.recurrax-installed

.PHONY: demo test docs docs-shots lint install clean test-lower-bounds

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,experiments]"
	@touch $(STAMP)

install: $(STAMP)

# A small experiment that visibly learns: an LRU classifying scikit-learn's digits read
# pixel by pixel (about a minute on a 2-core CPU); prints progress, the final test accuracy
# and the report's path.
demo: $(STAMP)
	$(BIN)/python -m experiments run digits --model lru --steps 800 --eval-every 100 --out runs/demo

lint: $(STAMP)
	$(BIN)/ruff check .

# The suite includes tests/test_docs.py, which builds the docs with `mkdocs build --strict`
# (any warning fails) and opens built pages in headless Chromium when one is installed.
# It runs on TEST_WORKERS processes (pytest-xdist; each needs up to ~6 GB of memory);
# `make test TEST_WORKERS=0` runs it in one process. The 30 slowest tests are listed at the end
# (the suite must stay well under 30 minutes on a 2-core CI machine).
TEST_WORKERS ?= 2
test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -n $(TEST_WORKERS) --durations=30

# The documentation site, built strictly into site/. Read it through a local server, e.g.
# `.venv/bin/mkdocs serve` or `.venv/bin/python -m http.server -d site`.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

# Screenshots of the home, a concept, the results and the performance pages at 1,280 px in
# site-shots/ (not committed), for reviewing the site as readers see it; needs Chromium.
docs-shots: docs
	$(BIN)/python .ci/docs_shots.py site site-shots

# The suite against the oldest dependency versions pyproject.toml allows, in one process:
# inside pytest-xdist workers JAX 0.5.0's compiler crashed twice in a full run (a segfault in
# backend_compile, in tests that pass alone and in a two-worker run of their files).
test-lower-bounds:
	@test -x .venv-lower/bin/python || $(PYTHON) -m venv .venv-lower
	.venv-lower/bin/python -m pip install --quiet -r .ci/lower-bounds.txt
	.venv-lower/bin/python -m pip install --quiet --no-deps -e .
	.venv-lower/bin/python -m pytest -n 0

clean:
	rm -rf $(VENV) .venv-lower runs site site-shots .pytest_cache .hypothesis .ruff_cache
