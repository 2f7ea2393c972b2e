# Two commands on a fresh machine: `make demo` and `make test`.
# `make demo` installs sfmd and what it needs to run, nothing more; `make test` adds the test
# tools (pytest, supervisor, ...) to the same virtualenv. Either order works.
PYTHON ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.runtime
STAMP   := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# sfmd itself (editable) and its runtime dependencies.
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The runtime, plus the test extra.
$(STAMP): $(RUNTIME) pyproject.toml
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

demo: $(RUNTIME)
	$(BIN)/sfmd demo

test: $(STAMP)
	$(BIN)/ruff check sfmd tests bench
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check sfmd tests bench
	$(BIN)/ruff format --check sfmd tests bench

bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[test,bench]'
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
