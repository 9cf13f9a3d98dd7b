# Two commands from a fresh clone: `make serve` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-reliability lint openapi bench bench-quick clean replicas

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

serve: $(STAMP)  ## migrate and serve on 127.0.0.1:8080 (embedded PostgreSQL unless AIGW_DATABASE_URL)
	$(BIN)/aigw serve --host $${AIGW_HOST:-127.0.0.1} --port $${AIGW_PORT:-8080}

test: $(STAMP)  ## lint, type-check and run the whole suite
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy
	$(BIN)/bandit -q -ll -c pyproject.toml -r src  # medium and high findings fail
	$(BIN)/pytest -q --durations=10

test-reliability: $(STAMP)  ## only the reliability and security proofs (also part of `make test`)
	$(BIN)/pytest -q tests/reliability

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

openapi: $(STAMP)  ## rewrite openapi.json from the app
	$(BIN)/python -m aigw.openapi > openapi.json

bench: $(STAMP)
	$(BIN)/python -m benchmarks.run

bench-quick: $(STAMP)
	$(BIN)/python -m benchmarks.run --quick

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache

replicas: $(STAMP)  ## three gateways on one PostgreSQL behind HAProxy: budget, rolling restart, key change (tests/deploy/replicas.py)
	$(BIN)/python -m tests.deploy.replicas
