"""The kube_customresource-style series our alert rules and dashboards query, checked against what
kube-state-metrics would emit from our custom-resource-state config, at the version the pinned
kube-prometheus-stack chart deploys. The naming and labelling rules are kube-state-metrics' own,
read from its source at that tag by tools/upstream_monitoring.py into
tests/upstream/monitoring-rules.json (each fact with its path, line range and sha256): the metric
name composition, the default prefix, the GVK labels added to every series, the label-name
sanitising, path lookups and the Info metric's values. docs/upstream-rules.md lists the rule."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.kube import rendered

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream"
FACTS = json.loads((UPSTREAM / "monitoring-rules.json").read_text())
KSM = {k: v["value"] for k, v in FACTS["kube_state_metrics"].items()}
VALUES = ROOT / "manifests/platform/kube-prometheus-stack/values.yaml"
APPS = ROOT / "argocd/platform/applications.yaml"
RULES = ROOT / "manifests/monitoring/rules.yaml"
RULE_TESTS = ROOT / "manifests/monitoring/rules.test.yaml"
DASHBOARDS = ROOT / "manifests/monitoring/dashboards"

# --- kube-state-metrics' rules, as read from its source ----------------------------------------


def default_prefix() -> str:
    """Resource.GetMetricNamePrefix with metricNamePrefix unset (config.go)."""
    return KSM["default_prefix"]


def metric_name_prefix(resource: dict) -> str:
    # a nil pointer takes the default; "" is a prefix of its own (no prefix at all)
    prefix = resource.get("metricNamePrefix")
    return default_prefix() if prefix is None else prefix


def full_name(resource: dict, generator: dict) -> str:
    """fullName (registry_factory.go): the prefix, when not empty, and the name, joined."""
    rule = KSM["full_name"]
    assert rule["empty_prefix_omitted"] is True
    prefix = metric_name_prefix(resource)
    return rule["separator"].join(([prefix] if prefix != "" else []) + [generator["name"]])


def gvk_labels(gvk: dict) -> dict[str, str]:
    """compile(): the labels kube-state-metrics adds to every series of a resource."""
    labels = KSM["gvk_labels"]
    assert len(labels) == 3, labels
    return {label: gvk[field] for label, field in labels.items()}


def sanitize_label_name(name: str) -> str:
    """store.SanitizeLabelName: every character outside the pattern becomes an underscore."""
    rule = KSM["label_name"]
    return re.sub(rule["invalid_characters"], rule["replaced_by"], name)


def get_path(obj: Any, path: list[str]) -> Any:
    """valuePath.Get (compilePath): map keys (and `key=value` that must equal), list indices
    (negative from the end) and `[key=value]` list lookups; anything else is nil."""
    assert KSM["path"] == {"list_lookup_by_key_value": True, "negative_index_from_end": True}
    for part in path:
        if obj is None:
            return None
        if part.startswith("[") and part.endswith("]"):
            key, _, want = part[1:-1].partition("=")
            items = obj if isinstance(obj, list) else []
            obj = next((m for m in items if isinstance(m, dict) and str(m.get(key)) == want), None)
        elif isinstance(obj, dict):
            kv = part.split("=")
            if len(kv) == 2 and kv[0] in obj and obj[kv[0]] == kv[1]:
                obj = obj[kv[0]]
            else:
                obj = obj.get(part)
        elif isinstance(obj, list):
            if not re.fullmatch(r"-?\d+", part):
                return None
            i = int(part) + (len(obj) if int(part) < 0 else 0)
            obj = obj[i] if 0 <= i < len(obj) else None
        else:
            return None
    return obj


def go_value(value: Any) -> str:
    """fmt.Sprintf("%v", v) for the JSON values a label can hold."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def path_labels(obj: Any, labels: dict[str, list[str]]) -> dict[str, str]:
    """addPathLabels: each label's path read from obj; a nil value adds no label; `*` copies a
    map (done first, so named labels win)."""
    assert KSM["nil_value_adds_no_label"] is True
    out: dict[str, str] = {}
    for star in sorted(k for k in labels if k.startswith("*") or k.endswith("*")):
        value = get_path(obj, labels[star])
        if isinstance(value, dict):
            for k, v in value.items():
                key = star[:-1] + k if star.endswith("*") else k
                out[sanitize_label_name(key)] = go_value(v)
    for key, path in labels.items():
        if key.startswith("*") or key.endswith("*"):
            continue
        value = get_path(obj, path)
        if value is not None:
            out[sanitize_label_name(key)] = go_value(value)
    return out


def info_values(value: Any, spec: dict) -> list[dict[str, str]]:
    """compiledInfo.Values: one series per list item, per map (its labelsFromPath) and per map
    key (labelFromKey); a series with no label at all is not emitted."""
    assert KSM["info_series_without_labels_emitted"] is False
    from_path, from_key = spec.get("labelsFromPath", {}), spec.get("labelFromKey", "")

    def one(v: Any) -> list[dict[str, str]]:
        labels = path_labels(v, from_path) if v is not None else {}
        return [labels] if labels else []

    if isinstance(value, list):
        return [s for item in value for s in one(item)]
    if isinstance(value, dict):
        series = []
        for key, item in value.items():
            labels = {from_key: key} if key and from_key else {}
            labels.update(path_labels(item, from_path))
            if labels:
                series.append(labels)
        return series + one(value)
    return one(value)


def emitted(config: dict, obj: dict) -> dict[str, list[dict[str, str]]]:
    """Series name → label sets kube-state-metrics exports for one object (generate())."""
    kind = obj["kind"]
    group, _, version = obj["apiVersion"].rpartition("/")
    out: dict[str, list[dict[str, str]]] = {}
    # configOverrides: the type is matched case-insensitively
    assert KSM["each_type_case_insensitive"] is True
    for resource in config["spec"]["resources"]:
        gvk = resource["groupVersionKind"]
        if (gvk["group"], gvk["version"], gvk["kind"]) != (group, version, kind):
            continue
        for generator in resource["metrics"]:
            each = generator["each"]
            kind_of = each["type"].lower()
            assert kind_of == "info", f"extend the emulation to {kind_of} (registry_factory.go)"
            # Generator labels merged over the Resource's (Labels.Merge), plus the GVK labels
            common = {**gvk_labels(gvk), **resource.get("commonLabels", {}),
                      **generator.get("commonLabels", {})}  # fmt: skip
            paths = {**resource.get("labelsFromPath", {}), **generator.get("labelsFromPath", {})}
            base = {**common, **path_labels(obj, paths)}
            spec = each["info"]
            values = info_values(get_path(obj, spec.get("path", [])), spec)
            # DefaultLabels: the value's own labels win over the base labels
            out[full_name(resource, generator)] = [{**base, **v} for v in values]
    return out


# --- the oracle agrees with upstream's own test table ------------------------------------------


def test_name_composition_as_read_matches_upstreams_own_test_table():
    cases = KSM["full_name_cases"]  # registry_factory_test.go's Test_fullName
    assert len(cases) == 3
    for case in cases:
        prefix = case["metricNamePrefix"]
        resource = {} if prefix is None else {"metricNamePrefix": prefix}
        assert full_name(resource, {"name": case["generator"]}) == case["want"], case["case"]
    # an Info metric is not renamed: kube-state-metrics only logs a missing _info suffix
    assert KSM["info_suffix_added"] is False


def test_kube_state_metrics_read_is_the_one_the_pinned_chart_deploys():
    [pin] = re.findall(r"chart: kube-prometheus-stack\s+targetRevision: ([\d.]+)", APPS.read_text())
    stack = FACTS["charts"]["kube_prometheus_stack"]["value"]
    assert stack["version"] == pin
    chart = FACTS["charts"]["kube_state_metrics_chart"]["value"]
    assert chart["version"] == stack["kube_state_metrics_chart"]
    [ksm] = [s for s in FACTS["sources"] if s["repository"] == "kubernetes/kube-state-metrics"]
    assert ksm["tag"] == f"v{chart['appVersion'].removeprefix('v')}"
    # every fact names the file it was read from, at that tag, with its sha256
    for fact in FACTS["kube_state_metrics"].values():
        for where in fact["from"]:
            assert where["repository"] == ksm["repository"] and where["tag"] == ksm["tag"]
            assert ksm["files"][where["path"]] == where["sha256"], where
    readme = (UPSTREAM / "README.md").read_text()
    for source in FACTS["sources"]:
        for path, sha in source["files"].items():
            assert f"`{sha}`" in readme, (source["repository"], path)


# --- our config against our queries ------------------------------------------------------------


def crs_config() -> dict:
    state = yaml.safe_load(VALUES.read_text())["kube-state-metrics"]["customResourceState"]
    assert state["enabled"] is True
    return state["config"]


def inference_services() -> list[dict]:
    return [
        d
        for env in ("staging", "production")
        for d in rendered(ROOT / "manifests/overlays" / env)
        if d["kind"] == "InferenceService"
    ]


def exported_series() -> dict[str, list[dict[str, str]]]:
    series: dict[str, list[dict[str, str]]] = {}
    for isvc in inference_services():
        for name, labels in emitted(crs_config(), isvc).items():
            series.setdefault(name, []).extend(labels)
    return series


def queried_expressions() -> list[str]:
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("expr"), str):
                exprs.append(node["expr"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    for path in sorted(DASHBOARDS.glob("*.json")):
        walk(json.loads(path.read_text()))
    return exprs


def prefixes() -> set[str]:
    return {metric_name_prefix(r) for r in crs_config()["spec"]["resources"]} | {default_prefix()}


def selectors(expr: str) -> list[tuple[str, dict[str, tuple[str, str]]]]:
    """The vector selectors of the custom-resource metrics in a PromQL expression."""
    alternatives = "|".join(re.escape(p) for p in sorted(prefixes(), key=len, reverse=True))
    found = []
    for m in re.finditer(rf"(?<![\w:])((?:{alternatives})_\w*)\s*(\{{[^}}]*\}})?", expr):
        matchers = {
            label: (op, value)
            for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', m[2] or "")
        }
        found.append((m[1], matchers))
    return found


def matches(labels: dict[str, str], matchers: dict[str, tuple[str, str]]) -> bool:
    for label, (op, want) in matchers.items():
        got = labels.get(label, "")
        ok = {"=": got == want, "!=": got != want,
              "=~": re.fullmatch(want, got) is not None,
              "!~": re.fullmatch(want, got) is None}[op]  # fmt: skip
        if not ok:
            return False
    return True


def test_every_custom_resource_series_we_query_is_one_kube_state_metrics_emits():
    series = exported_series()
    queried = [(e, s) for e in queried_expressions() for s in selectors(e)]
    assert queried, "no rule or dashboard reads the custom-resource metrics any more"
    for expr, (name, matchers) in queried:
        assert name in series, f"{name} is not exported; kube-state-metrics emits {sorted(series)}"
        hits = [labels for labels in series[name] if matches(labels, matchers)]
        assert hits, (name, matchers, series[name])
        # labels the query groups or joins by must be on every series it selects
        grouped = re.findall(rf"\b(?:by|on)\s*\(([^)]*)\)\s*\(?\s*{re.escape(name)}\b", expr)
        grouped += re.findall(r"\b(?:on|ignoring)\s*\(([^)]*)\)", expr)
        for label in {x.strip() for g in grouped for x in g.split(",") if x.strip()}:
            assert all(label in labels for labels in hits), (name, label, hits)


def test_the_declared_version_joins_the_predictors_model_info():
    # the mismatch alert joins on (model_name, model_version): the predictor's model_info carries
    # --model_name and MODEL_VERSION; a consistent promotion must export the same pair
    series = exported_series()
    names = {n for e in queried_expressions() for n, _ in selectors(e)}
    assert len(names) == 1
    [name] = names
    for isvc in inference_services():
        [container] = isvc["spec"]["predictor"]["containers"]
        args = dict(a.removeprefix("--").split("=", 1) for a in container["args"] if "=" in a)
        env = {e["name"]: e.get("value") for e in container["env"]}
        ns = isvc["metadata"]["namespace"]
        [labels] = [s for s in series[name] if s["namespace"] == ns]
        assert labels["model_name"] == args["model_name"]
        assert labels["model_version"] == env["MODEL_VERSION"]


def test_the_oracle_bites_on_the_info_suffix_and_an_unset_path():
    config = crs_config()
    [isvc] = inference_services()[:1]
    wrong = json.loads(json.dumps(config))
    [resource] = wrong["spec"]["resources"]
    resource["metrics"][0]["name"] = resource["metrics"][0]["name"].removesuffix("_info")
    assert not {n for e in queried_expressions() for n, _ in selectors(e)} & set(emitted(wrong, isvc))  # fmt: skip
    # an annotation path that does not resolve adds no label, and an Info series with no
    # label at all is not emitted
    resource["metrics"][0]["each"]["info"]["labelsFromPath"] = {"v": ["metadata", "nope"]}
    assert list(emitted(wrong, isvc).values()) == [[]]


def test_rule_unit_tests_feed_the_custom_resource_series_with_kube_state_metrics_labels():
    # promtool's input series for these metrics carry exactly the label names KSM exports
    series = exported_series()
    tests = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    inputs = [s["series"] for t in tests for s in t.get("input_series", [])]
    used = [s for s in inputs if s.split("{")[0] in series]
    assert used
    want = {frozenset(labels) for labels in series[used[0].split("{")[0]]}
    for text in used:
        got = frozenset(re.findall(r"(\w+)=\"", text.partition("{")[2]))
        assert got in want, (text, sorted(next(iter(want))))


# --- the pod series of the dashboards: kube-state-metrics' pod store and cAdvisor -------------

POD = FACTS["pod_series"]
POD_SERIES = re.compile(r"(?<![\w:])((?:kube_pod|container)_\w+)\s*(\{[^}]*\})?")


def pod_series_stored() -> dict[str, dict]:
    """Name → type and label names of the pod series as the exporters emit them and
    kube-prometheus-stack keeps them: kube-state-metrics' restart counter with its labels; each
    cAdvisor series with its extra labels plus the labels the kubelet adds to every one of them
    (read from the chart's own rules over those series), unless the chart's relabeling drops it."""
    restarts = POD["kube_state_metrics_restarts"]["value"]
    out = {restarts["name"]: {"type": restarts["type"], "labels": set(restarts["labels"])}}
    kubelet = {label for f in POD["chart_rules_read_on_cadvisor_series"].values() for label in f["value"]}  # fmt: skip
    for name, f in POD["cadvisor"].items():
        if any(re.fullmatch(r, name) for r in POD["chart_cadvisor_dropped_names"]["value"]):
            continue
        out[name] = {
            "type": f["value"]["type"],
            "labels": kubelet | set(f["value"]["extra_labels"]),
        }
    return out


def pod_series_errors(exprs: list[str], stored: dict[str, dict]) -> list[str]:
    """What the queries read of the pod series that is not stored under that name and labels,
    or a rate over a gauge."""
    errors = []
    for expr in exprs:
        for m in POD_SERIES.finditer(expr):
            name = m[1]
            if name not in stored:
                errors.append(f"{name}: not a series the exporters emit and the chart keeps")
                continue
            labels = stored[name]["labels"]
            used = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", m[2] or ""))
            used |= {
                x.strip() for g in re.findall(r"\bby\s*\(([^)]*)\)", expr) for x in g.split(",")
            }
            errors += [f"{name}: no label {label}" for label in sorted(used - labels - {"le", ""})]
            rated = re.search(rf"\b(?:rate|increase|irate)\(\s*{name}\b", expr)
            if rated and stored[name]["type"] != "counter":
                errors.append(f"{name}: a {stored[name]['type']} under {rated[0]}")
    return errors


def test_the_pod_series_the_dashboards_read_are_the_ones_the_exporters_emit():
    exprs = queried_expressions()
    read = {m[1] for e in exprs for m in POD_SERIES.finditer(e)}
    assert read == {"kube_pod_container_status_restarts_total", "container_cpu_usage_seconds_total",
                    "container_memory_working_set_bytes"}  # fmt: skip
    stored = pod_series_stored()
    assert pod_series_errors(exprs, stored) == []
    # the facts name files read at their tags, with their sha256
    files = {(s["repository"], s["tag"], p): sha for s in FACTS["sources"] for p, sha in s["files"].items()}  # fmt: skip
    facts = [POD["kube_state_metrics_restarts"], POD["chart_cadvisor_dropped_names"],
             *POD["cadvisor"].values(), *POD["chart_rules_read_on_cadvisor_series"].values()]  # fmt: skip
    for fact in facts:
        for where in fact["from"]:
            assert files[where["repository"], where["tag"], where["path"]] == where["sha256"]
    # the oracle bites: a wrong name, a label the series lacks, a gauge under rate(), and a
    # series the chart drops (the container spec: limits come from kube-state-metrics)
    assert pod_series_errors(
        [
            'sum by (node) (container_memory_working_set_bytes{namespace="a"})',
            "rate(container_memory_working_set_bytes[5m])",
            "kube_pod_container_restarts_total",
            "container_spec_memory_limit_bytes",
        ],
        stored,
    ) == [
        "container_memory_working_set_bytes: no label node",
        "container_memory_working_set_bytes: a gauge under rate(container_memory_working_set_bytes",
        "kube_pod_container_restarts_total: not a series the exporters emit and the chart keeps",
        "container_spec_memory_limit_bytes: not a series the exporters emit and the chart keeps",
    ]
    assert any(re.fullmatch(r, "container_spec_memory_limit_bytes") for r in POD["chart_cadvisor_dropped_names"]["value"])  # fmt: skip
