"""Shared fixtures: temporary git+DVC repositories, tiny datasets, a local MLflow store."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest

from mlstack.data import generate
from mlstack.settings import Settings
from mlstack.train.tracking import sqlite_store

ROOT = Path(__file__).resolve().parents[1]

# telemetry off, and a git identity for commits in temporary repos (never the user's config)
os.environ.update(
    {
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DVC_NO_ANALYTICS": "1",
        "GIT_AUTHOR_NAME": "mlstack tests",
        "GIT_AUTHOR_EMAIL": "tests@mlstack.invalid",
        "GIT_COMMITTER_NAME": "mlstack tests",
        "GIT_COMMITTER_EMAIL": "tests@mlstack.invalid",
    }
)
os.environ.pop("MLFLOW_TRACKING_URI", None)

SMALL_ROWS = 1200


@pytest.fixture(autouse=True)
def _no_tracking_uri_leak():
    """mlflow.set_tracking_uri also sets MLFLOW_TRACKING_URI: keep one test's store from the next."""
    yield
    os.environ.pop("MLFLOW_TRACKING_URI", None)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_data_repo(path: Path, remote: Path, rows: int = SMALL_ROWS, seed: int = 7) -> Path:
    """A git repo with DVC, a local-directory default remote and one committed data version."""
    from mlstack.data import versions

    return versions.seeded_repo(path, remote, data_path="data/churn.csv", rows=rows, seed=seed)


@pytest.fixture
def data_repo(tmp_path: Path) -> Path:
    return make_data_repo(tmp_path / "repo", tmp_path / "remote")


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return sqlite_store(tmp_path / "mlflow")


@pytest.fixture
def settings(data_repo: Path, tmp_path: Path, tracking_uri: str) -> Settings:
    return Settings(repo_root=data_repo, state_dir=tmp_path / "state", tracking_uri=tracking_uri)


@pytest.fixture
def dataset_csv(tmp_path: Path) -> Path:
    path = tmp_path / "churn.csv"
    generate.write_csv(generate.generate(SMALL_ROWS, 7), path)
    return path
