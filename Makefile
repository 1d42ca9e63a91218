# The human entry point. `make run` sets up and runs the training pipeline; `make test` tests.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
export MLFLOW_DISABLE_TELEMETRY := true
export DVC_NO_ANALYTICS := 1

.PHONY: setup setup-test tools images locks run serve test test-fast lint compile bench bench-serving cluster-up cluster-down clean

## the environment the main job needs (make run, make serve, the CLI)
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $@

## what only the tests need, on top of setup
setup-test: $(VENV)/.test-installed

$(VENV)/.test-installed: $(VENV)/.installed constraints-checkov.txt tools/crd-models/package-lock.json
	# Katib's SDK models, for strict offline validation only: its pins (protobuf<5) clash with
	# kfp's, and the models need none of its dependencies
	$(BIN)/pip install --quiet --no-deps kubeflow-katib==0.19.0
	# checkov has pins of its own: it gets its own environment
	$(PYTHON) -m venv $(VENV)/checkov
	$(VENV)/checkov/bin/pip install --quiet -c constraints-checkov.txt checkov
	# the Argo CD, Prometheus Operator and External Secrets models the manifest tests walk
	# (TypeScript declarations only: nothing of them runs), pinned by their lock file
	command -v npm >/dev/null || $(MAKE) tools
	npm ci --prefix tools/crd-models --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $@

## run the whole training pipeline locally on the committed data version
run: setup
	$(BIN)/mlstack data bootstrap
	$(BIN)/mlstack pipeline run

## materialize the online store, serve the current champion on http://127.0.0.1:8080 (V1 and V2,
## /metrics) and the Feast transformer in front of it on :8081 (requests carrying only customer ids)
serve: setup
	$(BIN)/mlstack features materialize
	$(BIN)/mlstack serve --transformer-port 8081

## promtool, prometheus, alertmanager, PostgreSQL, redis-server and npm (Debian's packages; run
## as root) for the tests; podman (runc, cgroupfs), debootstrap and containers.conf unless docker
## answers
tools:
	scripts/images.sh tools
	command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null && \
	command -v npm >/dev/null && command -v redis-server >/dev/null && \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || \
		{ apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		  --no-install-recommends prometheus prometheus-alertmanager postgresql redis-server \
		  $$(command -v npm >/dev/null || echo nodejs npm); }

## the training, predictor, MLflow and Redis images, named as mlstack/settings.py names them (podman, or
## docker when its daemon answers; a Debian stand-in base when no registry is reachable)
images:
	scripts/images.sh tools
	scripts/images.sh build

## the images' hashed requirement locks (locks/*.txt) from pyproject.toml, locks/*.in and
## constraints.txt: run after changing either (uv, pinned, in .mlstack/locktools; docs/images.md)
locks:
	scripts/locks.sh

# pytest in parallel workers (pytest-xdist), each given whole files so a module's fixtures are
# built once: most tests wait on servers, containers and subprocesses, so 3 workers pay on 2 cores.
# Unbuffered, so a log shows how far a run got.
PYTEST_WORKERS ?= 3
PYTEST := PYTHONUNBUFFERED=1 $(BIN)/pytest -q -n $(PYTEST_WORKERS) --dist loadfile

## lint, then every test (the slow end-to-end ones and the containers included)
test: setup-test tools lint images
	$(PYTEST) --durations=30

## every test but the slow end-to-end ones
test-fast: setup-test tools
	$(PYTEST) -m "not slow"

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/hadolint components/Dockerfile serving/Dockerfile serving/transformer.Dockerfile \
		manifests/platform/mlflow-image/Dockerfile \
		manifests/platform/redis-image/Dockerfile scripts/base/Dockerfile
	$(BIN)/shellcheck scripts/*.sh

compile: setup
	$(BIN)/mlstack pipeline compile

bench: setup
	$(BIN)/python benchmarks/pipeline_wall_time.py

## this predictor vs MLServer's sklearn runtime (own venv in .bench/), loaded by wrk on loopback
bench-serving: setup .bench/mlserver/.installed
	command -v wrk >/dev/null || (apt-get update -q && apt-get install -y -q wrk)
	$(BIN)/python benchmarks/serving_throughput.py

.bench/mlserver/.installed:
	$(PYTHON) -m venv .bench/mlserver
	.bench/mlserver/bin/pip install --quiet "mlserver==1.7.1" "mlserver-sklearn==1.7.1" \
		"uvloop<0.22" "scikit-learn==1.9.1" "pandas==2.3.3" "numpy==2.4.6"
	touch $@

## a kind cluster with the whole platform, synced by Argo CD (needs docker, kubectl; the pinned
## kind is installed into $(BIN)); REPO_URL and REVISION point Argo CD at a fork or branch,
## GIT_TOKEN (and GIT_USERNAME) let it read a private one
cluster-up: setup
	scripts/cluster-up.sh

cluster-down:
	$${KIND:-$(BIN)/kind} delete cluster --name $${CLUSTER:-mlstack}

clean:
	rm -rf .mlstack
