# The two commands a newcomer needs: `make serve` and `make test`. Nothing but python3, pip and make.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
# pytest-xdist workers for the suite: one per core (auto); JOBS=0 runs it in this one process.
JOBS   ?= auto

.PHONY: serve test test-pure lint docs bench venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[test,lint]"
	touch $(VENV)/.installed $@

# With the test and lint extras too: each install builds (compiles) the package, so one install serves
# `make docs` and `make test` alike (.ci/run runs both).
$(VENV)/.installed-docs: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[docs,test,lint]"
	touch $(VENV)/.installed $(VENV)/.installed-dev $@

venv: $(VENV)/.installed

serve: $(VENV)/.installed
	$(BIN)/synapse serve --host $(HOST) --port $(PORT)

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check setup.py synapse_cli tests benchmarks examples
	$(BIN)/ruff format --check setup.py synapse_cli tests benchmarks examples
	$(BIN)/mypy

# The docs site (docs/, mkdocs.yml) into site/; --strict fails on a broken link or a page left out of the nav.
docs: $(VENV)/.installed-docs
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet --site-dir site

# The install compiles the request path with mypyc where it can (setup.py); the suite then runs compiled.
test: lint
	$(BIN)/python -m pytest -n $(JOBS)

# The same suite on the pure-Python modules (SYNAPSE_PURE=1), as an install without a C compiler runs.
test-pure: $(VENV)/.installed-dev
	SYNAPSE_PURE=1 $(BIN)/python -m pytest -n $(JOBS)

# Speed, measured against references in the same run (never in timed unit tests): see benchmarks/README.md.
bench: $(VENV)/.installed-dev
	cd benchmarks/node && npm install --no-audit --no-fund --silent
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) site .pytest_cache .mypy_cache .ruff_cache build *.egg-info *.so synapse_cli/compiled.crc32
	find synapse_cli -name '*.so' -delete
