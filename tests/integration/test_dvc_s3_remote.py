"""The DVC round trip on an S3-compatible remote: a moto S3 server on 127.0.0.1.

Credentials come only from the environment; the repo config holds the bucket and endpoint.
"""

import subprocess
import sys
from pathlib import Path

import boto3
import pytest

from mlstack.data import generate, versions
from mlstack.errors import StackError
from tests.conftest import free_port, git

BUCKET = "mlstack-data"


@pytest.fixture
def s3_endpoint(monkeypatch):
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=BUCKET)
    yield endpoint
    server.stop()


def dvc(repo: Path, *args: str) -> None:
    subprocess.run([sys.executable, "-m", "dvc", *args], cwd=repo, check=True)


def test_s3_remote_round_trip(data_repo: Path, tmp_path: Path, s3_endpoint: str):
    dvc(data_repo, "remote", "add", "-d", "s3", f"s3://{BUCKET}/churn")
    dvc(data_repo, "remote", "modify", "s3", "endpointurl", s3_endpoint)
    git(data_repo, "commit", "-qam", "dvc: s3 remote")
    assert "secret" not in (data_repo / ".dvc/config").read_text()

    new = tmp_path / "v2.csv"
    generate.write_csv(generate.generate(800, 21), new)
    version = versions.add_version(
        data_repo, new, data_path="data/churn.csv", message="data: v2 on s3"
    )

    keys = [
        o["Key"]
        for o in boto3.client("s3", endpoint_url=s3_endpoint)
        .list_objects_v2(Bucket=BUCKET)
        .get("Contents", [])
    ]
    assert any(version.md5[2:] in k for k in keys), keys

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(data_repo), str(clone))
    got = versions.read_version(str(clone), "data/churn.csv", rev="HEAD", out=tmp_path / "out.csv")
    assert got.md5 == version.md5
    assert (tmp_path / "out.csv").read_bytes() == new.read_bytes()


@pytest.mark.parametrize("credentials", [True, False])
def test_unreachable_s3_remote_fails_cleanly_and_commits_nothing(
    data_repo: Path, tmp_path: Path, monkeypatch, credentials: bool
):
    if credentials:
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    else:
        for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
            monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    dvc(data_repo, "remote", "add", "-d", "s3", f"s3://{BUCKET}/churn")
    dvc(data_repo, "remote", "modify", "s3", "endpointurl", f"http://127.0.0.1:{free_port()}")
    git(data_repo, "commit", "-qam", "dvc: s3 remote (down)")
    head = git(data_repo, "rev-parse", "HEAD")
    new = tmp_path / "v2.csv"
    generate.write_csv(generate.generate(800, 22), new)
    with pytest.raises(StackError) as err:
        versions.add_version(data_repo, new, data_path="data/churn.csv", message="never")
    assert "dvc push" in str(err.value) and "\n" not in str(err.value)
    assert git(data_repo, "rev-parse", "HEAD") == head
    assert git(data_repo, "status", "--porcelain") == ""


def test_endpoint_from_the_environment(
    data_repo: Path, tmp_path: Path, s3_endpoint: str, monkeypatch
):
    """No endpoint in the repo's config: AWS_ENDPOINT_URL (what train.yml sets) is enough."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("MLSTACK_DVC_REMOTE", "s3")
    dvc(data_repo, "remote", "add", "s3", f"s3://{BUCKET}/env")
    git(data_repo, "commit", "-qam", "dvc: s3 remote, endpoint from the environment")
    new = tmp_path / "v3.csv"
    generate.write_csv(generate.generate(600, 23), new)
    version = versions.add_version(
        data_repo, new, data_path="data/churn.csv", message="data: v3", remote="s3"
    )
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(data_repo), str(clone))
    got = versions.read_version(
        str(clone), "data/churn.csv", rev="HEAD", out=tmp_path / "o.csv", remote="s3"
    )
    assert got.md5 == version.md5
