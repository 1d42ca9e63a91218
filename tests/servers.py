"""Helpers for tests that run real local servers: a registered model, processes that must come
up on 127.0.0.1 and be stopped, and JSON over HTTP."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mlstack.data import generate
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


def registered_model(tmp: Path, model: str, lineage: TrainingLineage, max_iter: int = 80) -> str:
    """Train on 1500 seeded rows and register the model as @champion in a sqlite store; its URI."""
    uri = sqlite_store(tmp / "mlflow")
    data = tmp / "train.csv"
    generate.write_csv(generate.generate(1500, 7), data)
    trained = train_and_log(data, HyperParams(max_iter=max_iter), lineage, uri, "tests", 0.25, 42)
    gates = Gates(min_roc_auc=0.5, min_f1=0.1)
    decision = evaluate(data, trained.run_id, model, uri, "tests", gates, 0.25, 42)
    registry.register(trained.run_id, trained.model_uri, model, decision, uri, "tests")
    return uri


def start(cmd: list[str], log: Path, ready_url: str, env: dict | None = None, timeout: float = 90):
    """Start ``cmd`` and wait until ``ready_url`` answers 200; fail the test with its log if not."""
    handle = log.open("w")
    proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + timeout
    while call(ready_url)[0] != 200:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"{cmd[0]} did not come up:\n" + log.read_text()[-3000:])
        time.sleep(0.3)
    return proc


def stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
