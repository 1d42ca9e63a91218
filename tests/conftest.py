"""Shared fixtures: temporary git+DVC repositories, tiny datasets, a local MLflow store."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

from mlstack.data import generate
from mlstack.settings import DEFAULTS, Settings
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
# A run started in the background by a non-interactive shell (`nohup make test &`, a CI step's
# `cmd &`) inherits SIGINT ignored, and so do the processes it starts: the Ctrl-C tests need
# Python's own handler here and in the CLI processes they interrupt.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

SMALL_ROWS = 1200
DATA_PATH = DEFAULTS.data_path


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


# repositories made once per test session (per rows, seed and where the remote lies) and copied
_DATA_TEMPLATES: dict[tuple[int, int, str], tuple[Path, Path]] = {}
_TEMPLATE_ROOT = Path(tempfile.mkdtemp(prefix="mlstack-test-templates-"))
atexit.register(shutil.rmtree, _TEMPLATE_ROOT, ignore_errors=True)


def make_data_repo(path: Path, remote: Path, rows: int = SMALL_ROWS, seed: int = 7) -> Path:
    """A git repo with DVC, a local-directory default remote and one committed data version.

    ``versions.seeded_repo`` runs once per test session for each (rows, seed, remote relative to
    the repository); each call gets its own copy of that repository and its remote. The template
    records its remote relative to ``.dvc/`` (DVC resolves it there), so the copy's DVC config
    names the copy's remote and nothing is shared between tests."""
    from mlstack.data import versions

    relative = os.path.relpath(remote, path)
    key = (rows, seed, relative)
    if key not in _DATA_TEMPLATES:
        base = _TEMPLATE_ROOT / str(len(_DATA_TEMPLATES)) / "a" / "b" / "c" / "d" / "e"
        template_repo = base / "repo"
        template_remote = Path(os.path.normpath(template_repo / relative))
        if not template_remote.is_relative_to(_TEMPLATE_ROOT):
            return versions.seeded_repo(path, remote, data_path=DATA_PATH, rows=rows, seed=seed)
        template_repo.mkdir(parents=True)
        versions.seeded_repo(
            template_repo, Path(relative), data_path=DATA_PATH, rows=rows, seed=seed
        )
        _DATA_TEMPLATES[key] = (template_repo, template_remote)
    template_repo, template_remote = _DATA_TEMPLATES[key]
    shutil.copytree(template_repo, path, symlinks=True, dirs_exist_ok=True)
    shutil.copytree(template_remote, remote, symlinks=True, dirs_exist_ok=True)
    return path


@pytest.fixture
def data_repo(tmp_path: Path) -> Path:
    return make_data_repo(tmp_path / "repo", tmp_path / "remote")


_MLFLOW_TEMPLATE = _TEMPLATE_ROOT / "mlflow"


def new_sqlite_store(directory: Path) -> str:
    """``sqlite_store(directory)`` with its tables already made: MLflow's migrations of a new
    database (seconds) run once per test session, each store is a copy of that empty one."""
    template = _MLFLOW_TEMPLATE / "mlflow.db"
    if not template.exists():
        from mlflow import MlflowClient

        MlflowClient(sqlite_store(_MLFLOW_TEMPLATE)).search_experiments()
    uri = sqlite_store(directory)
    shutil.copyfile(template, directory / "mlflow.db")
    return uri


@pytest.fixture
def tracking_uri(tmp_path: Path) -> str:
    return new_sqlite_store(tmp_path / "mlflow")


@pytest.fixture
def settings(data_repo: Path, tmp_path: Path, tracking_uri: str) -> Settings:
    return Settings(repo_root=data_repo, state_dir=tmp_path / "state", tracking_uri=tracking_uri)


@pytest.fixture
def dataset_csv(tmp_path: Path) -> Path:
    path = tmp_path / "churn.csv"
    generate.write_csv(generate.generate(SMALL_ROWS, 7), path)
    return path
