# Stallholder. `make run` serves the demo; `make test` runs lint and the whole suite.
# The virtualenv is created and filled from the pinned lock files on first use.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# Four test processes on any machine (the suite waits on servers and subprocesses as much
# as it computes); the fifteen slowest tests are listed so the suite stays fast.
PYTEST_ARGS ?= -n 4 --durations=15

.PHONY: run test lint bench clean help

help:
	@echo "make run    serve the demo on http://127.0.0.1:$(PORT) (SQLite under ./var)"
	@echo "make test   lint (ruff, mypy, import contracts) and the whole test suite"
	@echo "make lint   ruff, mypy strict and the import-linter contracts"
	@echo "make bench  benchmarks; results in bench/results/"

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24"

$(VENV)/.runtime: $(BIN)/python requirements.lock pyproject.toml
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

$(VENV)/.dev: $(VENV)/.runtime requirements-dev.lock
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	touch $@

# The demo's channels: a local Shopify and Etsy double (tests/doubles/channels_demo.py)
# that Kiln & Clay is connected to, started beside the server and stopped with it. The
# platform allows private (local) channel and webhook addresses for them.
SHOPIFY_PORT ?= 8101
ETSY_PORT ?= 8102
DEMO_ENV := STALLHOLDER_ALLOW_PRIVATE_WEBHOOK_TARGETS=true \
	STALLHOLDER_BASE_URL=http://127.0.0.1:$(PORT) \
	STALLHOLDER_SHOPIFY_CLIENT_SECRET=shpss_demo_kiln_and_clay \
	STALLHOLDER_ETSY_API_BASE=http://127.0.0.1:$(ETSY_PORT) \
	STALLHOLDER_ETSY_KEYSTRING=demo-keystring \
	STALLHOLDER_ETSY_SHARED_SECRET=demo-shared-secret \
	STALLHOLDER_DEMO_CHANNELS=shopify=http://127.0.0.1:$(SHOPIFY_PORT),etsy=http://127.0.0.1:$(ETSY_PORT)

run: $(VENV)/.runtime
	$(BIN)/stallholder migrate
	$(BIN)/python -m tests.doubles.channels_demo --shopify-port $(SHOPIFY_PORT) \
		--etsy-port $(ETSY_PORT) & doubles=$$!; \
	trap 'kill $$doubles 2>/dev/null' EXIT INT TERM; \
	$(DEMO_ENV) PORT=$(PORT) $(BIN)/stallholder demo && \
	$(DEMO_ENV) $(BIN)/stallholder serve --host 127.0.0.1 --port $(PORT)

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests bench tools
	$(BIN)/ruff format --check src tests bench tools
	$(BIN)/mypy
	$(BIN)/lint-imports

test: lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: $(VENV)/.dev
	$(BIN)/python -m bench.run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
