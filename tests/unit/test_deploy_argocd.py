"""The root Application retargeted to a fork or branch: its kustomize patches, applied the way
Argo CD applies them (kubectl kustomize), point every Application of this repository there."""

import os
from pathlib import Path

import yaml

from mlstack.deploy.argocd import THIS_REPOSITORY, root_application
from mlstack.settings import code_root
from tests.support.cli import run_cli
from tests.support.kube import render

ROOT = code_root()
FORK, BRANCH = "https://git.example/fork/mlstack.git", "e2e/42"


def with_patches(tmp: Path, source: Path, patches: list[dict]) -> list[dict]:
    tmp.mkdir()
    (tmp / "kustomization.yaml").write_text(
        yaml.safe_dump({"resources": [os.path.relpath(source, tmp)], "patches": patches})
    )
    return render(tmp)


def test_every_application_of_this_repository_follows_the_fork_and_branch(tmp_path: Path):
    root = root_application(FORK, BRANCH)
    assert root["spec"]["source"]["repoURL"] == FORK
    assert root["spec"]["source"]["targetRevision"] == BRANCH
    children = with_patches(tmp_path / "a", ROOT / "argocd/platform",
                            root["spec"]["source"]["kustomize"]["patches"])  # fmt: skip
    ours = [d for d in children if d["kind"] == "Application"
            and d["metadata"].get("labels", {}).get("mlstack.io/source")]  # fmt: skip
    assert {d["metadata"]["name"] for d in ours} >= {"mlstack-platform", "mlstack-argocd"}
    for app in ours:
        assert app["spec"]["source"]["repoURL"] == FORK, app["metadata"]["name"]
        assert app["spec"]["source"]["targetRevision"] == BRANCH
    upstream = [d for d in children if d["kind"] == "Application" and d not in ours]
    assert all(THIS_REPOSITORY not in yaml.safe_dump(d["spec"].get("source", {})) for d in upstream)
    # the values file of a multi-source Helm app (kube-prometheus-stack) follows too
    [values_app] = [
        d for d in children if d["metadata"].get("labels", {}).get("mlstack.io/values-source")
    ]
    assert values_app["spec"]["sources"][1]["repoURL"] == FORK
    assert values_app["spec"]["sources"][1]["targetRevision"] == BRANCH
    apps = [d for d in children if d["kind"] == "Application"]
    assert THIS_REPOSITORY not in yaml.safe_dump(apps)
    [project] = [d for d in children if d["kind"] == "AppProject"]
    assert FORK in project["spec"]["sourceRepos"]
    # one level down: mlstack-argocd renders argocd/ with the same retargeting
    [argocd_app] = [d for d in ours if d["metadata"]["name"] == "mlstack-argocd"]
    serving = with_patches(tmp_path / "b", ROOT / "argocd",
                           argocd_app["spec"]["source"]["kustomize"]["patches"])  # fmt: skip
    apps = [d for d in serving if d["kind"] == "Application"]
    assert apps and all(a["spec"]["source"]["repoURL"] == FORK for a in apps)
    assert all(a["spec"]["source"]["targetRevision"] == BRANCH for a in apps)


def test_main_of_this_repository_is_the_root_as_committed():
    committed = yaml.safe_load((ROOT / "argocd" / "root.yaml").read_text())
    assert root_application(THIS_REPOSITORY, "main") == committed


def test_cli_prints_the_retargeted_root():
    done = run_cli("root-app", "--repo-url", FORK, "--revision", BRANCH)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load(done.stdout) == root_application(FORK, BRANCH)
