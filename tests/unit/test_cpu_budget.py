"""The kind cluster's CPU budget: everything `make cluster-up` installs must leave room on a
4-vCPU GitHub runner for the staging predictor pod and a pipeline step.

The scheduler admits a pod only if the node's allocatable CPU minus the requests of the pods
already bound covers the pod's request, so the sum of requests is what counts, not usage. The
upstream installs' requests come from tests/upstream/cpu-requests.json (extracted from the
upstream repositories at the pinned tags by tools/upstream_requests.py, with the sha256 of each
file read); our own patches and values are applied to them here the way kustomize and Helm
apply them: kustomize patches by rendering with `kubectl kustomize`, Helm values by Helm's merge.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT
from tests.support.kube import render

UPSTREAM = json.loads((ROOT / "tests/upstream/cpu-requests.json").read_text())
# a kind node's allocatable CPU is the host's: GitHub's ubuntu-latest runner has 4 vCPUs
RUNNER_MILLICPU = 4000
THIS_REPO = "https://github.com/mlstack/mlstack.git"


def millicpu(value: Any) -> int:
    if value is None:
        return 0
    text = str(value)
    if text.endswith("m"):
        return int(text[:-1])
    return round(float(text) * 1000)


def pod_request(spec: dict[str, Any]) -> int:
    """The scheduler's rule: the larger of the containers' sum and any one init container
    (native sidecars, init containers that keep running, add to the sum)."""

    def cpu(c: dict[str, Any]) -> int:
        return millicpu(((c.get("resources") or {}).get("requests") or {}).get("cpu"))

    sidecars = [c for c in spec.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    running = sum(cpu(c) for c in spec.get("containers", [])) + sum(cpu(c) for c in sidecars)
    inits = [cpu(c) for c in spec.get("initContainers", []) if c not in sidecars]
    return max([running, *inits])


def workload_requests(docs: list[dict[str, Any]], source: str) -> list[tuple[str, str, int]]:
    """(source, kind/namespace/name, millicpu) of every long-running workload: Deployments and
    StatefulSets times their replicas, DaemonSets once (one node). Jobs finish and release what
    they requested."""
    rows = []
    for doc in docs:
        if doc.get("kind") not in {"Deployment", "StatefulSet", "DaemonSet"}:
            continue
        replicas = 1 if doc["kind"] == "DaemonSet" else doc["spec"].get("replicas", 1)
        request = pod_request(doc["spec"]["template"]["spec"]) * replicas
        name = f"{doc['kind']}/{doc['metadata'].get('namespace', '-')}/{doc['metadata']['name']}"
        rows.append((source, name, request))
    return rows


def skeleton(workloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Manifests carrying exactly what upstream declares for each workload's requests."""

    def container(c: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": c["name"],
            "resources": {"requests": c["requests"]} if c["requests"] else {},
        }

    docs = []
    for w in workloads:
        spec: dict[str, Any] = {"containers": [container(c) for c in w["containers"]]}
        if w.get("initContainers"):
            spec["initContainers"] = [container(c) for c in w["initContainers"]]
        meta = {"name": w["name"], **({"namespace": w["namespace"]} if w.get("namespace") else {})}
        body: dict[str, Any] = {"template": {"spec": spec}}
        if w.get("replicas") is not None:
            body["replicas"] = w["replicas"]
        docs.append(
            {"apiVersion": w["apiVersion"], "kind": w["kind"], "metadata": meta, "spec": body}
        )
    return docs


def upstream_workloads(key: str) -> list[dict[str, Any]]:
    assert key in UPSTREAM["kustomize"], (
        f"{key}: not in tests/upstream/cpu-requests.json; run tools/upstream_requests.py "
        "for the new pin"
    )
    return UPSTREAM["kustomize"][key]


def remote_key(url: str) -> str:
    """The extracted install a remote resource URL names (by its release path, any host)."""
    matches = [k for k in UPSTREAM["kustomize"] if "@" not in k and url.endswith(k)]
    assert matches, f"{url}: no extracted requests; run tools/upstream_requests.py for this pin"
    return matches[0]


def render_local(path: Path, tmp: Path) -> list[dict[str, Any]]:
    """`kubectl kustomize` on one of our kustomizations, its remote resources replaced by the
    extracted upstream workloads (our patches then apply to them as they would to upstream's)."""
    work = tmp / path.relative_to(ROOT)
    shutil.copytree(path, work)
    kfile = work / "kustomization.yaml"
    kust = yaml.safe_load(kfile.read_text())
    resources = []
    for i, res in enumerate(kust.get("resources", [])):
        if "://" in res:
            local = work / f"upstream-{i}.yaml"
            local.write_text(yaml.safe_dump_all(skeleton(upstream_workloads(remote_key(res)))))
            resources.append(local.name)
        else:
            resources.append(res)
            assert not res.startswith(".."), f"{path}: copy its bases too"
    kust["resources"] = resources
    # generators merging into upstream ConfigMaps carry no requests
    for gen in ("configMapGenerator", "secretGenerator"):
        kept = [g for g in kust.get(gen, []) if g.get("behavior") not in ("merge", "replace")]
        kust.pop(gen, None)
        if kept:
            kust[gen] = kept
    kfile.write_text(yaml.safe_dump(kust))
    return render(work)


def coalesce(user: Any, default: Any) -> Any:
    """Helm's merge of user values over a chart's defaults: maps merge key by key, a user null
    deletes the default, anything else replaces it."""
    if isinstance(user, dict) and isinstance(default, dict):
        out = copy.deepcopy(default)
        for key, value in user.items():
            if value is None:
                out.pop(key, None)
            else:
                out[key] = coalesce(value, default.get(key))
        return out
    return copy.deepcopy(user) if user is not None else copy.deepcopy(default)


def at(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(key)
    return node


def helm_values(source: dict[str, Any], ref_sources: list[dict[str, Any]]) -> dict[str, Any]:
    """Argo CD's order: valueFiles, then values, then valuesObject, each over the last."""
    helm = source.get("helm", {})
    merged: dict[str, Any] = {}
    for name in helm.get("valueFiles", []):
        ref, _, rel = name.partition("/")
        assert ref.startswith("$") and any(
            s.get("ref") == ref[1:] and s["repoURL"] == THIS_REPO for s in ref_sources
        ), f"{name}: values from this repository only"
        merged = coalesce(yaml.safe_load((ROOT / rel).read_text()) or {}, merged)
    if helm.get("values"):
        merged = coalesce(yaml.safe_load(helm["values"]) or {}, merged)
    return coalesce(helm.get("valuesObject") or {}, merged)


def chart_requests(
    source: dict[str, Any], sources: list[dict[str, Any]]
) -> list[tuple[str, str, int]]:
    repo, rev = source["repoURL"], source["targetRevision"]
    key = f"{repo}/{source['chart']}@{rev}" if source.get("chart") else f"{repo}@{rev}"
    assert key in UPSTREAM["helm"], f"{key}: no extracted requests; run tools/upstream_requests.py"
    values = helm_values(source, sources)
    name = source.get("chart") or repo.rsplit("/", 1)[-1]
    charts = [(key, UPSTREAM["helm"][key])] + [
        (k, c) for k, c in UPSTREAM["helm"].items() if k.startswith(f"{name}/")
    ]
    rows = []
    for chart_key, chart in charts:
        for w in chart["workloads"]:
            scope = values.get(w["alias"], {}) if "alias" in w else values
            total = 0
            for c in w["containers"]:
                resources = coalesce(at(scope, c["values"]), c["default"]) or {}
                total += millicpu((resources.get("requests") or {}).get("cpu"))
            rows.append((chart_key, f"{w['kind']}/{w['name']}", total))
    return rows


def kustomize_app_requests(source: dict[str, Any], tmp: Path) -> list[tuple[str, str, int]]:
    """An upstream kustomize path: its extracted workloads with the Application's own
    kustomize patches, rendered."""
    repo = source["repoURL"].removeprefix("https://github.com/").removesuffix(".git")
    key = f"{repo}/{source['path']}@{source['targetRevision']}"
    work = tmp / key.replace("/", "_").replace("@", "_")
    work.mkdir(parents=True)
    (work / "upstream.yaml").write_text(yaml.safe_dump_all(skeleton(upstream_workloads(key))))
    kust: dict[str, Any] = {"resources": ["upstream.yaml"]}
    patches = (source.get("kustomize") or {}).get("patches")
    if patches:
        kust["patches"] = patches
    (work / "kustomization.yaml").write_text(yaml.safe_dump(kust))
    return workload_requests(render(work), key)


def applications() -> list[dict[str, Any]]:
    return [d for d in render(ROOT / "argocd/platform") if d["kind"] == "Application"]


def serving_applications() -> list[dict[str, Any]]:
    return [d for d in render(ROOT / "argocd") if d["kind"] == "Application"]


def platform_requests(tmp: Path) -> list[tuple[str, str, int]]:
    """Every request on the node once `make cluster-up` is done, before any model is served."""
    rows = [
        (
            "kind node",
            f"{w['kind']}/kube-system/{w['name']}",
            pod_request(
                {
                    "containers": [
                        {"resources": {"requests": c["requests"]}} for c in w["containers"]
                    ]
                }
            )
            * w.get("replicas", 1),
        )
        for w in UPSTREAM["kind_node"]
    ]
    rows += workload_requests(render_local(ROOT / "argocd/install", tmp), "argocd/install")
    apps = applications() + [
        a
        for a in serving_applications()
        if (a["spec"].get("syncPolicy") or {}).get("automated")
        and "overlays" not in a["spec"]["source"].get("path", "")
    ]
    for app in apps:
        sources = app["spec"].get("sources") or [app["spec"]["source"]]
        for source in sources:
            if "ref" in source and "chart" not in source and "path" not in source:
                continue  # a values reference
            if source.get("chart") or source["repoURL"].startswith("oci://"):
                rows += chart_requests(source, sources)
            elif source["repoURL"] == THIS_REPO:
                if source["path"] == "argocd":
                    continue  # Argo CD's own config: Applications, no workloads of its own
                path = ROOT / source["path"]
                if any(
                    "://" in r
                    for r in yaml.safe_load((path / "kustomization.yaml").read_text()).get(
                        "resources", []
                    )
                ):
                    docs = render_local(path, tmp)
                else:
                    docs = render(path)
                rows += workload_requests(docs, source["path"])
            else:
                rows += kustomize_app_requests(source, tmp)
    return rows


def knative_config(tmp: Path, name: str) -> dict[str, str]:
    app = next(a for a in applications() if a["metadata"]["name"] == "knative-serving")
    docs = render_local(ROOT / app["spec"]["source"]["path"], tmp / "knative-config")
    cm = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == name]
    return cm[0].get("data", {}) if cm else {}


def predictor_request(tmp: Path) -> int:
    """The staging predictor pod as KServe and Knative build it: our containers, Knative's
    queue-proxy (config-deployment's request, or its Go default) and KServe's logger agent
    when the predictor logs; the storage initializer runs first, as an init container. Plus the
    transformer's pod in front of it."""
    isvc = next(
        d for d in render(ROOT / "manifests/overlays/staging") if d["kind"] == "InferenceService"
    )
    predictor = isvc["spec"]["predictor"]
    defaults = UPSTREAM["defaults"]
    queue = knative_config(tmp, "config-deployment").get(
        "queue-sidecar-cpu-request", defaults["knative_queue_proxy_cpu_request"]["value"]
    )
    containers = list(predictor["containers"]) + [{"resources": {"requests": {"cpu": queue}}}]
    if predictor.get("logger"):
        containers.append(
            {"resources": {"requests": {"cpu": defaults["kserve_logger_cpu_request"]["value"]}}}
        )
    storage = UPSTREAM["defaults"]["kserve_storage_initializer_cpu_request"]["value"]
    pod = pod_request(
        {
            "containers": containers,
            "initContainers": [{"resources": {"requests": {"cpu": storage}}}],
        }
    )
    # the transformer's pod (its container and its queue-proxy; it does not log) when the
    # InferenceService has one
    transformer = isvc["spec"].get("transformer")
    if transformer:
        assert not transformer.get("logger")
        pod += pod_request(
            {
                "containers": [
                    *transformer["containers"],
                    {"resources": {"requests": {"cpu": queue}}},
                ]
            }
        )
    return pod


def pipeline_step_request() -> int:
    """One step of the training pipeline on KFP 2.17: its driver pod, then its executor pod
    (the step's own request from the compiled IR; KFP's launcher copies itself in an init
    container first)."""
    ir = list(yaml.safe_load_all((ROOT / "pipelines/training.yaml").read_text()))[0]
    executors = ir["deploymentSpec"]["executors"]
    train = next(v for k, v in executors.items() if "train" in k)
    resources = train["container"].get("resources", {})
    step = millicpu(resources.get("cpuRequest") or resources.get("resourceCpuRequest"))
    defaults = UPSTREAM["defaults"]
    executor = pod_request(
        {
            "containers": [{"resources": {"requests": {"cpu": f"{step}m"}}}],
            "initContainers": [
                {"resources": {"requests": {"cpu": defaults["kfp_launcher_cpu_request"]["value"]}}}
            ],
        }
    )
    return executor + millicpu(defaults["kfp_driver_cpu_request"]["value"])


def test_the_platform_leaves_room_for_the_predictor_and_a_pipeline_step(tmp_path: Path) -> None:
    rows = platform_requests(tmp_path)
    platform = sum(r for _, _, r in rows)
    predictor = predictor_request(tmp_path)
    step = pipeline_step_request()
    table = "\n".join(f"{r:6d}m  {src}  {name}" for src, name, r in sorted(rows) if r)
    assert platform + predictor + step <= RUNNER_MILLICPU, (
        f"platform {platform}m + predictor {predictor}m + pipeline step {step}m > "
        f"{RUNNER_MILLICPU}m allocatable on a 4-vCPU runner:\n{table}"
    )


def test_every_platform_install_is_counted(tmp_path: Path) -> None:
    """No Application escapes the budget: each one's sources resolve to extracted requests or
    to this repository's manifests, and the big consumers are there."""
    names = {name for _, name, _ in platform_requests(tmp_path)}
    for expected in (
        "Pod/kube-system/kube-apiserver",
        "Deployment/knative-serving/activator",
        "Deployment/kourier-system/3scale-kourier-gateway",
        "Deployment/kubeflow/ml-pipeline",
        "Deployment/kserve-controller-manager",
        "Deployment/mlops/mlflow",
        "StatefulSet/mlops/mlflow-postgres",
        "Deployment/mlops/minio",
        "Deployment/kubeflow/katib-controller",
        "Deployment/cert-manager",
        "Deployment/monitoring/retrain-relay",
    ):
        assert any(n.endswith(expected) for n in names), expected


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        (
            {
                "containers": [
                    {"resources": {"requests": {"cpu": "1"}}},
                    {"resources": {"requests": {"cpu": "25m"}}},
                ]
            },
            1025,
        ),
        (
            {
                "containers": [{"resources": {}}],
                "initContainers": [{"resources": {"requests": {"cpu": "0.1"}}}],
            },
            100,
        ),
        (
            {
                "containers": [{}],
                "initContainers": [
                    {"restartPolicy": "Always", "resources": {"requests": {"cpu": "50m"}}}
                ],
            },
            50,
        ),
    ],
)
def test_pod_request_follows_the_schedulers_rule(spec: dict[str, Any], expected: int) -> None:
    assert pod_request(spec) == expected


def test_helm_merge_keeps_the_chart_defaults_a_value_does_not_set() -> None:
    default = {"requests": {"cpu": "100m", "memory": "300Mi"}, "limits": {"cpu": "100m"}}
    merged = coalesce({"requests": {"cpu": "10m"}, "limits": None}, default)
    assert merged == {"requests": {"cpu": "10m", "memory": "300Mi"}}
