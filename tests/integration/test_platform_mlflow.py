"""The MLflow server exactly as manifests/platform runs it (the rendered Deployment's arguments and
environment), for real on 127.0.0.1: a PostgreSQL backend store, an S3 artifact store (moto)
reached only through the server's artifact proxy, and its allowed Host headers."""

import os
import re
import sys
from pathlib import Path

import boto3
import pytest
from mlflow import MlflowClient

from mlstack.data import generate
from mlstack.deploy import promote
from mlstack.errors import StackError
from mlstack.settings import Gates, code_root
from mlstack.train import tracking
from mlstack.train.training import HyperParams, TrainingLineage
from tests.conftest import free_port
from tests.support import stand_ins
from tests.support.kube import render
from tests.support.servers import start, stop, train_and_register

pytestmark = pytest.mark.slow


@pytest.fixture
def postgres():
    with stand_ins.postgres(free_port()) as uri:
        yield uri


@pytest.fixture
def s3():
    with stand_ins.s3(free_port()) as endpoint:
        yield endpoint


def deployment_command(port: int, secrets: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    """The container's command line and environment from the rendered dev Deployment: its env
    values plus ``secrets`` (what its secretKeyRefs give), `$(VAR)` in args expanded from them,
    the image's entrypoint (`mlflow`) first, bound to 127.0.0.1:``port``."""
    [deployment] = [d for d in render(code_root() / "manifests/platform/dev")
                    if d["kind"] == "Deployment" and d["metadata"]["name"] == "mlflow"]  # fmt: skip
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    from_secrets = {e["name"] for e in container["env"] if "valueFrom" in e}
    assert from_secrets == set(secrets), from_secrets
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e} | secrets
    args = [re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], a) for a in container["args"]]
    args = ["--host=127.0.0.1" if a.startswith("--host=") else a for a in args]
    args = [f"--port={port}" if a.startswith("--port=") else a for a in args]
    return [str(Path(sys.executable).parent / "mlflow"), *args], env


def test_mlflow_server_as_deployed_postgres_s3_proxy_and_allowed_hosts(tmp_path, postgres, s3):
    keys = {"AWS_ACCESS_KEY_ID": "platform-key", "AWS_SECRET_ACCESS_KEY": "platform-secret"}
    boto3.client("s3", endpoint_url=s3, region_name="us-east-1", **{
        k.lower(): v for k, v in keys.items()}).create_bucket(Bucket="mlflow-artifacts")  # fmt: skip
    port = free_port()
    cmd, env = deployment_command(port, {"MLFLOW_BACKEND_STORE_URI": postgres, **keys})
    env["MLFLOW_S3_ENDPOINT_URL"] = s3  # MinIO's Service in the cluster; moto here
    env.update({k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ})
    proc = start(cmd, tmp_path / "mlflow.log", f"http://127.0.0.1:{port}/health", env=env,
                 timeout=120)  # fmt: skip
    try:
        import urllib.request

        def status(host: str) -> int:
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=1",
                headers={"Host": host},
            )
            try:
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return resp.status
            except urllib.error.HTTPError as err:
                return err.code

        assert status("mlflow.mlops.svc.cluster.local:5000") == 200  # in-cluster clients
        assert status("evil.example") == 403  # DNS rebinding: refused
        # a client with no S3 credentials of its own: artifacts go through the server's proxy
        for key in keys:
            assert key not in os.environ
        client = MlflowClient(tracking_uri=f"http://localhost:{port}")  # a port-forward's Host
        experiment = client.create_experiment("platform")
        run = client.create_run(experiment)
        client.log_metric(run.info.run_id, "roc_auc", 0.9)
        client.log_text(run.info.run_id, "model card", "card.md")
        client.set_terminated(run.info.run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:/")
        store = boto3.client("s3", endpoint_url=s3, region_name="us-east-1",
                             **{k.lower(): v for k, v in keys.items()})  # fmt: skip
        stored = store.list_objects_v2(Bucket="mlflow-artifacts")
        assert any(o["Key"].endswith(f"{run.info.run_id}/artifacts/card.md")
                   for o in stored.get("Contents", []))  # fmt: skip
        # the registry and its aliases live in Postgres
        client.log_text(run.info.run_id, "flavors: {}", "model/MLmodel")
        client.create_registered_model("churn-classifier")
        version = client.create_model_version(
            "churn-classifier", f"{run.info.artifact_uri}/model", run.info.run_id,
            tags={tracking.TAG_GATES_PASSED: "true"},
        )  # fmt: skip
        client.set_registered_model_alias("churn-classifier", "champion", version.version)
        again = MlflowClient(tracking_uri=f"http://localhost:{port}")
        assert again.get_model_version_by_alias("churn-classifier", "champion").version == "1"
        assert again.get_metric_history(run.info.run_id, "roc_auc")[0].value == 0.9
        uri = f"http://localhost:{port}"
        dest = env["MLFLOW_ARTIFACTS_DESTINATION"]
        # that hand-made version (no logged model, no evaluation) is not promotable
        with pytest.raises(StackError, match="is not a model logged by a training run"):
            promote.resolve_release("churn-classifier", "champion", tracking_uri=uri,
                                    artifacts_destination=dest)  # fmt: skip
        # one the pipeline's steps registered is: its digest checked through the proxy, and
        # promotion hands KServe an S3 location that really holds the model, not a proxy URI
        data = tmp_path / "churn.csv"
        generate.write_csv(generate.generate(1500, 7), data)
        train_and_register(
            data, params=HyperParams(max_iter=40), lineage=TrainingLineage("md5", "d", "a" * 40,
            "kfp"), model="churn-promoted", tracking_uri=uri, experiment="platform", gates=Gates(),
        )  # fmt: skip
        with pytest.raises(StackError, match="set MLSTACK_ARTIFACTS_DESTINATION"):
            promote.resolve_release("churn-promoted", "champion", tracking_uri=uri)
        release = promote.resolve_release(
            "churn-promoted", "champion", tracking_uri=uri, artifacts_destination=dest
        )
        assert release.storage_uri.startswith("s3://mlflow-artifacts/")
        bucket, _, key = release.storage_uri.removeprefix("s3://").partition("/")
        store.head_object(Bucket=bucket, Key=f"{key}/MLmodel")
    finally:
        stop(proc)
