"""The manifest → podman translation (tests/support/podspec.py, admission.py) on the rendered
manifests: the exact flags each of our workload containers gets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mlstack.settings import code_root
from tests.support import admission
from tests.support.kube import render
from tests.support.podspec import (
    Image,
    PodContext,
    SpecError,
    container_env,
    expand,
    materialize,
    probe_target,
    run_argv,
    verify_run_as_non_root,
)

ROOT = code_root()
STORE = {
    ("mlstack-s3", "access-key-id"): "key-id",
    ("mlstack-s3", "secret-access-key"): "secret-key",
    ("mlstack-mlflow-postgres", "uri"): "postgresql+psycopg2://mlflow@db/mlflow",
    ("mlstack-mlflow-postgres", "password"): "pw",
    ("mlstack-github", "dispatch-token"): "gh-token",
    ("mlstack-alert-relay", "webhook-token"): "webhook-token",
}
TRAINING = Image("ghcr.io/mlstack/churn-training:0.1.0", "10001")
PREDICTOR = Image(
    "ghcr.io/mlstack/churn-predictor:0.1.0",
    "10001",
    ("python", "-m", "serving"),
    ("--model_dir", "/mnt/models"),
)
MLFLOW = Image("ghcr.io/mlstack/mlflow-server:3.17.2", "10001", ("mlflow",), ("server",))


@pytest.fixture(scope="module")
def platform() -> list[dict]:
    return render(ROOT / "manifests" / "platform" / "dev")


def flag_values(argv: list[str], flag: str) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv) if a == flag]


def after_image(argv: list[str], image: Image) -> list[str]:
    return argv[argv.index(image.ref) + 1 :]


def env_of(argv: list[str]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in flag_values(argv, "--env"))


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("--uri=$(URI)", "--uri=pg://x"),
        ("$$(URI)", "$(URI)"),  # escaped
        ("$(NOPE)/x", "$(NOPE)/x"),  # unknown: kept as written
        ("a$b $", "a$b $"),  # a lone $ is kept
        ("$(URI", "$(URI"),  # unclosed
        ("$$$$.pid", "$$.pid"),
        ("$(head -n 1 /d/$$.pid)", "$(head -n 1 /d/$$.pid)"),  # not a variable: verbatim
    ],
)
def test_expand_follows_kubernetes_rules(text, want):
    assert expand(text, {"URI": "pg://x"}) == want


def test_env_values_see_only_names_above_them_and_secrets_resolve():
    container = {
        "env": [
            {"name": "B", "value": "$(A)-b"},
            {"name": "A", "value": "a"},
            {"name": "C", "value": "$(A)-c"},
            {"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "O", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k", "optional": True}}},
            {"name": "F", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        ]
    }  # fmt: skip
    ctx = PodContext(secrets={"s": {"k": "v"}}, fields={"metadata.name": "p-1"})
    assert container_env(container, ctx) == {"B": "$(A)-b", "A": "a", "C": "a-c", "S": "v", "F": "p-1"}  # fmt: skip
    with pytest.raises(SpecError, match="key 'x' of Secret 's' not found"):
        container_env({"env": [{"name": "S", "valueFrom": {"secretKeyRef": {"name": "s", "key": "x"}}}]}, ctx)  # fmt: skip


@pytest.mark.parametrize(
    ("security", "user", "error"),
    [
        ({"runAsNonRoot": True, "runAsUser": 10001}, "", None),
        ({"runAsNonRoot": True}, "10001", None),
        ({"runAsNonRoot": True}, "10001:10001", None),
        ({"runAsNonRoot": True, "runAsUser": 0}, "10001", "runAsUser breaks non-root policy"),
        ({"runAsNonRoot": True}, "", "image will run as root"),
        ({"runAsNonRoot": True}, "0", "image will run as root"),
        ({"runAsNonRoot": True}, "mlstack", r"non-numeric user \(mlstack\)"),
        ({}, "", None),
    ],
)
def test_run_as_non_root_is_the_kubelets_check(security, user, error):
    if error is None:
        verify_run_as_non_root(security, Image("i", user), "c")
    else:
        with pytest.raises(SpecError, match=error):
            verify_run_as_non_root(security, Image("i", user), "c")


def test_mlflow_server_runs_its_args_on_its_entrypoint_read_only_with_tmp(platform, tmp_path):
    deployment = admission.find(platform, "Deployment", "mlflow", "mlops")
    pod = admission.workload_pod(deployment)
    secrets = admission.secrets_in(platform, "mlops", STORE)
    volumes = materialize(pod, tmp_path, secrets)
    argv = run_argv(pod, "mlflow", MLFLOW, PodContext(secrets=secrets, volumes=volumes), name="m")
    assert argv[:7] == ["podman", "run", "--detach", "--pull", "never", "--name", "m"]
    assert flag_values(argv, "--user") == ["10001:10001"]
    assert "--read-only" in argv and "--read-only-tmpfs=false" in argv
    assert flag_values(argv, "--security-opt") == ["no-new-privileges"]  # seccomp: runtime default
    assert flag_values(argv, "--cap-drop") == ["ALL"]
    assert flag_values(argv, "--volume") == [f"{tmp_path / 'tmp'}:/tmp"]
    assert (tmp_path / "tmp").stat().st_mode & 0o777 == 0o777
    assert flag_values(argv, "--cpus") == ["1"] and flag_values(argv, "--memory") == [str(1 << 30)]
    assert "--entrypoint" not in argv  # args only: the image's ENTRYPOINT (mlflow) stays
    args = after_image(argv, MLFLOW)
    assert (
        args[0] == "server" and "--backend-store-uri=postgresql+psycopg2://mlflow@db/mlflow" in args
    )
    assert "--artifacts-destination=s3://mlflow-artifacts" in args
    env = env_of(argv)
    assert env["AWS_ACCESS_KEY_ID"] == "key-id" and env["AWS_SECRET_ACCESS_KEY"] == "secret-key"
    assert env["MLFLOW_S3_ENDPOINT_URL"] == "http://minio.mlops.svc.cluster.local:9000"  # dev
    assert probe_target(pod["containers"][0], "readinessProbe") == ("/health", 5000)


def test_minio_bucket_job_runs_as_the_pods_user_with_its_script(platform, tmp_path):
    job = admission.find(platform, "Job", "minio-buckets", "mlops")
    pod = admission.workload_pod(job)
    secrets = admission.secrets_in(platform, "mlops", STORE)
    argv = run_argv(pod, "buckets", TRAINING, PodContext(secrets=secrets), name="b")
    assert flag_values(argv, "--user") == ["10001"]  # the pod's runAsUser
    assert "--read-only" in argv and flag_values(argv, "--volume") == []
    assert json.loads(flag_values(argv, "--entrypoint")[0]) == ["python", "-c"]
    [script] = after_image(argv, TRAINING)
    assert script.startswith("import boto3")
    assert env_of(argv) == {
        "AWS_ACCESS_KEY_ID": "key-id",
        "AWS_SECRET_ACCESS_KEY": "secret-key",
        "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false",
    }


def test_relay_gets_its_command_and_its_two_secret_files(tmp_path):
    docs = render(ROOT / "manifests" / "monitoring")
    pod = admission.workload_pod(admission.find(docs, "Deployment", "retrain-relay", "monitoring"))
    platform = render(ROOT / "manifests" / "platform" / "base")
    secrets = admission.secrets_in(platform, "monitoring", STORE)
    volumes = materialize(pod, tmp_path, secrets)
    argv = run_argv(pod, "relay", TRAINING, PodContext(secrets=secrets, volumes=volumes), name="r")
    command = json.loads(flag_values(argv, "--entrypoint")[0])
    assert command[:3] == ["python", "-m", "mlstack.monitor.relay"]
    assert after_image(argv, TRAINING) == []  # command given, no args: no CMD either
    assert flag_values(argv, "--volume") == [
        f"{tmp_path / 'github-token'}:/var/run/secrets/github:ro",
        f"{tmp_path / 'webhook-token'}:/var/run/secrets/webhook:ro",
    ]
    token = Path(env_of(argv)["GITHUB_TOKEN_FILE"])
    assert (tmp_path / "github-token" / token.name).read_text() == "gh-token"
    credential = Path(env_of(argv)["RELAY_WEBHOOK_TOKEN_FILE"])
    assert (tmp_path / "webhook-token" / credential.name).read_text() == "webhook-token"
    assert flag_values(argv, "--user") == ["10001"] and "--read-only" in argv


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_predictor_pod_is_kserves_and_knatives_with_the_model_read_only(overlay, tmp_path):
    docs = render(ROOT / "manifests" / "overlays" / overlay)
    isvc = admission.find(docs, "InferenceService", "churn-classifier", f"ml-{overlay}")
    pod, labels = admission.predictor_pod(isvc)
    assert labels["serving.knative.dev/revision"] == "churn-classifier-predictor-00001"
    volumes = materialize(pod, tmp_path, given={admission.STORAGE_VOLUME: tmp_path / "model"})
    ctx = PodContext(volumes=volumes)
    argv = run_argv(pod, "kserve-container", PREDICTOR, ctx, name="p", network="container:h")
    assert flag_values(argv, "--network") == ["container:h"]
    assert flag_values(argv, "--uts") == ["container:h"]
    assert flag_values(argv, "--user") == ["10001"]
    assert "--read-only" in argv and "--read-only-tmpfs=false" in argv
    assert flag_values(argv, "--volume") == [f"{tmp_path / 'model'}:/mnt/models:ro"]
    assert "--entrypoint" not in argv  # args replace the image's CMD only
    container = isvc["spec"]["predictor"]["containers"][0]
    assert after_image(argv, PREDICTOR) == container["args"]
    env = env_of(argv)
    assert env["STORAGE_URI"] == "/mnt/models"  # the storage initializer's rewrite
    assert env["PORT"] == "8080" and env["K_SERVICE"] == "churn-classifier-predictor"
    assert env["MODEL_VERSION"] == next(e["value"] for e in container["env"] if e["name"] == "MODEL_VERSION")  # fmt: skip
    user = pod["containers"][0]
    assert user["ports"] == [{"name": "user-port", "containerPort": 8080}]
    assert probe_target(user, "readinessProbe") == ("/v2/health/ready", 8080)
    assert probe_target(user, "livenessProbe") == ("/v2/health/live", 8080)


def trial_body(env: dict[str, str]) -> dict:
    """katib/experiment.yaml as the tune step submits it (mlstack.tune.cluster.for_cluster)."""
    from mlstack.tune.cluster import for_cluster
    from mlstack.tune.spec import parse

    raw = yaml.safe_load((ROOT / "katib" / "experiment.yaml").read_text())
    return for_cluster(parse(raw), "ml-training", env)


ASSIGNMENTS = {
    "learning_rate": "0.1",
    "max_iter": "50",
    "max_depth": "3",
    "l2_regularization": "0.25",
    "class_weight": "balanced",
}


def test_katib_trial_is_wrapped_for_the_stdout_collector_and_runs_as_the_images_user(tmp_path):
    body = trial_body({"MLSTACK_DATA_REPO": "git://repo"})
    pod, labels = admission.katib_trial_pod(body, ASSIGNMENTS, "churn-tuning-abc-1")
    platform = render(ROOT / "manifests" / "platform" / "dev")
    secrets = admission.secrets_in(platform, "ml-training", STORE)
    fields = {f"metadata.labels['{k}']": v for k, v in labels.items()}
    volumes = materialize(pod, tmp_path, secrets)
    ctx = PodContext(secrets=secrets, fields=fields, volumes=volumes)
    argv = run_argv(pod, "training", TRAINING, ctx, name="t")
    assert json.loads(flag_values(argv, "--entrypoint")[0]) == ["sh", "-c"]
    [script] = after_image(argv, TRAINING)
    assert script == (
        "python -m mlstack.tune.trial --learning-rate=0.1 --max-iter=50 --max-depth=3 "
        "--l2-regularization=0.25 --class-weight=balanced 1>/var/log/katib/metrics.log 2>&1 "
        "&& echo completed > /var/log/katib/$$.pid"  # $$$$ after the kubelet's expansion
    )
    assert flag_values(argv, "--user") == []  # runAsNonRoot: the image's numeric USER passes
    assert flag_values(argv, "--volume") == [f"{tmp_path / 'metrics-volume'}:/var/log/katib"]
    env = env_of(argv)
    assert env["KATIB_TRIAL_NAME"] == "churn-tuning-abc-1"
    assert env["MLSTACK_DATA_REPO"] == "git://repo"
    # the dev ExternalSecret's template: the DVC remote, its keys and MinIO's endpoint
    assert env["MLSTACK_DVC_REMOTE"] == "s3" and env["AWS_ACCESS_KEY_ID"] == "key-id"
    assert env["AWS_ENDPOINT_URL"] == "http://minio.mlops.svc.cluster.local:9000"
    assert flag_values(argv, "--security-opt") == ["no-new-privileges", "seccomp=unconfined"]
    with pytest.raises(SpecError, match="non-numeric user"):
        run_argv(pod, "training", Image(TRAINING.ref, "mlstack"), ctx, name="t")


def test_katib_early_stopping_branch_keeps_the_shells_own_pid_reference():
    body = trial_body({})
    pod, _ = admission.katib_trial_pod(body, ASSIGNMENTS, "t-1", early_stopping_rules=True)
    [script] = [expand(a, {}) for a in pod["containers"][0]["args"]]
    assert "|| if test -f /var/log/katib/$$.pid && [ $(head -n 1 /var/log/katib/$$.pid) = early-stopped ]" in script  # fmt: skip
    assert script.endswith("&& echo completed > /var/log/katib/$$.pid")


def test_a_missing_secret_refuses_the_container_and_an_unknown_volume_kind_is_named(tmp_path):
    pod = {
        "containers": [{"name": "c", "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}],
        "volumes": [{"name": "v", "hostPath": {"path": "/"}}],
    }  # fmt: skip
    with pytest.raises(SpecError, match="Secret 's' not found"):
        run_argv(pod, "c", TRAINING, PodContext(), name="x")
    with pytest.raises(SpecError, match=r"volume 'v': \['hostPath'\] not supported"):
        materialize(pod, tmp_path)
