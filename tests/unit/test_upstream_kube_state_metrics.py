"""The kube_customresource-style series our alert rules and dashboards query, checked against what
kube-state-metrics would emit from our custom-resource-state config, at the version the pinned
kube-prometheus-stack chart deploys. The naming and labelling rules are read from
kube-state-metrics' own source at that tag (vendored in tests/upstream, see its README): the
metric name composition, the default prefix, the GVK labels added to every series, the label-name
sanitising, path lookups and the Info metric's values. docs/upstream-rules.md lists the rule."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support.kube import rendered

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream"
KSM = UPSTREAM / "kube-state-metrics-v2.19.1"
CRS = KSM / "pkg" / "customresourcestate"
VALUES = ROOT / "manifests/platform/kube-prometheus-stack/values.yaml"
APPS = ROOT / "argocd/platform/applications.yaml"
RULES = ROOT / "manifests/monitoring/rules.yaml"
RULE_TESTS = ROOT / "manifests/monitoring/rules.test.yaml"
DASHBOARDS = ROOT / "manifests/monitoring/dashboards"

CONFIG_GO = (CRS / "config.go").read_text()
FACTORY_GO = (CRS / "registry_factory.go").read_text()


def go_func(source: str, signature: str) -> str:
    """The body of the Go function whose declaration starts with ``signature`` (braces matched)."""
    start = source.index("{\n", source.index(signature)) + 2
    depth, i = 1, start
    while depth:
        depth += {"{": 1, "}": -1}.get(source[i], 0)
        i += 1
    return source[start : i - 1]


# --- kube-state-metrics' rules, read from its source -------------------------------------------


def default_prefix() -> str:
    """Resource.GetMetricNamePrefix with metricNamePrefix unset (config.go)."""
    const = re.search(r'const customResourceState string = "(\w+)"', CONFIG_GO)[1]
    body = go_func(CONFIG_GO, "func (r Resource) GetMetricNamePrefix()")
    literal = re.search(r'if p == nil \{\s+return "(\w*)" \+ customResourceState\s+\}', body)[1]
    return literal + const


def metric_name_prefix(resource: dict) -> str:
    # a nil pointer takes the default; "" is a prefix of its own (no prefix at all)
    prefix = resource.get("metricNamePrefix")
    return default_prefix() if prefix is None else prefix


def full_name(resource: dict, generator: dict) -> str:
    """fullName (registry_factory.go): the prefix, when not empty, and the name, joined."""
    body = go_func(FACTORY_GO, "func fullName(")
    assert 'if resource.GetMetricNamePrefix() != "" {' in body
    sep = re.search(r'return strings\.Join\(parts, "(.)"\)', body)[1]
    prefix = metric_name_prefix(resource)
    return sep.join(([prefix] if prefix != "" else []) + [generator["name"]])


def gvk_labels(gvk: dict) -> dict[str, str]:
    """compile(): the labels kube-state-metrics adds to every series of a resource."""
    const = re.search(r'const customResourceState string = "(\w+)"', CONFIG_GO)[1]
    body = go_func(FACTORY_GO, "func compile(")
    pairs = re.findall(
        r'resource\.CommonLabels\[customResourceState\+"(\w+)"\] = resource\.GroupVersionKind\.(\w+)',
        body,
    )
    assert len(pairs) == 3, pairs
    return {const + suffix: gvk[field.lower()] for suffix, field in pairs}


def sanitize_label_name(name: str) -> str:
    """store.SanitizeLabelName: every character outside the pattern becomes an underscore."""
    text = (KSM / "internal/store/utils.go.L35-L37").read_text()
    pattern = re.search(r"invalidLabelCharRE = regexp\.MustCompile\(`([^`]+)`\)", text)[1]
    assert 'ReplaceAllString(s, "_")' in (KSM / "internal/store/utils.go.L131-L134").read_text()
    return re.sub(pattern, "_", name)


def get_path(obj: Any, path: list[str]) -> Any:
    """valuePath.Get (compilePath): map keys (and `key=value` that must equal), list indices
    (negative from the end) and `[key=value]` list lookups; anything else is nil."""
    body = go_func(FACTORY_GO, "func compilePath(")
    assert 'strings.HasPrefix(part, "[") && strings.HasSuffix(part, "]")' in body
    assert "i += len(s)" in body  # negative indices count from the end
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
    body = go_func(FACTORY_GO, "func addPathLabels(")
    assert "// skip label if value is nil" in body
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
    body = go_func(FACTORY_GO, "func (c *compiledInfo) values(")
    assert "if len(value.Labels) != 0 {" in body
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
    assert "strings.ToLower(string(config.Spec.Resources[i].Metrics[j].Each.Type))" in CONFIG_GO
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
    table = (CRS / "registry_factory_test.go.L445-L490").read_text()
    cases = re.findall(
        r'name: "([^"]+)",\s+args: args\{\s+resource: r\((nil|ptr\.To\("([^"]*)"\))\),\s+'
        r'f:\s+count,\s+\},\s+want: "([^"]*)"',
        table,
    )
    generator = {"name": re.search(r'count := Generator\{\s+Name: "(\w+)"', table)[1]}
    assert len(cases) == 3
    for name, arg, prefix, want in cases:
        resource = {} if arg == "nil" else {"metricNamePrefix": prefix}
        assert full_name(resource, generator) == want, name
    # an Info metric is not renamed: kube-state-metrics only logs a missing _info suffix
    body = go_func(FACTORY_GO, "func compileFamily(")
    assert 'klog.InfoS("Info metric does not have _info suffix"' in body
    assert "Name:          fullName(resource, f)," in body


def test_vendored_kube_state_metrics_is_the_one_the_pinned_chart_deploys():
    [pin] = re.findall(r"chart: kube-prometheus-stack\s+targetRevision: ([\d.]+)", APPS.read_text())
    stack = yaml.safe_load((UPSTREAM / f"helm-charts-kube-prometheus-stack-{pin}/charts/kube-prometheus-stack/Chart.yaml").read_text())  # fmt: skip
    assert stack["version"] == pin
    [dep] = [d for d in stack["dependencies"] if d["name"] == "kube-state-metrics"]
    chart = yaml.safe_load((UPSTREAM / f"helm-charts-kube-state-metrics-{dep['version']}/charts/kube-state-metrics/Chart.yaml").read_text())  # fmt: skip
    assert chart["version"] == dep["version"]
    assert KSM.name == f"kube-state-metrics-v{chart['appVersion'].removeprefix('v')}"
    readme = (UPSTREAM / "README.md").read_text()
    for path in (p for p in KSM.rglob("*") if p.is_file()):
        sha = hashlib.sha256(path.read_bytes()).hexdigest()
        assert re.search(rf"^\| `{re.escape(str(path.relative_to(UPSTREAM)))}` \|.*`{sha}` \|$", readme, re.M), path  # fmt: skip


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
