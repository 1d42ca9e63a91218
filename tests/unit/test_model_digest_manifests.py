"""The cluster side of model loading: the predictor gets the digest its files must have (written
by `mlstack promote`), and every workload running our images refuses pickle in MLflow's loaders."""

from __future__ import annotations

import shutil

import pytest

from mlstack.deploy import promote
from mlstack.settings import Settings, code_root
from tests.support.kube import render

ROOT = code_root()
OVERLAYS = ("staging", "production")
# every kustomization whose workloads may run one of our images
SOURCES = (
    "manifests/monitoring",
    "manifests/platform/base",
    "manifests/platform/dev",
    *(f"manifests/overlays/{env}" for env in OVERLAYS),
)
OURS = "ghcr.io/mlstack/"
DIGEST = "sha256:" + "c" * 64


def _containers(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    if doc["kind"] == "InferenceService":
        return list(spec["predictor"].get("containers", []))
    pod = ((spec.get("jobTemplate") or {}).get("spec") or spec).get("template", {}).get("spec", {})
    return [*pod.get("initContainers", []), *pod.get("containers", [])]


def _isvc_container(docs: list[dict]) -> dict:
    [isvc] = [d for d in docs if d["kind"] == "InferenceService"]
    return isvc["spec"]["predictor"]["containers"][0]


@pytest.mark.parametrize("env", OVERLAYS)
def test_promote_writes_the_release_digest_into_the_predictors_env(env, tmp_path):
    manifests = shutil.copytree(ROOT / "manifests", tmp_path / "manifests")
    container = _isvc_container(render(manifests / "overlays" / env))
    names = [e["name"] for e in container["env"]]
    # the promotion pointers' indexes: STORAGE_URI, MODEL_VERSION stay first, MODEL_DIGEST is 3
    assert names[:2] == ["STORAGE_URI", "MODEL_VERSION"] and names[3] == "MODEL_DIGEST"
    assert promote.MODEL_DIGEST.endswith(f"/env/{names.index('MODEL_DIGEST')}/value")
    release = promote.Release("churn", "4", "s3://mlflow-artifacts/x", {}, digest=DIGEST)
    assert promote.promote(manifests, env, release)
    env_values = {e["name"]: e.get("value") for e in _isvc_container(
        render(manifests / "overlays" / env))["env"]}  # fmt: skip
    assert env_values["MODEL_DIGEST"] == DIGEST and env_values["MODEL_VERSION"] == "4"
    assert env_values["OMP_NUM_THREADS"] == "1"  # the index shift hit nothing else


@pytest.mark.reliability("workload-allows-pickle")
@pytest.mark.parametrize("source", SOURCES)
def test_every_workload_running_our_images_refuses_pickle(source):
    ours = [
        (doc["metadata"]["name"], c)
        for doc in render(ROOT / source)
        for c in _containers(doc)
        # the Redis image (Debian's redis-server) has no Python and loads no model
        if str(c.get("image", "")).startswith(OURS)
        and str(c["image"]).split("@")[0] != Settings().redis_image.split("@")[0]
    ]
    for name, container in ours:
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert env.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION") == "false", (source, name)
    assert ours, f"{source} runs none of our images"  # the check looked at something


@pytest.mark.reliability("trial-allows-pickle")
def test_the_katib_trial_and_the_compiled_tuning_pipeline_refuse_pickle():
    import json

    import yaml

    from mlstack.pipeline.compile import read_ir
    from mlstack.settings import load_settings

    def trial_env(experiment: dict) -> dict:
        pod = experiment["spec"]["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]
        [container] = [c for c in pod["containers"] if c["image"].startswith(OURS)]
        return {e["name"]: e.get("value") for e in container["env"]}

    experiment = yaml.safe_load((ROOT / "katib" / "experiment.yaml").read_text())
    assert trial_env(experiment)["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
    ir, _ = read_ir(load_settings().tuning_ir_path)
    compiled = ir["root"]["inputDefinitions"]["parameters"]["experiment_yaml"]["defaultValue"]
    assert trial_env(json.loads(compiled))["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] == "false"
