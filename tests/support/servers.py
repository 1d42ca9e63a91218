"""Helpers for tests that run real local servers: a registered model, processes that must come
up on 127.0.0.1 and be stopped, and JSON over HTTP."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlstack.data import generate
from mlstack.deploy.promote import Release, resolve_release
from mlstack.settings import Gates
from mlstack.train import registry
from mlstack.train.evaluation import evaluate
from mlstack.train.tracking import sqlite_store
from mlstack.train.training import HyperParams, TrainingLineage, train_and_log


def call(url: str, body: bytes | dict | None = None, content_type: str = "application/json"):
    """(status, headers, body bytes) of a GET, or of a POST when there is a body."""
    data = json.dumps(body).encode() if isinstance(body, dict | list) else body
    req = urllib.request.Request(url, data=data, method="POST" if data is not None else "GET")
    if data is not None:
        req.add_header("content-type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except OSError:
        return 0, {}, b""


def two_releases(
    root: Path, *, model: str, lineage: TrainingLineage, experiment: str
) -> tuple[str, dict[str, Release]]:
    """A sqlite store under ``root`` holding two versions of ``model`` trained with the same
    parameters by the pipeline's train, evaluate and register steps (v1 the bootstrap champion,
    v2 a challenger that ties it), and their releases. Returns the tracking URI and releases."""
    uri = sqlite_store(root / "mlflow")
    data = root / "train.csv"
    generate.write_csv(generate.generate(1200, 7), data)
    for _ in range(2):
        train_and_register(
            data, params=HyperParams(max_iter=40), lineage=lineage, model=model,
            tracking_uri=uri, experiment=experiment, gates=Gates(),
        )  # fmt: skip
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    releases = {
        v: resolve_release(model, v, tracking_uri=uri, allow_local_storage=True) for v in ("1", "2")
    }
    return uri, releases


def train_and_register(
    data: Path,
    *,
    params: HyperParams,
    lineage: TrainingLineage,
    model: str,
    tracking_uri: str,
    experiment: str,
    gates: Gates,
) -> None:
    """Train on ``data``, evaluate against ``gates`` and register the version: the pipeline's
    train, evaluate and register steps called directly (split 0.25, seed 42)."""
    trained = train_and_log(
        data,
        params,
        lineage=lineage,
        tracking_uri=tracking_uri,
        experiment_name=experiment,
        test_size=0.25,
        split_seed=42,
    )
    decision = evaluate(
        data,
        trained.run_id,
        model_name=model,
        tracking_uri=tracking_uri,
        experiment_name=experiment,
        gates=gates,
        test_size=0.25,
        split_seed=42,
    )
    registry.register(
        trained.run_id,
        trained.model_uri,
        model_name=model,
        decision=decision,
        tracking_uri=tracking_uri,
        experiment_name=experiment,
    )


def registered_model(tmp: Path, model: str, lineage: TrainingLineage, max_iter: int = 80) -> str:
    """Train on 1500 seeded rows and register the model as @champion in a sqlite store; its URI."""
    uri = sqlite_store(tmp / "mlflow")
    data = tmp / "train.csv"
    generate.write_csv(generate.generate(1500, 7), data)
    train_and_register(
        data,
        params=HyperParams(max_iter=max_iter),
        lineage=lineage,
        model=model,
        tracking_uri=uri,
        experiment="tests",
        gates=Gates(),  # the floors: a run may not loosen them
    )
    return uri


def start(cmd: list[str], log: Path, ready_url: str, env: dict | None = None, timeout: float = 120):
    """Start ``cmd`` and wait until ``ready_url`` answers 200; fail the test with its log if not
    (the process is killed then). The process leads a process group of its own, so ``stop`` and
    ``kill`` also end what it started (``mlflow server`` serves from a uvicorn child, which its
    parent's SIGKILL would leave running)."""
    handle = log.open("w")
    proc = subprocess.Popen(
        cmd, stdout=handle, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while call(ready_url)[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            pytest.fail(f"{cmd[0]} did not come up:\n" + log.read_text()[-3000:])
        time.sleep(0.3)
    return proc


def _signal_group(proc: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group has already ended
        os.killpg(proc.pid, signum)


def kill(proc: subprocess.Popen) -> None:
    """SIGKILL ``proc`` and every process of its group (a crash of the whole server), reaped."""
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def stop(proc: subprocess.Popen, grace: float = 30) -> None:
    """Stop ``proc``: SIGTERM, then SIGKILL if it has not exited within ``grace`` seconds; never
    raises on a slow exit (a loaded machine), and always reaps the process. What is left of its
    process group afterwards (a child it did not stop) is killed too."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
    proc.wait()
    # a group with a member left keeps its id (no other process can take it); an ended one: ESRCH
    _signal_group(proc, signal.SIGKILL)


@contextlib.contextmanager
def running(
    cmd: list[str], log: Path, ready_url: str, env: dict | None = None, timeout: float = 120
) -> Iterator[subprocess.Popen]:
    """``start`` as a context: the process is stopped on exit, whatever happened inside."""
    proc = start(cmd, log, ready_url, env=env, timeout=timeout)
    try:
        yield proc
    finally:
        stop(proc)


# what the platform's Deployment sets (manifests/platform/base/mlflow.yaml): MLflow 3's job runner
# (about eight more Python processes, seconds of CPU at each start) serves nothing the stack uses
MLFLOW_SERVER_ENV = {
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
}


def mlflow_server_argv(port: int, root: Path) -> list[str]:
    """A tracking server on 127.0.0.1:``port`` with its sqlite store and artifact destination
    under ``root`` (artifacts proxied: clients need no storage of their own)."""
    return [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--workers", "1",
        "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
        "--artifacts-destination", str(root / "server-artifacts"),
        "--allowed-hosts", f"127.0.0.1:{port},localhost:{port}",
    ]  # fmt: skip


@contextlib.contextmanager
def mlflow_server(root: Path, port: int, timeout: float = 120) -> Iterator[str]:
    """A local MLflow tracking server for the duration of the context (up within ``timeout``
    seconds); yields its URI."""
    env = {**os.environ, **MLFLOW_SERVER_ENV}
    uri = f"http://127.0.0.1:{port}"
    argv = mlflow_server_argv(port, root)
    with running(argv, root / "mlflow.log", f"{uri}/health", env=env, timeout=timeout):
        yield uri
