"""MLflow connection: tracking URI, experiment with a local artifact root, reachability check."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from mlstack.errors import StackError

# Tag keys carrying lineage; the registry, manifests and the predictor read the same keys.
TAG_DATA_MD5 = "data_md5"
TAG_DATA_PATH = "data_path"
TAG_GIT_SHA = "git_sha"
TAG_KFP_RUN_ID = "kfp_run_id"
TAG_KFP_RUN_NAME = "kfp_run_name"
# the feature store's part (mlstack.features.training): the md5 of the Parquet source the training
# set was read from, and each feature view's version ("customer_features@<hash of its definition>")
TAG_FEATURE_SOURCE_MD5 = "feature_source_md5"
TAG_FEATURE_VIEWS = "feature_views"
TAG_GATES_PASSED = "gates_passed"
# per gate: "gate.<name>" = pass|fail and "gate_threshold.<name>" = the threshold the run used
TAG_GATE_PREFIX = "gate."
TAG_THRESHOLD_PREFIX = "gate_threshold."
# sha256 over the model directory's files (mlstack.train.artifacts), recorded by evaluate
TAG_MODEL_DIGEST = "model_digest"
# on a model version: "pending" from its creation until its alias is set and read back, then
# "complete" (mlstack.train.registry); a pending version is what a failed registration left
TAG_REGISTRATION = "registration"
LINEAGE_TAGS = (
    TAG_DATA_MD5,
    TAG_DATA_PATH,
    TAG_GIT_SHA,
    TAG_KFP_RUN_ID,
    TAG_KFP_RUN_NAME,
    TAG_FEATURE_SOURCE_MD5,
    TAG_FEATURE_VIEWS,
)


# MLflow's HTTP client retries a failed call 7 times with a doubling backoff and waits 120 s for
# each answer: a server that died mid-run kept a step busy for minutes. Bounded here (each
# overridable by its environment variable): 3 tries, about 2 s apart, 20 s for each answer. A
# call to a server that is gone (connection refused) fails within ~5 s, one to a server that
# accepts but never answers within ~65 s; a failing step makes at most two such calls (the
# failed one and ending its run FAILED) before its one error line.
HTTP_LIMITS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "20",
}


def bound_http_retries() -> None:
    """Set ``HTTP_LIMITS`` in this process's environment, where not set already (MLflow reads
    them at each call)."""
    for name, value in HTTP_LIMITS.items():
        os.environ.setdefault(name, value)


def check_reachable(tracking_uri: str, timeout: float = 3.0) -> None:
    """Fail fast, in one line, when an MLflow server is not answering (MLflow itself retries
    for minutes): ``StackError``. File and database URIs need no server."""
    if not tracking_uri.startswith(("http://", "https://")):
        return
    url = tracking_uri.rstrip("/") + "/health"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 (http(s) only)
            if resp.status != 200:
                raise StackError(f"MLflow at {tracking_uri} answered {resp.status} on /health")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise StackError(
            f"MLflow tracking server {tracking_uri} is unreachable: {reason}"
        ) from None


def sqlite_store(directory: Path) -> str:
    """The tracking URI of a sqlite store in ``directory`` (made if missing); its artifacts go
    beside it (``local_artifact_root``)."""
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{directory / 'mlflow.db'}"


def local_artifact_root(tracking_uri: str) -> Path | None:
    """Artifacts of a sqlite store live beside its database file (``mlartifacts/``)."""
    prefix = "sqlite:///"
    if tracking_uri.startswith(prefix):
        return Path(tracking_uri[len(prefix) :]).parent / "mlartifacts"
    return None


def connect(tracking_uri: str, experiment_name: str) -> str:
    """Point MLflow at ``tracking_uri`` and make sure the experiment exists; returns its id.
    Raises ``StackError`` when the server does not answer (``check_reachable``). MLflow's HTTP
    retries and timeouts are bounded first (``bound_http_retries``).

    A sqlite store gets its artifacts beside the database (not ``./mlruns`` of whatever the
    working directory is); a server decides its own artifact location.
    """
    import mlflow

    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    bound_http_retries()
    check_reachable(tracking_uri)
    if tracking_uri.startswith("sqlite:///"):  # a lost store's directory too
        Path(tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    experiment = mlflow.get_experiment_by_name(experiment_name)
    if experiment is not None:
        return experiment.experiment_id
    location = None
    artifact_root = local_artifact_root(tracking_uri)
    if artifact_root is not None:
        artifact_root.mkdir(parents=True, exist_ok=True)
        location = artifact_root.resolve().as_uri()
    try:
        return mlflow.create_experiment(experiment_name, artifact_location=location)
    except mlflow.exceptions.MlflowException:
        # created concurrently by another step
        found = mlflow.get_experiment_by_name(experiment_name)
        if found is None:
            raise
        return found.experiment_id
