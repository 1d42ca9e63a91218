"""The same pipeline against a real ``mlflow server`` on 127.0.0.1, and against a dead one."""

import io
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlstack.errors import StackError
from mlstack.pipeline.local import run_pipeline
from mlstack.settings import Settings
from tests.conftest import free_port


@pytest.fixture
def mlflow_server(tmp_path: Path):
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--backend-store-uri",
            f"sqlite:///{tmp_path / 'server.db'}",
            "--artifacts-destination",
            str(tmp_path / "server-artifacts"),
            "--allowed-hosts",
            f"127.0.0.1:{port},localhost:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"},
    )
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail("mlflow server did not come up on 127.0.0.1")
        time.sleep(0.3)
    yield uri
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


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


def test_unreachable_mlflow_is_one_line_and_fast(data_repo: Path, tmp_path: Path):
    dead = f"http://127.0.0.1:{free_port()}"
    settings = Settings(repo_root=data_repo, state_dir=tmp_path / "state", tracking_uri=dead)
    started = time.monotonic()
    with pytest.raises(StackError, match="unreachable") as err:
        run_pipeline(settings, out=io.StringIO())
    assert time.monotonic() - started < 10
    assert "\n" not in str(err.value)
    assert not (tmp_path / "state" / "kfp").exists()


def test_cli_reports_unreachable_mlflow_in_one_line(data_repo: Path, tmp_path: Path):
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{free_port()}",
        "MLSTACK_REPO_ROOT": str(data_repo),
        "MLSTACK_STATE_DIR": str(tmp_path / "state"),
    }
    done = subprocess.run(
        [sys.executable, "-m", "mlstack.cli", "pipeline", "run"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().count("\n") == 0, done.stderr
    assert done.stderr.startswith("error: MLflow tracking server http://127.0.0.1:")
