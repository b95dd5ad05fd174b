# Krolik's everyday commands. `make` (or `make help`) lists them.
.DEFAULT_GOAL := help
VENV ?= .venv
PY := $(VENV)/bin/python

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml clients/python/pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e ".[dev]" -e ./clients/python
	touch $@

install: $(VENV)/.installed ## Create the venv and install Krolik with its dev tools

dev: install ## Run Krolik in one process on SQLite (krolik dev)
	$(VENV)/bin/krolik dev

test: install ## Run every test (PostgreSQL and RabbitMQ on 127.0.0.1)
	$(PY) -m pytest

test-quick: install ## Run the tests but the slow ones (chaos, clusters, browsers)
	$(PY) -m pytest -m "not slow"

lint: install ## ruff and mypy, as CI runs them
	$(VENV)/bin/ruff check krolik tests bench clients
	$(VENV)/bin/ruff format --check krolik tests bench clients
	$(VENV)/bin/mypy krolik clients/python/src

format: install ## Format the code and fix what ruff can
	$(VENV)/bin/ruff format krolik tests bench
	$(VENV)/bin/ruff check --fix krolik tests bench

bench: install ## Run the four benchmarks (figures printed; see bench/README.md)
	$(PY) bench/submit_single.py
	$(PY) bench/submit_batch.py
	$(PY) bench/drain.py
	$(PY) bench/latency.py

chaos: install ## Kill and cut Krolik's processes while 10,000 tasks run; nothing may be lost
	$(PY) bench/chaos.py

ci: ## What CI runs, from a fresh venv
	bash .ci/run

.PHONY: help install dev test test-quick lint format bench chaos ci
