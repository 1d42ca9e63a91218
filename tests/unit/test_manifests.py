"""Every manifest checked offline: rendered, validated strictly, and its validators proven to bite."""

import functools
import ipaddress
import subprocess
import sys
from pathlib import Path

import kserve.models
import pytest
import yaml

from mlstack.settings import code_root
from tests.support.k8s_schema import Walker, manifest_errors
from tests.support.kube import render

ROOT = code_root()
OVERLAYS = ["staging", "production"]
BIN = Path(sys.executable).parent


def by_kind(docs: list[dict], kind: str, name: str | None = None) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    return doc


@pytest.fixture(scope="module", params=OVERLAYS)
def overlay(request) -> tuple[str, list[dict]]:
    return request.param, render(ROOT / "manifests" / "overlays" / request.param)


def kubernetes_validate(tmp_path: Path, docs: list[dict]) -> subprocess.CompletedProcess:
    path = tmp_path / "core.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return subprocess.run(
        [str(BIN / "kubernetes-validate"), "--strict", "--quiet", "-k", "1.32.0", str(path)],
        capture_output=True,
        text=True,
    )


CORE = {"ServiceAccount", "NetworkPolicy", "Deployment", "Service"}


def test_overlay_renders_with_its_namespace(overlay):
    env, docs = overlay
    assert {d["kind"] for d in docs} == {
        "ServiceAccount",
        "InferenceService",
        "NetworkPolicy",
        "PodMonitor",
        "Deployment",  # the payload sink (payload-sink.yaml)
        "Service",
    }
    assert {d["metadata"]["namespace"] for d in docs} == {f"ml-{env}"}


def test_core_kinds_pass_kubernetes_validate_strict(overlay, tmp_path):
    _, docs = overlay
    done = kubernetes_validate(tmp_path, [d for d in docs if d["kind"] in CORE])
    assert done.returncode == 0, done.stdout + done.stderr


def test_kubernetes_validate_rejects_a_broken_core_object(tmp_path, overlay):
    _, docs = overlay
    policy = by_kind(docs, "NetworkPolicy", "churn-predictor")
    policy["spec"]["podSelectr"] = policy["spec"].pop("podSelector")
    done = kubernetes_validate(tmp_path, [policy])
    assert done.returncode != 0 and "podSelector" in done.stdout + done.stderr


def test_inferenceservice_walks_strictly_over_kserve_models(overlay):
    _, docs = overlay
    walker = Walker(kserve.models)
    assert walker.errors(by_kind(docs, "InferenceService"), "V1beta1InferenceService") == []


def test_strict_walk_rejects_unknown_fields_and_wrong_types(overlay):
    _, docs = overlay
    isvc = by_kind(docs, "InferenceService")
    isvc["spec"]["predictor"]["minReplica"] = 1
    isvc["spec"]["predictor"]["containers"][0]["resources"]["limits"]["cpu"] = ["1"]
    errors = Walker(kserve.models).errors(isvc, "V1beta1InferenceService")
    assert "spec.predictor.minReplica: unknown field (not in V1beta1PredictorSpec)" in errors
    assert any("limits.cpu: expected str" in e for e in errors)


def test_predictor_is_locked_down_and_probed(overlay):
    env, docs = overlay
    isvc = by_kind(docs, "InferenceService")
    predictor = isvc["spec"]["predictor"]
    [container] = predictor["containers"]
    sc = container["securityContext"]
    assert sc["runAsNonRoot"] and sc["readOnlyRootFilesystem"]
    assert sc["allowPrivilegeEscalation"] is False and sc["privileged"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    env_vars = [e["name"] for e in container["env"]]
    assert env_vars[:2] == ["STORAGE_URI", "MODEL_VERSION"]  # what promotion.yaml's paths point at
    assert (
        predictor["serviceAccountName"]
        == by_kind(docs, "ServiceAccount", "churn-predictor")["metadata"]["name"]
    )
    assert (
        by_kind(docs, "ServiceAccount", "churn-predictor")["automountServiceAccountToken"] is False
    )
    if env == "production":
        assert predictor["minReplicas"] >= 2 and predictor["maxReplicas"] >= 10
        assert "canaryTrafficPercent" in predictor


def test_transformer_is_locked_down_like_the_predictor_and_started_as_kserve_starts_it(overlay):
    """The Feast transformer (docs/serving.md, "Transformer"): the predictor's security context
    and probes, one worker given so KServe appends no --workers, no --predictor_host of its own
    (KServe's), the cluster's Feast config and its credentials from the feast-store Secret."""
    _, docs = overlay
    isvc = by_kind(docs, "InferenceService")
    transformer = isvc["spec"]["transformer"]
    [container] = transformer["containers"]
    [predictor] = isvc["spec"]["predictor"]["containers"]
    assert container["securityContext"] == predictor["securityContext"]
    assert transformer["securityContext"] == isvc["spec"]["predictor"]["securityContext"]
    assert transformer["automountServiceAccountToken"] is False
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe] == predictor[probe]
    assert container["ports"] == predictor["ports"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    args = container["args"]
    assert "--model_name=churn-classifier" in args and "--workers=1" in args
    assert "--enable_grpc=false" in args
    assert not any(a.startswith(("--predictor_host", "--http_port")) for a in args)
    env = {e["name"]: e for e in container["env"]}
    assert env["MLSTACK_FEAST_CONFIG"]["value"] == (
        "/opt/mlstack/feature_repo/feature_store.cluster.yaml"
    )
    cluster = yaml.safe_load((ROOT / "feature_repo" / "feature_store.cluster.yaml").read_text())
    text = yaml.safe_dump(cluster)
    for name in ("MLSTACK_FEAST_REGISTRY", "MLSTACK_FEAST_REDIS"):
        assert "${" + name + "}" in text  # the config reads it
        ref = env[name]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": "feast-store", "key": name}
    assert env["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"]["value"] == "false"
    assert "STORAGE_URI" not in env


def test_transformer_alone_reaches_the_feast_stores_and_its_metrics_are_its_own(overlay):
    """Redis and Postgres in mlops are open to the transformer's pods only; the predictor's
    PodMonitor scrapes the predictor's pods only, the transformer's renames KServe's series."""
    _, docs = overlay
    predictor = by_kind(docs, "NetworkPolicy", "churn-predictor")["spec"]
    transformer = by_kind(docs, "NetworkPolicy", "churn-transformer")["spec"]
    # (the predictor's policy's podSelector is not read: another test of this module edits it)
    assert transformer["podSelector"]["matchLabels"] == {
        "serving.kserve.io/inferenceservice": "churn-classifier",
        "component": "transformer",
    }
    for port in (6379, 5432):
        assert egress_allows(transformer, port, namespace="mlops")
        assert not egress_allows(predictor, port, namespace="mlops")
    assert egress_allows(transformer, 8081, namespace="kourier-system")
    assert not egress_allows(transformer, 6379, namespace="default")
    monitors = {
        name: by_kind(docs, "PodMonitor", name)["spec"]
        for name in ("churn-predictor", "churn-transformer")
    }
    assert monitors["churn-predictor"]["selector"]["matchLabels"]["component"] == "predictor"
    assert monitors["churn-transformer"]["selector"]["matchLabels"]["component"] == "transformer"
    [relabel] = monitors["churn-transformer"]["podMetricsEndpoints"][0]["metricRelabelings"]
    assert relabel["regex"] == "request_(.+)"
    assert relabel["replacement"] == "transformer_request_$1"


def test_network_policy_denies_by_default_and_admits_serving_and_monitoring(overlay):
    _, docs = overlay
    policy = by_kind(docs, "NetworkPolicy", "churn-predictor")["spec"]
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    sources = {
        peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for rule in policy["ingress"]
        for peer in rule["from"]
    }
    assert sources == {"knative-serving", "kourier-system", "istio-system", "monitoring"}
    monitor = by_kind(docs, "PodMonitor", "churn-predictor")["spec"]
    assert monitor["podMetricsEndpoints"][0]["path"] == "/metrics"


def egress_allows(policy: dict, port: int, *, ip: str = "", namespace: str = "") -> bool:
    """Whether a NetworkPolicy's egress rules admit TCP to ``port`` at an address outside the
    cluster (``ip``) or at a pod of ``namespace`` (what Kubernetes evaluates: any rule whose peers
    and ports both match)."""
    for rule in policy.get("egress", []):
        ports = rule.get("ports")
        if ports and not any(
            p["port"] == port and p.get("protocol", "TCP") == "TCP" for p in ports
        ):
            continue
        for peer in rule.get("to", []):
            block = peer.get("ipBlock")
            if ip and block:
                address = ipaddress.ip_address(ip)
                cidr = ipaddress.ip_network(block["cidr"])
                excepted = [ipaddress.ip_network(e) for e in block.get("except", [])]
                if (
                    address.version == cidr.version
                    and address in cidr
                    and not any(address.version == e.version and address in e for e in excepted)
                ):
                    return True
            selector = peer.get("namespaceSelector", {}).get("matchLabels", {})
            if namespace and selector.get("kubernetes.io/metadata.name") == namespace:
                return True
    return False


@pytest.mark.reliability("object-store-egress")
def test_storage_initializer_reaches_the_object_store_and_nothing_private(overlay):
    _, docs = overlay
    policy = by_kind(docs, "NetworkPolicy", "churn-predictor")["spec"]
    # DNS, the in-cluster MinIO, and a cloud object store over HTTPS (S3 and GCS addresses)
    assert egress_allows(policy, 53, namespace="kube-system")
    assert egress_allows(policy, 9000, namespace="mlops")
    for store in ("52.216.8.35", "142.250.74.123", "2600:1fa0:80b4:db49::1"):
        assert egress_allows(policy, 443, ip=store), store
    # only HTTPS leaves the cluster; never the metadata endpoint, private or shared ranges
    assert not egress_allows(policy, 80, ip="52.216.8.35")
    assert not egress_allows(policy, 22, ip="52.216.8.35")
    for private in ("169.254.169.254", "10.96.0.1", "172.20.0.5", "192.168.1.1", "100.64.0.1"):
        assert not egress_allows(policy, 443, ip=private), private
    assert not egress_allows(policy, 443, ip="fd00::1")
    assert not egress_allows(policy, 9000, namespace="default")
    # the evaluator bites: the policy before this rule existed let no S3 download out
    before = {**policy, "egress": [r for r in policy["egress"] if "ipBlock" not in r["to"][0]]}
    assert not egress_allows(before, 443, ip="52.216.8.35")
    assert egress_allows(before, 9000, namespace="mlops")


# --- Argo CD ------------------------------------------------------------------------------------


@functools.cache
def argo() -> list[dict]:
    """argocd/ rendered once per session (never at import)."""
    return render(ROOT / "argocd")


MONITORING = ROOT / "manifests" / "monitoring"


def test_project_is_limited_to_this_repo_ml_namespaces_and_namespaced_kinds():
    project = by_kind(argo(), "AppProject")["spec"]
    assert project["clusterResourceWhitelist"] == []
    assert {d["namespace"] for d in project["destinations"]} == {
        "ml-staging",
        "ml-production",
        "monitoring",
    }
    apps = [d for d in argo() if d["kind"] == "Application"]
    assert {a["spec"]["source"]["repoURL"] for a in apps} == set(project["sourceRepos"])
    allowed = {(k["group"], k["kind"]) for k in project["namespaceResourceWhitelist"]}
    sources = [ROOT / "manifests" / "overlays" / env for env in OVERLAYS] + [MONITORING]
    for source in sources:  # everything an Application renders may be synced by the project
        for doc in render(source):
            group = doc["apiVersion"].split("/")[0] if "/" in doc["apiVersion"] else ""
            assert (group, doc["kind"]) in allowed


def test_staging_syncs_automatically_and_production_by_hand():
    apps = {a["metadata"]["name"]: a["spec"] for a in argo() if a["kind"] == "Application"}
    assert apps["churn-staging"]["syncPolicy"]["automated"] == {"prune": True, "selfHeal": True}
    assert "automated" not in apps["churn-production"]["syncPolicy"]
    assert apps.pop("churn-monitoring")["source"]["path"] == "manifests/monitoring"
    for name, spec in apps.items():
        env = name.removeprefix("churn-")
        assert spec["source"]["path"] == f"manifests/overlays/{env}"
        assert spec["destination"]["namespace"] == f"ml-{env}"
    [window] = by_kind(argo(), "AppProject")["spec"]["syncWindows"]
    assert window["applications"] == ["churn-production"] and window["manualSync"] is True


HEALTH_KEY = "resource.customizations.health.serving.kserve.io_InferenceService"


def health(status: dict | None) -> dict:
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    script = by_kind(argo(), "ConfigMap")["data"][HEALTH_KEY]
    assert script == (ROOT / "argocd" / "inferenceservice-health.lua").read_text()

    def table(value):
        if isinstance(value, dict):
            return lua.table_from({k: table(v) for k, v in value.items()})
        if isinstance(value, list):
            return lua.table_from([table(v) for v in value])
        return value

    obj = {"metadata": {"name": "x"}} | ({"status": status} if status is not None else {})
    result = lua.execute(f"local obj = ...\n{script}", table(obj))
    return {"status": result["status"], "message": result["message"]}


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (None, "Progressing"),
        ({"conditions": [{"type": "Ready", "status": "True"}]}, "Healthy"),
        ({"conditions": [{"type": "Ready", "status": "False", "reason": "Pending"}]}, "Progressing"),
        (
            {
                "conditions": [{"type": "Ready", "status": "False"}],
                "modelStatus": {
                    "transitionStatus": "BlockedByFailedLoad",
                    "lastFailureInfo": {"message": "model.skops: untrusted types"},
                },
            },
            "Degraded",
        ),
        (
            {
                "conditions": [
                    {"type": "PredictorReady", "status": "False", "reason": "RevisionFailed",
                     "message": "container exited with code 1"},
                    {"type": "Ready", "status": "False"},
                ]
            },
            "Degraded",
        ),
    ],
)  # fmt: skip
def test_inferenceservice_health_check(status, expected):
    got = health(status)
    assert got["status"] == expected
    if expected == "Degraded":
        assert "untrusted" in got["message"] or "exited" in got["message"]


# --- GitHub workflows: the checkers (tests/unit/test_workflows.py reads them as data) ----------

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_actionlint_and_zizmor_pass():
    lint = subprocess.run(
        [str(BIN / "actionlint"), *map(str, WORKFLOWS)], capture_output=True, text=True
    )
    assert lint.returncode == 0, lint.stdout + lint.stderr
    audit = subprocess.run(
        [
            str(BIN / "zizmor"),
            "--offline",
            "--min-severity",
            "high",
            str(ROOT / ".github" / "workflows"),
        ],
        capture_output=True,
        text=True,
    )
    assert audit.returncode == 0, audit.stdout + audit.stderr


def test_workflow_checkers_reject_broken_samples(tmp_path):
    bad = tmp_path / ".github" / "workflows" / "bad.yml"
    bad.parent.mkdir(parents=True)
    bad.write_text(
        "on:\n  issues:\n    types: [opened]\n"
        "permissions: write-all\n"
        "jobs:\n  x:\n    runs-on: ubuntu-24.04\n    step:\n      - run: echo hi\n"
    )
    lint = subprocess.run([str(BIN / "actionlint"), str(bad)], capture_output=True, text=True)
    assert lint.returncode != 0 and "step" in lint.stdout
    bad.write_text(
        "on:\n  issues:\n    types: [opened]\n"
        "jobs:\n  x:\n    runs-on: ubuntu-24.04\n    steps:\n"
        "      - uses: actions/checkout@v4\n"
        '      - run: echo "${{ github.event.issue.title }}"\n'
    )
    audit = subprocess.run(
        [str(BIN / "zizmor"), "--offline", "--min-severity", "high", str(bad.parent)],
        capture_output=True,
        text=True,
    )
    assert audit.returncode != 0 and "template-injection" in audit.stdout + audit.stderr


def test_monitoring_core_kinds_pass_kubernetes_validate_strict(tmp_path):
    docs = [d for d in render(MONITORING) if d["apiVersion"] in ("v1", "apps/v1")]
    assert {d["kind"] for d in docs} == {"ServiceAccount", "Deployment", "Service", "ConfigMap"}
    docs += [d for d in render(MONITORING) if d["kind"] == "NetworkPolicy"]
    done = kubernetes_validate(tmp_path, docs)
    assert done.returncode == 0, done.stdout + done.stderr


# --- every kind, strictly, over its own project's model --------------------------------------------

SOURCES = [
    "argocd",
    "argocd/platform",
    "manifests/monitoring",
    "manifests/platform/base",
    "manifests/platform/dev",
    *(f"manifests/overlays/{env}" for env in OVERLAYS),
]


@pytest.mark.parametrize("source", SOURCES)
def test_every_rendered_document_walks_strictly_over_its_projects_model(source):
    docs = render(ROOT / source)
    assert docs
    for doc in docs:
        assert manifest_errors(doc) == [], f"{source}: {doc['kind']} {doc['metadata']['name']}"


def test_strict_walks_reject_broken_argo_cd_and_prometheus_operator_objects():
    argo = render(ROOT / "argocd")  # a copy of its own: mutated below
    project = by_kind(argo, "AppProject")
    app = next(d for d in argo if d["metadata"]["name"] == "churn-staging")
    app["spec"]["syncPolicy"]["automated"] = {"prune": True, "selfheal": True}
    app["spec"]["syncPolicy"]["retry"] = {"limit": "5"}
    del app["spec"]["destination"]
    assert manifest_errors(app) == [
        "spec.destination: missing required field",
        "spec.syncPolicy.automated.selfheal: unknown field",
        "spec.syncPolicy.retry.limit: expected number, got '5'",
    ]
    project["spec"]["destinations"][0]["namspace"] = "ml-staging"
    assert manifest_errors(project) == ["spec.destinations[0].namspace: unknown field"]

    monitoring = render(MONITORING)
    rule = by_kind(monitoring, "PrometheusRule")
    rule["spec"]["groups"][0]["rules"][0]["for"] = 5
    assert manifest_errors(rule) == ["spec.groups[0].rules[0].for: expected string, got 5"]
    config = by_kind(monitoring, "AlertmanagerConfig")
    config["spec"]["receivers"][0]["webhookConfigs"][0]["sendResolve"] = True
    assert manifest_errors(config) == [
        "spec.receivers[0].webhookConfigs[0].sendResolve: unknown field"
    ]
    monitor = by_kind(
        render(ROOT / "manifests" / "overlays" / "staging"), "PodMonitor", "churn-predictor"
    )
    monitor["spec"]["selectr"] = monitor["spec"].pop("selector")
    assert manifest_errors(monitor) == [
        "spec.selector: missing required field",
        "spec.selectr: unknown field",
    ]


def test_a_kind_without_a_model_is_an_error_not_a_pass():
    with pytest.raises(KeyError, match="no model for Widget"):
        manifest_errors({"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {}})
    with pytest.raises(KeyError, match="a type, not a kind"):
        manifest_errors({"apiVersion": "argoproj.io/v1alpha1", "kind": "SyncPolicy"})


# --- checkov --------------------------------------------------------------------------------------

CHECKOV = Path(sys.executable).parents[1] / "checkov" / "bin" / "checkov"


def checkov(*args: str) -> subprocess.CompletedProcess:
    assert CHECKOV.exists(), "make setup installs checkov in .venv/checkov"
    return subprocess.run(
        [str(CHECKOV), "--skip-download", "--quiet", "--compact", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_checkov_passes_on_dockerfiles_workflows_and_rendered_manifests(tmp_path):
    rendered = tmp_path / "rendered"
    rendered.mkdir()
    for env in OVERLAYS:
        (rendered / f"{env}.yaml").write_text(
            yaml.safe_dump_all(render(ROOT / "manifests" / "overlays" / env))
        )
    (rendered / "argocd.yaml").write_text(yaml.safe_dump_all(argo()))
    (rendered / "monitoring.yaml").write_text(yaml.safe_dump_all(render(MONITORING)))
    done = checkov("-d", str(rendered), "--framework", "kubernetes")
    assert done.returncode == 0, done.stdout + done.stderr
    # every skip in the sources carries its reason beside it
    done = checkov(
        "-d", str(ROOT), "--framework", "dockerfile,github_actions", "--skip-path", ".venv"
    )
    assert done.returncode == 0, done.stdout + done.stderr
    dockerfiles = [
        "serving/Dockerfile",
        "components/Dockerfile",
        "manifests/platform/mlflow-image/Dockerfile",
    ]
    for path in [*WORKFLOWS, *(ROOT / d for d in dockerfiles)]:
        for line in path.read_text().splitlines():
            if "checkov:skip=" in line:
                assert len(line.split("checkov:skip=")[1].split(":", 1)[1].strip()) > 20, line


def test_checkov_rejects_a_root_container(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM python:3.11.7-slim-bookworm\nRUN echo hi\n")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x", "namespace": "ml"},
        "spec": {
            "containers": [
                {"name": "c", "image": "python:latest", "securityContext": {"privileged": True}}
            ]
        },
    }
    (tmp_path / "pod.yaml").write_text(yaml.safe_dump(pod))
    done = checkov("-d", str(tmp_path), "--framework", "dockerfile,kubernetes")
    assert done.returncode != 0
    for check in ("CKV_DOCKER_3", "CKV_K8S_16"):  # no USER; privileged container
        assert check in done.stdout
