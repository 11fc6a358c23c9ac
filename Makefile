# ZLH control plane: the two commands are `make demo` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast lint services venv migrate check bench clean-venv

## Run the whole system on this machine (Ctrl-C stops everything it started).
demo: services venv
	$(PY) -m devstack.demo

## Set everything up and run the whole suite against real MariaDB, Redis and workers.
test: services venv lint
	bash deploy/test-deps.sh
	$(PY) manage.py check --fail-level WARNING
	$(PY) manage.py makemigrations --check --dry-run >/dev/null || \
	  { echo "models and migrations disagree: run makemigrations"; exit 1; }
	rm -rf artifacts/chaos
	$(PY) -m pytest $(PYTEST_ARGS)
	@cat artifacts/chaos/*.txt 2>/dev/null || true

## The fast layer alone: pure functions and selectors, no workers or devstack (under a minute).
test-fast: services venv
	$(PY) -m pytest tests/unit -q $(PYTEST_ARGS)

## The layering contract (.importlinter): reconciler > lifecycle > edge > notifications > core.
lint: venv
	$(VENV)/bin/lint-imports --no-cache

## MariaDB and Redis running locally (installed from Debian packages if missing).
services:
	bash deploy/services.sh

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt -c constraints.txt
	touch $(STAMP)

migrate: venv
	$(PY) manage.py migrate --noinput

bench: services venv
	$(PY) bench/create_storm.py

clean-venv:
	rm -rf $(VENV)
