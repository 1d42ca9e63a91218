"""Every workload container of ours, started from its built image exactly as the rendered
manifests declare it (command, args, env, user, security context, volumes, ports: taken from
`kubectl kustomize`'s output through tests/support/podspec.py and admission.py, never retyped),
then probed on its declared readiness and liveness endpoints, called for real, and the servers
stopped as the kubelet stops them (SIGTERM, SIGKILL after the grace period).

Each runs in a pod of its own (tests/support/pods.py): its ports published on 127.0.0.1 only, the
cluster's Service names resolving to the pod's loopback, where local stand-ins (moto for
MinIO/S3, PostgreSQL, a GitHub API stand-in) listen at the ports the manifests name. Third-party
images (MinIO, Postgres) cannot be pulled here and are not run."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path

import boto3
import numpy as np
import pytest

from mlstack.settings import DEFAULTS, code_root
from mlstack.train.onnx_export import TOLERANCE
from tests.support import admission
from tests.support.images import ensure_images
from tests.support.kube import render
from tests.support.pods import Pod, alive
from tests.support.podspec import (
    Image,
    PodContext,
    effective_security,
    field_values,
    materialize,
    probe_target,
)
from tests.support.podspec import run_argv as podman_argv
from tests.support.servers import call, stop
from tests.support.servers import start as start_process

pytestmark = pytest.mark.slow

ROOT = code_root()
# the secret store's remote keys (what ExternalSecrets read): test values only
STORE = {
    ("mlstack-s3", "access-key-id"): "test-access-key",
    ("mlstack-s3", "secret-access-key"): "test-secret-key",
    ("mlstack-github", "dispatch-token"): "test-dispatch-token",
    ("mlstack-alert-relay", "webhook-token"): "test-webhook-token",
    ("mlstack-feast", "redis-password"): "test-redis-password",
}


@pytest.fixture(scope="module")
def built():
    """The image a manifest names, as the kubelet reads it; it must be one this repository
    builds (`make images`: tests/support/images.py builds them or reuses its cache)."""
    images = ensure_images()
    if images.engine != "podman":  # pods, --read-only-tmpfs and --uts container: are podman's
        pytest.fail(
            f"the pods here need podman, the images were built with {images.engine}: "
            "CONTAINER_ENGINE=podman make images"
        )

    def inspect(ref: str) -> Image:
        assert ref in DEFAULTS.images.values(), f"{ref} is not built here"
        return Image.inspect(ref, images.engine)

    return inspect


def service_hosts(docs: list[dict]) -> list[str]:
    """The in-cluster DNS names of the rendered Services."""
    return [
        f"{d['metadata']['name']}.{d['metadata'].get('namespace', 'default')}.svc.cluster.local"
        for d in docs
        if d["kind"] == "Service"
    ]


def service_port(docs: list[dict], name: str, namespace: str) -> int:
    [service] = [
        d
        for d in docs
        if d["kind"] == "Service"
        and d["metadata"]["name"] == name
        and d["metadata"].get("namespace") == namespace
    ]
    return int(service["spec"]["ports"][0]["port"])


def start(pod: Pod, spec: dict, container: str, img: Image, ctx: PodContext, **kw) -> str:
    argv = podman_argv(
        spec, container, img, ctx, name=f"{pod.name}-{container}", network=pod.network, **kw
    )
    return pod.run(argv)


def probe_both(pod: Pod, name: str, container: dict, timeout: float = 240) -> None:
    """Ready on the declared readiness endpoint, then the liveness endpoint answers 200."""
    ready, live = (
        probe_target(container, "readinessProbe"),
        probe_target(container, "livenessProbe"),
    )
    assert ready and live, "both probes are declared"
    pod.wait_ready(name, ready[1], ready[0], timeout=timeout)
    assert call(pod.url(live[1], live[0]))[0] == 200


def assert_confined_as_declared(pod: Pod, name: str, spec: dict, container: dict, img: Image):
    """The running process has the user, read-only root, capabilities, no_new_privs and seccomp
    mode the manifest's security context declares (what the kubelet would enforce)."""
    security = effective_security(spec, container)
    got = pod.confinement(name)
    uid = security.get("runAsUser", img.user.split(":", 1)[0])
    assert got["uid"] == int(uid), got
    if "runAsGroup" in security:
        assert got["gid"] == int(security["runAsGroup"]), got
    assert got["root_read_only"] is bool(security.get("readOnlyRootFilesystem")), got
    if "ALL" in (security.get("capabilities") or {}).get("drop", []):
        assert got["cap_bnd"] == 0, got  # not even a setuid binary could regain one
    if security.get("allowPrivilegeEscalation") is False:
        assert got["no_new_privs"] == 1, got
    if (security.get("seccompProfile") or {}).get("type") == "RuntimeDefault":
        assert got["seccomp"] == 2, got  # filter mode


def assert_stops_on_sigterm(pod: Pod, name: str) -> list[tuple[int, str]]:
    """The kubelet's stop (SIGTERM, SIGKILL when the grace period ends: a generous 60 s here)
    ends the container by its own handling of SIGTERM: exit 0 or 143, never 137 (SIGKILL), and
    no process of it is left. A container's PID 1 gets no default action for SIGTERM: a server
    without a handler of its own is deaf to it and only dies of the SIGKILL. Returns the
    processes the container had (host PIDs)."""
    processes = pod.processes(name)
    code = pod.stop(name, grace=60)
    assert code in (0, 143), f"{name} exited {code} (137: SIGKILLed):\n{pod.logs(name)}"
    assert alive(processes) == [], f"{name}: processes left after its stop"
    return processes


@pytest.fixture
def pods():
    started: list[Pod] = []
    yield started
    for pod in started:
        try:
            for name in pod.containers:  # shown when the test fails
                state = pod.state(name)
                print(f"--- {name}: {state.get('Status')} exit {state.get('ExitCode')}")
                print(pod.logs(name))
        except RuntimeError as exc:  # a container that never started
            print(exc)
        finally:
            pod.close()


# what this module runs: (rendered path, kind, object name, container name)
COVERED = {
    ("manifests/overlays/staging", "InferenceService", "churn-classifier", "kserve-container"),
    ("manifests/overlays/production", "InferenceService", "churn-classifier", "kserve-container"),
    ("manifests/monitoring", "Deployment", "retrain-relay", "relay"),
    ("manifests/overlays/staging", "Deployment", "payload-sink", "sink"),
    ("manifests/overlays/production", "Deployment", "payload-sink", "sink"),
    ("manifests/platform/dev", "Deployment", "mlflow", "mlflow"),
    ("manifests/platform/dev", "Job", "minio-buckets", "buckets"),
    ("manifests/platform/dev", "StatefulSet", "feast-redis", "redis"),
    ("katib/experiment.yaml", "Experiment", "churn-tuning", "training"),
}
RENDERED = ["manifests/overlays/staging", "manifests/overlays/production", "manifests/monitoring",
            "manifests/platform/base", "manifests/platform/dev"]  # fmt: skip


def containers_in(node, found: list[dict]) -> list[dict]:
    """Every container spec anywhere in a document (pod templates, predictors, trial specs)."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += [c for c in value if isinstance(c, dict) and "image" in c]
            containers_in(value, found)
    elif isinstance(node, list):
        for item in node:
            containers_in(item, found)
    return found


def test_every_workload_container_of_ours_is_run_here():
    """A new workload on one of our images fails this until the module runs it too."""
    import yaml

    ours = {image.rsplit(":", 1)[0] for image in DEFAULTS.images.values()}
    docs = [(path, d) for path in RENDERED for d in render(ROOT / path)]
    docs.append(
        ("katib/experiment.yaml", yaml.safe_load((ROOT / "katib/experiment.yaml").read_text()))
    )
    found = {
        (path, d["kind"], d["metadata"]["name"], c["name"])
        for path, d in docs
        for c in containers_in(d, [])
        if c["image"].rsplit(":", 1)[0].split("@")[0] in ours
    }
    # the platform's base is dev's without MinIO: what dev runs covers it
    found = {
        f if f[0] != "manifests/platform/base" else ("manifests/platform/dev", *f[1:])
        for f in found
    }
    assert found == COVERED


# ---------------------------------------------------------------- the predictor (InferenceService)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A registered MLflow model's directory, as KServe's storage initializer leaves it in the
    emptyDir it shares with the predictor (world-readable, as the kubelet makes emptyDirs)."""
    import mlflow

    from mlstack.train.training import TrainingLineage
    from tests.support.servers import registered_model

    tmp = tmp_path_factory.mktemp("model")
    uri = registered_model(tmp, "churn-classifier", TrainingLineage("md5", "data/churn.csv", "a" * 40, "kfp"))  # fmt: skip
    mlflow.set_tracking_uri(uri)
    out = tmp / "provision-location"
    out.mkdir(mode=0o777)
    out.chmod(0o777)
    mlflow.artifacts.download_artifacts("models:/churn-classifier@champion", dst_path=str(out))
    for path in out.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return out


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_predictor_as_kserve_starts_it_answers_v1_and_v2(overlay, model_dir, built, pods, tmp_path):
    import mlflow

    from mlstack.data.generate import generate
    from serving.codec import NAMES, Batch

    docs = render(ROOT / "manifests" / "overlays" / overlay)
    isvc = admission.find(docs, "InferenceService", "churn-classifier", f"ml-{overlay}")
    spec, labels = admission.predictor_pod(isvc)
    [container] = [c for c in spec["containers"] if c["name"] == "kserve-container"]
    img = built(container["image"])
    volumes = materialize(spec, tmp_path, given={admission.STORAGE_VOLUME: model_dir})
    fields = field_values("predictor-0", f"ml-{overlay}", labels, spec)
    pod = Pod(img.ref, ports=[p["containerPort"] for p in container["ports"]])
    pods.append(pod)
    name = start(pod, spec, "kserve-container", img, PodContext(fields=fields, volumes=volumes))
    probe_both(pod, name, container)
    assert_confined_as_declared(pod, name, spec, container, img)

    model = isvc["spec"]["predictor"]["containers"][0]["args"]
    model_name = next(a.split("=", 1)[1] for a in model if a.startswith("--model_name="))
    version = next(e["value"] for e in container["env"] if e["name"] == "MODEL_VERSION")
    frame = generate(12, 31)[NAMES]
    rows = json.loads(frame.to_json(orient="records"))
    want = mlflow.sklearn.load_model(str(model_dir)).predict_proba(
        Batch.from_frame(frame).to_frame()
    )
    status, headers, body = call(
        pod.url(8080, f"/v1/models/{model_name}:predict"),
        {"instances": rows, "parameters": {"probabilities": True}},
    )
    assert status == 200, body
    assert headers["x-model-version"] == version
    np.testing.assert_allclose(json.loads(body)["probabilities"], want, atol=TOLERANCE)
    categorical = {"contract", "payment_method", "internet_service"}
    inputs = [
        {"name": n, "shape": [len(rows)], "datatype": "BYTES" if n in categorical else "FP64",
         "data": [r[n] for r in rows]}
        for n in NAMES
    ]  # fmt: skip
    status, _, body = call(pod.url(8080, f"/v2/models/{model_name}/infer"), {"inputs": inputs})
    assert status == 200, body
    out = {o["name"]: o for o in json.loads(body)["outputs"]}
    np.testing.assert_allclose(
        np.reshape(out["probabilities"]["data"], (-1, 2)), want, atol=TOLERANCE
    )
    assert pod.state(name)["Running"]
    assert_stops_on_sigterm(pod, name)  # KServe's ModelServer handles SIGTERM itself


# ------------------------------------------------------------ the transformer (InferenceService)

FEAST_PASSWORDS = {"redis": "test-redis-password", "registry": "test-feast-password"}
FEAST_STORE = {
    ("mlstack-feast", "registry-uri"): "postgresql+psycopg://feast:{registry}@"
    "mlflow-postgres.mlops.svc.cluster.local:5432/feast".format(**FEAST_PASSWORDS),
    ("mlstack-feast", "redis-connection"): "feast-redis.mlops.svc.cluster.local:6379,"
    "password={redis}".format(**FEAST_PASSWORDS),
}


@contextlib.contextmanager
def gateway(pod: Pod, port: int, target: tuple[str, int]):
    """A stand-in for Knative's cluster-local gateway: a TCP relay listening on ``port`` inside
    ``pod``'s network (where ``<isvc>-predictor.<namespace>`` resolves), forwarding each
    connection to ``target`` on this machine (the predictor pod's published port)."""
    import socket
    import threading

    with pod.inside():
        server = socket.create_server(("127.0.0.1", port))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for end in (src, dst):
                with contextlib.suppress(OSError):
                    end.shutdown(socket.SHUT_RDWR)

    def accept() -> None:  # started outside the pod: its upstream sockets are this machine's
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(target, timeout=30)
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield
    finally:
        server.close()


@contextlib.contextmanager
def feast_stores_in(pod: Pod, root: Path):
    """The cluster's Feast stores at the addresses the feast-store Secret names, inside the
    pod's network: Debian's redis-server on 6379 (password required) and the PostgreSQL stand-in
    on 5432 with the feast database the dev Postgres's init script makes."""
    from tests.support.stand_ins import postgres, redis

    root.mkdir(parents=True)
    (root / "pg-password").write_text(FEAST_PASSWORDS["registry"])
    env = {**os.environ, "POSTGRES_USER": "mlflow", "POSTGRES_DB": "postgres",
           "PGHOST": "127.0.0.1", "PGPORT": "5432",
           "FEAST_PASSWORD_FILE": str(root / "pg-password")}  # fmt: skip
    init = ROOT / "manifests" / "platform" / "dev" / "feast-registry-init.sh"
    with contextlib.ExitStack() as stores:
        with pod.inside():  # the servers' sockets and processes are the pod's
            stores.enter_context(redis(6379, root / "redis", FEAST_PASSWORDS["redis"]))
            stores.enter_context(postgres(5432))
            done = subprocess.run(["sh", str(init)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        yield


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_transformer_as_kserve_starts_it_answers_customer_ids(
    overlay, model_dir, built, pods, tmp_path, monkeypatch
):
    """The transformer pod as KServe and Knative make it from the rendered InferenceService (the
    args KServe appends, the feast-store Secret's env, the cluster Feast config in the image), in
    front of the predictor pod (reached through a stand-in of Knative's gateway at the
    --predictor_host KServe gives it), its stores real (Redis, the SQL registry on PostgreSQL)
    and materialized with the project's definitions: ready, confined as declared, an id request
    answered as the predictor answers the customer's latest features, unknown ids a 404, SIGTERM
    honoured."""
    from mlstack.data.generate import generate
    from mlstack.features import repo
    from mlstack.features.sources import source_frame, write_source
    from mlstack.schema import ENTITY, EVENT_TIME
    from mlstack.settings import load_settings
    from serving.codec import NAMES

    namespace = f"ml-{overlay}"
    docs = render(ROOT / "manifests" / "overlays" / overlay)
    isvc = admission.find(docs, "InferenceService", "churn-classifier", namespace)
    platform = render(ROOT / "manifests" / "platform" / "dev")
    secrets = admission.secrets_in(platform, namespace, {**STORE, **FEAST_STORE})
    assert set(secrets["feast-store"]) == {"MLSTACK_FEAST_REGISTRY", "MLSTACK_FEAST_REDIS"}

    # the predictor, in its own pod
    pspec, plabels = admission.predictor_pod(isvc)
    [pcontainer] = [c for c in pspec["containers"] if c["name"] == "kserve-container"]
    pimg = built(pcontainer["image"])
    pvolumes = materialize(pspec, tmp_path / "p", given={admission.STORAGE_VOLUME: model_dir})
    pfields = field_values("predictor-0", namespace, plabels, pspec)
    ppod = Pod(pimg.ref, ports=[8080])
    pods.append(ppod)
    pname = start(ppod, pspec, "kserve-container", pimg, PodContext(fields=pfields, volumes=pvolumes))  # fmt: skip
    probe_both(ppod, pname, pcontainer)

    # the transformer, as KServe starts it
    spec, labels = admission.transformer_pod(isvc)
    [container] = spec["containers"]
    img = built(container["image"])
    assert img.ref == DEFAULTS.transformer_image
    args = container["args"]
    host = args[args.index("--predictor_host") + 1]
    assert host == f"churn-classifier-predictor.{namespace}"
    mlops = ["feast-redis.mlops.svc.cluster.local", "mlflow-postgres.mlops.svc.cluster.local"]
    pod = Pod(img.ref, ports=[8080], hosts=[host, *mlops])
    pods.append(pod)
    with feast_stores_in(pod, tmp_path / "stores"), gateway(pod, 80, ("127.0.0.1", ppod.published[8080])):  # fmt: skip
        # materialized from this machine, inside the pod's network, with the project's
        # definitions and the cluster config the image holds
        data = generate(120, 29)
        monkeypatch.setenv("MLSTACK_FEAST_CONFIG", str(ROOT / "feature_repo" / "feature_store.cluster.yaml"))  # fmt: skip
        for key, value in secrets["feast-store"].items():
            # the Service names resolve to the pod's loopback in its containers only (their
            # /etc/hosts): this process, in the pod's network while inside(), uses the address
            for host in mlops:
                value = value.replace(host, "127.0.0.1")
            monkeypatch.setenv(key, value)
        with pod.inside():
            store = repo.open_store(load_settings(state_dir=tmp_path / "state"))
            frame = source_frame(data)
            source = str(tmp_path / "customer_features.parquet")
            write_source(frame, source)
            repo.apply(store, source)
            store.materialize_incremental(end_date=datetime.now().astimezone())
        volumes = materialize(spec, tmp_path / "t", secrets)
        fields = field_values("transformer-0", namespace, labels, spec)
        ctx = PodContext(secrets=secrets, fields=fields, volumes=volumes)
        name = start(pod, spec, "kserve-container", img, ctx)
        probe_both(pod, name, container)
        assert_confined_as_declared(pod, name, spec, container, img)

        latest = frame.sort_values(EVENT_TIME).groupby(ENTITY).tail(1).set_index(ENTITY)
        ids = list(latest.index[:5])
        raw = json.loads(latest.loc[ids, NAMES].to_json(orient="records"))
        body = {"parameters": {"probabilities": True}}
        status, headers, got = call(
            pod.url(8080, "/v1/models/churn-classifier:predict"),
            {**body, "instances": [{ENTITY: i} for i in ids]},
        )
        assert status == 200, got
        want = call(
            ppod.url(8080, "/v1/models/churn-classifier:predict"), {**body, "instances": raw}
        )
        assert want[0] == 200, want
        assert json.loads(got) == json.loads(want[2])
        assert headers["x-model-version"] == want[1]["x-model-version"]
        status, _, got = call(
            pod.url(8080, "/v1/models/churn-classifier:predict"),
            {"instances": [{ENTITY: "C-none"}]},
        )
        assert status == 404 and "C-none" in json.loads(got)["error"]
        assert_stops_on_sigterm(pod, name)


# ----------------------------------------------------------------------------- the drift relay


def post_json(url: str, body: dict, authorization: str) -> tuple[int, dict]:
    """(status, JSON answer) of a POST with an Authorization header."""
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={
        "Content-Type": "application/json", "Authorization": authorization})  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def test_relay_as_deployed_dispatches_a_firing_alert_to_github(built, pods, tmp_path):
    from tests.support.stand_ins import FakeGitHub

    docs = render(ROOT / "manifests" / "monitoring")
    deployment = admission.find(docs, "Deployment", "retrain-relay", "monitoring")
    spec = admission.workload_pod(deployment)
    [container] = spec["containers"]
    img = built(container["image"])
    secrets = admission.secrets_in(render(ROOT / "manifests" / "platform" / "base"), "monitoring", STORE)  # fmt: skip
    volumes = materialize(spec, tmp_path, secrets)
    pod = Pod(img.ref, ports=[p["containerPort"] for p in container["ports"]])
    pods.append(pod)
    with pod.inside():
        github = FakeGitHub()  # GitHub's API, on the pod's loopback
    try:
        # the one value no manifest gives: where GitHub's API is (the relay's GITHUB_API_URL)
        name = start(pod, spec, "relay", img, PodContext(secrets=secrets, volumes=volumes),
                     extra_env={"GITHUB_API_URL": github.url})  # fmt: skip
        probe_both(pod, name, container)
        assert_confined_as_declared(pod, name, spec, container, img)
        alert = {"status": "firing", "fingerprint": "f1", "startsAt": "2026-01-01T00:00:00Z",
                 "labels": {"alertname": "ChurnFeatureDrift", "retrain": "true",
                            "model_name": "churn-classifier", "feature": "tenure_months"},
                 "annotations": {"summary": "drift"}}  # fmt: skip
        hook = pod.url(8080, "/alertmanager")
        assert call(hook, {"alerts": [alert]})[0] == 401  # without Alertmanager's credential
        status, body = post_json(hook, {"alerts": [alert]}, "Bearer test-webhook-token")
        assert (status, body) == (200, {"dispatched": 1}), body
        [(path, headers, sent)] = github.requests
        repo = next(e["value"] for e in container["env"] if e["name"] == "GITHUB_REPOSITORY")
        assert path == f"/repos/{repo}/dispatches"
        assert headers["Authorization"] == "Bearer test-dispatch-token"  # the mounted Secret
        assert sent["event_type"] == "drift-detected"
        assert_stops_on_sigterm(pod, name)  # its own handler (mlstack/monitor/relay.py)
    finally:
        github.close()


# ------------------------------------------------------------------------ the MinIO bucket Job


def test_minio_bucket_job_runs_to_completion_against_s3(built, pods):
    from tests.support.stand_ins import s3

    docs = render(ROOT / "manifests" / "platform" / "dev")
    job = admission.find(docs, "Job", "minio-buckets", "mlops")
    spec = admission.workload_pod(job)
    [container] = spec["containers"]
    img = built(container["image"])
    secrets = admission.secrets_in(docs, "mlops", STORE)
    pod = Pod(img.ref, hosts=service_hosts(docs))
    pods.append(pod)
    with contextlib.ExitStack() as stack:
        with pod.inside():  # MinIO's Service name and port, on the pod's loopback
            endpoint = stack.enter_context(s3(service_port(docs, "minio", "mlops")))
        name = start(pod, spec, "buckets", img, PodContext(secrets=secrets))
        code = pod.wait_exit(name)
        assert code == 0, pod.logs(name)
        printed = [line for line in pod.logs(name).splitlines() if line.startswith("bucket ")]
        assert printed == [
            "bucket mlflow-artifacts", "bucket mlstack-data", "bucket mlstack-captures"
        ]  # fmt: skip
        with pod.inside():
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip
            names = {b["Name"] for b in client.list_buckets()["Buckets"]}
    assert {"mlflow-artifacts", "mlstack-data"} <= names


# ----------------------------------------------------------------------------- the payload sink


@pytest.mark.parametrize("overlay", ["staging", "production"])
def test_payload_sink_as_deployed_stores_the_loggers_events_in_s3(overlay, pods, tmp_path):
    """KServe's logger's CloudEvents (binary mode, built by the CloudEvents SDK) posted to the
    sink's container as the overlay declares it; SIGTERM writes the batch to the bucket (moto at
    MinIO's Service address, the keys from the payload-sink-s3 Secret's files)."""
    from cloudevents.conversion import to_binary
    from cloudevents.http import CloudEvent

    from mlstack.data.generate import generate
    from mlstack.monitor import capture
    from tests.support.stand_ins import s3

    namespace = f"ml-{overlay}"
    docs = render(ROOT / "manifests" / "overlays" / overlay)
    platform = render(ROOT / "manifests" / "platform" / "dev")
    deployment = admission.find(docs, "Deployment", "payload-sink", namespace)
    spec = admission.workload_pod(deployment)
    [container] = spec["containers"]
    images = ensure_images("training")  # the one image it runs
    assert container["image"] == images.training
    img = Image.inspect(images.training, images.engine)
    secrets = admission.secrets_in(platform, namespace, STORE)
    volumes = materialize(spec, tmp_path, secrets)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    fields = field_values("payload-sink-0", namespace, labels, spec)
    pod = Pod(img.ref, ports=[p["containerPort"] for p in container["ports"]],
              hosts=service_hosts(platform))  # fmt: skip
    pods.append(pod)
    bucket = next(e["value"] for e in container["env"] if e["name"] == "MLSTACK_CAPTURE_ROOT")
    with contextlib.ExitStack() as stack:
        with pod.inside():  # MinIO's Service name and port, on the pod's loopback
            endpoint = stack.enter_context(s3(service_port(platform, "minio", "mlops")))
            client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                                  aws_access_key_id="k", aws_secret_access_key="s")  # fmt: skip
            client.create_bucket(Bucket=bucket.removeprefix("s3://"))
        ctx = PodContext(secrets=secrets, volumes=volumes, fields=fields)
        name = start(pod, spec, "sink", img, ctx)
        probe_both(pod, name, container)
        assert_confined_as_declared(pod, name, spec, container, img)

        rows = json.loads(generate(3, 41).drop(columns=["churned"]).to_json(orient="records"))

        def post(kind: str, data: dict, ns: str = namespace) -> tuple[int, dict]:
            attributes = {"type": f"org.kubeflow.serving.inference.{kind}", "id": "req-1",
                          "source": "http://localhost:9081/", "namespace": ns,
                          "inferenceservicename": "churn-classifier", "component": "predictor",
                          "endpoint": "default"}  # fmt: skip
            headers, body = to_binary(CloudEvent(attributes, data))
            req = urllib.request.Request(pod.url(8080, "/"), data=body, method="POST",
                                         headers={**headers, "Content-Type": "application/json"})  # fmt: skip
            try:
                with urllib.request.urlopen(req, timeout=30) as resp:
                    return resp.status, json.loads(resp.read())
            except urllib.error.HTTPError as err:
                return err.code, json.loads(err.read())

        assert post("request", {"instances": rows}) == (200, {"id": "req-1", "type": "request"})
        response = {"predictions": [0, 1, 0], "probabilities": [[0.9, 0.1], [0.2, 0.8], [0.7, 0.3]]}
        assert post("response", response)[0] == 200
        other = "ml-production" if overlay == "staging" else "ml-staging"
        status, body = post("request", {"instances": rows}, ns=other)
        assert status == 403 and "is not this sink's" in body["error"], body
        assert_stops_on_sigterm(pod, name)  # SIGTERM: the batch is written on the way out

        with pod.inside():  # boto3 here: s3fs would talk from its own thread, outside the pod
            # (moto's state is the test process's: the other overlay's run may have left its own)
            listed = client.list_objects_v2(Bucket=bucket.removeprefix("s3://"), Prefix=namespace)
            local = tmp_path / "bucket"
            for obj in listed.get("Contents", []):
                (local / obj["Key"]).parent.mkdir(parents=True, exist_ok=True)
                client.download_file(listed["Name"], obj["Key"], str(local / obj["Key"]))
    [key] = [obj["Key"] for obj in listed["Contents"]]
    assert key.startswith(f"{namespace}/churn-classifier/date=") and key.endswith(".parquet")
    got = capture.read_captures(local, environment=namespace)
    assert got["id"].tolist() == ["req-1"] * 3 and got["row"].tolist() == [0, 1, 2]
    assert got["score"].tolist() == [0.1, 0.8, 0.3] and got["prediction"].tolist() == [0, 1, 0]
    assert got["tenure_months"].tolist() == [r["tenure_months"] for r in rows]


# ---------------------------------------------------------------------------- the MLflow server


def test_mlflow_server_as_deployed_on_postgres_and_s3(built, pods, tmp_path):
    from mlflow import MlflowClient

    from tests.support.stand_ins import postgres, s3

    docs = render(ROOT / "manifests" / "platform" / "dev")
    deployment = admission.find(docs, "Deployment", "mlflow", "mlops")
    spec = admission.workload_pod(deployment)
    [container] = spec["containers"]
    img = built(container["image"])
    pod = Pod(img.ref, ports=[p["containerPort"] for p in container["ports"]],
              hosts=service_hosts(docs))  # fmt: skip
    pods.append(pod)
    with contextlib.ExitStack() as stack:
        with pod.inside():
            endpoint = stack.enter_context(s3(service_port(docs, "minio", "mlops")))
            uri = stack.enter_context(postgres(service_port(docs, "mlflow-postgres", "mlops")))
            keys = {k.lower(): STORE[("mlstack-s3", p)] for k, p in
                    (("AWS_ACCESS_KEY_ID", "access-key-id"), ("AWS_SECRET_ACCESS_KEY", "secret-access-key"))}  # fmt: skip
            store = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **keys)
            destination = next(e["value"] for e in container["env"] if e["name"] == "MLFLOW_ARTIFACTS_DESTINATION")  # fmt: skip
            bucket = destination.removeprefix("s3://").split("/")[0]
            store.create_bucket(Bucket=bucket)
        secrets = admission.secrets_in(docs, "mlops", {**STORE, ("mlstack-mlflow-postgres", "uri"): uri})  # fmt: skip
        volumes = materialize(spec, tmp_path, secrets)
        name = start(pod, spec, "mlflow", img, PodContext(secrets=secrets, volumes=volumes))
        probe_both(pod, name, container)
        assert_confined_as_declared(pod, name, spec, container, img)
        # a port-forward's Host (localhost:*, allowed by the manifest's --allowed-hosts)
        client = MlflowClient(tracking_uri=f"http://localhost:{pod.published[5000]}")
        experiment = client.create_experiment("as-declared")
        assert [e.name for e in client.search_experiments(filter_string="name = 'as-declared'")] == ["as-declared"]  # fmt: skip
        run = client.create_run(experiment)
        client.log_text(run.info.run_id, "model card", "card.md")
        with pod.inside():
            keys_stored = [o["Key"] for o in store.list_objects_v2(Bucket=bucket).get("Contents", [])]  # fmt: skip
        assert any(k.endswith(f"{run.info.run_id}/artifacts/card.md") for k in keys_stored)
        assert pod.state(name)["Running"]
        # `mlflow server` (PID 1) forwards SIGTERM to uvicorn's supervisor, which stops its
        # workers: all of them ran, none is left
        stopped = assert_stops_on_sigterm(pod, name)
        workers = int(next(a.split("=", 1)[1] for a in container["args"] if a.startswith("--workers=")))  # fmt: skip
        assert len(stopped) >= 2 + workers, stopped


# ------------------------------------------------------------------ Feast's online store (Redis)


def exec_probe(pod: Pod, name: str, container: dict, kind: str, timeout: float = 120) -> None:
    """The declared exec probe, run in the container as the kubelet runs it, until it exits 0."""
    command = container[kind]["exec"]["command"]
    deadline = time.monotonic() + timeout
    while True:
        done = subprocess.run(["podman", "exec", name, *command], capture_output=True, text=True)
        if done.returncode == 0:
            return
        state = pod.state(name)
        if not state.get("Running") or time.monotonic() > deadline:
            raise AssertionError(f"{kind} of {name}: {done.stderr}\n{pod.logs(name)}")
        time.sleep(0.5)


def test_feast_redis_as_deployed_wants_its_password_and_keeps_its_data(built, pods, tmp_path):
    """Redis as manifests/platform/dev declares it: the password only from the Secret's
    redis.conf, both exec probes pass, a client without the password is refused, one with it
    writes; SIGTERM saves, and a new container on the same claim reads the value back."""
    from tests.support.stand_ins import redis_cli

    docs = render(ROOT / "manifests" / "platform" / "dev")
    statefulset = admission.find(docs, "StatefulSet", "feast-redis", "mlops")
    spec = admission.workload_pod(statefulset)
    [container] = spec["containers"]
    img = built(container["image"])
    assert img.ref == DEFAULTS.redis_image
    secrets = admission.secrets_in(docs, "mlops", STORE)
    volumes = materialize(spec, tmp_path, secrets)
    password = STORE[("mlstack-feast", "redis-password")]
    port = service_port(docs, "feast-redis", "mlops")
    assert container["ports"][0]["containerPort"] == port
    for run in ("first", "again"):
        pod = Pod(img.ref, ports=[port])
        pods.append(pod)
        name = start(pod, spec, "redis", img, PodContext(secrets=secrets, volumes=volumes))
        exec_probe(pod, name, container, "readinessProbe")
        exec_probe(pod, name, container, "livenessProbe")
        published = pod.published[port]
        if run == "first":
            assert_confined_as_declared(pod, name, spec, container, img)
            assert "NOAUTH" in redis_cli(published, "ping")
            assert "WRONGPASS" in redis_cli(published, "ping", password="wrong")
            assert redis_cli(published, "ping", password=password) == "PONG"
            assert redis_cli(published, "set", "mlstack:probe", "kept", password=password) == "OK"
            # no password anywhere on its command line or in its environment
            declared = subprocess.run(["podman", "inspect", name], capture_output=True, text=True)
            assert declared.returncode == 0 and password not in declared.stdout
        else:
            assert redis_cli(published, "get", "mlstack:probe", password=password) == "kept"
        assert_stops_on_sigterm(pod, name)  # Redis handles SIGTERM: saves, exits 0
    assert list((volumes["data"] / "appendonlydir").iterdir())


# ------------------------------------------------------------------------- the Katib trial


@pytest.fixture
def git_daemon():
    """`git daemon` serving a directory read-only on 127.0.0.1:9418 of the calling thread's
    network namespace; stopped on exit."""
    procs = []

    def serve(base: Path) -> str:
        proc = subprocess.Popen(
            ["git", "daemon", "--listen=127.0.0.1", "--port=9418", "--export-all",
             "--reuseaddr", f"--base-path={base}", str(base)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(proc)
        return "git://127.0.0.1"

    yield serve
    for proc in procs:
        stop(proc)


def test_katib_trial_runs_to_completion_and_reports_what_the_collector_parses(
    built, pods, git_daemon, tmp_path
):
    """The trial as Katib v0.19 starts it: katib/experiment.yaml as the tune step submits it,
    parameters substituted, the StdOut collector's wrapper writing /var/log/katib/metrics.log,
    DVC reading the data version from S3 (MinIO's Service; the dev ExternalSecret's keys and
    endpoint) and MLflow at its Service name."""
    import yaml
    from mlflow import MlflowClient

    from mlstack.tune.cluster import for_cluster
    from mlstack.tune.run import trial_env_for
    from mlstack.tune.spec import parse, parse_metrics
    from tests.conftest import git, make_data_repo
    from tests.support.stand_ins import s3

    docs = render(ROOT / "manifests" / "platform" / "dev")
    raw = yaml.safe_load((ROOT / "katib" / "experiment.yaml").read_text())
    exp = parse(raw)
    primary = raw["spec"]["trialTemplate"]["primaryContainerName"]
    declared = exp.container
    tracking = next(e["value"] for e in declared["env"] if e["name"] == "MLFLOW_TRACKING_URI")
    img = built(declared["image"])
    secrets = admission.secrets_in(docs, "ml-training", STORE)
    dvc = secrets["dvc-remote-s3"]
    pod = Pod(img.ref, hosts=service_hosts(docs))
    pods.append(pod)

    # a data version pushed to the S3 remote the Secret names, served by git on the pod's network
    repo = make_data_repo(tmp_path / "git" / "data", tmp_path / "local-remote")
    url = dvc_remote_url(repo, dvc["MLSTACK_DVC_REMOTE"])
    bucket = url.removeprefix("s3://").split("/")[0]
    with contextlib.ExitStack() as stack:
        with pod.inside():
            endpoint = stack.enter_context(s3(service_port(docs, "minio", "mlops")))
            boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                         aws_access_key_id=dvc["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=dvc["AWS_SECRET_ACCESS_KEY"]).create_bucket(Bucket=bucket)  # fmt: skip
            push = {**os.environ, "AWS_ENDPOINT_URL": endpoint,
                    **{k: dvc[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}}  # fmt: skip
            done = subprocess.run([sys.executable, "-m", "dvc", "push", "-q", "-r", dvc["MLSTACK_DVC_REMOTE"]],
                                  cwd=repo, env=push, capture_output=True, text=True, timeout=300)  # fmt: skip
            assert done.returncode == 0, done.stderr
            git_url = git_daemon(repo.parent)
            mlflow_port = service_port(docs, "mlflow", "mlops")
            server = mlflow_server(tmp_path / "mlflow", mlflow_port, tracking)
        stack.callback(stop, server)
        env = trial_env_for(
            tracking_uri=tracking,
            experiment_name="as-declared",
            parent="",
            repo=f"{git_url}/{repo.name}",
            rev=git(repo, "rev-parse", "HEAD"),
        )
        body = for_cluster(exp, "ml-training", env)
        assignments = {"learning_rate": "0.1", "max_iter": "50", "max_depth": "3",
                       "l2_regularization": "0.25", "class_weight": "balanced"}  # fmt: skip
        spec, labels = admission.katib_trial_pod(body, assignments, "churn-tuning-x-1")
        fields = field_values("churn-tuning-x-1-abcde", "ml-training", labels, spec)
        volumes = materialize(spec, tmp_path / "volumes", secrets)
        ctx = PodContext(secrets=secrets, fields=fields, volumes=volumes)
        name = start(pod, spec, primary, img, ctx)
        code = pod.wait_exit(name, timeout=900)
        metrics_dir = volumes["metrics-volume"]
        log = (
            (metrics_dir / "metrics.log").read_text()
            if (metrics_dir / "metrics.log").exists()
            else ""
        )
        assert code == 0, log[-3000:] + pod.logs(name)

        # the collector's reading of the file: lines naming a metric, an RFC 3339 first word
        names = [exp.objective, *exp.additional]
        reported = []
        for line in log.splitlines():
            pairs = dict(parse_metrics(line, exp.metrics_format, names))
            if pairs:
                assert datetime.fromisoformat(line.split(" ", 1)[0]).tzinfo is not None, line
                reported.append(pairs)
        assert len(reported) >= 2 and all(set(r) == set(names) for r in reported), log[-3000:]
        assert 0.5 < reported[-1][exp.objective] <= 1.0
        # the wrapper's completion mark, as the collector waits for it
        assert [p.read_text().strip() for p in metrics_dir.glob("*.pid")] == ["completed"]
        with pod.inside():
            client = MlflowClient(f"http://127.0.0.1:{mlflow_port}")
            [run] = client.search_runs([client.get_experiment_by_name("as-declared").experiment_id])
        assert run.data.params["max_iter"] == "50"
        assert run.data.metrics[exp.objective] == pytest.approx(
            reported[-1][exp.objective], abs=1e-6
        )


def dvc_remote_url(repo: Path, remote: str) -> str:
    """The URL the repository's DVC config gives ``remote``, added from the project's own
    .dvc/config when the test repository lacks it."""
    listed = subprocess.run([sys.executable, "-m", "dvc", "remote", "list"], cwd=ROOT,
                            capture_output=True, text=True, check=True).stdout  # fmt: skip
    [url] = [line.split()[1] for line in listed.splitlines() if line.split()[:1] == [remote]]
    done = subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-f", remote, url],
                          cwd=repo, capture_output=True, text=True)  # fmt: skip
    assert done.returncode == 0, done.stderr
    subprocess.run(["git", "-C", str(repo), "commit", "-qam", f"dvc remote {remote}"], check=True)
    return url


def mlflow_server(root: Path, port: int, tracking: str) -> subprocess.Popen:
    """This environment's MLflow server on 127.0.0.1:``port`` (tests/support/servers.py's),
    also answering the Host of the in-cluster URL ``tracking``."""
    from tests.support.servers import MLFLOW_SERVER_ENV, mlflow_server_argv

    root.mkdir(parents=True)
    cmd = mlflow_server_argv(port, root)
    allowed = cmd.index("--allowed-hosts") + 1
    cmd[allowed] += "," + tracking.split("://", 1)[1].rstrip("/")
    env = {**os.environ, **MLFLOW_SERVER_ENV}
    url = f"http://127.0.0.1:{port}/health"
    return start_process(cmd, root / "server.log", url, env=env, timeout=180)
