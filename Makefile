# Ratchet: durable workflow execution inside PostgreSQL.
#
# The extension is built from the numbered sources in sql/ into one versioned
# script (ratchet--$(EXTVERSION).sql) and one plain-SQL install script for
# managed Postgres (ratchet.sql). Both are written into the Python package so
# `pip install` carries them for `ratchet install`.
#
# `make help` lists the targets.

EXTENSION   = ratchet
EXTVERSION  = 0.1.0
SQLOUT      = python_client/ratchet/_sql
SOURCES     = $(sort $(wildcard sql/[0-9]*.sql))
EXT_SCRIPT  = $(SQLOUT)/$(EXTENSION)--$(EXTVERSION).sql
PLAIN_SCRIPT = $(SQLOUT)/$(EXTENSION).sql
UPGRADES    = $(wildcard sql/upgrades/$(EXTENSION)--*--*.sql)

PG_CONFIG  ?= pg_config
# Everything Python runs from a virtualenv that `make` creates on first use,
# so a fresh clone needs no manual pip step (and no root for pip).
SYSTEM_PYTHON ?= python3
VENV       ?= .venv
# (not PYTHON: PGXS defines that one)
PY         := $(VENV)/bin/python

DATA = $(EXT_SCRIPT) $(UPGRADES)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

.DEFAULT_GOAL := help

ifneq ($(PGXS),)
include $(PGXS)
endif

.PHONY: help sql deps test test-fast lint chaos bench demo demo-ui

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

sql: $(EXT_SCRIPT) $(PLAIN_SCRIPT) ## Build the extension script and the plain-SQL install script

$(EXT_SCRIPT): $(SOURCES) sql/build.sh
	sh sql/build.sh extension $(EXTVERSION) $@ $(SOURCES)

$(PLAIN_SCRIPT): $(SOURCES) sql/build.sh
	sh sql/build.sh plain $(EXTVERSION) $@ $(SOURCES)

# `make install` (from PGXS) copies the control file and scripts into
# `pg_config --sharedir`/extension; it needs write access there (root/sudo).
install: sql

deps: $(VENV)/.installed ## Create .venv with the client and its test tools (editable)

$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

test: sql deps ## Run the whole test suite against a throwaway PostgreSQL
	$(PY) tests/run.py

test-fast: sql deps ## Run the suite without the slow chaos and crash tests
	$(PY) tests/run.py -m "not slow"

lint: deps ## ruff and mypy on the Python client
	$(PY) -m ruff check python_client tests bench examples
	$(PY) -m mypy python_client/ratchet

chaos: sql deps ## Long chaos run: thousands of workflows under injected faults
	$(PY) -m tests.chaos.harness --workflows 3000 --workers 4 --seed $${SEED:-1}

bench: sql deps ## Benchmarks; writes docs/benchmarks.md
	$(PY) bench/run.py --out docs/benchmarks.md

demo: sql deps ## The demo: crash a worker mid-workflow and watch it recover
	$(PY) -m ratchet demo

demo-ui: sql deps ## The dashboard on a throwaway PostgreSQL with demo workflows in every state
	$(PY) -m ratchet.ui.demo --port $${PORT:-8080}
