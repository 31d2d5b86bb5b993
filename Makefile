# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is
# installed here, into .venv (Python) and node_modules (Azurite), never by hand.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
NODE_STAMP := node_modules/.installed

.PHONY: demo test lint typecheck unit bench sandbox clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(NODE_STAMP): package.json
	npm install --no-audit --no-fund --loglevel=error
	touch $(NODE_STAMP)

## demo: the main job on the local sandbox (no Azure needed)
demo: $(STAMP)
	$(PY) -m sandbox.demo

## sandbox: start the sandbox and print the environment that points a client at it
sandbox: $(STAMP)
	$(PY) -m sandbox

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check remediation function_app.py

typecheck: $(STAMP)
	$(VENV)/bin/mypy

## test: lint, types and the whole test suite
test: $(STAMP) $(NODE_STAMP) lint typecheck
	$(VENV)/bin/pytest

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
