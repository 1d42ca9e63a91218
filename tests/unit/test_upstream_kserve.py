"""Our rendered staging and production InferenceServices against what KServe v0.20.0 (the version
argocd/platform pins) and the Knative it runs on check or do beyond the CRD schema: the validating
webhook (name, autoscaling, replicas, concurrency, logger, blocked env vars, the custom predictor's
protocol), the deployment mode the controller picks from the annotation, the custom predictor's
container name and the STORAGE_URI env the storage initializer is injected for, the mount path it
fills, the component port the logger agent forwards to, and Knative's rules for the one serving
port. Every rule is read from the upstream files at the pinned tags, vendored in tests/upstream
(see its README). docs/upstream-rules.md lists them."""

from __future__ import annotations

import copy
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.kube import rendered

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream"
KSERVE = UPSTREAM / "kserve-v0.20.0/pkg"
KNATIVE = UPSTREAM / "knative-serving-knative-v1.21.1/pkg"
PPROF = UPSTREAM / "knative-pkg-4a022ed9999a/observability/runtime/pprof.go.L30-L36"
APPS = ROOT / "argocd/platform/applications.yaml"

CONSTANTS = (KSERVE / "constants/constants.go").read_text()
VALIDATION = (KSERVE / "apis/serving/v1beta1/inference_service_validation.go").read_text()
COMPONENT = (KSERVE / "apis/serving/v1beta1/component.go").read_text()
CUSTOM = (KSERVE / "apis/serving/v1beta1/predictor_custom.go").read_text()
UTILS = KSERVE / "controller/v1beta1/inferenceservice/utils"


def go_func(source: str, signature: str) -> str:
    start = source.index("{\n", source.index(signature)) + 2
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        i += 1
    return source[start : i - 1]


def const(name: str, source: str = CONSTANTS) -> str:
    """A Go string constant, following `A + "/x"` concatenations of other constants."""
    m = re.search(rf"^\s*(?:const\s+)?{name}\s+(?:\w+\s+)?=\s+(.+)$", source, re.M)
    assert m, name
    parts = [p.strip() for p in m[1].split("//")[0].split("+")]
    return "".join(p.strip('"') if p.startswith('"') else const(p, source) for p in parts)


def go_list(name: str, source: str) -> list[str]:
    """The items of a Go slice literal `name = []T{...}`: string literals or constant names."""
    body = re.search(rf"{name}\s*=\s*\[\][\w.]+\{{([^}}]*)\}}", source, re.S)[1]
    items = [i.strip() for i in body.split(",") if i.strip()]
    return [i.strip('"') if i.startswith('"') else const(i.removeprefix("constants.")) for i in items]  # fmt: skip


def inference_services() -> dict[str, list[dict]]:
    return {
        env: [
            d
            for d in rendered(ROOT / "manifests/overlays" / env)
            if d["kind"] == "InferenceService"
        ]
        for env in ("staging", "production")
    }


def isvc_of(env: str) -> dict:
    [isvc] = inference_services()[env]
    return isvc


# --- the validating webhook (inference_service_validation.go, component.go) -------------------


def deployment_mode(annotations: dict[str, str]) -> str:
    """GetDeploymentMode (controller utils.go) for a new InferenceService: the annotation when it
    names a mode (legacy names mapped), otherwise the cluster's default, silently."""
    body = (UTILS / "utils.go.L224-L250").read_text()
    key = const("DeploymentMode")
    legacy = dict(
        re.findall(
            r"if deploymentMode == string\(constants\.(\w+)\) \{\s+//[^\n]*\n\s+deploymentMode = string\(constants\.(\w+)\)",
            body,
        )  # fmt: skip
    )
    accepted = re.findall(
        r"deploymentMode == string\(constants\.(\w+)\)", body.split("if ok &&")[1]
    )
    mode = annotations.get(key)
    if mode is None:
        return "<default>"
    for old, new in legacy.items():
        if mode == const(old):
            mode = const(new)
    return mode if mode in {const(a) for a in accepted} else "<default>"


def webhook_errors(isvc: dict) -> list[str]:
    """The checks validateInferenceService runs on a Knative-mode custom predictor, each read
    from the source; the list names what fails."""
    errors = []
    name = isvc["metadata"]["name"]
    fmt = re.search(r'IsvcNameFmt\s+string = "([^"]+)"', VALIDATION)[1]
    assert 'regexp.MustCompile("^" + IsvcNameFmt + "$")' in VALIDATION
    if not re.fullmatch(fmt, name):
        errors.append("name")
    annotations = isvc["metadata"].get("annotations", {})
    predictor = isvc["spec"]["predictor"]
    # validateBlockedEnvVars
    blocked = go_list("DefaultBlockedEnvVars", (KSERVE / "validation/env_policy.go").read_text())
    for c in predictor.get("containers", []) + predictor.get("initContainers", []):
        errors += [f"env {e['name']}" for e in c.get("env", []) if e["name"] in blocked]
    # validateCollocationStorageURI
    transformer, storage_env = const("TransformerContainerName"), const("CustomSpecStorageUriEnvVarKey")  # fmt: skip
    for c in predictor.get("containers", []):
        if c["name"] == transformer and any(e["name"] == storage_env for e in c.get("env", [])):
            errors.append("storage uri in transformer")
    # CustomPredictor.Validate: PROTOCOL, when set, is v1 or v2
    assert "constants.ProtocolV1) || envVar.Value == string(constants.ProtocolV2)" in CUSTOM
    protocol_env = const("CustomSpecProtocolEnvVarKey")
    for e in predictor["containers"][0].get("env", []):
        if e["name"] == protocol_env and e.get("value") not in {const("ProtocolV1"), const("ProtocolV2")}:  # fmt: skip
            errors.append("protocol")
    # ComponentExtensionSpec.Validate
    assert all(f in go_func(COMPONENT, "func (s *ComponentExtensionSpec) Validate()") for f in
               ("validateContainerConcurrency", "validateReplicas", "validateLogger"))  # fmt: skip
    if predictor.get("containerConcurrency", 0) < 0:
        errors.append("containerConcurrency")
    default_min = int(re.search(r"DefaultMinReplicas\s+(?:int32\s+)?=\s+(?:int32\()?(\d+)", CONSTANTS)[1])  # fmt: skip
    low, high = predictor.get("minReplicas", default_min), predictor.get("maxReplicas", 0)
    if low < 0 or high < 0 or (low > high and high != 0):
        errors.append("replicas")
    modes = dict(re.findall(r"(Log\w+) LoggerType = \"(\w+)\"", (KSERVE / "apis/serving/v1beta1/inference_service.go.L80-L92").read_text()))  # fmt: skip
    checked = re.findall(r"logger\.Mode != (\w+)", go_func(COMPONENT, "func validateLogger("))
    logger = predictor.get("logger")
    if logger is not None and logger.get("mode") not in {modes[m] for m in checked}:
        errors.append("logger.mode")
    # validateAutoScalingCompExtension: Knative mode without Knative's HPA class → the KPA rules
    register = (KNATIVE / "apis/autoscaling/register.go.L28-L43").read_text()
    class_key, hpa = const("ClassAnnotationKey", register), const("HPA", register)
    body = go_func(VALIDATION, "func validateAutoScalingCompExtension(")
    assert "if annotationClass == autoscaling.HPA {" in body
    if annotations.get(class_key) != hpa:
        kpa = go_list("AutoscalerAllowedKPAMetricsList", CONSTANTS)
        metric = predictor.get("scaleMetric", "concurrency")
        assert "metric := MetricConcurrency" in go_func(VALIDATION, "func validateScalingKPACompExtension(")  # fmt: skip
        if "deploymentStrategy" in predictor:
            errors.append("deploymentStrategy")
        if metric not in kpa:
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
    body = go_func(CUSTOM, "func (c *CustomPredictor) Default(")
    assert "if len(c.Containers) == 1 || len(c.Containers[0].Name) == 0 {" in body
    containers = copy.deepcopy(predictor["containers"])
    if len(containers) == 1 or not containers[0].get("name"):
        containers[0]["name"] = const("InferenceServiceContainerName")
    return containers


def storage_uri(containers: list[dict]) -> str | None:
    """CustomPredictor.GetStorageUri: STORAGE_URI of the container named kserve-container."""
    body = go_func(CUSTOM, "func (c *CustomPredictor) GetStorageUri()")
    assert "if container.Name == constants.InferenceServiceContainerName {" in body
    assert "if envVar.Name == constants.CustomSpecStorageUriEnvVarKey {" in body
    name, key = const("InferenceServiceContainerName"), const("CustomSpecStorageUriEnvVarKey")
    for c in containers:
        if c["name"] == name:
            return next((e.get("value") for e in c.get("env", []) if e["name"] == key), None)
    return None


def storage_uri_supported(uri: str) -> bool:
    """ValidateStorageURI (controller utils.go) with no ClusterStorageContainer of ours."""
    body = (UTILS / "utils.go.L411-L442").read_text()
    assert "kserveutils.IsPrefixSupported(*storageURI, SupportedStorageURIPrefixList)" in body
    if not re.search(r"\w+?://", uri):
        return True
    prefixes = go_list("SupportedStorageURIPrefixList", (UTILS / "utils.go.L46-L50").read_text())
    return any(uri.startswith(p) for p in prefixes)


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_storage_initializer_is_injected_for_our_predictor_and_fills_its_model_dir(env):
    predictor = isvc_of(env)["spec"]["predictor"]
    containers = defaulted_containers(predictor)
    # named so by us, not only by the defaulter (which renames a single container)
    assert predictor["containers"][0]["name"] == const("InferenceServiceContainerName")
    uri = storage_uri(containers)
    # the controller annotates the pod with the URI; the webhook injects for that annotation
    annotate = (KSERVE / "controller/v1beta1/inferenceservice/components/predictor.go.L294-L305").read_text()  # fmt: skip
    assert "annotations[constants.StorageInitializerSourceUriInternalAnnotationKey] = *sourceURI" in annotate  # fmt: skip
    injector = (KSERVE / "webhook/admission/pod/storage_initializer_injector.go").read_text()
    inject = go_func(injector, "func (mi *StorageInitializerInjector) InjectStorageInitializer(")
    assert "srcURI, ok := pod.Annotations[constants.StorageInitializerSourceUriInternalAnnotationKey]\n\tif !ok {\n\t\treturn nil" in inject  # fmt: skip
    assert "MountPath: constants.DefaultModelLocalMountPath" in inject
    # and rewrites a non-empty STORAGE_URI to the mount path
    assert "envVar.Name == constants.CustomSpecStorageUriEnvVarKey && envVar.Value != \"\"" in injector  # fmt: skip
    assert uri and storage_uri_supported(uri), uri
    args = dict(a.removeprefix("--").split("=", 1) for a in containers[0]["args"] if "=" in a)
    assert args["model_dir"] == const("DefaultModelLocalMountPath")
    # the oracle bites: an unnamed second container, or the env on another container, is missed
    moved = copy.deepcopy(predictor)
    moved["containers"][0]["name"] = "predictor"
    moved["containers"].append({"name": "sidecar", "image": "x"})
    assert storage_uri(defaulted_containers(moved)) is None
    assert not storage_uri_supported("minio://bucket/model")


# --- the serving port: Knative's rules and the logger agent's component port --------------------


def reserved_ports() -> set[int]:
    validation = (KNATIVE / "apis/serving/k8s_validation.go").read_text()
    names = re.search(r"reservedPorts = sets\.NewInt32\(([^)]*)\)", validation)[1]
    networking = (KNATIVE / "networking/constants.go").read_text()
    values = {**dict(re.findall(r"^\s+(\w+) = (\d+)$", networking, re.M)),
              **dict(re.findall(r"^\s+(\w+) = (\d+)$", PPROF.read_text(), re.M))}  # fmt: skip
    ports = {int(values[n.strip().split(".")[-1]]) for n in names.split(",") if n.strip()}
    assert len(ports) == 6
    return ports


def port_errors(containers: list[dict]) -> list[str]:
    validation = (KNATIVE / "apis/serving/k8s_validation.go").read_text()
    valid_names = set(re.findall(r'"([\w-]*)"', re.search(r"validPortNames = sets\.New\(([^)]*)\)", validation)[1]))  # fmt: skip
    assert 'Message: "more than one container port is set"' in validation
    ports = [p for c in containers for p in c.get("ports", [])]
    errors = ["more than one port"] if len(ports) > 1 else []
    for p in ports[:1]:
        if p.get("name", "") not in valid_names:
            errors.append(f"port name {p.get('name')}")
        if p.get("protocol", "TCP") != "TCP":
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
    agent = (KSERVE / "webhook/admission/pod/agent_injector.go.L315-L350").read_text()
    assert "componentPort = strconv.Itoa(int(container.Ports[0].ContainerPort))" in agent
    assert port["containerPort"] == server_http_port(containers[0].get("args", []))
    for probe in ("readinessProbe", "livenessProbe"):
        assert containers[0][probe]["httpGet"]["port"] in (port["containerPort"], port.get("name"))
    # the oracle bites
    bad = copy.deepcopy(containers)
    bad[0]["ports"] = [{"name": "metrics", "containerPort": 9091}]
    assert port_errors(bad) == ["port name metrics", "reserved port 9091"]


def logger_storage(url: str) -> str:
    """GetStorageStrategy (pkg/logger/store.go): what the logger agent does with its --log-url."""
    body = go_func((KSERVE / "logger/store.go.L46-L61").read_text(), "func GetStorageStrategy(")
    for prefix, strategy in re.findall(r'case strings\.HasPrefix\(url, "(\w+)"\):[^\n]*\n\s+return (\w+)', body):  # fmt: skip
        if url.startswith(prefix):
            return strategy
    return re.search(r"default:\s+return (\w+)", body)[1]


@pytest.mark.parametrize("env", ["staging", "production"])
def test_the_logger_agent_posts_to_our_sink_over_http(env):
    from urllib.parse import urlsplit

    logger = isvc_of(env)["spec"]["predictor"]["logger"]
    # the agent exits on a mode it does not know or a URL url.Parse refuses (cmd/agent/main.go)
    agent = (UPSTREAM / "kserve-v0.20.0/cmd/agent/main.go.L276-L290").read_text()
    assert "case v1beta1.LogAll, v1beta1.LogRequest, v1beta1.LogResponse:" in agent
    assert "url.Parse(*logUrl)" in agent
    parts = urlsplit(logger["url"])
    assert parts.scheme in ("http", "https") and parts.hostname
    # an http(s) URL is posted to (CloudEvents); any other scheme is a blob store needing a path
    assert logger_storage(logger["url"]) == "HttpStorage"
    assert logger_storage("s3://bucket/logs") == "S3Storage"  # the oracle reads the table


def test_vendored_kserve_is_the_pinned_version():
    sources = [
        src
        for app in yaml.safe_load_all(APPS.read_text())
        if app
        for src in app["spec"].get("sources", [app["spec"].get("source")])
        if src
    ]
    pins = {s["targetRevision"] for s in sources if s["repoURL"].startswith("oci://ghcr.io/kserve/")}  # fmt: skip
    assert pins == {"v0.20.0"}, pins
    assert KSERVE.parent.name == "kserve-v0.20.0"
    readme = (UPSTREAM / "README.md").read_text()
    files = [p for p in KSERVE.parent.rglob("*") if p.is_file()] + [PPROF]
    files += [KNATIVE / "networking/constants.go", KNATIVE / "apis/serving/k8s_validation.go",
              KNATIVE / "apis/autoscaling/register.go.L28-L43"]  # fmt: skip
    for path in files:
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        rel = re.escape(str(path.relative_to(UPSTREAM)))
        assert re.search(rf"^\| `{rel}` \|.*`{sha}` \|$", readme, re.M), path
