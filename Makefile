# The two entry points: `make demo` runs the main job, `make test` runs every check CI runs.
# Both set up what they need on a fresh machine: system packages (mosquitto), a venv, the package.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit deps system-deps stack-up stack-down clean

demo: deps
	$(BIN)/meterlink demo

test: deps lint typecheck
	$(BIN)/pytest

lint: deps
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: deps
	$(BIN)/mypy

deps: system-deps $(STAMP)

system-deps:
	@scripts/install-system-deps.sh

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "MeterLink needs Python >= 3.11 (set PYTHON=python3.11)")'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

stack-up: deps
	$(BIN)/meterlink stack up

stack-down: deps
	$(BIN)/meterlink stack down

clean:
	-$(BIN)/meterlink stack down
	rm -rf $(VENV) .meterlink .pytest_cache .mypy_cache .ruff_cache .hypothesis *.egg-info
