"""`mlstack promote`: registry version → overlay fields, round trip, idempotent, refusals, revert."""

import json
import os
import shutil
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlstack.deploy import promote
from mlstack.errors import StackError
from mlstack.settings import Gates, code_root
from mlstack.train.training import HyperParams, TrainingLineage
from tests.conftest import git
from tests.support.cli import run_cli
from tests.support.kube import render
from tests.support.servers import train_and_register

MODEL = "churn-promote"
DIGEST = "ghcr.io/mlstack/churn-predictor@sha256:" + "a" * 64


@pytest.fixture
def registered(dataset_csv: Path, tracking_uri: str) -> str:
    lineage = TrainingLineage(
        "md5-xyz", "data/churn.csv", "b" * 40, "kfp-run-9", "churn-training-x"
    )
    train_and_register(
        dataset_csv,
        params=HyperParams(max_iter=40),
        lineage=lineage,
        model=MODEL,
        tracking_uri=tracking_uri,
        experiment="p",
        gates=Gates(),
    )
    return tracking_uri


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    repo = tmp_path / "gitops"
    shutil.copytree(code_root() / "manifests", repo / "manifests")
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "manifests")
    return repo / "manifests"


def rendered_isvc(manifests: Path, env: str) -> dict:
    """The InferenceService an environment's overlay renders to."""
    return next(d for d in render(manifests / "overlays" / env) if d["kind"] == "InferenceService")


def test_promote_writes_only_the_promotion_fields_and_keeps_comments(registered, manifests):
    release = promote.resolve_release(
        MODEL, "champion", tracking_uri=registered, allow_local_storage=True
    )
    assert release.version == "1" and release.lineage["data_md5"] == "md5-xyz"
    path = manifests / "overlays/staging/promotion.yaml"
    before = path.read_text()
    assert promote.promote(manifests, "staging", release, image=DIGEST)
    after = path.read_text()
    assert "# STORAGE_URI: an immutable model version" in after  # comments survive
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert {b.split(":")[0].strip() for _, b in changed} == {"value"}
    isvc = rendered_isvc(manifests, "staging")
    container = isvc["spec"]["predictor"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["STORAGE_URI"] == release.storage_uri and env["MODEL_VERSION"] == "1"
    assert container["image"] == DIGEST
    assert container["resources"]["limits"]["cpu"] == "1"  # base fields untouched
    notes = isvc["metadata"]["annotations"]
    assert notes["mlstack.io/model-version"] == "1" and notes["mlstack.io/git-sha"] == "b" * 40
    assert notes["mlstack.io/kfp-run-id"] == "kfp-run-9"
    # production is another file
    assert (
        rendered_isvc(manifests, "production")["metadata"]["annotations"][
            "mlstack.io/model-version"
        ]
        == "0"
    )


def test_second_identical_promotion_changes_nothing(registered, manifests):
    release = promote.resolve_release(MODEL, "1", tracking_uri=registered, allow_local_storage=True)
    assert promote.promote(manifests, "production", release, canary=10)
    path = manifests / "overlays/production/promotion.yaml"
    text, mtime = path.read_text(), path.stat().st_mtime_ns
    assert not promote.promote(manifests, "production", release, canary=10)
    assert path.read_text() == text and path.stat().st_mtime_ns == mtime
    assert rendered_isvc(manifests, "production")["spec"]["predictor"]["canaryTrafficPercent"] == 10


def test_refusals(registered, manifests, dataset_csv):
    client = MlflowClient(registered)
    run = client.search_runs([client.get_experiment_by_name("p").experiment_id])[0]
    ungated = client.create_model_version(MODEL, f"runs:/{run.info.run_id}/model", run.info.run_id)
    with pytest.raises(StackError, match="not marked as having passed the quality gates"):
        promote.resolve_release(
            MODEL, str(ungated.version), tracking_uri=registered, allow_local_storage=True
        )
    with pytest.raises(StackError, match="no version 'nope'"):
        promote.resolve_release(MODEL, "nope", tracking_uri=registered, allow_local_storage=True)
    release = promote.resolve_release(MODEL, "1", tracking_uri=registered, allow_local_storage=True)
    with pytest.raises(StackError, match="pinned by digest"):
        promote.promote(
            manifests, "staging", release, image="ghcr.io/mlstack/churn-predictor:latest"
        )
    with pytest.raises(StackError, match="canary must be 0..100"):
        promote.promote(manifests, "production", release, canary=150)
    with pytest.raises(StackError, match="no operation for /spec/predictor/canaryTrafficPercent"):
        promote.promote(manifests, "staging", release, canary=10)
    with pytest.raises(StackError, match="unknown environment 'qa'"):
        promote.promote(manifests, "qa", release)
    assert git(manifests.parent, "status", "--porcelain") == ""  # nothing half-written


def test_a_failed_write_leaves_the_old_file(registered, manifests, monkeypatch):
    path = manifests / "overlays/staging/promotion.yaml"
    before = path.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        promote.promote(
            manifests,
            "staging",
            promote.resolve_release(MODEL, "1", tracking_uri=registered, allow_local_storage=True),
        )
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".")] == []


def test_rollback_is_git_revert(registered, manifests):
    repo = manifests.parent
    path = manifests / "overlays/production/promotion.yaml"
    before = path.read_bytes()
    promote.promote(
        manifests,
        "production",
        promote.resolve_release(MODEL, "1", tracking_uri=registered, allow_local_storage=True),
        canary=25,
    )
    git(repo, "commit", "-qam", "promote churn-promote v1 to production")
    assert (
        rendered_isvc(manifests, "production")["metadata"]["annotations"][
            "mlstack.io/model-version"
        ]
        == "1"
    )
    git(repo, "revert", "--no-edit", "HEAD")
    assert path.read_bytes() == before
    assert (
        rendered_isvc(manifests, "production")["metadata"]["annotations"][
            "mlstack.io/model-version"
        ]
        == "0"
    )


def test_promote_command_line(registered, manifests):
    env = {"MLFLOW_TRACKING_URI": registered, "MLSTACK_MODEL_NAME": MODEL}
    local = "--allow-local-storage"  # a sqlite store's file:// artifacts: no cluster reads them
    done = run_cli(
        "promote", "--env", "staging", "--alias", "champion", "--manifests", str(manifests), local,
        env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("wrote ") and "churn-promote v1" in done.stdout
    again = run_cli(
        "promote", "--env", "staging", "--version", "1", "--manifests", str(manifests), local,
        env=env,
    )  # fmt: skip
    assert again.returncode == 0 and again.stdout.startswith("unchanged:")


def test_image_only_bump_and_model_card(registered, manifests, tmp_path):
    assert promote.promote(manifests, "staging", None, image=DIGEST)
    isvc = rendered_isvc(manifests, "staging")
    assert isvc["spec"]["predictor"]["containers"][0]["image"] == DIGEST
    assert isvc["metadata"]["annotations"]["mlstack.io/model-version"] == "0"  # model untouched
    with pytest.raises(StackError, match="nothing to promote"):
        promote.promote(manifests, "staging", None)
    card = promote.model_card(MODEL, "1", registered)
    assert card.startswith(f"## {MODEL} v1")
    assert "| roc_auc |" in card and "| data md5 | `md5-xyz` |" in card and "kfp-run-9" in card
    assert "min_roc_auc pass" in card


def test_command_line_image_only_and_model_card(registered, manifests, tmp_path):
    env = {"MLFLOW_TRACKING_URI": registered, "MLSTACK_MODEL_NAME": MODEL}
    base = ("promote", "--manifests", str(manifests))
    done = run_cli(*base, "--env", "staging", "--image", DIGEST, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith(DIGEST)
    card = tmp_path / "card.md"
    done = run_cli(
        *base, "--env", "production", "--version", "1", "--canary", "10", "--model-card", str(card),
        "--allow-local-storage", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert card.read_text().startswith(f"## {MODEL} v1")


def test_proxied_artifact_uris_map_onto_the_servers_destination():
    from mlstack.deploy.promote import storage_location

    dest = "s3://mlflow-artifacts"
    assert storage_location("mlflow-artifacts:/1/models/m-1/artifacts", dest) == (
        "s3://mlflow-artifacts/1/models/m-1/artifacts"
    )
    assert storage_location("mlflow-artifacts://mlflow:5000/1/r/artifacts/model", dest + "/") == (
        "s3://mlflow-artifacts/1/r/artifacts/model"
    )
    assert storage_location("s3://bucket/x", "") == "s3://bucket/x"  # not proxied: as it is
    with pytest.raises(StackError, match="MLSTACK_ARTIFACTS_DESTINATION"):
        storage_location("mlflow-artifacts:/1/x", "")


def test_promote_dry_run_shows_the_diff_and_writes_nothing(registered, manifests):
    env = {"MLFLOW_TRACKING_URI": registered, "MLSTACK_MODEL_NAME": MODEL}
    overlay = promote.overlay_file(manifests, "staging")
    before = overlay.read_bytes()
    base = ("promote", "--env", "staging", "--alias", "champion", "--manifests", str(manifests),
            "--allow-local-storage")  # fmt: skip
    text = run_cli(*base, "--dry-run", env=env)
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"--- a/{overlay.name}\n+++ b/{overlay.name}\n")
    assert "would write" in text.stdout.splitlines()[-1]
    data = json.loads(run_cli(*base, "--dry-run", "-o", "json", env=env).stdout)
    assert data["changed"] and data["dry_run"] and data["version"] == "1"
    assert any(line.startswith("+") and '"1"' in line for line in data["diff"].splitlines())
    assert overlay.read_bytes() == before  # nothing written
    wrote = json.loads(run_cli(*base, "-o", "json", env=env).stdout)
    assert wrote["changed"] and not wrote["dry_run"] and wrote["diff"] == data["diff"]
    assert overlay.read_bytes() != before
    again = json.loads(run_cli(*base, "-o", "json", env=env).stdout)
    assert again["changed"] is False and again["diff"] == ""
