# The two set-up commands of the README: `make run` (install + start the app) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
RUN_ARGS ?=

.PHONY: install install-test run test lint browser postgres

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	# torch first and pinned: a bare `torch` requirement would pull several GB of CUDA packages
	$(BIN)/pip install -q torch==2.13.0

install: $(BIN)/python
	$(BIN)/pip install -q -e .

install-test: $(BIN)/python
	$(BIN)/pip install -q -e '.[test]'

# Start the web UI + REST API on http://127.0.0.1:7865 (`foci`): on first start it downloads what the default
# preset needs (like Fooocus). RUN_ARGS are passed on, e.g. RUN_ARGS="--preset anime" or "--listen --port 8888".
run: install
	$(BIN)/foci $(RUN_ARGS)

# Headless Chromium for the browser tests of the UI (Debian package; Playwright's own browser download is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q chromium >/dev/null; } || \
		echo "chromium could not be installed: the browser tests will be skipped"; }

# PostgreSQL server binaries for the queue tests (Debian package; the tests start a throwaway server on loopback).
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null 2>&1 || { \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get install -y -q postgresql >/dev/null 2>&1 || \
		{ $$SUDO apt-get update -q >/dev/null && $$SUDO apt-get install -y -q postgresql >/dev/null; } || \
		echo "postgresql could not be installed: the PostgreSQL tests will be skipped"; }

test: install-test browser postgres
	$(BIN)/ruff check foci tests benchmarks
	$(BIN)/python -m pytest -q

lint: install-test
	$(BIN)/ruff check foci tests benchmarks
