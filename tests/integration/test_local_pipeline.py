"""The whole compiled pipeline, run locally with kfp.local on a temporary DVC repo."""

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient

from mlstack.data import generate, versions
from mlstack.errors import StackError
from mlstack.pipeline.local import run_pipeline
from tests.conftest import git
from tests.support.cli import run_cli

pytestmark = pytest.mark.slow
STEPS = ["evaluate", "ingest", "register", "train", "validate"]


def test_cold_run_cached_rerun_new_data_and_corrupt_data(settings, data_repo: Path, tmp_path):
    client = MlflowClient(settings.mlflow_tracking_uri)
    out = io.StringIO()

    first = run_pipeline(settings, out=out)
    assert first.executed == STEPS and first.cached == []
    assert (first.model_version, first.alias) == ("1", "champion")
    assert first.decision.passed and first.decision.champion is None
    assert first.data_md5 == versions.pointer_md5(data_repo / "data/churn.csv.dvc")
    assert first.git_sha == git(data_repo, "rev-parse", "HEAD")
    run = client.get_run(first.mlflow_run_id)
    assert run.data.tags["kfp_run_name"] == first.kfp_run_name
    assert run.data.tags["kfp_run_id"] and "{{" not in run.data.tags["kfp_run_id"]
    assert run.data.tags["data_md5"] == first.data_md5
    assert run.data.tags["git_sha"] == first.git_sha
    mv = client.get_model_version(settings.model_name, "1")
    assert mv.tags["data_md5"] == first.data_md5 and mv.tags["kfp_run_name"] == first.kfp_run_name
    assert "▶ train" in out.getvalue()
    rendered = first.render()
    for needle in ("roc_auc", "gate min_roc_auc", "PASS", "version 1, alias @champion", "md5"):
        assert needle in rendered

    # same data, same parameters: ingest, validate and train are cache hits; evaluate and
    # register never are (they read the registry as it is now) and find version 1 again
    second = run_pipeline(settings, out=io.StringIO())
    assert second.executed == ["evaluate", "register"]
    assert second.cached == ["ingest", "train", "validate"]
    assert second.mlflow_run_id == first.mlflow_run_id
    assert (second.model_version, second.alias) == ("1", "champion")
    assert first.registered_now and not second.registered_now
    assert "registered     earlier: version 1, alias @champion" in second.render()
    assert "registered     version 1, alias @champion" in first.render()
    assert len(client.search_model_versions(f"name='{settings.model_name}'")) == 1
    assert second.kfp_run_name != first.kfp_run_name

    # a new data version: everything runs again and is compared with the champion
    new = tmp_path / "v2.csv"
    generate.write_csv(generate.generate(1200, 99), new)
    versions.add_version(data_repo, new, data_path="data/churn.csv", message="data: v2")
    third = run_pipeline(settings, out=io.StringIO())
    assert third.executed[:2] == ["evaluate", "ingest"]
    assert third.decision.champion_version == "1" and third.decision.champion is not None
    assert third.data_md5 != first.data_md5
    if third.decision.passed:
        assert (third.model_version, third.alias) == ("2", "challenger")
    else:
        assert third.model_version is None and "registered     nothing" in third.render()

    # a schema-breaking version fails validation (at ingest: its rows cannot be the feature
    # store's source), names the column, registers nothing
    versions_before = len(client.search_model_versions(f"name='{settings.model_name}'"))
    bad = pd.read_csv(new).astype({"monthly_charges": object})
    bad.loc[3, "monthly_charges"] = "unknown"
    bad_path = tmp_path / "bad.csv"
    bad.to_csv(bad_path, index=False)
    versions.add_version(data_repo, bad_path, data_path="data/churn.csv", message="data: corrupt")
    with pytest.raises(StackError, match="step 'ingest'.*column 'monthly_charges': dtype"):
        run_pipeline(settings, out=io.StringIO())
    assert len(client.search_model_versions(f"name='{settings.model_name}'")) == versions_before


def test_failing_gates_register_nothing(settings):
    summary = run_pipeline(settings, arguments={"min_roc_auc": 0.999}, out=io.StringIO())
    assert not summary.decision.passed
    assert summary.model_version is None
    assert "registered     nothing" in summary.render()
    client = MlflowClient(settings.mlflow_tracking_uri)
    assert client.search_model_versions(f"name='{settings.model_name}'") == []


@pytest.mark.slow
def test_pipeline_run_reports_json_for_workflows(data_repo: Path, tmp_path: Path):
    env = {"MLSTACK_REPO_ROOT": str(data_repo), "MLSTACK_STATE_DIR": str(tmp_path / "state")}
    done = run_cli("pipeline", "run", "-o", "json", env=env, timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout)  # stdout is the JSON document alone
    assert summary["model_version"] == "1" and summary["alias"] == "champion"
    assert summary["registered_now"] and summary["passed"]
    assert sorted(summary["executed"]) == STEPS and summary["cached"] == []
    assert {g["name"] for g in summary["gates"]} >= {"min_roc_auc", "min_f1"}
