# flpg developer targets. `make help` lists them.
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: help install test test-fast lint format typecheck check bench

help:  ## List the targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

install:  ## Create the venv and install flpg with test, ui and demo extras
	python3 -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test,ui,demo]'

test:  ## Run the whole test suite (starts its own PostgreSQL)
	$(BIN)/pytest

test-fast:  ## Unit and database tests only (no end-to-end processes)
	$(BIN)/pytest tests/unit tests/db

lint:  ## ruff lint and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format:  ## Format the code
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck:  ## mypy --strict on flpg/
	$(BIN)/mypy

check: lint typecheck test  ## Everything CI runs
