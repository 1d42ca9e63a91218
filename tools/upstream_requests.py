"""Extract the CPU and memory requests of every workload the pinned upstream installs declare,
from the upstream repositories themselves, into tests/upstream/cpu-requests.json.

The CPU budget test (tests/unit/test_cpu_budget.py) cannot reach GitHub, so it reads this file:
one entry per upstream install with, for each workload, its containers' requests as upstream ships
them (and, for Helm charts, the values path that sets them, so the test can apply our values the
way Helm merges them). Nothing of upstream's files is copied: only these numbers, with the sha256
of every upstream file they were read from.

Run it with local git clones of the upstream repositories (``git clone --bare`` works), laid out
as ``ROOT/<owner>+<name>/repo``:

    python tools/upstream_requests.py --mirror-root ROOT > tests/upstream/cpu-requests.json

Kustomize installs are rendered with ``kubectl kustomize`` on a ``git archive`` of the tag (a
remote base of another repository is redirected to its local archive); Helm charts are read from
their values.yaml at the chart's tag; Go defaults (Knative's queue-proxy, KFP's driver and
launcher, kubeadm's static pods) are read from the Go source at the tag with a regular expression.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}
# what KFP's manifests take from argo-workflows (the rest of its manifests/ is not needed)
ARGO_PATHS = ["manifests/base", "manifests/namespace-install", "manifests/cluster-install-no-crds"]


class Upstream:
    def __init__(self, root: Path, repo: str, tag: str, pinned: str | None = None) -> None:
        self.git = root / repo.replace("/", "+") / "repo"
        if (self.git / ".git").is_dir():
            self.git = self.git / ".git"
        self.repo, self.tag, self.pinned = repo, tag, pinned or tag
        self.read: dict[str, str] = {}

    def show(self, path: str) -> str:
        data = subprocess.run(
            ["git", "-C", str(self.git), "show", f"{self.tag}:{path}"],
            check=True,
            capture_output=True,
        ).stdout
        self.read[path] = hashlib.sha256(data).hexdigest()
        return data.decode()

    def archive(self, paths: list[str], into: Path) -> None:
        into.mkdir(parents=True, exist_ok=True)
        tar = subprocess.run(
            ["git", "-C", str(self.git), "archive", self.tag, *paths],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=tar, check=True)
        for path in paths:  # provenance: every file the render could read
            listing = subprocess.run(
                ["git", "-C", str(self.git), "ls-tree", "-r", "--name-only", self.tag, path],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.split()
            for name in listing:
                self.read[name] = hashlib.sha256((into / name).read_bytes()).hexdigest()

    def provenance(self, note: str = "") -> dict[str, Any]:
        out: dict[str, Any] = {
            "repo": self.repo,
            "tag": self.tag,
            "pinned": self.pinned,
            "licence": "Apache-2.0",
            "files": dict(sorted(self.read.items())),
        }
        if note:
            out["note"] = note
        return out


def _resources(container: dict[str, Any]) -> dict[str, str]:
    requests = (container.get("resources") or {}).get("requests") or {}
    return {k: str(requests[k]) for k in ("cpu", "memory") if k in requests}


def workloads(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for doc in docs:
        if not doc or doc.get("kind") not in WORKLOAD_KINDS:
            continue
        spec = doc["spec"]["template"]["spec"]
        out.append(
            {
                "apiVersion": doc["apiVersion"],
                "kind": doc["kind"],
                "name": doc["metadata"]["name"],
                "namespace": doc["metadata"].get("namespace"),
                "replicas": doc["spec"].get("replicas"),
                "containers": [
                    {"name": c["name"], "requests": _resources(c)} for c in spec["containers"]
                ],
                "initContainers": [
                    {"name": c["name"], "requests": _resources(c)}
                    for c in spec.get("initContainers", [])
                ],
            }
        )
    return out


def manifests(up: Upstream, paths: list[str]) -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in paths:
        docs.extend(d for d in yaml.safe_load_all(up.show(path)) if d)
    return workloads(docs)


def kustomize(
    up: Upstream, path: str, archive: list[str], remotes: dict[str, tuple[Upstream, list[str]]]
) -> Any:
    """Render ``path`` at the tag; a remote base under a ``remotes`` URL prefix (at that
    upstream's tag) is redirected to a local archive of that upstream's listed paths."""
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp) / "src"
        up.archive(archive, base)
        for prefix, (other, paths) in remotes.items():
            local = Path(tmp) / other.repo.replace("/", "+")
            other.archive(paths, local)
            pattern = re.compile(
                re.escape(prefix) + r"/(\S+?)\?ref=" + re.escape(other.tag) + r"\S*"
            )
            for kfile in base.rglob("kustomization.yaml"):
                here = kfile.parent
                text = pattern.sub(
                    lambda m, d=local, h=here: os.path.relpath(d / m.group(1), h), kfile.read_text()
                )
                kfile.write_text(text)
        run = subprocess.run(
            ["kubectl", "kustomize", str(base / path)], capture_output=True, text=True
        )
        if run.returncode:
            raise SystemExit(f"{up.repo}@{up.tag}:{path}: {run.stderr}")
        rendered = run.stdout
    return workloads(list(yaml.safe_load_all(rendered)))


def values_at(values: dict[str, Any], path: str) -> Any:
    node: Any = values
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def chart(up: Upstream, values_file: str, layout: list[dict[str, Any]]) -> dict[str, Any]:
    """A chart's workloads: each container names the values path of its ``resources``; the
    chart's default at that path is recorded (Helm renders ``toYaml`` of it)."""
    values = yaml.safe_load(up.show(values_file))
    for workload in layout:
        for c in workload["containers"]:
            c["default"] = values_at(values, c["values"]) or {}
    return {"source": up.repo, "values_file": values_file, "workloads": layout}


def go_quantity(up: Upstream, path: str, pattern: str) -> str:
    m = re.search(pattern, up.show(path))
    if not m:
        raise SystemExit(f"{up.repo}@{up.tag}:{path}: {pattern!r} not found")
    return m.group(1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror-root", type=Path, required=True)
    root = ap.parse_args().mirror_root

    serving = Upstream(root, "knative/serving", "knative-v1.21.1")
    kourier = Upstream(root, "knative-extensions/net-kourier", "knative-v1.21.1")
    argocd = Upstream(root, "argoproj/argo-cd", "v3.5.1", "v3.5.2")
    kfp = Upstream(root, "kubeflow/pipelines", "2.17.0", "2.17.1")
    argo_wf = Upstream(root, "argoproj/argo-workflows", "v4.0.5")
    katib = Upstream(root, "kubeflow/katib", "v0.19.0")
    kserve = Upstream(root, "kserve/kserve", "v0.20.0")
    certmanager = Upstream(root, "cert-manager/cert-manager", "v1.17.0")
    eso = Upstream(root, "external-secrets/external-secrets", "v2.9.0", "2.10.0")
    kps = Upstream(root, "prometheus-community/helm-charts", "kube-prometheus-stack-88.0.0")
    ksm = Upstream(root, "prometheus-community/helm-charts", "kube-state-metrics-8.0.0")
    nodeexp = Upstream(root, "prometheus-community/helm-charts", "prometheus-node-exporter-4.56.1")
    grafana = Upstream(root, "grafana-community/helm-charts", "grafana-12.10.0")
    kind = Upstream(
        root, "kubernetes-sigs/kind", "fed268827e21ca48a74c38215c316dd343364ef5", "v0.33.0"
    )

    kustomizations = {
        # remote resources of this repository's kustomizations, by the release file they name
        "knative/serving/releases/download/knative-v1.21.1/serving-crds.yaml": [],
        "knative/serving/releases/download/knative-v1.21.1/serving-core.yaml": manifests(
            serving,
            [
                f"config/core/deployments/{n}.yaml"
                for n in ("activator", "autoscaler", "controller", "webhook")
            ],
        ),
        "net-kourier/releases/download/knative-v1.21.1/kourier.yaml": manifests(
            kourier, ["config/300-controller.yaml", "config/300-gateway.yaml"]
        ),
        "argoproj/argo-cd/v3.5.2/manifests/install.yaml": manifests(
            argocd, ["manifests/install.yaml"]
        ),
        # upstream kustomize paths of the platform Applications (repoURL, path, targetRevision)
        "kubeflow/pipelines/manifests/kustomize/env/platform-agnostic@2.17.1": kustomize(
            kfp,
            "manifests/kustomize/env/platform-agnostic",
            ["manifests/kustomize"],
            {"https://github.com/argoproj/argo-workflows": (argo_wf, ARGO_PATHS)},
        ),
        "kubeflow/pipelines/manifests/kustomize/cluster-scoped-resources@2.17.1": kustomize(
            kfp,
            "manifests/kustomize/cluster-scoped-resources",
            ["manifests/kustomize"],
            {"https://github.com/argoproj/argo-workflows": (argo_wf, ARGO_PATHS)},
        ),
        "kubeflow/katib/manifests/v1beta1/installs/katib-standalone@v0.19.0": kustomize(
            katib, "manifests/v1beta1/installs/katib-standalone", ["manifests/v1beta1"], {}
        ),
    }
    D = "Deployment"
    charts = {
        "https://charts.jetstack.io/cert-manager@v1.17.0": chart(
            certmanager,
            "deploy/charts/cert-manager/values.yaml",
            [
                {
                    "kind": D,
                    "name": "cert-manager",
                    "containers": [{"name": "cert-manager-controller", "values": "resources"}],
                },
                {
                    "kind": D,
                    "name": "cert-manager-cainjector",
                    "containers": [
                        {"name": "cert-manager-cainjector", "values": "cainjector.resources"}
                    ],
                },
                {
                    "kind": D,
                    "name": "cert-manager-webhook",
                    "containers": [{"name": "cert-manager-webhook", "values": "webhook.resources"}],
                },
            ],
        ),
        "https://charts.external-secrets.io/external-secrets@2.10.0": chart(
            eso,
            "deploy/charts/external-secrets/values.yaml",
            [
                {
                    "kind": D,
                    "name": "external-secrets",
                    "containers": [{"name": "external-secrets", "values": "resources"}],
                },
                {
                    "kind": D,
                    "name": "external-secrets-webhook",
                    "containers": [{"name": "webhook", "values": "webhook.resources"}],
                },
                {
                    "kind": D,
                    "name": "external-secrets-cert-controller",
                    "containers": [
                        {"name": "cert-controller", "values": "certController.resources"}
                    ],
                },
            ],
        ),
        "oci://ghcr.io/kserve/charts/kserve-resources@v0.20.0": chart(
            kserve,
            "charts/kserve-resources/values.yaml",
            [
                {
                    "kind": D,
                    "name": "kserve-controller-manager",
                    "containers": [
                        {
                            "name": "kube-rbac-proxy",
                            "values": "kserve.controller.rbacProxy.resources",
                        },
                        {"name": "manager", "values": "kserve.controller.resources"},
                    ],
                }
            ],
        ),
        "oci://ghcr.io/kserve/charts/kserve-crd@v0.20.0": {"source": kserve.repo, "workloads": []},
        "https://prometheus-community.github.io/helm-charts/kube-prometheus-stack@88.0.0": chart(
            kps,
            "charts/kube-prometheus-stack/values.yaml",
            [
                {
                    "kind": D,
                    "name": "kube-prometheus-stack-operator",
                    "containers": [
                        {"name": "kube-prometheus-stack", "values": "prometheusOperator.resources"}
                    ],
                },
                # the operator's --config-reloader-cpu-request is this value, `| default 0`
                {
                    "kind": "StatefulSet",
                    "name": "prometheus-kube-prometheus-stack-prometheus",
                    "containers": [
                        {"name": "prometheus", "values": "prometheus.prometheusSpec.resources"},
                        {
                            "name": "config-reloader",
                            "values": "prometheusOperator.prometheusConfigReloader.resources",
                        },
                    ],
                },
                {
                    "kind": "StatefulSet",
                    "name": "alertmanager-kube-prometheus-stack-alertmanager",
                    "containers": [
                        {
                            "name": "alertmanager",
                            "values": "alertmanager.alertmanagerSpec.resources",
                        },
                        {
                            "name": "config-reloader",
                            "values": "prometheusOperator.prometheusConfigReloader.resources",
                        },
                    ],
                },
            ],
        ),
    }
    # the chart's subcharts, each with its own values.yaml at its own tag, under its alias
    charts["kube-prometheus-stack/kube-state-metrics@8.0.0"] = chart(
        ksm,
        "charts/kube-state-metrics/values.yaml",
        [
            {
                "kind": D,
                "name": "kube-prometheus-stack-kube-state-metrics",
                "alias": "kube-state-metrics",
                "containers": [{"name": "kube-state-metrics", "values": "resources"}],
            }
        ],
    )
    charts["kube-prometheus-stack/prometheus-node-exporter@4.56.1"] = chart(
        nodeexp,
        "charts/prometheus-node-exporter/values.yaml",
        [
            {
                "kind": "DaemonSet",
                "name": "kube-prometheus-stack-prometheus-node-exporter",
                "alias": "prometheus-node-exporter",
                "containers": [{"name": "node-exporter", "values": "resources"}],
            }
        ],
    )
    charts["kube-prometheus-stack/grafana@12.10.0"] = chart(
        grafana,
        "charts/grafana/values.yaml",
        [
            {
                "kind": D,
                "name": "kube-prometheus-stack-grafana",
                "alias": "grafana",
                "containers": [
                    {"name": "grafana", "values": "resources"},
                    {"name": "grafana-sc-dashboard", "values": "sidecar.resources"},
                ],
            }
        ],
    )

    queue_proxy = go_quantity(
        serving,
        "pkg/deployment/config.go",
        r'QueueSidecarCPURequestDefault = resource.MustParse\("([^"]+)"\)',
    )
    logger = json.loads(
        re.search(
            r"logger: \|-\s*(\{.*?\})",
            kserve.show("charts/kserve-resources/files/common/configmap.yaml"),
            re.S,
        ).group(1)
    )["cpuRequest"]
    storage = values_at(
        yaml.safe_load(kserve.show("charts/kserve-resources/values.yaml")),
        "kserve.storage.resources.requests.cpu",
    )
    argo_go = kfp.show("backend/src/v2/compiler/argocompiler/argo.go")
    driver = re.search(
        r"var driverResources = .*?Requests:.*?ResourceCPU:\s*k8sres.MustParse\(\"([^\"]+)\"\)",
        argo_go,
        re.S,
    ).group(1)
    launcher = re.search(
        r"var launcherResources = .*?Requests:.*?ResourceCPU:\s*k8sres.MustParse\(\"([^\"]+)\"\)",
        argo_go,
        re.S,
    ).group(1)
    kindnet = re.search(
        r'requests:\s*cpu: "([^"]+)"', kind.show("pkg/build/nodeimage/const_cni.go")
    ).group(1)

    out = {
        "about": "CPU and memory requests of the pinned upstream installs, extracted by "
        "tools/upstream_requests.py; numbers only, with the sha256 of each upstream file read",
        "kustomize": kustomizations,
        "helm": charts,
        "defaults": {
            "knative_queue_proxy_cpu_request": {
                "value": queue_proxy,
                "config": "config-deployment/queue-sidecar-cpu-request",
                "from": "knative/serving",
            },
            "kserve_logger_cpu_request": {"value": logger, "from": "kserve/kserve"},
            "kserve_storage_initializer_cpu_request": {"value": storage, "from": "kserve/kserve"},
            "kfp_driver_cpu_request": {"value": driver, "from": "kubeflow/pipelines"},
            "kfp_launcher_cpu_request": {"value": launcher, "from": "kubeflow/pipelines"},
        },
        # kind's node: kubeadm's static pods and CoreDNS (kubernetes/kubernetes is too large to
        # clone here: read from cmd/kubeadm/app/phases/{controlplane/manifests.go,
        # etcd/local.go,addons/dns/manifests.go}, unchanged for years) and kind's kindnet
        "kind_node": [
            {
                "kind": "Pod",
                "name": "kube-apiserver",
                "namespace": "kube-system",
                "containers": [{"name": "kube-apiserver", "requests": {"cpu": "250m"}}],
            },
            {
                "kind": "Pod",
                "name": "kube-controller-manager",
                "namespace": "kube-system",
                "containers": [{"name": "kube-controller-manager", "requests": {"cpu": "200m"}}],
            },
            {
                "kind": "Pod",
                "name": "kube-scheduler",
                "namespace": "kube-system",
                "containers": [{"name": "kube-scheduler", "requests": {"cpu": "100m"}}],
            },
            {
                "kind": "Pod",
                "name": "etcd",
                "namespace": "kube-system",
                "containers": [{"name": "etcd", "requests": {"cpu": "100m", "memory": "100Mi"}}],
            },
            {
                "kind": "Deployment",
                "name": "coredns",
                "namespace": "kube-system",
                "replicas": 2,
                "containers": [{"name": "coredns", "requests": {"cpu": "100m", "memory": "70Mi"}}],
            },
            {
                "kind": "DaemonSet",
                "name": "kindnet",
                "namespace": "kube-system",
                "containers": [
                    {"name": "kindnet-cni", "requests": {"cpu": kindnet, "memory": "50Mi"}}
                ],
            },
        ],
        "sources": [
            up.provenance(note)
            for up, note in (
                (serving, "serving-core.yaml is built from config/core at the tag"),
                (kourier, "kourier.yaml is built from config/ at the tag"),
                (
                    argocd,
                    "v3.5.2 is not in the local clone; v3.5.1's install.yaml has no requests, as before",
                ),
                (kfp, "2.17.1 is not in the local clone: 2.17.0's manifests, the nearest tag"),
                (argo_wf, "KFP's third-party/argo remote bases"),
                (katib, ""),
                (kserve, ""),
                (certmanager, ""),
                (
                    eso,
                    "chart 2.10.0 is not in the local clone: 2.9.0's values (resources {} everywhere)",
                ),
                (kps, ""),
                (ksm, ""),
                (nodeexp, ""),
                (grafana, ""),
                (
                    kind,
                    "kind's default node image v1.37.0-rc.1 at this commit, just before v0.33.0",
                ),
            )
        ],
        "kubeadm_read_from": {
            "repo": "kubernetes/kubernetes",
            "files": {
                "cmd/kubeadm/app/phases/controlplane/manifests.go": "ComponentResources(250m|200m|100m)",
                "cmd/kubeadm/app/phases/etcd/local.go": "Requests cpu 100m memory 100Mi",
                "cmd/kubeadm/app/phases/addons/dns/manifests.go": "cpu 100m memory 70Mi, replicas 2",
            },
        },
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=False)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
