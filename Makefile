# The two commands of the README: `make demo` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(DEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[test]"
	touch $@

demo: $(DEPS)
	$(BIN)/nerve demo

lint: $(DEPS)
	$(BIN)/ruff check engine models training tests bench
	$(BIN)/ruff format --check engine models training tests bench
	$(BIN)/mypy

test: $(DEPS) lint
	@test -x /usr/bin/chromium || echo "make test: /usr/bin/chromium not found, so the browser tests will fail; install Debian's chromium (apt-get install chromium)"
	$(BIN)/python -m pytest

bench: $(DEPS)
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .nerve .pytest_cache .ruff_cache .mypy_cache
