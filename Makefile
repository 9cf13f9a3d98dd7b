# aigw from a fresh clone needs Python >= 3.11 and make. `make help` lists the targets.
#
# Two installs, each remembered by a stamp file in .venv and redone when
# pyproject.toml changes:
#   runtime   `pip install -e .`                   what `make serve` needs, nothing more
#   dev       `pip install -e '.[test,browser]'`   tests, linters, Playwright (`make test*`, `make lint`)
# The browser tests drive Debian's Chromium; `make browser` installs it (apt,
# as root) and `make test` runs that step first. Nothing is installed from
# inside the test run.
#
# Adding a target: one block `name: prerequisites  ## what it does` (the `##`
# text is what `make help` shows), and its name in .PHONY.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip --disable-pip-version-check --quiet
RUNTIME := $(VENV)/.installed-runtime
DEV := $(VENV)/.installed-dev
CHROMIUM ?= /usr/bin/chromium
# pytest-xdist processes for the suite; each starts its own embedded PostgreSQL.
# loadgroup: a module whose process tests share one gateway goes to one worker
# (tests/conftest.py groups them), every other test to whichever worker is free.
JOBS ?= 2
XDIST := -n $(JOBS) --dist loadgroup
# Cases per operation, generation mode and credential for `make fuzz`.
FUZZ_EXAMPLES ?= 100

.DEFAULT_GOAL := help
.PHONY: help serve test test-fast test-slow test-reliability fuzz browser lint typecheck bandit openapi \
	bench bench-quick clean replicas

help:  ## list the targets
	@echo "usage: make TARGET   (AIGW_HOST / AIGW_PORT choose where make serve listens)"
	@awk 'BEGIN {FS = ":[^#]*## "} /^[a-zA-Z_-]+:[^#]*## / {printf "  %-17s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

# Installs

# A current pip in the venv: the one `venv` bundles (23.x with Python 3.11) spent
# ~10 s more CPU choosing wheels (matching tags against every file on each
# project's index page) than pip 26 does (issue 15: 29 vs 19 s of CPU for the
# runtime install). The system's pip installs it straight into an empty venv
# (3.6 s of CPU, against 7.7 s for venv's own pip and then the upgrade); without
# a pip that can (`--python` needs pip >= 22.3), venv's bundled one is upgraded.
# The sources are compiled once, below: with PYTHONDONTWRITEBYTECODE set (CI and
# container images often set it) Python never writes them itself, and each
# `aigw` process would compile aigw's ~130 modules again (~0.5 s of CPU).
$(BIN)/python:
	$(PYTHON) -m venv --without-pip $(VENV)
	$(PYTHON) -m pip --disable-pip-version-check --quiet --python $(BIN)/python install --upgrade pip 2>/dev/null \
		|| { $(BIN)/python -m ensurepip --default-pip >/dev/null && $(PIP) install --upgrade pip; }

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(PIP) install -e .
	$(BIN)/python -m compileall -q src migrations
	touch $@

$(DEV): $(RUNTIME)
	$(PIP) install -e '.[test,browser]'
	touch $@

# Run

serve: $(RUNTIME)  ## install the runtime only, migrate, serve on 127.0.0.1:8080 (embedded PostgreSQL unless AIGW_DATABASE_URL)
	$(BIN)/aigw serve --host $${AIGW_HOST:-127.0.0.1} --port $${AIGW_PORT:-8080}

# Test

browser:  ## make sure the browser tests' Chromium is there (/usr/bin/chromium, or CHROMIUM=...; else apt-get install chromium, as root)
	@if [ -x "$(CHROMIUM)" ]; then \
		echo "browser: $(CHROMIUM)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "browser: installing Debian's chromium with apt-get"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get install -y -q chromium >/dev/null || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; \
		[ -x "$(CHROMIUM)" ] || { echo "browser: no $(CHROMIUM) after apt-get install chromium" >&2; exit 1; }; \
	else \
		echo "browser: $(CHROMIUM) is missing; as root: apt-get install -y chromium (or CHROMIUM=/path/to/chromium make ...)" >&2; \
		exit 1; \
	fi

# The suite on both cores (the long runs handed out first, the contract fuzz
# first of all; a module whose tests share a gateway kept on one worker: see
# tests/conftest.py), then the load and fault runs marked `slow` one at a time:
# they assert time bounds (a timeout fires within a second of its setting, a
# drain ends within its grace), and run beside another worker on a busy 2-core
# machine they failed on lateness alone. ruff, mypy and bandit run side by side
# first (~15 s of CPU together; mypy's cache is empty on a fresh clone).
test: $(DEV) browser  ## everything CI runs: lint, types, bandit, the whole suite (browser, fuzz and slow runs too)
	$(MAKE) --no-print-directory -j3 lint typecheck bandit
	AIGW_TEST_CHROMIUM=$(CHROMIUM) $(BIN)/pytest -q $(XDIST) -m "not slow and not replicas" --durations=10
	$(BIN)/pytest -q -m "slow and not replicas" --durations=5

# The inner loop leaves out, besides the browser, the fuzz and the slow runs,
# every test marked `process` (tests/conftest.py marks it: the test starts a real
# `aigw serve` or another subprocess, ~4 s of CPU each): the CLI against a real
# gateway, `aigw serve` itself, the end-to-end and hostile-input runs against a
# real process. About 750 of the suite's ~1070 tests, all in process (the app
# through httpx, or served by uvicorn in the test's event loop). `make test`,
# which CI runs, runs every test. The -m expression is tests/conftest.py's
# FAST_MARKEXPR: under it, the modules none of whose tests it runs are not imported.
test-fast: $(DEV)  ## the inner loop: the in-process tests only (no browser, fuzz, slow runs or real gateway processes; make test runs all)
	$(BIN)/pytest -q $(XDIST) -m "not browser and not slow and not fuzz and not process and not replicas"

test-slow: $(DEV)  ## only the load and fault runs marked slow, one at a time (part of make test)
	$(BIN)/pytest -q -m "slow and not replicas" --durations=5

fuzz: $(DEV)  ## the contract fuzz with 100 cases per operation, mode and credential (make test runs 8; FUZZ_EXAMPLES=...)
	AIGW_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) $(BIN)/pytest -q -s $(XDIST) tests/reliability/test_contract_fuzz.py

test-reliability: $(DEV)  ## only the reliability and security proofs (part of make test)
	$(BIN)/pytest -q $(XDIST) tests/reliability

lint: $(DEV)  ## ruff: lint and format check
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(DEV)  ## mypy
	$(BIN)/mypy

bandit: $(DEV)  ## bandit on src: medium and high findings fail (part of make test)
	$(BIN)/bandit -q -ll -c pyproject.toml -r src

# Other

openapi: $(RUNTIME)  ## rewrite openapi.json from the app
	$(BIN)/python -m aigw.openapi > openapi.json

bench: $(DEV)  ## the benchmark against the bare passthrough and LiteLLM (benchmarks/RESULTS.md)
	$(BIN)/python -m benchmarks.run

bench-quick: $(DEV)  ## a one-minute benchmark run
	$(BIN)/python -m benchmarks.run --quick

clean:  ## remove the venv and the tool caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

replicas: $(DEV)  ## three gateways on one PostgreSQL behind HAProxy: budget, rolling restart, key change (tests/deploy/replicas.py)
	$(BIN)/python -m tests.deploy.replicas
