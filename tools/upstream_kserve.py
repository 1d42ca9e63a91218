"""Extract what KServe v0.20.0 (the version argocd/platform pins) and the Knative it runs on
(knative-v1.21.1, and knative.dev/pkg at the commit its go.mod pins) check or do to our
InferenceServices, from their own files at those versions, into tests/upstream/kserve-rules.json.

Only the facts tests/unit/test_upstream_kserve.py needs are written (constants, lists, the
deployment-mode mapping, the logger agent's modes and storage table, Knative's port rules), each
with its provenance (repository, tag, commit, path, line range, sha256 of the upstream file).
Where the test relies on a piece of upstream logic this script does not turn into data (the
defaulter renaming a single container, the webhook injecting the storage initializer only for
its annotation), it checks that the code says so and records the rule; if the code changed, it
stops. No upstream file or code is kept.

    python tools/upstream_kserve.py --mirror-root ROOT > tests/upstream/kserve-rules.json

(``ROOT/<owner>+<name>/repo``: local git clones, as for tools/upstream_rules.py.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

from upstream_monitoring import func, has
from upstream_rules import Fact, Upstream, fact, search

KSERVE_TAG = "v0.20.0"
KNATIVE_TAG = "knative-v1.21.1"
KNATIVE_PKG = "4a022ed9999a874caca69595f8ba27a8f25cfa76"  # knative/serving's go.mod at the tag

CONSTANTS = "pkg/constants/constants.go"
V1BETA1 = "pkg/apis/serving/v1beta1"
VALIDATION = f"{V1BETA1}/inference_service_validation.go"
COMPONENT = f"{V1BETA1}/component.go"
CUSTOM = f"{V1BETA1}/predictor_custom.go"
UTILS = "pkg/controller/v1beta1/inferenceservice/utils/utils.go"
NAMES = (
    "DeploymentMode", "Knative", "Standard", "ModelMeshDeployment", "LegacyServerless",
    "LegacyRawDeployment", "TransformerContainerName", "CustomSpecStorageUriEnvVarKey",
    "CustomSpecProtocolEnvVarKey", "ProtocolV1", "ProtocolV2", "InferenceServiceContainerName",
    "DefaultModelLocalMountPath", "StorageInitializerSourceUriInternalAnnotationKey",
)  # fmt: skip


def const(up: Upstream, path: str, name: str) -> tuple[str, Fact]:
    """A Go string constant, following `A + "/x"` concatenations of other constants of the file."""
    source = up.show(path)
    m = search(rf"^\s*(?:const\s+)?{name}\s+(?:\w+\s+)?=\s+(.+)$", source, re.M)
    parts = [p.strip() for p in m[1].split("//")[0].split("+")]
    value = "".join(p.strip('"') if p.startswith('"') else const(up, path, p)[0] for p in parts)
    return value, up.where(path, m.start(), m.end())


def go_list(up: Upstream, path: str, name: str, consts: str = CONSTANTS) -> tuple[list[str], Fact]:
    """The items of a Go slice literal `name = []T{...}`: string literals or constants."""
    source = up.show(path)
    m = search(rf"{name}\s*=\s*\[\][\w.]+\{{([^}}]*)\}}", source, re.S)
    items = [i.strip() for i in m[1].split(",") if i.strip()]
    values = [
        i.strip('"') if i.startswith('"') else const(up, consts, i.removeprefix("constants."))[0]
        for i in items
    ]
    return values, up.where(path, m.start(), m.end())


def kserve(ks: Upstream) -> dict[str, Fact]:
    constants = {}
    for name in NAMES:
        value, where = const(ks, CONSTANTS, name)
        constants[name] = fact(value, where)
    c = {k: v["value"] for k, v in constants.items()}

    # GetDeploymentMode: legacy names mapped, then the accepted modes, else the default
    body, at, where = func(ks, UTILS, "GetDeploymentMode")
    legacy = re.findall(
        r"if deploymentMode == string\(constants\.(\w+)\) \{\s+//[^\n]*\n\s+deploymentMode = string\(constants\.(\w+)\)",
        body,
    )  # fmt: skip
    accepted = re.findall(r"deploymentMode == string\(constants\.(\w+)\)", body.split("if ok &&")[1])  # fmt: skip
    mode = {"annotation": c["DeploymentMode"], "legacy": {c[a]: c[b] for a, b in legacy},
            "accepted": [c[a] for a in accepted], "otherwise": "the cluster's default, silently"}  # fmt: skip

    validation = ks.show(VALIDATION)
    name_fmt = search(r'IsvcNameFmt\s+string = "([^"]+)"', validation)
    anchored = has(ks, VALIDATION, validation, 'regexp.MustCompile("^" + IsvcNameFmt + "$")')
    blocked, b_where = go_list(ks, "pkg/validation/env_policy.go", "DefaultBlockedEnvVars")
    custom = ks.show(CUSTOM)
    protocol = has(ks, CUSTOM, custom, "constants.ProtocolV1) || envVar.Value == string(constants.ProtocolV2)")  # fmt: skip
    ext, e_at, e_where = func(ks, COMPONENT, "Validate")  # (s *ComponentExtensionSpec) Validate
    checks = [n for n in ("validateContainerConcurrency", "validateReplicas", "validateLogger") if n in ext]  # fmt: skip
    if len(checks) != 3:
        sys.exit(f"{COMPONENT}: ComponentExtensionSpec.Validate runs {checks}")
    consts = ks.show(CONSTANTS)
    min_replicas = search(r"DefaultMinReplicas\s+(?:int32\s+)?=\s+(?:int32\()?(\d+)", consts)
    types_path = f"{V1BETA1}/inference_service.go"
    types = ks.show(types_path)
    modes_at = list(re.finditer(r"(Log\w+) LoggerType = \"(\w+)\"", types))
    modes = {m[1]: m[2] for m in modes_at}
    logger, l_at, l_where = func(ks, COMPONENT, "validateLogger")
    checked = re.findall(r"logger\.Mode != (\w+)", logger)
    component = ks.show(COMPONENT)
    metric = search(r'MetricConcurrency ScaleMetric = "(\w+)"', component)
    scaling, s_at, s_where = func(ks, VALIDATION, "validateAutoScalingCompExtension")
    hpa_class = has(ks, VALIDATION, scaling, "if annotationClass == autoscaling.HPA {", s_at)
    kpa, k_at, _ = func(ks, VALIDATION, "validateScalingKPACompExtension")
    default_metric = has(ks, VALIDATION, kpa, "metric := MetricConcurrency", k_at)
    kpa_metrics, kpa_where = go_list(ks, CONSTANTS, "AutoscalerAllowedKPAMetricsList")

    default, d_at, d_where = func(ks, CUSTOM, "Default")  # (c *CustomPredictor) Default
    renames = has(ks, CUSTOM, default, "if len(c.Containers) == 1 || len(c.Containers[0].Name) == 0 {", d_at)  # fmt: skip
    get, g_at, _ = func(ks, CUSTOM, "GetStorageUri")
    storage_uri = [
        has(
            ks, CUSTOM, get, "if container.Name == constants.InferenceServiceContainerName {", g_at
        ),  # fmt: skip
        has(ks, CUSTOM, get, "if envVar.Name == constants.CustomSpecStorageUriEnvVarKey {", g_at),
    ]
    validate_uri, v_at, _ = func(ks, UTILS, "ValidateStorageURI")
    prefix_checked = has(ks, UTILS, validate_uri, "kserveutils.IsPrefixSupported(*storageURI, SupportedStorageURIPrefixList)", v_at)  # fmt: skip
    prefixes, p_where = go_list(ks, UTILS, "SupportedStorageURIPrefixList")

    predictor = "pkg/controller/v1beta1/inferenceservice/components/predictor.go"
    injector = "pkg/webhook/admission/pod/storage_initializer_injector.go"
    inject, i_at, _ = func(ks, injector, "InjectStorageInitializer")
    injected = [
        has(
            ks,
            predictor,
            ks.show(predictor),
            "annotations[constants.StorageInitializerSourceUriInternalAnnotationKey] = *sourceURI",
        ),  # fmt: skip
        has(
            ks,
            injector,
            inject,
            "srcURI, ok := pod.Annotations[constants.StorageInitializerSourceUriInternalAnnotationKey]\n\tif !ok {\n\t\treturn nil",
            i_at,
        ),  # fmt: skip
        has(ks, injector, inject, "MountPath: constants.DefaultModelLocalMountPath", i_at),
        has(
            ks,
            injector,
            ks.show(injector),
            'envVar.Name == constants.CustomSpecStorageUriEnvVarKey && envVar.Value != ""',
        ),  # fmt: skip
    ]
    agent_injector = "pkg/webhook/admission/pod/agent_injector.go"
    first_port = has(ks, agent_injector, ks.show(agent_injector), "componentPort = strconv.Itoa(int(container.Ports[0].ContainerPort))")  # fmt: skip

    main_go = "cmd/agent/main.go"
    agent = ks.show(main_go)
    agent_modes = search(r"case v1beta1\.(\w+), v1beta1\.(\w+), v1beta1\.(\w+):\s+default:\s+log\.Errorf\(\"Malformed log-mode", agent)  # fmt: skip
    parsed = has(ks, main_go, agent, "url.Parse(*logUrl)")
    store_path = "pkg/logger/store.go"
    store, st_at, st_where = func(ks, store_path, "GetStorageStrategy")
    table = re.findall(r'case strings\.HasPrefix\(url, "(\w+)"\):[^\n]*\n\s+return (\w+)', store)
    store_default = search(r"default:\s+return (\w+)", store)[1]

    return {
        "constants": constants,
        "deployment_mode": fact(mode, where, *(constants[n]["from"][0] for n in ("DeploymentMode", "Knative", "Standard", "ModelMeshDeployment", "LegacyServerless", "LegacyRawDeployment"))),  # fmt: skip
        "name_format": fact({"regex": name_fmt[1], "anchored": True},
                            ks.where(VALIDATION, name_fmt.start(), name_fmt.end()), anchored),
        "blocked_env": fact(blocked, b_where),
        "protocols": fact([c["ProtocolV1"], c["ProtocolV2"]], protocol, constants["ProtocolV1"]["from"][0], constants["ProtocolV2"]["from"][0]),  # fmt: skip
        "component_checks": fact(checks, e_where),
        "default_min_replicas": fact(int(min_replicas[1]), ks.where(CONSTANTS, min_replicas.start(), min_replicas.end())),  # fmt: skip
        "logger_modes": fact([modes[m] for m in checked], l_where,
                             ks.where(types_path, modes_at[0].start(), modes_at[-1].end())),
        "kpa": fact({"unless_class_annotation_is_hpa": True, "metrics": kpa_metrics,
                     "default_metric": metric[1]},
                    hpa_class, default_metric, kpa_where,
                    ks.where(COMPONENT, metric.start(), metric.end())),
        "custom_predictor": fact(
            {"default_renames": "a single container, or an unnamed first one",
             "storage_uri_from": "the env CustomSpecStorageUriEnvVarKey of the container named InferenceServiceContainerName"},
            d_where, renames, *storage_uri),
        "storage_uri_prefixes": fact(prefixes, p_where, prefix_checked),
        "storage_initializer": fact(
            {"injected_for_annotation_only": True, "mount_path_constant": "DefaultModelLocalMountPath",
             "storage_uri_env_rewritten": True}, *injected),
        "logger_agent": fact(
            {"component_port": "the first port of the component container",
             "modes": [modes[agent_modes[i]] for i in (1, 2, 3)], "url_parsed": True,
             "storage": {prefix: strategy for prefix, strategy in table}, "storage_default": store_default},
            first_port, ks.where(main_go, agent_modes.start(), agent_modes.end()), parsed, st_where),
    }  # fmt: skip


def knative(serving: Upstream, pkg: Upstream) -> dict[str, Fact]:
    register_path = "pkg/apis/autoscaling/register.go"
    class_key, c_where = const(serving, register_path, "ClassAnnotationKey")
    hpa, h_where = const(serving, register_path, "HPA")
    validation_path = "pkg/apis/serving/k8s_validation.go"
    validation = serving.show(validation_path)
    reserved = search(r"reservedPorts = sets\.NewInt32\(([^)]*)\)", validation)
    networking_path, pprof_path = "pkg/networking/constants.go", "observability/runtime/pprof.go"
    networking, pprof = serving.show(networking_path), pkg.show(pprof_path)
    values = {**dict(re.findall(r"^\s+(\w+) = (\d+)$", networking, re.M)),
              **dict(re.findall(r"^\s+(\w+) = (\d+)$", pprof, re.M))}  # fmt: skip
    names = [n.strip().split(".")[-1] for n in reserved[1].split(",") if n.strip()]
    ports = [int(values[n]) for n in names]
    where_ports = [serving.where(validation_path, reserved.start(), reserved.end())]
    for n in names:
        for up, path, text in ((serving, networking_path, networking), (pkg, pprof_path, pprof)):
            if m := re.search(rf"^\s+{n} = \d+$", text, re.M):
                where_ports.append(up.where(path, m.start(), m.end()))
    if len(ports) != 6:
        sys.exit(f"{validation_path}: reservedPorts {names}")
    valid = search(r"validPortNames = sets\.New\(([^)]*)\)", validation)
    one = has(serving, validation_path, validation, 'Message: "more than one container port is set"')  # fmt: skip
    return {
        "autoscaling_class": fact({"annotation": class_key, "hpa": hpa}, c_where, h_where),
        "reserved_ports": fact(ports, *where_ports),
        "port": fact(
            {"valid_names": re.findall(r'"([\w-]*)"', valid[1]), "at_most_one": True,
             "protocol": "TCP"},
            serving.where(validation_path, valid.start(), valid.end()), one,
        ),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror-root", type=Path, required=True)
    root = ap.parse_args().mirror_root
    ks = Upstream(root, "kserve/kserve", KSERVE_TAG)
    serving = Upstream(root, "knative/serving", KNATIVE_TAG)
    pkg = Upstream(root, "knative/pkg", KNATIVE_PKG)
    out = {
        "about": " ".join(__doc__.split("\n\n")[0].split()),
        "kserve": kserve(ks),
        "knative": knative(serving, pkg),
        "sources": [u.sources() for u in (ks, serving, pkg)],
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
