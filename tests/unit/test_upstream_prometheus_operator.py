"""Our PrometheusRule, PodMonitors and AlertmanagerConfig as the Prometheus Operator that
kube-prometheus-stack 88.0.0 deploys (v0.93.0) selects and uses them. Each rule is read from the
upstream files at the pinned tags by tools/upstream_monitoring.py into
tests/upstream/monitoring-rules.json (each fact with its path, line range and sha256): the chart's
templates (as data) and default values decide the Prometheus and Alertmanager selectors, the
operator's code decides what a nil or empty selector selects, which namespace matcher an
AlertmanagerConfig's route gets, and the `job` label of a PodMonitor's targets.
docs/upstream-rules.md lists them."""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.kube import rendered

ROOT = Path(__file__).resolve().parents[2]
UPSTREAM = ROOT / "tests" / "upstream"
FACTS = json.loads((UPSTREAM / "monitoring-rules.json").read_text())
CHART = FACTS["charts"]
OPERATOR = {k: v["value"] for k, v in FACTS["prometheus_operator"].items()}
APPS = ROOT / "argocd/platform/applications.yaml"


def read(path: Path) -> str:
    return path.read_text()


# --- the chart: values merged as Helm merges them, the selector blocks of its templates --------


def stack_application() -> dict:
    [app] = [
        d
        for d in yaml.safe_load_all(read(APPS))
        if d and d["metadata"]["name"] == "kube-prometheus-stack"
    ]
    return app


def helm_merge(defaults: Any, ours: Any) -> Any:
    """Helm's coalescing of user values over chart values: maps merge, a null removes a key."""
    if not isinstance(defaults, dict) or not isinstance(ours, dict):
        return copy.deepcopy(ours)
    out = copy.deepcopy(defaults)
    for key, value in ours.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = helm_merge(out.get(key), value)
    return out


def chart_values(ours: dict | None = None) -> dict:
    app = stack_application()
    [source] = [s for s in app["spec"]["sources"] if s.get("chart") == "kube-prometheus-stack"]
    assert source["targetRevision"] == CHART["kube_prometheus_stack"]["value"]["version"]
    if ours is None:
        [ref] = source["helm"]["valueFiles"]
        ours = yaml.safe_load(read(ROOT / ref.removeprefix("$values/")))
    # the chart's defaults of the values its selector templates read (values.yaml)
    defaults: dict = {}
    for dotted, value in CHART["defaults"]["value"].items():
        *parents, leaf = dotted.split(".")
        node = defaults
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return helm_merge(defaults, ours)


def release_name() -> str:
    [source] = [
        s
        for s in stack_application()["spec"]["sources"]
        if s.get("chart") == "kube-prometheus-stack"
    ]
    return source["helm"].get("releaseName", stack_application()["metadata"]["name"])


def lookup(values: dict, dotted: str) -> Any:
    node: Any = values
    for part in dotted.removeprefix(".Values.").split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def truthy(value: Any) -> bool:
    """Go templates: false, 0, nil, and empty strings, maps and lists are false."""
    return value not in (None, False, 0, "") and value != {} and value != []


def condition(cond: dict, values: dict) -> bool:
    """A template condition (as tools/upstream_monitoring.py records the chart's)."""
    if "truthy" in cond:
        return truthy(lookup(values, cond["truthy"]))
    if "not_nil" in cond:
        return lookup(values, cond["not_nil"]) is not None
    raise AssertionError(f"template condition not understood: {cond}")


def value_of(value: dict, values: dict, release: str) -> Any:
    """A template branch's value: the values it copies (toYaml), or its literal YAML."""
    if "values" in value:
        return lookup(values, value["values"])

    def fill(node: Any) -> Any:
        if node == {"release": True}:
            return release
        if isinstance(node, dict):
            return {k: fill(v) for k, v in node.items()}
        return node

    return fill(value["literal"])


def rendered_field(kind: str, key: str, values: dict) -> tuple[bool, Any]:
    """(present, value) of a top-level spec field of the chart's Prometheus or Alertmanager: the
    if/else-if/else chain of the template around ``key:`` evaluated with ``values``."""
    for branch in CHART["fields"][kind][key]["value"]:
        if branch["if"] is None or condition(branch["if"], values):
            return True, value_of(branch["value"], values, release_name())
    return False, None


PROMETHEUS, ALERTMANAGER = "prometheus", "alertmanager"


# --- the operator and apimachinery: what a selector selects ----------------------------------


def label_selector_matches(selector: dict | None, labels: dict[str, str]) -> bool:
    """metav1.LabelSelectorAsSelector (apimachinery v0.36.3, the operator's): nil selects
    nothing, an empty selector everything, else every requirement must hold."""
    assert OPERATOR["label_selector"] == {"nil_selects": "nothing", "empty_selects": "everything"}
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values", [])
        ok = {"In": key in labels and labels[key] in vals,
              "NotIn": labels.get(key) not in vals,
              "Exists": key in labels, "DoesNotExist": key not in labels}[op]  # fmt: skip
        if not ok:
            return False
    return True


def selected_namespaces(owner_ns: str, selector: dict | None, namespaces: dict[str, dict]) -> set[str]:  # fmt: skip
    """operator.SelectNamespacesFromCache (and the Alertmanager's own copy of the rule): a nil
    namespace selector means the owner's namespace only."""
    assert OPERATOR["nil_namespace_selector_selects"] == "the owner's namespace"
    if selector is None:
        return {owner_ns}
    return {n for n, labels in namespaces.items() if label_selector_matches(selector, labels)}


def selects(spec: dict, kind: str, owner_ns: str, obj: dict, namespaces: dict[str, dict]) -> bool:
    """selectObjects / the rule and AlertmanagerConfig selection: namespace, then labels."""
    assert OPERATOR["selection"] == "namespace selector, then label selector"
    ns = obj["metadata"]["namespace"]
    return ns in selected_namespaces(
        owner_ns, spec.get(f"{kind}NamespaceSelector"), namespaces
    ) and label_selector_matches(spec.get(f"{kind}Selector"), obj["metadata"].get("labels", {}))


def namespace_labels(*names: str) -> dict[str, dict]:
    # the API server labels every namespace with its name
    return {n: {"kubernetes.io/metadata.name": n} for n in names}


def monitoring() -> list[dict]:
    return rendered(ROOT / "manifests/monitoring")


def overlays() -> dict[str, list[dict]]:
    return {env: rendered(ROOT / "manifests/overlays" / env) for env in ("staging", "production")}


def of_kind(docs: list[dict], kind: str) -> list[dict]:
    return [d for d in docs if d["kind"] == kind]


def stack_namespace() -> str:
    return stack_application()["spec"]["destination"]["namespace"]


def specs(values: dict) -> tuple[dict, dict]:
    prometheus, alertmanager = {}, {}
    for key in ("ruleSelector", "ruleNamespaceSelector", "podMonitorSelector", "podMonitorNamespaceSelector"):  # fmt: skip
        present, value = rendered_field(PROMETHEUS, key, values)
        if present:
            prometheus[key] = value
    for key in ("alertmanagerConfigSelector", "alertmanagerConfigNamespaceSelector", "alertmanagerConfigMatcherStrategy"):  # fmt: skip
        present, value = rendered_field(ALERTMANAGER, key, values)
        if present:
            alertmanager[key] = value
    return prometheus, alertmanager


def our_objects() -> dict[str, list[dict]]:
    return {
        "rule": of_kind(monitoring(), "PrometheusRule"),
        "podMonitor": [d for docs in overlays().values() for d in of_kind(docs, "PodMonitor")],
        "alertmanagerConfig": of_kind(monitoring(), "AlertmanagerConfig"),
    }


def test_the_chart_at_its_defaults_selects_only_its_own_release():
    # the oracle bites: chart defaults select by `release: <release name>`; an object without
    # it is ignored
    prometheus, alertmanager = specs(chart_values({}))
    assert prometheus["ruleSelector"] == {"matchLabels": {"release": release_name()}}
    assert prometheus["podMonitorSelector"] == {"matchLabels": {"release": release_name()}}
    ns = namespace_labels(stack_namespace(), "ml-staging", "ml-production")
    [rule] = our_objects()["rule"]
    unlabelled = copy.deepcopy(rule)
    unlabelled["metadata"]["labels"].pop("release", None)
    assert not selects(prometheus, "rule", stack_namespace(), unlabelled, ns)
    # and without a strategy the operator adds namespace="<its namespace>" to a route
    assert "alertmanagerConfigMatcherStrategy" not in alertmanager


@pytest.mark.parametrize("kind", ["rule", "podMonitor", "alertmanagerConfig"])
def test_the_stacks_prometheus_and_alertmanager_select_our_objects(kind):
    prometheus, alertmanager = specs(chart_values())
    spec = alertmanager if kind == "alertmanagerConfig" else prometheus
    objects = our_objects()[kind]
    assert objects
    namespaces = {d["metadata"]["namespace"] for d in objects} | {stack_namespace()}
    ns = namespace_labels(*namespaces)
    for obj in objects:
        assert selects(spec, kind, stack_namespace(), obj, ns), (kind, obj["metadata"])


def route_matchers(amc: dict, strategy: dict | None, am_namespace: str) -> list[tuple[str, str, str]]:  # fmt: skip
    """The top-level route of an AlertmanagerConfig as the operator writes it (getEnforcer,
    amcfg.go): the strategy's enforcer may add namespace="<the object's namespace>"."""
    rule = OPERATOR["matcher_strategy"]
    enforcer = rule["enforcer"].get((strategy or {}).get("type", ""), rule["default_enforcer"])
    assert rule["route_namespace_matcher"] == {
        "namespaceEnforcer": "always",
        "otherNamespaceEnforcer": "unless in the Alertmanager's namespace",
        "noopEnforcer": "never",
    }
    ns = amc["metadata"]["namespace"]
    matchers = [(m["name"], m.get("matchType", "="), m["value"]) for m in amc["spec"]["route"].get("matchers", [])]  # fmt: skip
    adds = {"noopEnforcer": False, "namespaceEnforcer": True,
            "otherNamespaceEnforcer": ns != am_namespace}[enforcer]  # fmt: skip
    return matchers + ([("namespace", "=", ns)] if adds else [])


def alert_matches(labels: dict[str, str], matchers: list[tuple[str, str, str]]) -> bool:
    ops = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b,
           "=~": lambda a, b: re.fullmatch(b, a) is not None,
           "!~": lambda a, b: re.fullmatch(b, a) is None}  # fmt: skip
    return all(ops[op](labels.get(name, ""), value) for name, op, value in matchers)


def retrain_alert_labels() -> list[dict[str, str]]:
    """The labels of the alerts meant for the retrain route, as promtool's tests (run in
    tests/unit/test_monitoring.py) prove the rules give them."""
    rules = yaml.safe_load(read(ROOT / "manifests/monitoring/rules.yaml"))
    retrain = {r["alert"] for g in rules["groups"] for r in g["rules"] if r.get("labels", {}).get("retrain") == "true"}  # fmt: skip
    tests = yaml.safe_load(read(ROOT / "manifests/monitoring/rules.test.yaml"))["tests"]
    found = [
        {k: str(v) for k, v in alert["exp_labels"].items()} | {"alertname": case["alertname"]}
        for t in tests
        for case in t.get("alert_rule_test", [])
        if case["alertname"] in retrain
        for alert in case.get("exp_alerts", [])
    ]
    assert retrain and found
    return found


def test_the_retrain_route_receives_the_drift_alerts_as_the_operator_configures_it():
    _, alertmanager = specs(chart_values())
    [amc] = our_objects()["alertmanagerConfig"]
    matchers = route_matchers(amc, alertmanager.get("alertmanagerConfigMatcherStrategy"), stack_namespace())  # fmt: skip
    for labels in retrain_alert_labels():
        assert alert_matches(labels, matchers), (labels, matchers)
    # an AlertmanagerConfig of any other namespace only sees that namespace's alerts
    elsewhere = copy.deepcopy(amc)
    elsewhere["metadata"]["namespace"] = "ml-staging"
    strategy = alertmanager.get("alertmanagerConfigMatcherStrategy")
    assert strategy["type"] in OPERATOR["matcher_strategy"]["crd_enum"]  # the CRD admits it
    assert ("namespace", "=", "ml-staging") in route_matchers(elsewhere, strategy, stack_namespace())  # fmt: skip
    # the oracle bites: the operator's default strategy (OnNamespace) would add the
    # AlertmanagerConfig's namespace, which the aggregated drift alert does not carry
    _, defaults = specs(chart_values({}))
    strict = route_matchers(amc, defaults.get("alertmanagerConfigMatcherStrategy"), stack_namespace())  # fmt: skip
    assert ("namespace", "=", amc["metadata"]["namespace"]) in strict
    assert not any(alert_matches(labels, strict) for labels in retrain_alert_labels())


def test_podmonitor_targets_keep_the_port_knative_names_and_the_job_the_down_alert_reads():
    # the endpoint's port keeps only targets whose container port has that name;
    # job = <namespace>/<PodMonitor name> unless jobLabel names a pod label
    assert OPERATOR["pod_monitor"] == {"port_keeps_container_port_named": True, "job": "<namespace>/<name>"}  # fmt: skip
    # Knative names the user container's one port (the first declared)
    port_name = OPERATOR["knative_user_port_name"]
    rules = yaml.safe_load(read(ROOT / "manifests/monitoring/rules.yaml"))
    [down] = [r for g in rules["groups"] for r in g["rules"] if r["alert"] == "ChurnPredictorDown"]
    job = re.search(r'up\{job=~"([^"]+)"\}', down["expr"])[1]
    for env, docs in overlays().items():
        # the predictor's (the payload sink's PodMonitor has a job the alert does not match)
        [pm] = [
            d for d in of_kind(docs, "PodMonitor") if d["metadata"]["name"] == "churn-predictor"
        ]
        assert not any(
            re.fullmatch(job, f"{d['metadata']['namespace']}/{d['metadata']['name']}")
            for d in of_kind(docs, "PodMonitor")
            if d is not pm
        ), env
        [isvc] = of_kind(docs, "InferenceService")
        assert "jobLabel" not in pm["spec"]
        assert re.fullmatch(job, f"{pm['metadata']['namespace']}/{pm['metadata']['name']}"), env
        for endpoint in pm["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] == port_name, env
        # the predictor declares one port, the one Knative renames and the metrics are served on
        [container] = isvc["spec"]["predictor"]["containers"]
        assert len(container["ports"]) == 1


def test_operator_read_is_the_one_the_chart_deploys():
    chart = CHART["kube_prometheus_stack"]["value"]
    tags = {(s["repository"], s["tag"]) for s in FACTS["sources"]}
    assert ("prometheus-operator/prometheus-operator", chart["appVersion"]) in tags
    assert ("prometheus-community/helm-charts", f"kube-prometheus-stack-{chart['version']}") in tags
    # every fact names the file it was read from, at its tag, with its sha256
    files = {(s["repository"], s["tag"], p): sha for s in FACTS["sources"] for p, sha in s["files"].items()}  # fmt: skip
    facts = [f for f in FACTS["prometheus_operator"].values()]
    facts += [CHART["kube_prometheus_stack"], CHART["defaults"]]
    facts += [f for kind in CHART["fields"].values() for f in kind.values()]
    for fact in facts:
        assert fact["from"]
        for where in fact["from"]:
            assert files[where["repository"], where["tag"], where["path"]] == where["sha256"], where
    readme = read(UPSTREAM / "README.md")
    for (repo, _, path), sha in files.items():
        assert f"`{sha}`" in readme, (repo, path)
