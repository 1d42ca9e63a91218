"""Extract the rules the monitoring tests check our custom-resource metrics, PrometheusRule,
PodMonitors and AlertmanagerConfig against, from the upstream projects' own files at the pinned
tags, into tests/upstream/monitoring-rules.json.

kube-prometheus-stack 88.0.0 (argocd/platform) deploys the kube-state-metrics chart 8.0.0 (app
v2.19.1) and the Prometheus Operator v0.93.0, whose go.mod pins k8s.io/apimachinery v0.36.3; the
PodMonitors scrape the port Knative (knative-v1.21.1) names. Only the facts the tests need are
written (names, constants, the chart's selector templates as data, the defaults they read,
upstream's own test table), each with its provenance (repository, tag, commit, path, line range,
sha256 of the upstream file). Where the tests rely on a piece of upstream logic this script does
not turn into data (a nil selector selecting nothing, an enforcer adding a matcher), it checks that
the code says so and records the rule; if the code changed, it stops. No upstream file or code is
kept.

    python tools/upstream_monitoring.py --mirror-root ROOT > tests/upstream/monitoring-rules.json

(``ROOT/<owner>+<name>/repo``: local git clones, as for tools/upstream_rules.py.)
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from upstream_rules import Fact, Upstream, fact, go_func, search

STACK_TAG = "kube-prometheus-stack-88.0.0"
KSM_CHART_TAG = "kube-state-metrics-8.0.0"
KSM_TAG = "v2.19.1"
OPERATOR_TAG = "v0.93.0"
APIMACHINERY_TAG = "v0.36.3"
KNATIVE_TAG = "knative-v1.21.1"
# the kubelet serves cAdvisor's container metrics (/metrics/cadvisor) from the cAdvisor it vendors;
# the kind node's kubelet is not pinned here, so the names are read at a recent release (they
# have not changed in years) and the labels the kubelet adds from the chart's own rules
CADVISOR_TAG = "v0.53.0"


def has(up: Upstream, path: str, text: str, needle: str, start: int = 0) -> Fact:
    """Provenance of ``needle`` in ``text`` (a part of ``path`` starting at ``start``); stops
    when the upstream text no longer says it."""
    at = text.find(needle)
    if at < 0:
        sys.exit(f"{up.repo} {path}: no longer has {needle!r}")
    return up.where(path, start + at, start + at + len(needle))


def func(up: Upstream, path: str, name: str) -> tuple[str, int, Fact]:
    source = up.show(path)
    body, start, end = go_func(source, name)
    return body, source.index(body, start), up.where(path, start, end)


# --- kube-state-metrics ---------------------------------------------------------------------

CONFIG = "pkg/customresourcestate/config.go"
FACTORY = "pkg/customresourcestate/registry_factory.go"
FACTORY_TEST = "pkg/customresourcestate/registry_factory_test.go"
UTILS = "internal/store/utils.go"


def kube_state_metrics(ksm: Upstream) -> Fact:
    config = ksm.show(CONFIG)
    const = search(r'const customResourceState string = "(\w+)"', config)
    body, at, _ = func(ksm, CONFIG, "GetMetricNamePrefix")
    literal = search(r'if p == nil \{\s+return "(\w*)" \+ customResourceState\s+\}', body)
    case_insensitive = has(ksm, CONFIG, config, "strings.ToLower(string(config.Spec.Resources[i].Metrics[j].Each.Type))")  # fmt: skip

    full, f_at, f_where = func(ksm, FACTORY, "fullName")
    has(ksm, FACTORY, full, 'if resource.GetMetricNamePrefix() != "" {', f_at)
    sep = search(r'return strings\.Join\(parts, "(.)"\)', full)

    compiled, c_at, c_where = func(ksm, FACTORY, "compile")
    pairs = re.findall(
        r'resource\.CommonLabels\[customResourceState\+"(\w+)"\] = resource\.GroupVersionKind\.(\w+)',
        compiled,
    )
    if len(pairs) != 3:
        sys.exit(f"{FACTORY}: compile adds {pairs}")

    utils = ksm.show(UTILS)
    invalid = search(r"invalidLabelCharRE = regexp\.MustCompile\(`([^`]+)`\)", utils)
    replaced = has(ksm, UTILS, utils, 'ReplaceAllString(s, "_")')

    path, p_at, _ = func(ksm, FACTORY, "compilePath")
    lookups = [
        has(
            ksm, FACTORY, path, 'strings.HasPrefix(part, "[") && strings.HasSuffix(part, "]")', p_at
        ),  # fmt: skip
        has(ksm, FACTORY, path, "i += len(s)", p_at),
    ]
    labels, l_at, _ = func(ksm, FACTORY, "addPathLabels")
    nil_skipped = has(ksm, FACTORY, labels, "// skip label if value is nil", l_at)
    values, v_at, _ = func(ksm, FACTORY, "values")  # (c *compiledInfo) values
    empty_dropped = has(ksm, FACTORY, values, "if len(value.Labels) != 0 {", v_at)
    family, fam_at, _ = func(ksm, FACTORY, "compileFamily")
    not_renamed = [
        has(ksm, FACTORY, family, 'klog.InfoS("Info metric does not have _info suffix"', fam_at),
        has(ksm, FACTORY, family, "Name:          fullName(resource, f),", fam_at),
    ]

    table, t_at, t_where = func(ksm, FACTORY_TEST, "Test_fullName")
    generator = search(r'count := Generator\{\s+Name: "(\w+)"', table)[1]
    cases = [
        {"case": name, "metricNamePrefix": None if arg == "nil" else prefix,
         "generator": generator, "want": want}
        for name, arg, prefix, want in re.findall(
            r'name: "([^"]+)",\s+args: args\{\s+resource: r\((nil|ptr\.To\("([^"]*)"\))\),\s+'
            r'f:\s+count,\s+\},\s+want: "([^"]*)"',
            table,
        )
    ]  # fmt: skip
    if len(cases) != 3:
        sys.exit(f"{FACTORY_TEST}: Test_fullName has {len(cases)} cases")

    return {
        "default_prefix": fact(literal[1] + const[1],
                               ksm.where(CONFIG, const.start(), const.end()),
                               ksm.where(CONFIG, at + literal.start(), at + literal.end())),
        "full_name": fact({"separator": sep[1], "empty_prefix_omitted": True}, f_where),
        "gvk_labels": fact({const[1] + suffix: field.lower() for suffix, field in pairs}, c_where),
        "label_name": fact({"invalid_characters": invalid[1], "replaced_by": "_"},
                           ksm.where(UTILS, invalid.start(), invalid.end()), replaced),
        "path": fact({"list_lookup_by_key_value": True, "negative_index_from_end": True}, *lookups),
        "nil_value_adds_no_label": fact(True, nil_skipped),
        "info_series_without_labels_emitted": fact(False, empty_dropped),
        "each_type_case_insensitive": fact(True, case_insensitive),
        "info_suffix_added": fact(False, *not_renamed),
        "full_name_cases": fact(cases, t_where),
    }  # fmt: skip


# --- the charts -------------------------------------------------------------------------------

STACK = "charts/kube-prometheus-stack"
TEMPLATES = {
    "prometheus": (f"{STACK}/templates/prometheus/prometheus.yaml",
                   ("ruleSelector", "ruleNamespaceSelector", "podMonitorSelector",
                    "podMonitorNamespaceSelector")),
    "alertmanager": (f"{STACK}/templates/alertmanager/alertmanager.yaml",
                     ("alertmanagerConfigSelector", "alertmanagerConfigNamespaceSelector",
                      "alertmanagerConfigMatcherStrategy")),
}  # fmt: skip
RELEASE = "{{ $.Release.Name | quote }}"


def template_condition(cond: str) -> Fact:
    cond = cond.strip()
    if m := re.fullmatch(r"\.Values\.([\w.]+)", cond):
        return {"truthy": m[1]}
    if m := re.fullmatch(r'not \(kindIs "invalid" \.Values\.([\w.]+)\)', cond):
        return {"not_nil": m[1]}
    sys.exit(f"template condition not understood: {cond}")


def template_value(lines: list[str], key: str) -> Fact:
    """A field's value in a template branch: the values it copies, or a literal (the release
    name standing as {"release": true})."""
    text = "\n".join(lines)
    one = re.fullmatch(
        rf'  {key}:\n\{{\{{ (?:tpl \()?toYaml \.Values\.([\w.]+) \| indent 4(?: \| default "null")?(?:\) \.)?\s*\}}\}}',  # fmt: skip
        text,
    )
    if one:
        return {"values": one[1]}
    if "{{" in text.replace(RELEASE, ""):
        sys.exit(f"template body not understood: {text}")
    literal = yaml.safe_load(text.replace(RELEASE, '"__RELEASE__"'))[key]

    def mark(node: Any) -> Any:
        if node == "__RELEASE__":
            return {"release": True}
        if isinstance(node, dict):
            return {k: mark(v) for k, v in node.items()}
        return node

    return {"literal": mark(literal)}


def template_field(stack: Upstream, path: str, key: str) -> Fact:
    """The if / else if / else chain of the template around ``key:``, as data: each branch's
    condition (none: always) and value; no branch taken, no field."""
    text = stack.show(path)
    lines = text.splitlines()
    first = lines.index(f"  {key}:")
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line) + 1)
    head = lines[first - 1].strip()
    if not re.match(r"\{\{-? if ", head):  # no condition: the field and its value line
        value = template_value(lines[first : first + 2], key)
        return fact([{"if": None, "value": value}], stack.where(path, offsets[first], offsets[first + 2]))  # fmt: skip
    branches: list[tuple[str | None, list[str]]] = []
    i = first - 1
    while True:
        line = lines[i].strip()
        if m := re.fullmatch(r"\{\{-? (?:else )?if (.+?) \}\}", line):
            branches.append((m[1], []))
        elif re.fullmatch(r"\{\{-? else \}\}", line):
            branches.append((None, []))
        elif re.fullmatch(r"\{\{-? end \}\}", line):
            break
        else:
            branches[-1][1].append(lines[i])
        i += 1
    data = [
        {
            "if": None if cond is None else template_condition(cond),
            "value": template_value(body, key),
        }  # fmt: skip
        for cond, body in branches
    ]
    return fact(data, stack.where(path, offsets[first - 1], offsets[i + 1]))


def charts(stack: Upstream, ksm_chart: Upstream) -> Fact:
    chart_path = f"{STACK}/Chart.yaml"
    text = stack.show(chart_path)
    chart = yaml.safe_load(text)
    [dep] = [d for d in chart["dependencies"] if d["name"] == "kube-state-metrics"]
    ksm_path = "charts/kube-state-metrics/Chart.yaml"
    ksm_text = ksm_chart.show(ksm_path)
    ksm = yaml.safe_load(ksm_text)
    fields = {
        kind: {key: template_field(stack, path, key) for key in keys}
        for kind, (path, keys) in TEMPLATES.items()
    }
    read = set()
    for kind in fields.values():
        for f in kind.values():
            for branch in f["value"]:
                read |= {v for v in (branch["if"] or {}).values()}
                read |= {branch["value"]["values"]} if "values" in branch["value"] else set()
    values_path = f"{STACK}/values.yaml"
    values_text = stack.show(values_path)
    values = yaml.safe_load(values_text)

    def lookup(dotted: str) -> Any:
        node: Any = values
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    return {
        "kube_prometheus_stack": fact(
            {"version": chart["version"], "appVersion": chart["appVersion"],
             "kube_state_metrics_chart": dep["version"]},
            stack.where(chart_path, 0, len(text)),
        ),
        "kube_state_metrics_chart": fact(
            {"version": ksm["version"], "appVersion": ksm["appVersion"]},
            ksm_chart.where(ksm_path, 0, len(ksm_text)),
        ),
        "fields": fields,
        "defaults": fact({k: lookup(k) for k in sorted(read)}, stack.where(values_path, 0, len(values_text))),  # fmt: skip
    }  # fmt: skip


# --- the operator, apimachinery, Knative's port name -------------------------------------------


def operator(op: Upstream, api: Upstream, serving: Upstream) -> Fact:
    helpers = "pkg/apis/meta/v1/helpers.go"
    body, at, where = func(api, helpers, "LabelSelectorAsSelector")
    nothing = search(r"if ps == nil \{\s+return labels\.Nothing\(\), nil", body)
    everything = search(r"== 0 \{\s+return labels\.Everything\(\), nil", body)

    op_go, am_go = "pkg/operator/operator.go", "pkg/alertmanager/operator.go"
    own, o_at, _ = func(op, op_go, "SelectNamespacesFromCache")
    am = op.show(am_go)
    own_ns = [
        has(op, op_go, own, "if sel == nil {\n\t\treturn []string{obj.GetNamespace()}, nil", o_at),
        has(
            op,
            am_go,
            am,
            "if am.Spec.AlertmanagerConfigNamespaceSelector == nil {\n\t\tnamespaces = append(namespaces, am.Namespace)",
        ),  # fmt: skip
    ]
    selector, s_at, _ = func(op, "pkg/prometheus/resource_selector.go", "selectObjects")
    rules, r_at, _ = func(op, "pkg/operator/rules.go", "NewPrometheusRuleSelector")
    selects = [
        has(
            op,
            "pkg/prometheus/resource_selector.go",
            selector,
            "operator.SelectNamespacesFromCache(rs.p.GetObjectMeta(), nsSelector",
            s_at,
        ),  # fmt: skip
        has(
            op,
            "pkg/prometheus/resource_selector.go",
            selector,
            "metav1.LabelSelectorAsSelector(selector)",
            s_at,
        ),  # fmt: skip
        has(
            op,
            "pkg/operator/rules.go",
            rules,
            "metav1.LabelSelectorAsSelector(labelSelector)",
            r_at,
        ),  # fmt: skip
    ]

    types_path = "pkg/apis/monitoring/v1/alertmanager_types.go"
    types = op.show(types_path)
    names_at = list(re.finditer(r"^\s+(\w+)ConfigMatcherStrategyType AlertmanagerConfigMatcherStrategyType = \"(\w+)\"", types, re.M))  # fmt: skip
    names = {m[1]: m[2] for m in names_at}
    enum = search(r"\+kubebuilder:validation:Enum=(.+)\n(?:\s*//.*\n)*?\s*Type AlertmanagerConfigMatcherStrategyType", types)  # fmt: skip
    amcfg = "pkg/alertmanager/amcfg.go"
    get, g_at, g_where = func(op, amcfg, "getEnforcer")
    cases = re.findall(r"case monitoringv1\.(\w+)ConfigMatcherStrategyType:\s+e = &(\w+)\{", get)
    default = search(r"default:\s+e = &(\w+)\{", get)[1]
    source = op.show(amcfg)
    adds = search(r'Name:\s+"namespace",\s+Value:\s+crKey\.Namespace,\s+MatchType:\s+monitoringv1alpha1\.MatchEqual', source)  # fmt: skip
    skip = has(op, amcfg, source, "if crKey.Namespace == one.alertmanagerNamespace {\n\t\treturn r")
    noop = search(r"func \(ne \*noopEnforcer\) processRoute\(_ types\.NamespacedName, r \*route\) \*route \{\s+return r\s+\}", source)  # fmt: skip

    promcfg = "pkg/prometheus/promcfg.go"
    pm, p_at, _ = func(op, promcfg, "generatePodMonitorConfig")
    port = search(r'"__meta_kubernetes_pod_container_port_name"\}\},\s+\{Key: "regex", Value: \*ep\.Port\}', pm)  # fmt: skip
    job = search(r'\{Key: "target_label", Value: "job"\},\s+\{Key: "replacement", Value: fmt\.Sprintf\("%s/%s", m\.GetNamespace\(\), m\.GetName\(\)\)\}', pm)  # fmt: skip

    helpers_path, deploy = "pkg/apis/serving/v1/revision_helpers.go", "pkg/reconciler/revision/resources/deploy.go"  # fmt: skip
    user_port = search(r'UserPortName = "([^"]+)"', serving.show(helpers_path))
    named = has(serving, deploy, serving.show(deploy), "Name:          v1.UserPortName,")

    return {
        "label_selector": fact(
            {"nil_selects": "nothing", "empty_selects": "everything"},
            where, api.where(helpers, at + nothing.start(), at + nothing.end()),
            api.where(helpers, at + everything.start(), at + everything.end()),
        ),
        "nil_namespace_selector_selects": fact("the owner's namespace", *own_ns),
        "selection": fact("namespace selector, then label selector", *selects),
        "matcher_strategy": fact(
            {"types": names, "crd_enum": [v.strip('"') for v in enum[1].split(";")],
             "enforcer": {names[c]: e for c, e in cases}, "default_enforcer": default,
             "route_namespace_matcher": {"namespaceEnforcer": "always",
                                         "otherNamespaceEnforcer": "unless in the Alertmanager's namespace",
                                         "noopEnforcer": "never"}},
            op.where(types_path, names_at[0].start(), names_at[-1].end()),
            op.where(types_path, enum.start(), enum.end()), g_where,
            op.where(amcfg, adds.start(), adds.end()), skip, op.where(amcfg, noop.start(), noop.end()),
        ),
        "pod_monitor": fact(
            {"port_keeps_container_port_named": True, "job": "<namespace>/<name>"},
            op.where(promcfg, p_at + port.start(), p_at + port.end()),
            op.where(promcfg, p_at + job.start(), p_at + job.end()),
        ),
        "knative_user_port_name": fact(
            user_port[1], serving.where(helpers_path, user_port.start(), user_port.end()), named
        ),
    }  # fmt: skip


# --- the pod series the dashboards read: kube-state-metrics' pod store, cAdvisor -------------

POD_GO = "internal/store/pod.go"
CADVISOR_GO = "metrics/prometheus.go"
STACK_DIR = "charts/kube-prometheus-stack"
CHART_RULES = {
    "container_cpu_usage_seconds_total": "k8s.rules.container_cpu_usage_seconds_total.yaml",
    "container_memory_working_set_bytes": "k8s.rules.container_memory_working_set_bytes.yaml",
}


def pod_series(ksm: Upstream, cadvisor: Upstream, stack: Upstream) -> Fact:
    """kube-state-metrics' container restart counter (name, type, labels: its own and the ones
    wrapPodFunc adds), cAdvisor's CPU and working-set series (name, type, extra labels), the
    chart's cAdvisor metric relabelings that drop series by name, and the labels the chart's own
    rules read on the cAdvisor series (the ones the kubelet adds)."""
    src = ksm.show(POD_GO)
    default = search(r"descPodLabelsDefaultLabels\s*=\s*\[\]string\{([^}]*)\}", src)
    wrap = has(ksm, POD_GO, src, "mergeKeyValues(descPodLabelsDefaultLabels, []string{pod.Namespace, pod.Name, string(pod.UID)}")  # fmt: skip
    body, at, where = func(ksm, POD_GO, "createPodContainerStatusRestartsTotalFamilyGenerator")
    name = search(r'NewFamilyGeneratorWithStability\(\s*"(\w+)",', body)
    kind = search(r"metric\.(Counter|Gauge),", body)
    keys = search(r"LabelKeys:\s+\[\]string\{([^}]*)\}", body)
    restarts = fact(
        {"name": name[1], "type": kind[1].lower(),
         "labels": [s.strip().strip('"') for s in default[1].split(",")]
         + [s.strip().strip('"') for s in keys[1].split(",")]},
        where, ksm.where(POD_GO, default.start(), default.end()), wrap,
    )  # fmt: skip

    source = cadvisor.show(CADVISOR_GO)
    containers = {}
    for metric in CHART_RULES:
        entry = search(
            rf'name:\s+"{metric}",\s+help:\s+"[^"]*",\s+valueType:\s+prometheus\.(\w+)Value,'
            r"(?:\s+extraLabels:\s+\[\]string\{([^}]*)\},)?",
            source,
        )
        containers[metric] = fact(
            {"type": entry[1].lower(),
             "extra_labels": [s.strip().strip('"') for s in (entry[2] or "").split(",") if s.strip()]},
            cadvisor.where(CADVISOR_GO, entry.start(), entry.end()),
        )  # fmt: skip

    values_path = f"{STACK_DIR}/values.yaml"
    values = stack.show(values_path)
    block = search(r"\n    cAdvisorMetricRelabelings:\n((?:      .*\n|\s*\n)+)", values)
    relabel = yaml.safe_load(block[1])
    drops = [r["regex"] for r in relabel if r.get("action") == "drop" and r["sourceLabels"] == ["__name__"]]  # fmt: skip
    labels_read = {}
    for metric, file in CHART_RULES.items():
        path = f"{STACK_DIR}/templates/prometheus/rules-1.14/{file}"
        text = stack.show(path)
        expr = search(rf"{metric}\{{[^}}]*\}}", text)
        by = search(r"(?:by|on) \(\{\{ range [^}]*\}\}\{\{ \. \}\},\{\{ end \}\}([\w, ]+)\)", text)
        labels_read[metric] = fact(
            sorted({s.strip() for s in by[1].split(",")} - {"cluster"}),
            stack.where(path, expr.start(), expr.end()), stack.where(path, by.start(), by.end()),
        )  # fmt: skip
    return {
        "kube_state_metrics_restarts": restarts,
        "cadvisor": containers,
        "chart_cadvisor_dropped_names": fact(
            drops, stack.where(values_path, block.start(), block.end())
        ),
        "chart_rules_read_on_cadvisor_series": labels_read,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mirror-root", type=Path, required=True)
    root = ap.parse_args().mirror_root
    stack = Upstream(root, "prometheus-community/helm-charts", STACK_TAG)
    ksm_chart = Upstream(root, "prometheus-community/helm-charts", KSM_CHART_TAG)
    ksm = Upstream(root, "kubernetes/kube-state-metrics", KSM_TAG)
    op = Upstream(root, "prometheus-operator/prometheus-operator", OPERATOR_TAG)
    api = Upstream(root, "kubernetes/apimachinery", APIMACHINERY_TAG)
    serving = Upstream(root, "knative/serving", KNATIVE_TAG)
    cadvisor = Upstream(root, "google/cadvisor", CADVISOR_TAG)
    out = {
        "about": " ".join(__doc__.split("\n\n")[0].split()),
        "kube_state_metrics": kube_state_metrics(ksm),
        "charts": charts(stack, ksm_chart),
        "prometheus_operator": operator(op, api, serving),
        "pod_series": pod_series(ksm, cadvisor, stack),
        "sources": [u.sources() for u in (stack, ksm_chart, ksm, op, api, serving, cadvisor)],
    }
    json.dump(out, sys.stdout, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
