# Weijian — the two commands of the README are `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup services demo test lint format bench clean stop

$(STAMP): pyproject.toml constraints.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

## setup: the virtual environment with pinned dependencies
setup: $(STAMP)

## services: PostgreSQL with TimescaleDB and the project's own Mosquitto, running (idempotent)
services:
	@bash scripts/services.sh

## demo: a small simulated city on the real pipeline; prints the wall URL and an admin login
demo: setup services
	@bash scripts/demo.sh

## test: the whole suite against the real services
test: setup services
	$(BIN)/pytest -q

## lint: ruff (lint + format check) and mypy strict
lint: setup
	$(BIN)/ruff check weijian tests bench
	$(BIN)/ruff format --check weijian tests bench
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format weijian tests bench
	$(BIN)/ruff check --fix weijian tests bench

## bench: ingest throughput/latency and alert latency (prints JSON; see docs/performance.md)
bench: setup services
	$(BIN)/weijian bench ingest
	$(BIN)/weijian bench alerts

stop:
	@bash scripts/services.sh stop

clean:
	rm -rf $(VENV) .run/build .pytest_cache .mypy_cache .ruff_cache
