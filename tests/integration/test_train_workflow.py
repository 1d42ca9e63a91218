"""The continuous-training workflow's data step, run as GitHub runs it: the step's own shell text
from .github/workflows/train.yml, under the job's env, with bash, in a fresh clone of a real DVC
repository with two remotes (the default `local` one, which a runner does not have, and `s3`, a
moto S3 server on 127.0.0.1 holding the data), against a real MLflow store."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import boto3
import pytest
import yaml
from mlflow import MlflowClient

from mlstack.data import versions
from mlstack.settings import DEFAULTS, code_root
from mlstack.train.tracking import sqlite_store
from tests.conftest import free_port, git

pytestmark = pytest.mark.slow

WORKFLOW = code_root() / ".github" / "workflows" / "train.yml"
BUCKET = "mlstack-data"
# the job env's values GitHub fills from secrets, variables and the event, as this test fills them
FILLED = {
    "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD",
    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "KFP_ENDPOINT",
    "DATA_REV", "TRIGGER",
}  # fmt: skip


def job() -> dict:
    return yaml.safe_load(WORKFLOW.read_text())["jobs"]["train"]


def data_step() -> dict:
    [step] = [s for s in job()["steps"] if s.get("id") == "data"]
    return step


@pytest.fixture(scope="module")
def s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    keys = {"AWS_ACCESS_KEY_ID": "test-access-key", "AWS_SECRET_ACCESS_KEY": "test-secret-key"}
    boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1",
        aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"],
    ).create_bucket(Bucket=BUCKET)  # fmt: skip
    yield {"AWS_ENDPOINT_URL": endpoint, **keys}
    server.stop()


@pytest.fixture(scope="module")
def origin(tmp_path_factory, s3) -> tuple[Path, str]:
    """The project's repository as a runner clones it: a data version pushed to the S3 remote
    only (.dvc/config as this repository's: `local` the default, `s3` beside it)."""
    tmp = tmp_path_factory.mktemp("origin")
    repo = versions.seeded_repo(
        tmp / "repo", tmp / "local-remote", data_path=DEFAULTS.data_path, rows=300, seed=7
    )
    env = {**os.environ, **s3, "AWS_DEFAULT_REGION": "us-east-1"}
    dvc = [sys.executable, "-m", "dvc"]
    subprocess.run([*dvc, "remote", "add", "s3", f"s3://{BUCKET}/churn"], cwd=repo, check=True)
    git(repo, "commit", "-qam", "dvc: s3 remote")
    subprocess.run([*dvc, "push", "-q", "-r", "s3"], cwd=repo, env=env, check=True, timeout=300)
    shutil.rmtree(tmp / "local-remote")  # a runner has no local remote
    md5 = versions.pointer_md5(repo / f"{DEFAULTS.data_path}.dvc")
    return repo, md5


def run_step(script: str, origin: Path, tmp: Path, s3: dict, **env: str) -> tuple[int, str, Path]:
    """``script`` as the runner runs a step (bash -e) in a fresh clone, under the job's env:
    its literal values as written, the ones GitHub fills given here. (exit code, output,
    GITHUB_OUTPUT file)."""
    clone = tmp / "clone"
    git(tmp, "clone", "-q", str(origin), str(clone))
    (clone / ".venv").symlink_to(code_root() / ".venv")  # what `make setup` made
    written = job()["env"]
    literal = {k: str(v) for k, v in written.items() if "${{" not in str(v)}
    assert set(written) - set(literal) == FILLED, "a new job env value: fill it here"
    filled = {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": "", "KFP_ENDPOINT": "",
              "DATA_REV": "HEAD", **s3, **env}  # fmt: skip
    out, summary = tmp / "github_output", tmp / "step_summary"
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("MLSTACK_", "AWS_", "MLFLOW_T"))
    }
    done = subprocess.run(
        ["bash", "-e", "-c", script],
        cwd=clone,
        env={**base, **literal, **filled, "AWS_DEFAULT_REGION": "us-east-1",
             "GITHUB_OUTPUT": str(out), "GITHUB_STEP_SUMMARY": str(summary)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return done.returncode, done.stdout + done.stderr, out


@pytest.mark.reliability("ct-fresh-clone-no-local-remote")
def test_the_data_step_reads_the_s3_remote_on_a_fresh_clone(origin, s3, tmp_path):
    repo, md5 = origin
    uri = sqlite_store(tmp_path / "mlflow")
    code, output, out = run_step(
        data_step()["run"], repo, tmp_path, s3, MLFLOW_TRACKING_URI=uri, TRIGGER="push/"
    )
    assert code == 0, output
    assert f"data md5 {md5}" in output and "read from DVC remote 's3'" in output
    assert "no @champion yet: train" in output
    assert out.read_text() == "train=true\n"
    # the step it replaces pulled from the default remote, which a runner does not have
    (tmp_path / "old").mkdir()
    code, output, _ = run_step(
        ".venv/bin/dvc pull data/churn.csv.dvc", repo, tmp_path / "old", s3, TRIGGER="push/"
    )
    assert code == 1 and "failed to pull data from the cloud" in output, output


def champion_trained_on(uri: str, md5: str, model_dir: Path) -> None:
    """A registered @champion whose lineage tag names ``md5`` (the tag register sets)."""
    client = MlflowClient(uri)
    client.create_registered_model(DEFAULTS.model_name)
    model_dir.mkdir()
    version = client.create_model_version(
        DEFAULTS.model_name, model_dir.as_uri(), tags={"data_md5": md5}
    )
    client.set_registered_model_alias(DEFAULTS.model_name, "champion", version.version)


@pytest.mark.reliability("ct-drift-on-trained-data")
@pytest.mark.parametrize(
    ("trigger", "train"),
    [("repository_dispatch/drift-detected", "false"), ("workflow_dispatch/", "true")],
)
def test_a_drift_alert_on_the_champions_data_is_recorded_not_retrained(
    origin, s3, tmp_path, trigger, train
):
    repo, md5 = origin
    uri = sqlite_store(tmp_path / "mlflow")
    champion_trained_on(uri, md5, tmp_path / "model")
    code, output, out = run_step(
        data_step()["run"], repo, tmp_path, s3, MLFLOW_TRACKING_URI=uri, TRIGGER=trigger
    )
    assert code == 0, output
    assert "@champion (version 1) was trained on this data version" in output
    assert out.read_text() == f"train={train}\n"
    if train == "false":
        summary = (tmp_path / "step_summary").read_text()
        assert (
            "drift alert on the data @champion was trained on: recorded, not retrained" in summary
        )
    # the training steps run only when the data step says so
    conditions = [s.get("if", "") for s in job()["steps"] if "pipeline run" in s.get("run", "")
                  or "run create" in s.get("run", "")]  # fmt: skip
    assert len(conditions) == 2
    assert all("steps.data.outputs.train == 'true'" in c for c in conditions)


@pytest.mark.reliability("ct-data-remote-unreachable")
def test_an_unreachable_remote_fails_the_step_in_one_error_line(origin, s3, tmp_path):
    repo, _ = origin
    down = {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}", "AWS_MAX_ATTEMPTS": "1"}
    code, output, out = run_step(
        data_step()["run"], repo, tmp_path, down,
        MLFLOW_TRACKING_URI=sqlite_store(tmp_path / "mlflow"), TRIGGER="push/",
    )  # fmt: skip
    assert code == 1, output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "through DVC" in errors[0], output
    assert not out.exists() or "train=" not in out.read_text()
