"""The app-of-apps pointed at another clone or revision of this repository (a fork, an e2e
branch) without editing git: the root Application carries kustomize patches that Argo CD applies
when it renders argocd/platform, and that pass the same retargeting on to argocd/ (the serving
Applications). Used by `make cluster-up` and the kind e2e workflow."""

from __future__ import annotations

import json
from typing import Any

import yaml

from mlstack.settings import code_root

THIS_REPOSITORY = "https://github.com/mlstack/mlstack.git"  # argocd/ names it; forks retarget
LABEL = "mlstack.io/source=this-repository"  # the Applications whose source is this repository
VALUES_LABEL = "mlstack.io/values-source=this-repository"  # ...whose sources[1] is (Helm values)


def _retarget_patches(repo_url: str, revision: str) -> list[dict[str, Any]]:
    ops = [
        {"op": "replace", "path": "/spec/source/repoURL", "value": repo_url},
        {"op": "replace", "path": "/spec/source/targetRevision", "value": revision},
    ]
    values_ops = [
        {"op": "replace", "path": "/spec/sources/1/repoURL", "value": repo_url},
        {"op": "replace", "path": "/spec/sources/1/targetRevision", "value": revision},
    ]
    return [
        {"target": {"kind": "Application", "labelSelector": LABEL}, "patch": json.dumps(ops)},
        {
            "target": {"kind": "Application", "labelSelector": VALUES_LABEL},
            "patch": json.dumps(values_ops),
        },
        {
            "target": {"kind": "AppProject"},
            "patch": json.dumps([{"op": "add", "path": "/spec/sourceRepos/-", "value": repo_url}]),
        },
    ]


def root_application(repo_url: str, revision: str) -> dict[str, Any]:
    """argocd/root.yaml, reading ``repo_url`` at ``revision`` all the way down. Returns the
    Application as data (unchanged for this repository at its own revision); raises nothing."""
    root: dict[str, Any] = yaml.safe_load((code_root() / "argocd" / "root.yaml").read_text())
    if repo_url == THIS_REPOSITORY and revision == root["spec"]["source"]["targetRevision"]:
        return root
    root["spec"]["source"].update(repoURL=repo_url, targetRevision=revision)
    inner = _retarget_patches(repo_url, revision)
    # the child that renders argocd/ gets the same patches for the serving Applications
    handover = {
        "target": {"kind": "Application", "name": "mlstack-argocd"},
        "patch": json.dumps(
            [{"op": "add", "path": "/spec/source/kustomize", "value": {"patches": inner}}]
        ),
    }
    root["spec"]["source"]["kustomize"] = {"patches": [*inner, handover]}
    return root
