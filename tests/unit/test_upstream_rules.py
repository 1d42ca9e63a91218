"""Our objects against the rules of the controllers that admit them, at the pinned versions. The
oracle is tests/upstream/upstream-rules.json: the facts tools/upstream_rules.py reads from the
upstream projects' own files at their tags (feature flags and their defaults, each field mask's
fields and the flag states that allow them, constants, upstream's own test tables, digests), each
with its repository, tag, commit, path, line range and the file's sha256; nothing of a rule is
retyped here, and Lua runs as Argo CD runs it. docs/upstream-rules.md says which rule is checked
where."""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client as k8s

from tests.support.kube import inference_services, render

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream"
RULES = json.loads((UPSTREAM / "upstream-rules.json").read_text())
KNATIVE, ARGOCD, KIND = RULES["knative"], RULES["argocd"], RULES["kind"]
CLUSTER_UP = ROOT / "scripts" / "cluster-up.sh"
E2E = ROOT / ".github" / "workflows" / "e2e-kind.yml"


def read(path: Path) -> str:
    return path.read_text()


def facts(node: Any) -> list[dict]:
    """Every fact of the file (a dict with "value" and "from")."""
    if isinstance(node, dict) and set(node) == {"value", "from"}:
        return [node]
    values = node.values() if isinstance(node, dict) else node if isinstance(node, list) else []
    return [f for v in values for f in facts(v)]


def test_upstream_facts_are_read_at_the_pinned_versions():
    tags = {s["repository"]: s["tag"] for s in RULES["sources"]}
    knative = read(ROOT / "manifests/platform/knative/kustomization.yaml")
    [pinned] = set(re.findall(r"/download/(knative-v[\d.]+)/", knative))
    assert tags["knative/serving"] == tags["knative-extensions/net-kourier"] == pinned
    install = read(ROOT / "argocd/install/kustomization.yaml")
    [argocd] = re.findall(r"/argo-cd/(v\d+\.\d+)\.\d+/manifests/install\.yaml", install)
    # v3.5.2 is a patch release: the rule files read are unchanged from v3.5.1 to master
    assert tags["argoproj/argo-cd"] == f"{argocd}.1"
    # every fact names a file read at its repository's tag, with that file's sha256
    files = {(s["repository"], p): sha for s in RULES["sources"] for p, sha in s["files"].items()}
    every = facts({k: RULES[k] for k in ("knative", "argocd", "kind")})
    assert len(every) > 30
    readme = read(UPSTREAM / "README.md")
    for fact in every:
        assert fact["from"], fact
        for where in fact["from"]:
            first, last = where["lines"]
            assert 1 <= first <= last and re.fullmatch(r"[0-9a-f]{64}", where["sha256"])
            if "release_page" in where:  # kind's release notes: not in the repository
                assert where["sha256"] in readme
                continue
            assert where["tag"] == tags[where["repository"]]
            assert files[where["repository"], where["path"]] == where["sha256"], where
    for (repo, path), sha in files.items():
        assert f"`{sha}`" in readme, (repo, path)


# --- Knative: config-features and the webhook's field masks ---------------------------------


def knative_features(data: dict[str, str]) -> dict[str, str]:
    """config-features' data as Knative reads it (features.go: per field its key, default and the
    values its parser accepts, compared as strings.EqualFold does)."""
    table = KNATIVE["features"]["fields"]["value"]
    assert len(table) >= 30
    features = {}
    for field, flag in table.items():
        features[field] = flag["default"]
        raw = data.get(flag["key"])
        for accepted in flag["accepts"] if raw is not None else ():
            if raw.lower() == accepted.lower():
                features[field] = accepted
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


def field(obj: object, path: list[str]) -> object:
    """obj's value at the Go field path (JSON names differ from Go's in case only here)."""
    for part in path:
        if not isinstance(obj, dict):
            return None
        obj = next((v for k, v in obj.items() if k.lower() == part.lower()), None)
    return obj


def condition(when: dict, features: dict[str, str], obj: dict) -> bool:
    """A field mask's condition (as tools/upstream_rules.py records fieldmask.go's), evaluated;
    an unknown form fails the test."""
    if "all" in when:
        return all(condition(c, features, obj) for c in when["all"])
    if "any" in when:
        return any(condition(c, features, obj) for c in when["any"])
    if "not" in when:
        return not condition(when["not"], features, obj)
    if "feature" in when:
        if "in" in when:
            return features[when["feature"]] in when["in"]
        return features[when["feature"]] not in when["not_in"]
    if "set" in when:
        return field(obj, when["set"]) is not None
    if "false" in when:
        return field(obj, when["false"]) is False
    if "equals" in when:
        return field(obj, when["equals"]) == when["value"]
    if "never" in when:
        return False
    raise AssertionError(f"field mask condition not understood: {when}")


def allowed_fields(mask: str, features: dict[str, str], obj: dict) -> set[str]:
    """The JSON fields of ``obj`` that ``mask`` (fieldmask.go) copies, given the features."""
    allowed: set[str] = set()
    for rule in KNATIVE["field_masks"][mask]["value"]:
        if not condition(rule["when"], features, obj):
            continue
        if rule["field"] in EMBEDDED:
            allowed |= allowed_fields(EMBEDDED[rule["field"]], features, obj)
        else:
            allowed.add(json_name(mask, rule["field"]))
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


def predictor_podspec(isvc: dict, component: str = "predictor") -> dict:
    """The PodSpec KServe gives Knative: the component's PodSpec fields (the rest is KServe's)."""
    pod_fields = set(k8s.V1PodSpec.attribute_map.values())
    predictor = json.loads(json.dumps(isvc["spec"][component]))
    return {k: v for k, v in predictor.items() if k in pod_fields}


def rendered_knative_config(tmp_path: Path, patched: bool = True) -> dict[str, dict[str, str]]:
    """Knative's ConfigMaps at the tag (their settings: upstream's data but the `_example`
    documentation) with our kustomization's patches applied by kustomize."""
    ours = yaml.safe_load(read(ROOT / "manifests/platform/knative/kustomization.yaml"))
    names = []
    for cm in (c["value"] for c in KNATIVE["config_maps"]):
        doc = {"apiVersion": "v1", "kind": "ConfigMap", "data": cm["data"],
               "metadata": {"name": cm["name"], "namespace": cm["namespace"]}}  # fmt: skip
        (tmp_path / f"{cm['name']}.yaml").write_text(yaml.safe_dump(doc))
        names.append(f"{cm['name']}.yaml")
    kustomization: dict[str, Any] = {"resources": names}
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
    # the transformer's pod too (its /tmp emptyDir: kubernetes.podspec-volumes-emptydir)
    transformer = predictor_podspec(isvc, "transformer")
    assert transformer["volumes"] and transformer["containers"][0]["volumeMounts"]
    assert disallowed("PodSpecMask", features, transformer) == []


# --- Knative: tag-to-digest resolution ------------------------------------------------------


def registries_skipping_tag_resolution(data: dict[str, str]) -> set[str]:
    """config-deployment as Knative reads it (pkg/deployment/config.go: key and default; the
    value is knative.dev/pkg's AsStringSet: comma-separated, spaces trimmed)."""
    rule = KNATIVE["registries_skipping_tag_resolving"]["value"]
    skip = set(rule["default"])
    if rule["key"] in data:
        skip = {s.strip() for s in data[rule["key"]].split(",")}
    return skip


def registry(image: str) -> str:
    """The registry of a reference, as go-containerregistry's name package parses it."""
    first, _, rest = image.partition("/")
    return first if rest and ("." in first or ":" in first or first == "localhost") else "index.docker.io"  # fmt: skip


def needs_registry_lookup(image: str, skip: set[str]) -> bool:
    """resolve.go: a digest is kept; a tag on a skipped registry is left alone; any other tag
    is looked up in its registry (and fails with "Unable to fetch image" when it is not there)."""
    assert KNATIVE["tag_resolution"]["value"] == {
        "digest_kept": True, "skipped_registry_tag_kept": True, "other_tag_looked_up": True
    }  # fmt: skip
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


def upstream_hpa_health(hpa: dict) -> str:
    """health_hpa.go's built-in rule on an autoscaling/v2 HPA: its degraded (type, reason) pairs
    and healthy condition types."""
    rule = ARGOCD["hpa_health"]["value"]
    degraded = {tuple(pair) for pair in rule["degraded"]}
    conditions = hpa.get("status", {}).get("conditions", [])
    if any((c["type"], c.get("reason")) in degraded for c in conditions):
        return "Degraded"
    if any(c["type"] in rule["healthy_types"] and c["status"] == "True" for c in conditions):
        return "Healthy"
    return rule["otherwise"]


def upstream_hpa_cases() -> list[tuple[str, dict, str]]:
    """health_test.go's TestHPA table: each testdata HPA as Argo CD reads it (autoscaling/v2: a
    v1 object's conditions are its annotation's), and the health upstream expects."""
    cases = [c["value"] for c in ARGOCD["hpa_health_cases"]]
    assert len(cases) >= 9 and {c["apiVersion"] for c in cases} == {"autoscaling/v1", "autoscaling/v2"}  # fmt: skip
    return [
        (c["testdata"],
         {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
          "status": {"conditions": c["conditions"]} if c["conditions"] is not None else {}},
         c["expected"])
        for c in cases
    ]  # fmt: skip


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
    [able] = [c for c in cases["hpa-v2-healthy.yaml"]["status"]["conditions"]
              if c["type"] == "AbleToScale"]  # fmt: skip
    [active] = [c for c in cases["hpa-v1-degraded.yaml"]["status"]["conditions"]
                if c["type"] == "ScalingActive"]  # fmt: skip
    assert "unable to fetch metrics from resource metrics API" in active["message"]
    return {"conditions": [able, active]}


def knative_hpas() -> list[dict]:
    """Knative's activator and webhook HPAs and Kourier's gateway HPA, as upstream ships them."""
    return [h["value"] for h in KNATIVE["hpas"]]


def test_upstream_hpa_rule_as_read_matches_upstreams_own_test_table():
    for name, obj, want in upstream_hpa_cases():
        assert upstream_hpa_health(obj) == want, name


def test_knative_and_kourier_hpas_do_not_stop_the_sync_waves_on_kind():
    hpas = knative_hpas()
    assert {h["metadata"]["name"] for h in hpas} == {"activator", "webhook", "3scale-kourier-gateway"}  # fmt: skip
    # sync_context.go: a Degraded task fails a multi-step (multi-wave) sync
    assert ARGOCD["sync"]["value"] == {"running_task_degraded": "OperationFailed"}
    for hpa in hpas:
        assert upstream_hpa_health({**hpa, "status": kind_hpa_status()}) == "Degraded"
        health = argocd_hpa_health({**hpa, "status": kind_hpa_status()})
        assert health["status"] == "Healthy", (hpa["metadata"]["name"], health)
        assert "metrics" in health["message"]


def test_hpa_health_customization_is_upstreams_rule_but_for_missing_metrics():
    script = health_customizations()["resource.customizations.health.autoscaling_HorizontalPodAutoscaler"]  # fmt: skip
    no_metrics = {"FailedGetResourceMetric", "FailedGetPodsMetric", "FailedGetObjectMetric", "FailedGetExternalMetric"}  # fmt: skip
    for name, obj, want in upstream_hpa_cases():
        hpa = obj
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
    rule = ARGOCD["retry"]["value"]
    assert rule["wait_before_retry_n"] == "min(max_duration, duration * factor ** n), n from 0"
    assert rule["failed_revision_auto_synced_again"] is False
    limit, factor = rule["automated_default_limit"], rule["factor"]
    duration, maximum = rule["duration_seconds"], rule["max_duration_seconds"]
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
    notes = KIND["node_images"]["value"]  # the images pre-built for the release, by digest
    assert notes["release"] == version
    assert image in notes["images"]
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
  "images list") printf '%s\n' $STUB_IMAGES ;;
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
    """scripts/cluster-up.sh with docker, podman, kind, openssl, scripts/images.sh (the real one
    would write this checkout's .mlstack) and the cluster side of kubectl stubbed (kubectl's
    offline commands, kustomize and client-side dry runs, are real)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("docker", "podman", "kind", "openssl", "mlstack", "make", "images"):
        (bin_dir / tool).write_text(STUB)
    (bin_dir / "kubectl").write_text(KUBECTL_STUB)
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    log, applied = tmp_path / "calls.log", tmp_path / "applied.yaml"
    applied.write_text("")
    done = subprocess.run(
        ["bash", str(CLUSTER_UP)], cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": str(tmp_path), "KIND": str(bin_dir / "kind"),
             "MLSTACK": str(bin_dir / "mlstack"), "IMAGES": str(bin_dir / "images"),
             "STUB_IMAGES": " ".join(kind_loaded_images()), "REAL_KUBECTL": shutil.which("kubectl"),
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
    rule = ARGOCD["repository_secret"]["value"]
    return rule["label"], rule["value"], set(rule["keys"])


def test_cluster_up_gives_argo_cd_the_credentials_of_a_private_repository(tmp_path: Path):
    fork = "https://github.com/someone/private-fork.git"
    done, calls, applied = run_cluster_up(tmp_path, "v0.33.0", REPO_URL=fork, GIT_TOKEN="t0ken")
    assert done.returncode == 0, done.stderr + calls
    assert all(f"kind load docker-image --name stub {i}\n" in calls for i in kind_loaded_images())
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


def kind_pull_rule() -> dict:
    """kind's quick start: the pull policies a kind-loaded image runs under, and the default."""
    return KIND["pull_policy"]["value"]


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
    rule = kind_pull_rule()
    allowed = set(rule["kind_loaded_images_run_under"])
    assert allowed == {"IfNotPresent", "Never"}
    loaded = set(kind_loaded_images())
    docs = render(ROOT / "manifests/monitoring") + render(ROOT / "manifests/platform/dev")
    docs += [d for isvcs in inference_services().values() for d in isvcs]
    docs.append(yaml.safe_load(read(ROOT / "katib/experiment.yaml")))
    used = [c for d in docs for c in containers(d) if c["image"] in loaded]
    assert used
    for c in used:
        tag = c["image"].rpartition(":")[2]
        default = rule["default_for_that_tag"] if tag == rule["default_unless_tag"] else rule["default"]  # fmt: skip
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
    home = KNATIVE["kourier_repository"]["value"]
    assert kourier.startswith(f"{home}/releases/download/"), kourier
