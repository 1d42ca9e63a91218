# The Feast transformer image KServe runs (InferenceService transformer container): online
# features for requests that carry only customer ids, in front of the predictor (docs/serving.md).
# Build: `make images` (scripts/images.sh), tagged as mlstack/settings.py's transformer_image names it.
# checkov:skip=CKV_DOCKER_2: Kubernetes ignores HEALTHCHECK; the InferenceService defines readiness and liveness probes on /v2/health
# checkov:skip=CKV_DOCKER_7: the base is ARG BASE_IMAGE, whose default is the pinned python:3.11.7-slim-bookworm (tests/unit/test_dockerfiles.py checks the pin)
# The pinned upstream base; scripts/images.sh passes a Debian stand-in when no registry is reachable.
ARG BASE_IMAGE=python:3.11.7-slim-bookworm

FROM ${BASE_IMAGE}
RUN useradd --create-home --uid 10001 transformer
WORKDIR /opt/mlstack

# runtime dependencies only, first, from the hashed lock (locks/transformer.txt: the closure of
# the package's core, the serving and the features extras, each file's sha256, minus the
# requirements of kserve it never imports, locks/predictor-overrides.txt; scripts/locks.sh
# refreshes it): pip refuses any file whose hash differs, and a source change reinstalls none of it
COPY locks/build.txt locks/transformer.txt ./locks/
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r locks/build.txt \
 && pip install --require-hashes --no-deps --no-build-isolation -r locks/transformer.txt

COPY pyproject.toml ./
COPY mlstack ./mlstack
COPY serving ./serving
# the Feast repository (definitions, the embedded and the cluster config): the InferenceService
# chooses the cluster config with MLSTACK_FEAST_CONFIG
COPY feature_repo ./feature_repo
# the project's own package: nothing more (--no-deps), built with the locked backend; pip check
# fails the build when the lock lacks a requirement of anything installed, except the ones the
# overrides remove on purpose (scripts/pip_check.py)
RUN --mount=type=bind,source=scripts/pip_check.py,target=/tmp/pip_check.py \
    --mount=type=bind,source=locks/predictor-overrides.txt,target=/tmp/overrides.txt \
    pip install --no-cache-dir --no-deps --no-build-isolation . \
 && python /tmp/pip_check.py /tmp/overrides.txt

# Feast's usage telemetry off; MLflow refuses to unpickle anything (the transformer loads no model)
ENV FEAST_USAGE=False \
    MLFLOW_DISABLE_TELEMETRY=true \
    MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
USER 10001
EXPOSE 8080
ENTRYPOINT ["python", "-m", "serving.transformer_main"]
# per-request logging off (docs/serving.md); errors still log
CMD ["--enable_latency_logging", "false", "--configure_logging", "false"]
