"""Our objects against the rules of the controllers that admit them, at the pinned versions. Each
oracle is the upstream project's own file at its tag, vendored verbatim in tests/upstream (the
README there lists repository, tag, path and sha256): Go source and data are parsed here, Lua runs
as Argo CD runs it; nothing of a rule is retyped. docs/upstream-rules.md says which rule is
checked where."""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client as k8s

from tests.support.kube import render, rendered

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream"
KNATIVE = UPSTREAM / "knative-serving-knative-v1.21.1"
KOURIER = UPSTREAM / "net-kourier-knative-v1.21.1"
ARGOCD = UPSTREAM / "argo-cd-v3.5.1"
KIND_DOCS = UPSTREAM / "kind-v0.32.0"
CLUSTER_UP = ROOT / "scripts" / "cluster-up.sh"
E2E = ROOT / ".github" / "workflows" / "e2e-kind.yml"


def read(path: Path) -> str:
    return path.read_text()


def test_vendored_upstream_is_the_pinned_version():
    knative = read(ROOT / "manifests/platform/knative/kustomization.yaml")
    assert set(re.findall(r"/download/(knative-v[\d.]+)/", knative)) == {"knative-v1.21.1"}
    assert KNATIVE.name.endswith("knative-v1.21.1") and KOURIER.name.endswith("knative-v1.21.1")
    install = read(ROOT / "argocd/install/kustomization.yaml")
    [argocd] = re.findall(r"/argo-cd/(v\d+\.\d+)\.\d+/manifests/install\.yaml", install)
    # v3.5.2 is a patch release: the rule files read here are unchanged from v3.5.1 to master
    assert ARGOCD.name == f"argo-cd-{argocd}.1"
    readme = read(UPSTREAM / "README.md")
    for project in (KNATIVE, KOURIER, ARGOCD, KIND_DOCS, UPSTREAM / "kind-v0.33.0"):
        for path in (p for p in project.rglob("*") if p.is_file()):
            assert f"`{path.relative_to(UPSTREAM)}`" in readme, path


# --- Go source, read as data -----------------------------------------------------------------


def go_func(source: str, name: str) -> str:
    """The body of the Go function ``name`` (braces matched)."""
    match = re.search(rf"^func (?:\([^)]*\) )?{name}\(", source, re.M)
    assert match, name
    start = source.index("{\n", match.end()) + 2  # the body opens the first line ending in {
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        i += 1
    return source[start : i - 1]


# --- Knative: config-features and the webhook's field masks ---------------------------------

FEATURES_GO = read(KNATIVE / "pkg/apis/config/features.go")
FIELDMASK_GO = read(KNATIVE / "pkg/apis/serving/fieldmask.go")


def knative_features(data: dict[str, str]) -> dict[str, str]:
    """config-features' data as Knative reads it (features.go: defaults, keys, accepted values)."""
    flags = dict(re.findall(r"^\s+(\w+)\s+Flag = \"(\w+)\"", FEATURES_GO, re.M))
    consts = dict(re.findall(r"^\s+(\w+)\s+= \"([^\"]+)\"$", FEATURES_GO, re.M))
    defaults = re.findall(
        r"^\s+(\w+):\s+(\w+),$", go_func(FEATURES_GO, "defaultFeaturesConfig"), re.M
    )
    features = {field: flags[value] for field, value in defaults}
    accepts = {
        fn: [flags[f.strip()] for f in re.search(r"\[\]Flag\{([^}]*)\}", go_func(FEATURES_GO, fn))[1].split(",")]
        for fn in ("asFlag", "asSecurePodDefaultsFlag")
    }  # fmt: skip
    parsers = re.findall(
        r"(asFlag|asSecurePodDefaultsFlag)\((\w+|\"[^\"]+\"), &nc\.(\w+)\)",
        go_func(FEATURES_GO, "NewFeaturesConfigFromMap"),
    )
    assert len(parsers) >= 30
    for fn, key, field in parsers:
        key = key.strip('"') if key.startswith('"') else consts[key]
        raw = data.get(key)
        for flag in accepts[fn] if raw is not None else ():
            if raw.lower() == flag.lower():  # strings.EqualFold
                features[field] = flag
                break
    return features


# the structs each mask function walks into, as ValidatePodSpec calls them (k8s_validation.go)
MODELS = {
    "PodSpecMask": k8s.V1PodSpec, "PodSecurityContextMask": k8s.V1PodSecurityContext,
    "ContainerMask": k8s.V1Container, "SecurityContextMask": k8s.V1SecurityContext,
    "CapabilitiesMask": k8s.V1Capabilities, "ProbeMask": k8s.V1Probe, "HandlerMask": k8s.V1Probe,
    "HTTPGetActionMask": k8s.V1HTTPGetAction, "TCPSocketActionMask": k8s.V1TCPSocketAction,
    "ExecActionMask": k8s.V1ExecAction, "ContainerPortMask": k8s.V1ContainerPort,
    "EnvVarMask": k8s.V1EnvVar, "ResourceRequirementsMask": k8s.V1ResourceRequirements,
    "VolumeMountMask": k8s.V1VolumeMount,
}  # fmt: skip
CHILDREN = {
    "PodSpecMask": {"securityContext": "PodSecurityContextMask", "containers": "ContainerMask"},
    "ContainerMask": {"securityContext": "SecurityContextMask", "readinessProbe": "ProbeMask",
                      "livenessProbe": "ProbeMask", "startupProbe": "ProbeMask",
                      "ports": "ContainerPortMask", "env": "EnvVarMask",
                      "resources": "ResourceRequirementsMask", "volumeMounts": "VolumeMountMask"},
    "SecurityContextMask": {"capabilities": "CapabilitiesMask"},
    "ProbeMask": {"httpGet": "HTTPGetActionMask", "tcpSocket": "TCPSocketActionMask",
                  "exec": "ExecActionMask"},
}  # fmt: skip
EMBEDDED = {"ProbeHandler": "HandlerMask"}  # Go embedded structs: inline in JSON


def json_name(mask: str, go_field: str) -> str:
    names = [n for n in MODELS[mask].attribute_map.values() if n.lower() == go_field.lower()]
    assert len(names) == 1, (mask, go_field)
    return names[0]


def condition(cond: str, features: dict[str, str], obj: dict, local: dict[str, list[str]]) -> bool:
    """A Go condition of fieldmask.go, evaluated; an unknown form fails the test."""
    cond = cond.strip()
    if " || " in cond:
        return any(condition(c, features, obj, local) for c in cond.split(" || "))
    if " && " in cond:
        return all(condition(c, features, obj, local) for c in cond.split(" && "))
    if m := re.fullmatch(r"(?:cfg|config\.FromContextOrDefaults\(ctx\))\.Features\.(\w+) ([!=]=) config\.(\w+)", cond):  # fmt: skip
        return (features[m[1]] == m[3]) == (m[2] == "==")
    if m := re.fullmatch(r"slices\.Contains\(\[\]config\.Flag\{([^}]*)\}, config\.FromContextOrDefaults\(ctx\)\.Features\.(\w+)\)", cond):  # fmt: skip
        return features[m[2]] in {f.strip().removeprefix("config.") for f in m[1].split(",")}
    if cond == "in == nil":
        return False
    if m := re.fullmatch(r"in\.(\w+) != nil", cond):
        return any(k.lower() == m[1].lower() for k in obj)
    if m := re.fullmatch(r"!\*in\.(\w+)", cond):
        return not next(v for k, v in obj.items() if k.lower() == m[1].lower())
    if m := re.fullmatch(r"(\w+) == corev1\.SeccompProfileType(\w+)", cond):
        value: object = obj
        for part in local[m[1]]:
            value = next(v for k, v in value.items() if k.lower() == part.lower())  # type: ignore[union-attr]
        return value == m[2]
    if m := re.fullmatch(r"slices\.Equal\(in\.(\w+), \[\]corev1\.Capability\{([^}]*)\}\)", cond):
        given = next((v for k, v in obj.items() if k.lower() == m[1].lower()), None)
        return given == [c.strip().strip('"') for c in m[2].split(",")]
    raise AssertionError(f"fieldmask.go condition not understood: {cond}")


def allowed_fields(mask: str, features: dict[str, str], obj: dict) -> set[str]:
    """The JSON fields of ``obj`` that ``mask`` (fieldmask.go) copies, given the features."""
    body = go_func(FIELDMASK_GO, mask)
    stack: list[tuple[str, bool]] = []  # (condition, negated)
    guards: list[tuple[str, bool]] = []  # early `return out`: what the rest of the body needs
    local: dict[str, list[str]] = {}
    opened: list[list[str]] = []  # statements seen in each open block
    allowed: set[str] = set()

    def holds(conds: list[tuple[str, bool]]) -> bool:
        return all(condition(c, features, obj, local) != neg for c, neg in conds)

    for line in (raw.strip() for raw in body.splitlines()):
        if not line or line.startswith("//"):
            continue
        if m := re.fullmatch(r"(?:\} else )?if (.*) \{", line):
            if line.startswith("}"):
                stack.pop(), opened.pop()
            stack.append((m[1], False))
            opened.append([])
        elif line == "} else {":
            cond, _ = stack.pop()
            opened.pop()
            stack.append((cond, True))
            opened.append([])
        elif line == "}" or line == "})":
            cond, neg = stack.pop()
            statements = opened.pop()
            if statements == ["return out"] and cond != "literal":
                guards.append((cond, not neg))
        elif m := re.fullmatch(r"out\.(\w+) = (.*)", line):
            if m[2].endswith("{"):  # a composite literal: its closing brace ends no block
                stack.append(("literal", False))
                opened.append([])
            if m[2] not in ("nil", '""', "false") and holds(
                [s for s in stack if s[0] != "literal"] + guards
            ):
                fields = [m[1]]
                if m[1] in EMBEDDED:
                    inner = EMBEDDED[m[1]]
                    allowed |= allowed_fields(inner, features, obj)
                    continue
                allowed |= {json_name(mask, f) for f in fields}
        elif m := re.fullmatch(r"(\w+) := in\.([\w.]+)", line):
            local[m[1]] = m[2].split(".")
        else:
            if opened:
                opened[-1].append(line)
    return allowed & set(obj)


def disallowed(mask: str, features: dict[str, str], obj: dict, path: str = "") -> list[str]:
    """Knative's CheckDisallowedFields over ``obj`` and the structs below it."""
    ok = allowed_fields(mask, features, obj)
    errors = [f"{path}{k}" for k in obj if k not in ok]
    for key, child in CHILDREN.get(mask, {}).items():
        if key not in ok:
            continue
        values = obj[key] if isinstance(obj[key], list) else [obj[key]]
        for i, value in enumerate(values):
            where = f"{path}{key}[{i}]." if isinstance(obj[key], list) else f"{path}{key}."
            errors += disallowed(child, features, value, where)
    return errors


def predictor_podspec(isvc: dict) -> dict:
    """The PodSpec KServe gives Knative: the predictor's PodSpec fields (the rest is KServe's)."""
    pod_fields = set(k8s.V1PodSpec.attribute_map.values())
    predictor = copy.deepcopy(isvc["spec"]["predictor"])
    return {k: v for k, v in predictor.items() if k in pod_fields}


def rendered_knative_config(tmp_path: Path, patched: bool = True) -> dict[str, dict[str, str]]:
    """Knative's ConfigMaps at the tag with our kustomization's patches applied by kustomize."""
    ours = yaml.safe_load(read(ROOT / "manifests/platform/knative/kustomization.yaml"))
    files = [KNATIVE / "config/core/configmaps" / n for n in ("features.yaml", "deployment.yaml")]  # fmt: skip
    files.append(KOURIER / "config/300-gateway.yaml")
    for f in files:
        shutil.copy(f, tmp_path / f.name)
    kustomization = {"resources": [f.name for f in files]}
    if patched:  # our patches of Knative's ConfigMaps, as written
        kustomization["patches"] = [
            p for p in ours["patches"] if p.get("target", {}).get("kind") == "ConfigMap"
        ]
    (tmp_path / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))
    return {
        d["metadata"]["name"]: d.get("data", {})
        for d in render(tmp_path)
        if d["kind"] == "ConfigMap" and d["metadata"].get("namespace") == "knative-serving"
    }


def inference_services() -> dict[str, list[dict]]:
    return {
        env: [
            d
            for d in rendered(ROOT / "manifests/overlays" / env)
            if d["kind"] == "InferenceService"
        ]
        for env in ("staging", "production")
    }


def test_knative_field_masks_reject_a_pod_security_context_with_upstream_defaults(tmp_path):
    # the oracle bites: Knative's defaults reject what the base InferenceService sets
    features = knative_features(rendered_knative_config(tmp_path, patched=False)["config-features"])
    assert features["PodSpecSecurityContext"] == "Disabled"
    [isvc] = inference_services()["staging"]
    assert disallowed("PodSpecMask", features, predictor_podspec(isvc)) == ["securityContext"]
    # secure-pod-defaults alone lets the seccomp profile through, not runAsNonRoot
    features["SecurePodDefaults"] = "Enabled"
    assert disallowed("PodSpecMask", features, predictor_podspec(isvc)) == [
        "securityContext.runAsNonRoot"
    ]
    # a container field the mask never copies is caught too
    spec = predictor_podspec(isvc)
    spec["containers"][0]["lifecycle"] = {"preStop": {"exec": {"command": ["true"]}}}
    assert "containers[0].lifecycle" in disallowed("PodSpecMask", features, spec)


@pytest.mark.parametrize("env", ["staging", "production"])
def test_knative_admits_our_inference_services_podspec_with_our_config_features(env, tmp_path):
    features = knative_features(rendered_knative_config(tmp_path)["config-features"])
    [isvc] = inference_services()[env]
    podspec = predictor_podspec(isvc)
    assert "securityContext" in podspec and podspec["containers"]
    assert disallowed("PodSpecMask", features, podspec) == []


# --- Knative: tag-to-digest resolution ------------------------------------------------------


def registries_skipping_tag_resolution(data: dict[str, str]) -> set[str]:
    """config-deployment as Knative reads it (pkg/deployment/config.go: key and default; the
    value is knative.dev/pkg's AsStringSet: comma-separated, spaces trimmed)."""
    source = read(KNATIVE / "pkg/deployment/config.go")
    key = re.search(r'registriesSkippingTagResolvingKey = "([^"]+)"', source)[1]
    default = re.search(r"RegistriesSkippingTagResolving: sets\.New\(([^)]*)\)", source)[1]
    skip = {s.strip().strip('"') for s in default.split(",")}
    if key in data:
        skip = {s.strip() for s in data[key].split(",")}
    return skip


def registry(image: str) -> str:
    """The registry of a reference, as go-containerregistry's name package parses it."""
    first, _, rest = image.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "index.docker.io"  # fmt: skip


def needs_registry_lookup(image: str, skip: set[str]) -> bool:
    """resolve.go: a digest is kept; a tag on a skipped registry is left alone; any other tag
    is looked up in its registry (and fails with "Unable to fetch image" when it is not there)."""
    resolver = go_func(read(KNATIVE / "pkg/reconciler/revision/resolve.go"), "Resolve")
    assert "name.NewDigest(image" in resolver and "registriesToSkip.Has(tag.Registry.RegistryStr())" in resolver  # fmt: skip
    return "@sha256:" not in image and registry(image) not in skip


def kind_loaded_images() -> list[str]:
    """The images `make cluster-up` builds and loads into the kind node (never pushed): this
    repository's images, named in the settings."""
    from mlstack.settings import DEFAULTS

    return sorted(DEFAULTS.images.values())


def test_knative_resolves_no_tag_of_an_image_only_the_kind_node_holds(tmp_path):
    loaded = kind_loaded_images()
    assert loaded
    (tmp_path / "upstream").mkdir(), (tmp_path / "ours").mkdir()
    upstream = registries_skipping_tag_resolution(
        rendered_knative_config(tmp_path / "upstream", patched=False)["config-deployment"]
    )
    assert all(needs_registry_lookup(i, upstream) for i in loaded)  # the defaults would fail
    skip = registries_skipping_tag_resolution(
        rendered_knative_config(tmp_path / "ours")["config-deployment"]
    )
    assert upstream <= skip  # upstream's own skips kept
    served = [c["image"] for isvcs in inference_services().values() for s in isvcs
              for c in s["spec"]["predictor"]["containers"]]  # fmt: skip
    for image in served + loaded:
        assert not needs_registry_lookup(image, skip), image
    assert needs_registry_lookup("docker.io/library/python:3.11", skip)  # others still resolved
    assert not needs_registry_lookup("example.com/x@sha256:" + "0" * 64, set())


# --- Argo CD: HPA health, sync waves, retries -----------------------------------------------

HPA_GO = read(ARGOCD / "gitops-engine/pkg/health/health_hpa.go")


def upstream_hpa_health(hpa: dict) -> str:
    """health_hpa.go's built-in rule on an autoscaling/v2 HPA: its degraded (type, reason) pairs
    and healthy condition types, read from the Go source."""
    degraded = set(re.findall(r'\{Type: "(\w+)", Reason: "(\w+)"\}', go_func(HPA_GO, "isDegraded")))
    healthy = re.search(r"healthyConditionTypes := \[\]string\{([^}]*)\}", go_func(HPA_GO, "isHealthy"))[1]  # fmt: skip
    healthy_types = {t.strip().strip('"') for t in healthy.split(",")}
    conditions = hpa.get("status", {}).get("conditions", [])
    if any((c["type"], c.get("reason")) in degraded for c in conditions):
        return "Degraded"
    if any(c["type"] in healthy_types and c["status"] == "True" for c in conditions):
        return "Healthy"
    return "Progressing"


def as_v2(hpa: dict) -> dict:
    """An autoscaling/v1 HPA as the API server serves it in autoscaling/v2 (the version Argo CD
    reads): v1 carries v2's conditions in an annotation."""
    if hpa["apiVersion"] != "autoscaling/v1":
        return hpa
    hpa = json.loads(json.dumps(hpa))
    note = hpa["metadata"].get("annotations", {}).pop("autoscaling.alpha.kubernetes.io/conditions", None)  # fmt: skip
    hpa["apiVersion"] = "autoscaling/v2"
    if note:
        hpa.setdefault("status", {})["conditions"] = json.loads(note)
    return hpa


def upstream_hpa_cases() -> list[tuple[str, dict, str]]:
    """health_test.go's TestHPA table: testdata file and the health upstream expects."""
    table = re.findall(
        r'assertAppHealth\(t, "\./testdata/(hpa-[\w-]+\.yaml)", HealthStatus(\w+)\)',
        go_func(read(ARGOCD / "gitops-engine/pkg/health/health_test.go"), "TestHPA"),
    )
    assert len(table) >= 9
    testdata = ARGOCD / "gitops-engine/pkg/health/testdata"
    return [(name, yaml.safe_load(read(testdata / name)), want) for name, want in table]


def health_customizations() -> dict[str, str]:
    """resource.customizations.health.* keys the Argo CD install merges into argocd-cm."""
    install = yaml.safe_load(read(ROOT / "argocd/install/kustomization.yaml"))
    [cm] = install["configMapGenerator"]
    keys = dict(f.partition("=")[::2] for f in cm["files"])
    return {k: read(ROOT / "argocd/install" / v) for k, v in keys.items()}


def run_health_lua(script: str, obj: dict) -> dict:
    """A health script as Argo CD runs it: obj a global, only the base, table and os libraries."""
    from lupa import LuaRuntime

    lua = LuaRuntime(unpack_returned_tuples=True)
    for lib in ("string", "math", "io", "debug", "utf8", "coroutine"):
        lua.execute(f"{lib} = nil")
    lua.globals().obj = lua.table_from(obj, recursive=True)
    result = lua.execute(script)
    return {"status": result["status"], "message": result["message"]}


def argocd_hpa_health(hpa: dict) -> dict:
    """Argo CD's health of an HPA: an argocd-cm customization when there is one (util/lua: it
    takes precedence), else the built-in rule."""
    script = health_customizations().get(
        "resource.customizations.health.autoscaling_HorizontalPodAutoscaler"
    )
    if script is None:
        return {"status": upstream_hpa_health(hpa), "message": ""}
    return run_health_lua(script, hpa)


def kind_hpa_status() -> dict:
    """An HPA's conditions on a cluster with no metrics API (kind has no metrics-server), from
    upstream's testdata: the scale target found, and the metrics API unavailable."""
    cases = {name: obj for name, obj, _ in upstream_hpa_cases()}
    [able] = [c for c in as_v2(cases["hpa-v2-healthy.yaml"])["status"]["conditions"]
              if c["type"] == "AbleToScale"]  # fmt: skip
    [active] = [c for c in as_v2(cases["hpa-v1-degraded.yaml"])["status"]["conditions"]
                if c["type"] == "ScalingActive"]  # fmt: skip
    assert "unable to fetch metrics from resource metrics API" in active["message"]
    return {"conditions": [able, active]}


def knative_hpas() -> list[dict]:
    docs = []
    for path in [KNATIVE / "config/core/deployments/activator-hpa.yaml",
                 KNATIVE / "config/core/deployments/webhook-hpa.yaml",
                 KOURIER / "config/300-gateway.yaml"]:  # fmt: skip
        docs += [d for d in yaml.safe_load_all(read(path)) if d and d["kind"] == "HorizontalPodAutoscaler"]  # fmt: skip
    return docs


def test_upstream_hpa_rule_as_read_matches_upstreams_own_test_table():
    for name, obj, want in upstream_hpa_cases():
        assert upstream_hpa_health(as_v2(obj)) == want, name


def test_knative_and_kourier_hpas_do_not_stop_the_sync_waves_on_kind():
    hpas = knative_hpas()
    assert {h["metadata"]["name"] for h in hpas} == {"activator", "webhook", "3scale-kourier-gateway"}  # fmt: skip
    # sync_context.go: a Degraded task fails a multi-step (multi-wave) sync
    sync = read(ARGOCD / "gitops-engine/pkg/sync/sync_context.go.L553-L570")
    assert re.search(r"case health\.HealthStatusDegraded:\s+sc\.setResourceResult\([^)]*OperationFailed", sync)  # fmt: skip
    for hpa in hpas:
        assert upstream_hpa_health({**hpa, "status": kind_hpa_status()}) == "Degraded"
        health = argocd_hpa_health({**hpa, "status": kind_hpa_status()})
        assert health["status"] == "Healthy", (hpa["metadata"]["name"], health)
        assert "metrics" in health["message"]


def test_hpa_health_customization_is_upstreams_rule_but_for_missing_metrics():
    script = health_customizations()["resource.customizations.health.autoscaling_HorizontalPodAutoscaler"]  # fmt: skip
    no_metrics = {"FailedGetResourceMetric", "FailedGetPodsMetric", "FailedGetObjectMetric", "FailedGetExternalMetric"}  # fmt: skip
    for name, obj, want in upstream_hpa_cases():
        hpa = as_v2(obj)
        reasons = {c.get("reason") for c in hpa.get("status", {}).get("conditions", [])}
        got = run_health_lua(script, hpa)["status"]
        scale_broken = {"FailedGetScale", "FailedUpdateScale"} & reasons
        if want == "Degraded" and reasons & no_metrics and not scale_broken:
            assert got == "Healthy", name
        else:
            assert got == want, name


def go_duration(text: str) -> float:
    """parseStringToDuration: a bare number is seconds, else a Go duration (s, m, h)."""
    if text.isdigit():
        return float(text)
    units = {"s": 1, "m": 60, "h": 3600}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)([smh])", text))


def retry_window(app: dict) -> float:
    """Seconds an automated sync keeps retrying a failed revision before Argo CD gives it up:
    the default strategy of an automated sync (appcontroller.go) or the Application's own, with
    NextRetryAt's backoff (types.go) and its defaults (application_defaults.go)."""
    defaults = read(ARGOCD / "pkg/apis/application/v1alpha1/application_defaults.go")
    ns = {k: int(v) for k, v in re.findall(r"DefaultSyncRetry(\w+)\s+time\.Duration = (\d+)", defaults)}  # fmt: skip
    factor = int(re.search(r"DefaultSyncRetryFactor\s+= int64\((\d+)\)", defaults)[1])
    backoff = read(ARGOCD / "pkg/apis/application/v1alpha1/types.go.L1566-L1597")
    assert "timeToWait := float64(duration) * (math.Pow(float64(factor), float64(retryCounts)))" in backoff  # fmt: skip
    assert "timeToWait = math.Min(float64(maxDuration), timeToWait)" in backoff
    auto = read(ARGOCD / "controller/appcontroller.go.L2373-L2399")
    assert "Skipping auto-sync: failed previous sync attempt" in auto
    limit = int(re.search(r"Retry:\s+appv1\.RetryStrategy\{Limit: (\d+)\}", auto)[1])
    duration, maximum = ns["Duration"] / 1e9, ns["MaxDuration"] / 1e9
    retry = app["spec"]["syncPolicy"].get("retry")
    if retry is not None:
        limit = retry.get("limit", 0)
        if limit < 0:
            return float("inf")
        b = retry.get("backoff", {})
        duration = go_duration(b["duration"]) if "duration" in b else duration
        maximum = go_duration(b["maxDuration"]) if "maxDuration" in b else maximum
        factor = b.get("factor", factor)
    return sum(min(maximum, duration * factor**n) for n in range(limit))


def bootstrap_waits() -> dict[str, float]:
    """How long `make cluster-up` waits for the platform: its default and the e2e workflow's."""
    default = float(re.search(r'TIMEOUT="\$\{TIMEOUT:-(\d+)\}"', read(CLUSTER_UP))[1])
    workflow = yaml.safe_load(read(E2E))
    [step] = [s for s in workflow["jobs"]["e2e"]["steps"] if "make cluster-up" in s.get("run", "")]  # fmt: skip
    return {"cluster-up": default, "e2e": float(step.get("env", {}).get("TIMEOUT", default))}


def test_every_bootstrap_application_retries_as_long_as_the_bootstrap_waits():
    root = yaml.safe_load(read(ROOT / "argocd/root.yaml"))
    apps = [root] + [d for d in render(ROOT / "argocd/platform") if d["kind"] == "Application"]
    automated = [a for a in apps if "automated" in a["spec"].get("syncPolicy", {})]
    assert root in automated and len(automated) >= 10
    wait = max(bootstrap_waits().values())
    for app in automated:
        assert retry_window(app) >= wait, (app["metadata"]["name"], retry_window(app), wait)


# --- kind: the binary, the node image, loaded images ----------------------------------------


def cluster_up_value(name: str) -> str:
    found = re.search(rf'^{name}="([^"$]+)"$', read(CLUSTER_UP), re.M)
    assert found, f"scripts/cluster-up.sh sets no {name}"
    return found[1]


def test_kind_is_pinned_to_the_release_whose_notes_list_the_node_image():
    version, image = cluster_up_value("KIND_VERSION"), cluster_up_value("NODE_IMAGE")
    notes = read(UPSTREAM / f"kind-{version}" / f"release-{version}.md")
    prebuilt = notes.partition("Images pre-built for this release:")[2]
    assert image in re.findall(r"kindest/node:v[\d.]+@sha256:[0-9a-f]{64}", prebuilt)
    script = read(CLUSTER_UP)
    assert "/releases/download/${KIND_VERSION}/kind-linux-amd64" in script
    assert re.search(r"^KIND_SHA256_LINUX_AMD64=\"[0-9a-f]{64}\"$", script, re.M)
    assert "sha256sum --check" in script
    # nothing runs another kind than the pinned one
    for path in (CLUSTER_UP, E2E, ROOT / "Makefile"):
        for line in read(path).splitlines():
            assert not re.match(r"\s*kind\s", line), (path.name, line)


STUB = """#!/usr/bin/env bash
echo "$(basename "$0") $*" >>"$STUB_LOG"
case "$(basename "$0") $1" in
  "kind version") echo "kind $STUB_KIND_VERSION go1.26.0 linux/amd64" ;;
  "kind get") echo "$CLUSTER" ;;
  "openssl rand") echo 00 ;;
  "mlstack root-app") cat "$STUB_ROOT" ;;
esac
"""
KUBECTL_STUB = """#!/usr/bin/env bash
echo "kubectl $*" >>"$STUB_LOG"
if [[ " $* " == *" kustomize "* || " $* " == *"--dry-run=client"* || " $* " == *" --local "* ]]; then
  exec "$REAL_KUBECTL" "$@"
fi
if [[ " $* " == *" apply "* && " $* " == *" -f - "* ]]; then cat >>"$STUB_APPLIED"; echo "---" >>"$STUB_APPLIED"; fi
if [[ " $* " == *" get applications"* ]]; then
  for i in $(seq 1 40); do echo "app$i=Synced/Healthy"; done
fi
exit 0
"""


def run_cluster_up(tmp_path: Path, kind_version: str, **env: str) -> tuple[subprocess.CompletedProcess, str, str]:  # fmt: skip
    """scripts/cluster-up.sh with docker, podman, kind, openssl and the cluster side of kubectl stubbed
    (kubectl's offline commands, kustomize and client-side dry runs, are real)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "podman", "kind", "openssl", "mlstack", "make"):
        (bin_dir / tool).write_text(STUB)
    (bin_dir / "kubectl").write_text(KUBECTL_STUB)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log, applied = tmp_path / "calls.log", tmp_path / "applied.yaml"
    applied.write_text("")
    done = subprocess.run(
        ["bash", str(CLUSTER_UP)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "KIND": str(bin_dir / "kind"),
             "MLSTACK": str(bin_dir / "mlstack"), "REAL_KUBECTL": shutil.which("kubectl"),
             "STUB_LOG": str(log), "STUB_APPLIED": str(applied), "STUB_KIND_VERSION": kind_version,
             "STUB_ROOT": str(ROOT / "argocd/root.yaml"), "CLUSTER": "stub", "TIMEOUT": "60",
             "KUBECONFIG": str(tmp_path / "none"), **env},
    )  # fmt: skip
    return done, log.read_text() if log.exists() else "", applied.read_text()


def test_cluster_up_refuses_another_kind_release(tmp_path: Path):
    done, calls, _ = run_cluster_up(tmp_path, "v0.31.0")
    assert done.returncode != 0
    assert "not v0.33.0" in done.stderr and "kind create" not in calls


def repository_secret_rule() -> tuple[str, str, set[str]]:
    """Argo CD's repository Secret: its label (common.go) and the keys it reads (repository_secrets.go)."""
    common = read(ARGOCD / "common/common.go.L196-L205")
    label = re.search(r'LabelKeySecretType = "([^"]+)"', common)[1]
    value = re.search(r'LabelValueSecretTypeRepository = "([^"]+)"', common)[1]
    keys = set(re.findall(r'Data\["(\w+)"\]', read(ARGOCD / "util/db/repository_secrets.go.L329-L345")))  # fmt: skip
    return label, value, keys


def test_cluster_up_gives_argo_cd_the_credentials_of_a_private_repository(tmp_path: Path):
    fork = "https://github.com/someone/private-fork.git"
    done, calls, applied = run_cluster_up(tmp_path, "v0.33.0", REPO_URL=fork, GIT_TOKEN="t0ken")
    assert done.returncode == 0, done.stderr + calls
    label, value, keys = repository_secret_rule()
    secrets = [d for d in yaml.safe_load_all(applied) if d and d["kind"] == "Secret"]
    [secret] = [s for s in secrets if s["metadata"].get("labels", {}).get(label) == value]
    assert secret["metadata"]["namespace"] == "argocd"
    data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
    assert set(data) <= keys and data["url"] == fork and data["password"] == "t0ken"
    assert data["type"] == "git" and data["username"]
    # applied before the app-of-apps
    assert calls.index("secret-type=repository") < calls.index("root-app")
    # no token, no Secret
    (tmp_path / "public").mkdir()
    done, _, applied = run_cluster_up(tmp_path / "public", "v0.33.0")
    assert done.returncode == 0, done.stderr
    assert "secret-type" not in applied


def kind_pull_rule() -> set[str]:
    """kind's quick start: a kind-loaded image runs only under these pull policies."""
    text = read(KIND_DOCS / "site/content/docs/user/quick-start.md")
    note = text[text.index("The Kubernetes default pull policy is") :]
    assert re.search(r"default pull policy is `IfNotPresent` unless\s+the image tag is `:latest`", note)  # fmt: skip
    return set(re.findall(r"`imagePullPolicy: (\w+)`", note.split("See [Kubernetes")[0]))


def containers(doc: dict) -> list[dict]:
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            for key in ("containers", "initContainers"):
                if isinstance(node.get(key), list):
                    found.extend(c for c in node[key] if isinstance(c, dict) and "image" in c)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return found


def test_kind_loaded_images_are_never_pulled():
    allowed = kind_pull_rule()
    assert allowed == {"IfNotPresent", "Never"}
    loaded = set(kind_loaded_images())
    docs = render(ROOT / "manifests/monitoring") + render(ROOT / "manifests/platform/dev")
    docs += [d for isvcs in inference_services().values() for d in isvcs]
    docs.append(yaml.safe_load(read(ROOT / "katib/experiment.yaml")))
    used = [c for d in docs for c in containers(d) if c["image"] in loaded]
    assert used
    for c in used:
        tag = c["image"].rpartition(":")[2]
        default = "Always" if tag == "latest" else "IfNotPresent"
        assert c.get("imagePullPolicy", default) in allowed, (c["name"], c["image"])


# --- the e2e workflow's time budget and Kourier's home ---------------------------------------


def waits(text: str) -> float:
    """Seconds of the explicit waits in a shell text: --wait/--timeout flags and sleeps."""
    total = 0.0
    for n, unit in re.findall(r"(?:--wait|--timeout)[ =](\d+)(s|m)?\b", text):
        total += float(n) * (60 if unit == "m" else 1)
    total += sum(float(n) for n in re.findall(r"\bsleep (\d+)\b", text))
    return total


def test_e2e_job_timeout_covers_the_sum_of_its_steps_waits():
    workflow = yaml.safe_load(read(E2E))
    job = workflow["jobs"]["e2e"]
    steps = [s for s in job["steps"] if "run" in s]
    script = read(CLUSTER_UP)
    for step in steps:
        wait = waits(step["run"])
        if "make cluster-up" in step["run"]:
            timeout = step.get("env", {}).get("TIMEOUT") or bootstrap_waits()["cluster-up"]
            wait += waits(re.sub(r"^\s*sleep \d+$", "", script, flags=re.M)) + float(timeout)
        assert "timeout-minutes" in step, step.get("name")
        assert step["timeout-minutes"] * 60 >= wait, (step.get("name"), wait)
    assert job["timeout-minutes"] >= sum(s.get("timeout-minutes", 0) for s in job["steps"])
    assert job["timeout-minutes"] <= 360  # GitHub-hosted runners stop a job at six hours


def test_kourier_comes_from_its_current_home():
    knative = yaml.safe_load(read(ROOT / "manifests/platform/knative/kustomization.yaml"))
    [kourier] = [u for u in knative["resources"] if "kourier" in u]
    # Knative Serving's own docs at the tag name Kourier's repository
    home = re.search(r"\[Kourier\]\((https://github\.com/[\w-]+/net-kourier)\)",
                     read(KNATIVE / "docs/resources-overview.md"))[1]  # fmt: skip
    assert kourier.startswith(f"{home}/releases/download/"), kourier
