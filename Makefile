# The two commands of the README: `make demo` and `make test`. Both create .venv if missing.
#   make demo PORT=8090      the gateway on another port (default 8080; NERVE_PORT works too)
#   make demo ARGS="--users 500"   any other `nerve demo` option
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEPS   := $(VENV)/.deps-installed
PORT   ?=
ARGS   ?=
CHROMIUM ?= /usr/bin/chromium

.PHONY: demo test lint bench clean browser

$(BIN)/python:
	@echo "make: creating $(VENV) (first run only)"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Not -q: the first install takes minutes, and pip's own lines and bars show it is moving.
$(DEPS): pyproject.toml | $(BIN)/python
	@echo "make: installing Nerve and its dependencies into $(VENV) (first run only, a few minutes)"
	$(BIN)/python -m pip install --progress-bar on -e ".[test]"
	touch $@

# Ctrl-C stops the services and the broker; nerve then exits 130, which is the expected way to
# end the demo, so make does not report it as an error. The recipe's shell traps INT (a trap,
# unlike an ignored signal, is not inherited: nerve still gets Ctrl-C) so it lives to see that
# 130. Any other failure keeps its exit code.
demo: $(DEPS)
	@trap : INT; $(BIN)/nerve demo $(if $(PORT),--port $(PORT)) $(ARGS); rc=$$?; [ $$rc -eq 130 ] || exit $$rc

lint: $(DEPS)
	$(BIN)/ruff check engine models training client tests bench
	$(BIN)/ruff format --check engine models training client tests bench
	$(BIN)/mypy

# The browser tests need Debian's chromium: installed here when missing and we are root with
# apt-get; otherwise make stops at once with the one command to run.
browser:
	@if [ ! -x $(CHROMIUM) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing Debian's chromium for the browser tests (apt-get install chromium fonts-liberation)"; \
	    DEBIAN_FRONTEND=noninteractive apt-get update -q && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-liberation || exit 1; \
	  else \
	    echo "make test: $(CHROMIUM) is missing; run: sudo apt-get install chromium fonts-liberation"; exit 1; \
	  fi; \
	fi

test: browser $(DEPS) lint
	$(BIN)/python -m pytest

bench: $(DEPS)
	$(BIN)/python -m pip install -q -e ".[test,bench]"
	$(BIN)/python bench/ingest.py

clean:
	rm -rf $(VENV) .nerve .pytest_cache .ruff_cache .mypy_cache
