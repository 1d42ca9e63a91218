"""`python -m serving` on a model the project's loader refuses: one `error:` line, exit 1, and no
server ever answers; on the same model untouched, with its digest, it serves."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mlstack.data import generate
from mlstack.train.artifacts import model_digest
from serving.codec import NAMES
from tests.conftest import free_port
from tests.support.artifacts import (
    pickle_artifact,
    saved_model,
    tamper_threshold,
    trusting_artifact,
)
from tests.support.servers import call, running, stop

MODEL = "churn-loading"


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    return saved_model(tmp_path_factory.mktemp("good") / "model")


def _argv(model_dir: Path, port: int, digest: str) -> list[str]:
    return [sys.executable, "-m", "serving", "--model_dir", str(model_dir),
            "--model_name", MODEL, "--model_version", "1", "--model_digest", digest,
            "--host", "127.0.0.1", "--http_port", str(port), "--enable_grpc", "false"]  # fmt: skip


def _env() -> dict[str, str]:
    # MLflow's own default (pickle allowed), as on the machine of the report
    return {**os.environ, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "true"}


def refused(model_dir: Path, digest: str, log: Path, timeout: float = 180) -> tuple[int, str]:
    """Run the predictor on ``model_dir``; fail the test if it ever answers HTTP. Returns
    (exit status, stderr)."""
    port = free_port()
    with log.open("w") as err:
        proc = subprocess.Popen(
            _argv(model_dir, port, digest), stdout=subprocess.DEVNULL, stderr=err, env=_env()
        )
        deadline = time.monotonic() + timeout
        try:
            while proc.poll() is None:
                if call(f"http://127.0.0.1:{port}/v2/health/live")[0] != 0:
                    pytest.fail("the predictor started serving a refused model")
                if time.monotonic() > deadline:
                    pytest.fail(f"the predictor neither served nor exited in {timeout}s")
                time.sleep(0.3)
        finally:
            stop(proc)
    assert call(f"http://127.0.0.1:{port}/v2/health/live")[0] == 0
    return proc.returncode, log.read_text()


def _one_error_line(stderr: str) -> str:
    errors = [line for line in stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and errors[0].startswith("error: "), stderr
    assert "Traceback" not in stderr
    return errors[0]


@pytest.mark.reliability("predictor-refuses-pickle")
def test_predictor_refuses_a_pickle_model_and_its_command_never_runs(good, tmp_path):
    marker = tmp_path / "pwned"
    hostile = pickle_artifact(good, tmp_path / "pickle", marker)
    status, stderr = refused(hostile, "", tmp_path / "stderr")
    assert status == 1
    assert "serialization format 'pickle'" in _one_error_line(stderr)
    assert not marker.exists()


@pytest.mark.reliability("predictor-refuses-artifact-trusted-types")
def test_predictor_refuses_types_the_artifact_trusts_itself(good, tmp_path):
    hostile = trusting_artifact(good, tmp_path / "trusting")
    status, stderr = refused(hostile, "", tmp_path / "stderr")
    assert status == 1 and "untrusted types" in _one_error_line(stderr)
    assert "posix.system" in stderr


@pytest.mark.reliability("predictor-refuses-tampered-model")
def test_predictor_refuses_a_model_with_one_byte_changed(good, tmp_path):
    digest = model_digest(good)
    tampered = shutil.copytree(good, tmp_path / "tampered")
    tamper_threshold(tampered)
    status, stderr = refused(tampered, digest, tmp_path / "stderr")
    line = _one_error_line(stderr)
    assert status == 1 and digest in line and model_digest(tampered) in line


@pytest.mark.slow
def test_predictor_serves_the_untouched_model_with_its_digest(good, tmp_path):
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    row = json.loads(generate.generate(1, 5)[NAMES].to_json(orient="values"))[0]
    with running(
        _argv(good, port, model_digest(good)), tmp_path / "log", f"{base}/v2/health/ready",
        env=_env(),
    ):  # fmt: skip
        status, headers, body = call(f"{base}/v1/models/{MODEL}:predict", {"instances": [row]})
    assert status == 200, body
    assert headers["x-model-version"] == "1" and b'"predictions":[' in body
