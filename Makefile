# Cockpit: `make demo` runs it, `make test` tests it. Both install into .venv first.
SHELL := /bin/sh
.DEFAULT_GOAL := help

VENV := .venv
PY := $(VENV)/bin/python
PORT ?= 8000
export PORT

# The first Python >= 3.12 found: on PATH, then in pyenv's versions (newest first).
# Candidates that do not run (pyenv shims for versions not selected) are skipped.
FIND_PYTHON := for c in python3.14 python3.13 python3.12 python3 python \
	  $$(ls -d "$$HOME"/.pyenv/versions/3.1[2-9]* 2>/dev/null | sort -rV | sed 's|$$|/bin/python3|'); do \
	  if "$$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; then command -v "$$c"; exit 0; fi; \
	done; exit 1

.PHONY: help demo test bench lint install clean python

help:  ## list the targets
	@grep -E '^[a-z]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | expand -t 10

python:  ## print the Python >= 3.12 this Makefile uses
	@$(FIND_PYTHON) || { echo "No Python >= 3.12 found on PATH or in ~/.pyenv/versions." >&2; exit 1; }

$(PY):
	@py=$$($(FIND_PYTHON)) || { \
	  echo "Cockpit needs Python 3.12 or newer, and none was found on PATH or in ~/.pyenv/versions/." >&2; \
	  echo "Install one, for example: 'pyenv install 3.12' or your system's python3.12 package, then re-run make." >&2; \
	  exit 1; }; \
	echo "Creating $(VENV) with $$py ($$($$py -V))"; \
	"$$py" -m venv $(VENV)

# Reinstalls only when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(PY)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install Cockpit with its dev tools

demo: $(VENV)/.installed  ## run Cockpit locally: embedded Valkey + SQLite, demo data, web + worker + beat
	$(PY) -m cockpit.launcher demo --port $(PORT)

test: $(VENV)/.installed  ## run every test (Postgres/Redis from DATABASE_URL/REDIS_URL, else SQLite + embedded Valkey)
	$(PY) -m cockpit.launcher test -- $(PYTEST_ARGS)

bench: $(VENV)/.installed  ## run the benchmarks and print their figures
	$(PY) -m cockpit.launcher bench -- $(BENCH_ARGS)

lint: $(VENV)/.installed  ## ruff, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=true $(VENV)/bin/mypy cockpit fleet approvals traces finops

clean:  ## remove .venv and var/ (all local data)
	rm -rf $(VENV) var
