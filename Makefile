# V-Gate — the front door. `make help` lists the targets; CI calls the same ones.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
.DEFAULT_GOAL := help

.PHONY: help venv dev check test test-unit test-integration lint typecheck fmt clean

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_.-]+:.*## / {printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(VENV)/.stamp: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11) and "V-Gate needs Python 3.11+ (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -U pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@touch $@

venv: $(VENV)/.stamp ## create .venv with V-Gate and its dev tools (runs once, again when pyproject.toml changes)

dev: venv ## run the local stack: gateway on 127.0.0.1:8000 + 2 dry-run workers (Ctrl-C stops all)
	exec $(BIN)/vgate dev

# Cheapest first: a lint slip fails in seconds, before the tests start. One step after another
# (not prerequisites), so `make -j check` keeps that order and the tests keep the cores.
check: venv ## the checks in one go: lint (with mypy), lint-docker, chart-lint, then test
	@$(MAKE) --no-print-directory lint
	@$(MAKE) --no-print-directory lint-docker
	@$(MAKE) --no-print-directory chart-lint
	@$(MAKE) --no-print-directory test

test: venv redis-server monitoring-tools ## unit + integration tests (real processes on loopback, real Redis, Prometheus and Chromium, the openai client, KMock)
	$(BIN)/pytest tests/unit tests/integration $(PYTEST_ARGS)

test-unit: venv ## unit tests only (pure, seconds)
	$(BIN)/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv redis-server monitoring-tools ## integration tests only
	$(BIN)/pytest tests/integration $(PYTEST_ARGS)

lint: venv ## ruff (lint + format check), the import contracts and mypy --strict
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	$(BIN)/mypy

typecheck: venv ## mypy --strict (pydantic plugin) over the gateway, worker, operator and vgate packages
	$(BIN)/mypy

fmt: venv ## format and auto-fix with ruff
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean: ## remove virtualenvs and caches
	rm -rf $(VENV) .venv-vllm .pytest_cache .ruff_cache .mypy_cache build dist *.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

# Each area keeps its targets in mk/<area>.mk (vLLM tier, benchmarks, images, kind).
-include $(sort $(wildcard mk/*.mk))
