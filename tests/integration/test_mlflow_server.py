"""The same pipeline against a real ``mlflow server`` on 127.0.0.1, and against a dead one."""

import io
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlstack.errors import StackError
from mlstack.pipeline.local import run_pipeline
from mlstack.settings import Settings
from tests.conftest import free_port
from tests.support import servers
from tests.support.cli import run_cli


@pytest.fixture
def mlflow_server(tmp_path: Path):
    with servers.mlflow_server(tmp_path, free_port()) as uri:
        yield uri


@pytest.mark.slow
def test_pipeline_against_mlflow_server(mlflow_server: str, data_repo: Path, tmp_path: Path):
    settings = Settings(
        repo_root=data_repo, state_dir=tmp_path / "state", tracking_uri=mlflow_server
    )
    summary = run_pipeline(settings, out=io.StringIO())
    assert (summary.model_version, summary.alias) == ("1", "champion")
    client = MlflowClient(mlflow_server)
    mv = client.get_model_version_by_alias(settings.model_name, "champion")
    assert mv.tags["data_md5"] == summary.data_md5
    assert client.get_run(summary.mlflow_run_id).data.metrics["roc_auc"] > 0.75
    # the artifacts went to the server's destination, not to a local directory
    assert any((tmp_path / "server-artifacts").rglob("MLmodel"))
    assert not (tmp_path / "state" / "mlartifacts").exists()


def test_unreachable_mlflow_is_one_line_before_any_step_runs(data_repo: Path, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(repo_root=data_repo, state_dir=tmp_path / "state", tracking_uri=dead)
    with pytest.raises(StackError, match="unreachable") as err:
        run_pipeline(settings, out=io.StringIO())
    assert "\n" not in str(err.value)
    assert not (tmp_path / "state" / "kfp").exists()


def test_cli_reports_unreachable_mlflow_in_one_line(data_repo: Path, tmp_path: Path):
    env = {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLSTACK_REPO_ROOT": str(data_repo),
        "MLSTACK_STATE_DIR": str(tmp_path / "state"),
    }
    done = run_cli("pipeline", "run", env=env)
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("error: MLflow tracking server http://127.0.0.1:")
