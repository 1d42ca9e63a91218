"""Our rendered staging and production InferenceServices against what KServe v0.20.0 (the version
argocd/platform pins) and the Knative it runs on check or do beyond the CRD schema: the validating
webhook (name, autoscaling, replicas, concurrency, logger, blocked env vars, the custom predictor's
protocol), the deployment mode the controller picks from the annotation, the custom predictor's
container name and the STORAGE_URI env the storage initializer is injected for, the mount path it
fills, the component port the logger agent forwards to, and Knative's rules for the one serving
port. Every rule is read from the upstream files at the pinned tags by tools/upstream_kserve.py
into tests/upstream/kserve-rules.json (each fact with its path, line range and sha256).
docs/upstream-rules.md lists them."""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.kube import inference_services

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream"
APPS = ROOT / "argocd/platform/applications.yaml"
FACTS = json.loads((UPSTREAM / "kserve-rules.json").read_text())
KSERVE = {k: v["value"] for k, v in FACTS["kserve"].items() if k != "constants"}
KNATIVE = {k: v["value"] for k, v in FACTS["knative"].items()}


def const(name: str) -> str:
    """A KServe constant (pkg/constants/constants.go)."""
    return FACTS["kserve"]["constants"][name]["value"]


def isvc_of(env: str) -> dict:
    [isvc] = inference_services()[env]
    return isvc


# --- the validating webhook (inference_service_validation.go, component.go) -------------------


def deployment_mode(annotations: dict[str, str]) -> str:
    """GetDeploymentMode (controller utils.go) for a new InferenceService: the annotation when it
    names a mode (legacy names mapped), otherwise the cluster's default, silently."""
    rule = KSERVE["deployment_mode"]
    key = rule["annotation"]
    mode = annotations.get(key)
    if mode is None:
        return "<default>"
    mode = rule["legacy"].get(mode, mode)
    return mode if mode in rule["accepted"] else "<default>"


def webhook_errors(isvc: dict) -> list[str]:
    """The checks validateInferenceService runs on a Knative-mode custom predictor, each read
    from the source; the list names what fails."""
    errors = []
    name = isvc["metadata"]["name"]
    name_format = KSERVE["name_format"]
    assert name_format["anchored"] is True
    if not re.fullmatch(name_format["regex"], name):
        errors.append("name")
    annotations = isvc["metadata"].get("annotations", {})
    predictor = isvc["spec"]["predictor"]
    # validateBlockedEnvVars
    blocked = KSERVE["blocked_env"]
    for c in predictor.get("containers", []) + predictor.get("initContainers", []):
        errors += [f"env {e['name']}" for e in c.get("env", []) if e["name"] in blocked]
    # validateCollocationStorageURI
    transformer, storage_env = const("TransformerContainerName"), const("CustomSpecStorageUriEnvVarKey")  # fmt: skip
    for c in predictor.get("containers", []):
        if c["name"] == transformer and any(e["name"] == storage_env for e in c.get("env", [])):
            errors.append("storage uri in transformer")
    # CustomPredictor.Validate: PROTOCOL, when set, is v1 or v2
    protocol_env = const("CustomSpecProtocolEnvVarKey")
    for e in predictor["containers"][0].get("env", []):
        if e["name"] == protocol_env and e.get("value") not in KSERVE["protocols"]:
            errors.append("protocol")
    # ComponentExtensionSpec.Validate
    assert KSERVE["component_checks"] == ["validateContainerConcurrency", "validateReplicas", "validateLogger"]  # fmt: skip
    if predictor.get("containerConcurrency", 0) < 0:
        errors.append("containerConcurrency")
    default_min = KSERVE["default_min_replicas"]
    low, high = predictor.get("minReplicas", default_min), predictor.get("maxReplicas", 0)
    if low < 0 or high < 0 or (low > high and high != 0):
        errors.append("replicas")
    logger = predictor.get("logger")
    if logger is not None and logger.get("mode") not in KSERVE["logger_modes"]:
        errors.append("logger.mode")
    # validateAutoScalingCompExtension: Knative mode without Knative's HPA class → the KPA rules
    autoscaling, kpa = KNATIVE["autoscaling_class"], KSERVE["kpa"]
    assert kpa["unless_class_annotation_is_hpa"] is True
    if annotations.get(autoscaling["annotation"]) != autoscaling["hpa"]:
        metric = predictor.get("scaleMetric", kpa["default_metric"])
        if "deploymentStrategy" in predictor:
            errors.append("deploymentStrategy")
        if metric not in kpa["metrics"]:
            errors.append("scaleMetric")
        if metric == "rps" and predictor.get("scaleTarget", 1) < 1:
            errors.append("scaleTarget")
    # validateExactlyOneImplementation: containers make a custom predictor, no framework too
    frameworks = {"sklearn", "xgboost", "tensorflow", "pytorch", "triton", "onnx", "huggingface",
                  "pmml", "lightgbm", "paddle", "model"}  # fmt: skip
    if frameworks & set(predictor) or not predictor.get("containers"):
        errors.append("implementation")
    return errors


@pytest.mark.parametrize("env", ["staging", "production"])
def test_kserve_webhook_admits_our_inference_service(env):
    isvc = isvc_of(env)
    assert webhook_errors(isvc) == []
    # the oracle bites
    bad = copy.deepcopy(isvc)
    bad["spec"]["predictor"].update(logger={"mode": "both", "url": "http://x"}, scaleMetric="cpu",
                                    containerConcurrency=-1, minReplicas=3, maxReplicas=2)  # fmt: skip
    bad["spec"]["predictor"]["containers"][0]["env"].append({"name": "PYTHONPATH", "value": "/x"})
    assert sorted(webhook_errors(bad)) == sorted(
        ["logger.mode", "scaleMetric", "containerConcurrency", "replicas", "env PYTHONPATH"]
    )


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_annotation_selects_knative_mode_not_the_silent_default(env):
    annotations = isvc_of(env)["metadata"]["annotations"]
    assert deployment_mode(annotations) == const("Knative")
    # a misspelt mode is not rejected: the controller falls back to the cluster default
    assert deployment_mode({const("DeploymentMode"): "knative"}) == "<default>"
    assert deployment_mode({const("DeploymentMode"): "Serverless"}) == const("Knative")


# --- the custom predictor: container name, STORAGE_URI, the storage initializer ----------------


def defaulted_containers(predictor: dict) -> list[dict]:
    """CustomPredictor.Default: a single container (or an unnamed first one) is renamed."""
    assert KSERVE["custom_predictor"]["default_renames"] == "a single container, or an unnamed first one"  # fmt: skip
    containers = copy.deepcopy(predictor["containers"])
    if len(containers) == 1 or not containers[0].get("name"):
        containers[0]["name"] = const("InferenceServiceContainerName")
    return containers


def storage_uri(containers: list[dict]) -> str | None:
    """CustomPredictor.GetStorageUri: STORAGE_URI of the container named kserve-container."""
    rule = KSERVE["custom_predictor"]["storage_uri_from"]
    assert rule == "the env CustomSpecStorageUriEnvVarKey of the container named InferenceServiceContainerName"  # fmt: skip
    name, key = const("InferenceServiceContainerName"), const("CustomSpecStorageUriEnvVarKey")
    for c in containers:
        if c["name"] == name:
            return next((e.get("value") for e in c.get("env", []) if e["name"] == key), None)
    return None


def storage_uri_supported(uri: str) -> bool:
    """ValidateStorageURI (controller utils.go) with no ClusterStorageContainer of ours."""
    if not re.search(r"\w+?://", uri):
        return True
    return any(uri.startswith(p) for p in KSERVE["storage_uri_prefixes"])


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_storage_initializer_is_injected_for_our_predictor_and_fills_its_model_dir(env):
    predictor = isvc_of(env)["spec"]["predictor"]
    containers = defaulted_containers(predictor)
    # named so by us, not only by the defaulter (which renames a single container)
    assert predictor["containers"][0]["name"] == const("InferenceServiceContainerName")
    uri = storage_uri(containers)
    # the controller annotates the pod with the URI; the webhook injects for that annotation
    # and mounts the model at the mount path, rewriting a non-empty STORAGE_URI to it
    injector = KSERVE["storage_initializer"]
    assert injector["injected_for_annotation_only"] is True
    assert injector["storage_uri_env_rewritten"] is True
    assert uri and storage_uri_supported(uri), uri
    args = dict(a.removeprefix("--").split("=", 1) for a in containers[0]["args"] if "=" in a)
    assert args["model_dir"] == const(injector["mount_path_constant"])
    # the oracle bites: an unnamed second container, or the env on another container, is missed
    moved = copy.deepcopy(predictor)
    moved["containers"][0]["name"] = "predictor"
    moved["containers"].append({"name": "sidecar", "image": "x"})
    assert storage_uri(defaulted_containers(moved)) is None
    assert not storage_uri_supported("minio://bucket/model")


# --- the serving port: Knative's rules and the logger agent's component port --------------------


def reserved_ports() -> set[int]:
    ports = set(KNATIVE["reserved_ports"])
    assert len(ports) == 6
    return ports


def port_errors(containers: list[dict]) -> list[str]:
    rule = KNATIVE["port"]
    assert rule["at_most_one"] is True
    ports = [p for c in containers for p in c.get("ports", [])]
    errors = ["more than one port"] if len(ports) > 1 else []
    for p in ports[:1]:
        if p.get("name", "") not in rule["valid_names"]:
            errors.append(f"port name {p.get('name')}")
        if p.get("protocol", "TCP") != rule["protocol"]:
            errors.append("protocol")
        if p["containerPort"] in reserved_ports():
            errors.append(f"reserved port {p['containerPort']}")
    return errors


def server_http_port(args: list[str]) -> int:
    """The port the predictor listens on: its --http_port, else kserve's own default."""
    given = [a.split("=", 1)[1] for a in args if a.startswith("--http_port=")]
    if given:
        return int(given[-1])
    code = "import kserve.model_server as m; print(m.parser.get_default('http_port'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_one_serving_port_is_one_knative_accepts_and_the_logger_agent_forwards_to(env):
    predictor = isvc_of(env)["spec"]["predictor"]
    containers = defaulted_containers(predictor)
    assert port_errors(containers) == []
    [port] = containers[0]["ports"]
    # the logger agent forwards to the first port of kserve-container (default 8080)
    assert KSERVE["logger_agent"]["component_port"] == "the first port of the component container"  # fmt: skip
    assert port["containerPort"] == server_http_port(containers[0].get("args", []))
    for probe in ("readinessProbe", "livenessProbe"):
        assert containers[0][probe]["httpGet"]["port"] in (port["containerPort"], port.get("name"))
    # the oracle bites
    bad = copy.deepcopy(containers)
    bad[0]["ports"] = [{"name": "metrics", "containerPort": 9091}]
    assert port_errors(bad) == ["port name metrics", "reserved port 9091"]


def logger_storage(url: str) -> str:
    """GetStorageStrategy (pkg/logger/store.go): what the logger agent does with its --log-url."""
    agent = KSERVE["logger_agent"]
    for prefix, strategy in agent["storage"].items():  # in the switch's order
        if url.startswith(prefix):
            return strategy
    return agent["storage_default"]


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_logger_agent_posts_to_our_sink_over_http(env):
    from urllib.parse import urlsplit

    logger = isvc_of(env)["spec"]["predictor"]["logger"]
    # the agent exits on a mode it does not know or a URL url.Parse refuses (cmd/agent/main.go)
    agent = KSERVE["logger_agent"]
    assert logger["mode"] in agent["modes"] and agent["url_parsed"] is True
    parts = urlsplit(logger["url"])
    assert parts.scheme in ("http", "https") and parts.hostname
    # an http(s) URL is posted to (CloudEvents); any other scheme is a blob store needing a path
    assert logger_storage(logger["url"]) == "HttpStorage"
    assert logger_storage("s3://bucket/logs") == "S3Storage"  # the oracle reads the table


def test_kserve_read_is_the_pinned_version():
    sources = [
        src
        for app in yaml.safe_load_all(APPS.read_text())
        if app
        for src in app["spec"].get("sources", [app["spec"].get("source")])
        if src
    ]
    pins = {s["targetRevision"] for s in sources if s["repoURL"].startswith("oci://ghcr.io/kserve/")}  # fmt: skip
    [kserve] = [s for s in FACTS["sources"] if s["repository"] == "kserve/kserve"]
    assert pins == {kserve["tag"]}, pins
    # every fact names the file it was read from, at its tag, with its sha256
    files = {(s["repository"], s["tag"], p): sha for s in FACTS["sources"] for p, sha in s["files"].items()}  # fmt: skip
    facts = list(FACTS["kserve"]["constants"].values()) + list(FACTS["knative"].values())
    facts += [f for k, f in FACTS["kserve"].items() if k != "constants"]
    for fact in facts:
        assert fact["from"]
        for where in fact["from"]:
            assert files[where["repository"], where["tag"], where["path"]] == where["sha256"], where
    readme = (UPSTREAM / "README.md").read_text()
    for (repo, _, path), sha in files.items():
        assert f"`{sha}`" in readme, (repo, path)
