# Two commands on a fresh machine: `make demo` and `make test`. Everything they need is
# installed here, into .venv (Python) and node_modules (Azurite), never by hand.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
NODE_STAMP := node_modules/.installed

.PHONY: demo test lint typecheck unit bench sandbox clean infra-check

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

# checkov lives in its own venv: it pins many packages that would clash with the app's.
CHECKOV_VERSION := 3.3.30
CHECKOV_VENV := .venv-checkov
CHECKOV_STAMP := $(CHECKOV_VENV)/.installed-$(CHECKOV_VERSION)

$(CHECKOV_STAMP):
	rm -rf $(CHECKOV_VENV)
	$(PYTHON) -m venv $(CHECKOV_VENV)
	echo '*' > $(CHECKOV_VENV)/.gitignore
	$(CHECKOV_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(CHECKOV_VENV)/bin/python -m pip install --quiet checkov==$(CHECKOV_VERSION)
	touch $(CHECKOV_STAMP)

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

## infra-check: checkov on the Bicep in infra/ (fails on any failed check; skips only inline, each with its reason)
infra-check: $(CHECKOV_STAMP)
	$(CHECKOV_VENV)/bin/checkov --directory infra --framework bicep --quiet --compact --skip-download

## test: lint, types, checkov on infra/ and the whole test suite
test: $(STAMP) $(NODE_STAMP) lint typecheck infra-check
	$(VENV)/bin/pytest

## bench: the performance benchmarks (see docs/PERFORMANCE.md); BENCH_ARGS=--quick for a smoke run
bench: $(STAMP)
	$(PY) -m bench $(BENCH_ARGS)

unit: $(STAMP)
	$(VENV)/bin/pytest tests/unit

clean:
	rm -rf $(VENV) $(CHECKOV_VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
