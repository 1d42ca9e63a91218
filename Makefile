# The human entry point. `make run` sets up and runs the training pipeline; `make test` tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: setup run test test-fast lint compile bench clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

## run the whole training pipeline locally on the committed data version
run: setup
	$(BIN)/mlstack data bootstrap
	$(BIN)/mlstack pipeline run

## lint, then every test (the slow end-to-end ones included)
test: setup lint
	$(BIN)/pytest -q

## every test but the slow end-to-end ones
test-fast: setup
	$(BIN)/pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

compile: setup
	$(BIN)/mlstack pipeline compile

bench: setup
	$(BIN)/python benchmarks/pipeline_wall_time.py

clean:
	rm -rf .mlstack
