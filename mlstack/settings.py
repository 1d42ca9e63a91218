"""The one source of truth for names, URIs, thresholds and ports.

Every value has a default that makes the embedded (laptop) path work, and an environment variable
(``MLSTACK_<FIELD>``, upper case) that overrides it for a cluster or a test. Values compiled into the
pipeline IR (names, gate thresholds, image) are read from the defaults only, so the compile is
deterministic whatever the environment.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass, field, fields
from pathlib import Path

from mlstack.errors import StackError


def _repo_root() -> Path:
    """The git top level of the working directory, or the working directory itself."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return Path(out)
    except (OSError, subprocess.CalledProcessError):
        return Path.cwd()


def code_root() -> Path:
    """The checkout this code runs from (pipelines/, katib/ beside the package)."""
    return Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Gates:
    """Quality gates a trained model must pass before it is registered.

    The defaults are also the floors (``GATE_FLOORS``): a run may tighten a threshold, never
    loosen it (``gate_floor_violation``); evaluate refuses looser ones and promote refuses a
    version whose run recorded looser ones."""

    min_roc_auc: float = 0.75
    min_f1: float = 0.40
    # the challenger may be worse than the champion's primary metric by at most this much
    max_regression: float = 0.01
    primary_metric: str = "roc_auc"


@dataclass(frozen=True)
class CanaryThresholds:
    """What ``mlstack rollout analyze`` holds a canary to, over its window (docs/gitops.md,
    "Canary analysis"). Changed only by a commit here."""

    # below this many requests (predictions + refusals) for either version the verdict is wait
    min_requests: int = 200
    # the canary's refused-request ratio may exceed the stable version's by at most this much
    max_error_ratio_increase: float = 0.01
    # the canary's p99 predict latency may be at most this multiple of the stable version's ...
    max_p99_latency_ratio: float = 1.5
    # ... unless it is under this many seconds (bucket noise at small latencies is not a regression)
    p99_latency_floor_s: float = 0.05
    # PSI of the canary's score histogram against the stable version's (0.1 moderate, 0.25 major)
    max_score_psi: float = 0.2


@dataclass(frozen=True)
class LiveQuality:
    """How the served versions' live quality is computed from delayed labels (``mlstack labels
    add``; docs/monitoring.md, "Live quality"). Its alert's floor is ``Gates.min_roc_auc``."""

    # the labelled window of a version in an environment: its predictions received within this
    # many days of its newest labelled prediction (labels arrive weeks late: the window ends
    # where the labels do, not now)
    window_days: int = 28
    # below this many labelled predictions in the window, or with one class only, roc_auc and f1
    # are not computed ("not enough labels")
    min_labels: int = 100


@dataclass(frozen=True)
class SinkSettings:
    """How the payload sink (``mlstack capture sink``, docs/monitoring.md "Capture") batches,
    pairs and bounds what it holds."""

    # a batch of captured rows is written when it has this many rows ...
    batch_rows: int = 2000
    # ... or when its oldest row has waited this many seconds
    batch_seconds: float = 30.0
    # a request without its response (a refused request: KServe logs only 200 responses), or the
    # reverse, is dropped after this many seconds
    pair_timeout_s: float = 120.0
    # at most this many unpaired events (and this many bytes of them) are held; more: the oldest
    # is dropped
    max_pending: int = 20_000
    max_pending_bytes: int = 256 << 20
    # rows waiting for their batch beyond this (the store is failing): new events get 503
    max_buffered_rows: int = 200_000
    # the largest event body accepted (bytes)
    max_body: int = 8 << 20
    # /metrics serves the sink's namespace's live quality (the label store's live-quality.json,
    # docs/monitoring.md "Live quality"), read at most once per this many seconds
    live_quality_cache_s: float = 15.0


# The floors kept in the repository: changed only by a commit here, never by a run's parameters.
GATE_FLOORS = Gates()
# thresholds a run may only raise (at least the floor) and ones it may only lower (at most)
GATE_AT_LEAST = ("min_roc_auc", "min_f1")
GATE_AT_MOST = ("max_regression",)


def gate_thresholds(gates: Gates) -> dict[str, float]:
    """The numeric thresholds of ``gates`` by name (what evaluate records on the run)."""
    return {name: float(getattr(gates, name)) for name in GATE_AT_LEAST + GATE_AT_MOST}


def gate_floor_violation(thresholds: dict[str, float]) -> str | None:
    """The first threshold looser than its floor (or missing), described in one phrase; None when
    every threshold is at least as strict as ``GATE_FLOORS``."""
    floors = gate_thresholds(GATE_FLOORS)
    for name in GATE_AT_LEAST + GATE_AT_MOST:
        value = thresholds.get(name)
        if value is None or value != value:  # missing or NaN
            return f"no {name} threshold recorded (floor {floors[name]})"
        if value < floors[name] if name in GATE_AT_LEAST else value > floors[name]:
            return f"{name}={value} is looser than its floor {floors[name]}"
    return None


def check_gate_floors(gates: Gates) -> None:
    """Refuse gates looser than the floors kept in the repository: ``StackError`` naming the
    threshold and its floor."""
    problem = gate_floor_violation(gate_thresholds(gates))
    if problem is None and gates.primary_metric != GATE_FLOORS.primary_metric:
        problem = f"primary_metric={gates.primary_metric} differs from {GATE_FLOORS.primary_metric}"
    if problem is not None:
        raise StackError(
            f"gate threshold {problem} (mlstack.settings.GATE_FLOORS): a run may tighten the "
            "gates, never loosen them; change the floor by a commit to mlstack/settings.py"
        )


@dataclass(frozen=True)
class Settings:
    # names
    model_name: str = "churn-classifier"
    experiment_name: str = "churn-training"
    pipeline_name: str = "churn-training"
    # data
    data_path: str = "data/churn.csv"
    data_seed: int = 7
    data_rows: int = 4000
    dvc_remote: str = ""  # empty: the repository's default DVC remote
    # on a cluster, the Secret that names the DVC remote and holds its S3 credentials (its keys
    # become the ingest step's env: MLSTACK_DVC_REMOTE, AWS_*); made by manifests/platform
    dvc_secret: str = "dvc-remote-s3"
    # on a cluster, the Secret with a read token for a private repository or fork (its keys become
    # the ingest step's and the Katib trials' env: MLSTACK_GIT_TOKEN, MLSTACK_GIT_USERNAME; made by
    # manifests/platform; optional)
    git_secret: str = "git-credentials"
    # on a cluster, the Secret with the Feast stores' addresses and credentials (its keys become
    # the ingest and materialize steps' env: MLSTACK_FEAST_REGISTRY, MLSTACK_FEAST_REDIS; made by
    # manifests/platform), and the ConfigMap naming the cluster's Feast config in the training
    # image and the steps' state directory (MLSTACK_FEAST_CONFIG, MLSTACK_STATE_DIR;
    # manifests/platform/base/pipeline-runner.yaml). Local runs get neither: the embedded store
    feast_secret: str = "feast-store"
    steps_config_map: str = "pipeline-steps"
    # the MLflow server's --artifacts-destination, when it proxies artifacts (manifests/platform:
    # s3://mlflow-artifacts): promotion turns `mlflow-artifacts:` URIs into locations KServe reads
    artifacts_destination: str = ""
    # training split (train and evaluate both use it: one held-out set)
    test_size: float = 0.25
    split_seed: int = 42
    # the images this repository builds (`make images`, build-images.yml publishes this tag and the
    # commit SHA): every component's base_image, the Katib trial, the relay and the MinIO bucket Job
    # run the training image; the InferenceService the predictor; manifests/platform the MLflow
    # server and the Feast online store's Redis. Tags: the project's version, MLflow's pinned
    # version for its server, Debian bookworm's redis-server version for Redis.
    training_image: str = "ghcr.io/mlstack/churn-training:0.1.0"
    predictor_image: str = "ghcr.io/mlstack/churn-predictor:0.1.0"
    # the InferenceService's Feast transformer (serving/transformer.Dockerfile)
    transformer_image: str = "ghcr.io/mlstack/churn-transformer:0.1.0"
    mlflow_image: str = "ghcr.io/mlstack/mlflow-server:3.17.2"
    redis_image: str = "ghcr.io/mlstack/redis-server:7.0.15"
    # the identity KFP runs use on a cluster (manifests/platform/base/pipeline-runner.yaml)
    kfp_service_account: str = "mlstack-pipeline-runner"
    # local state (gitignored): MLflow sqlite store and artifacts, KFP local outputs and cache
    repo_root: Path = field(default_factory=_repo_root)
    state_dir: Path | None = None
    tracking_uri: str | None = None
    gates: Gates = field(default_factory=Gates)
    canary: CanaryThresholds = field(default_factory=CanaryThresholds)
    sink: SinkSettings = field(default_factory=SinkSettings)
    # where captured predictions are written (mlstack.monitor.capture): a local directory or an
    # s3:// URL (the cluster's MinIO); empty: <state dir>/captures
    capture_root: str = ""
    # delayed labels: the append-only label store (`mlstack labels add`), and live quality
    # a local directory or an s3:// URL (beside the captures); empty: <state dir>/labels
    labels_dir: str = ""
    live_quality: LiveQuality = field(default_factory=LiveQuality)
    # `mlstack data from-production`: a data version keeps at most this many rows, the oldest
    # dropped first (the history window)
    data_max_rows: int = 20_000
    # the Prometheus that scrapes the predictors (kube-prometheus-stack's service, port-forwarded
    # or in-cluster); `mlstack rollout analyze` queries it
    prometheus_url: str = "http://localhost:9090"
    # the feature store (feature_repo/, mlstack/features/): the Feast config file
    # (MLSTACK_FEAST_CONFIG; empty: feature_repo/feature_store.yaml, the embedded default: file
    # offline store, SQLite online store and file registry under <state dir>/feast; the cluster
    # names feature_repo/feature_store.cluster.yaml) and where the ingest and materialize steps
    # write the features' Parquet source (MLSTACK_FEAST_SOURCE: a path or an s3:// URL; empty:
    # <state dir>/feast/customer_features.parquet)
    feast_config: str = ""
    feast_source: str = ""

    @property
    def images(self) -> dict[str, str]:
        """The images by key (scripts/images.sh builds each from its Dockerfile)."""
        return {
            "training": self.training_image,
            "predictor": self.predictor_image,
            "transformer": self.transformer_image,
            "mlflow": self.mlflow_image,
            "redis": self.redis_image,
        }

    @property
    def state(self) -> Path:
        """Where local runs keep their state (``MLSTACK_STATE_DIR``, else ``.mlstack/``)."""
        return self.state_dir or (self.repo_root / ".mlstack")

    @property
    def labels(self) -> str:
        """The label store (``MLSTACK_LABELS_DIR``, else ``<state>/labels``)."""
        return self.labels_dir or str(self.state / "labels")

    @property
    def captures(self) -> str:
        """Where captured predictions live (``MLSTACK_CAPTURE_ROOT``, else ``state/captures``)."""
        return self.capture_root or str(self.state / "captures")

    @property
    def feast_dir(self) -> Path:
        """The embedded feature store's files (registry, SQLite online store, the source)."""
        return self.state / "feast"

    @property
    def feast_config_file(self) -> Path:
        """The Feast config file ``open_store`` reads (``MLSTACK_FEAST_CONFIG``)."""
        if self.feast_config:
            return Path(self.feast_config)
        return code_root() / "feature_repo" / "feature_store.yaml"

    @property
    def feature_source(self) -> str:
        """The features' Parquet source (``MLSTACK_FEAST_SOURCE``)."""
        return self.feast_source or str(self.feast_dir / "customer_features.parquet")

    @property
    def mlflow_tracking_uri(self) -> str:
        """``MLFLOW_TRACKING_URI``, else a sqlite store in ``state``."""
        if self.tracking_uri:
            return self.tracking_uri
        return f"sqlite:///{self.state / 'mlflow.db'}"  # made when first used (tracking.connect)

    @property
    def pipeline_root(self) -> Path:
        """kfp.local's pipeline root when the steps run in this environment."""
        return self.state / "kfp"

    @property
    def containers_pipeline_root(self) -> Path:
        """The pipeline root when the steps run in containers (written by the image's user)."""
        return self.state / "kfp-containers"

    @property
    def ir_path(self) -> Path:
        """The compiled IR that ships with this code (not with the data repo)."""
        return code_root() / "pipelines" / "training.yaml"

    @property
    def tuning_ir_path(self) -> Path:
        """The compiled tuning pipeline that ships with this code."""
        return code_root() / "pipelines" / "tuning.yaml"

    @property
    def katib_experiment(self) -> Path:
        """The Katib Experiment manifest the tune step and ``mlstack tune`` run."""
        return code_root() / "katib" / "experiment.yaml"


_ENV_FIELDS = {
    "model_name": str,
    "experiment_name": str,
    "data_path": str,
    "dvc_remote": str,
    "kfp_service_account": str,
    "artifacts_destination": str,
    "test_size": float,
    "split_seed": int,
    "repo_root": Path,
    "state_dir": Path,
    "prometheus_url": str,
    "labels_dir": str,
    "data_max_rows": int,
    "capture_root": str,
    "feast_config": str,
    "feast_source": str,
}


def load_settings(**overrides: object) -> Settings:
    """Defaults, then ``MLSTACK_*`` and ``MLFLOW_TRACKING_URI`` from the environment, then overrides.

    Raises ``StackError`` naming the variable whose value does not parse, ``ValueError`` for an
    unknown override (a programming error)."""
    values: dict[str, object] = {}
    for name, kind in _ENV_FIELDS.items():
        raw = os.environ.get(f"MLSTACK_{name.upper()}")
        if raw:
            try:
                values[name] = kind(raw)
            except ValueError:
                raise StackError(
                    f"MLSTACK_{name.upper()}={raw!r}: not a valid {kind.__name__}"
                ) from None
    if os.environ.get("MLFLOW_TRACKING_URI"):
        values["tracking_uri"] = os.environ["MLFLOW_TRACKING_URI"]
    values.update(overrides)
    known = {f.name for f in fields(Settings)}
    unknown = set(values) - known
    if unknown:
        raise ValueError(f"unknown settings: {sorted(unknown)}")
    return Settings(**values)  # type: ignore[arg-type]


_UNSET_MEANS = {
    "dvc_remote": "the repository's default remote",
    "artifacts_destination": "none (artifacts are not proxied)",
    "repo_root": "the git top level of the working directory",
    "state_dir": "<repo root>/.mlstack",
    "labels_dir": "<state dir>/labels",
    "capture_root": "<state dir>/captures",
    "feast_config": "feature_repo/feature_store.yaml",
    "feast_source": "<state dir>/feast/customer_features.parquet",
}


def environment_variables() -> list[tuple[str, str]]:
    """(variable, default) of every setting the environment can override, for help texts."""
    defaults = {f.name: f.default for f in fields(Settings)}
    out = [
        (f"MLSTACK_{name.upper()}", _UNSET_MEANS.get(name) or str(defaults[name]))
        for name in _ENV_FIELDS
    ]
    out.append(("MLFLOW_TRACKING_URI", "sqlite:///<state dir>/mlflow.db"))
    return out


# Compile-time defaults: what the pipeline IR is built from (never the environment).
DEFAULTS = Settings(repo_root=Path("."))
