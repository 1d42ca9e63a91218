"""Alert rules with promtool unit tests, dashboards as code, the relay's wiring."""

import json
import re
import shutil
import subprocess
from pathlib import PurePosixPath

import yaml

from mlstack.monitor import dashboards
from mlstack.settings import code_root
from tests.support.kube import render

MON = code_root() / "manifests" / "monitoring"
PROMTOOL = shutil.which("promtool")


def promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "make tools installs promtool (Debian's prometheus package)"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=120)


def test_rules_pass_their_promtool_unit_tests():
    assert promtool("check", "rules", str(MON / "rules.yaml")).returncode == 0
    done = promtool("test", "rules", str(MON / "rules.test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_has_a_firing_and_a_quiet_test():
    alerts = {
        r["alert"]
        for g in yaml.safe_load((MON / "rules.yaml").read_text())["groups"]
        for r in g["rules"]
    }
    assert alerts == {
        "ChurnPredictorLatencyHigh",
        "ChurnPredictorErrorRatioHigh",
        "ChurnPredictorDown",
        "ChurnPredictorNoTraffic",
        "ChurnFeatureDrift",
        "ChurnPredictionMixShift",
        "ChurnModelVersionMismatch",
        "ChurnModelLiveQualityLow",
    }
    tests = yaml.safe_load((MON / "rules.test.yaml").read_text())["tests"]
    cases = [c for t in tests for c in t["alert_rule_test"]]
    for alert in alerts:
        assert any(c["alertname"] == alert and c["exp_alerts"] for c in cases), (
            f"{alert} never fires"
        )
        assert any(c["alertname"] == alert and not c["exp_alerts"] for c in cases), (
            f"{alert} never quiet"
        )


def test_promtool_catches_a_wrong_expectation(tmp_path):
    tests = yaml.safe_load((MON / "rules.test.yaml").read_text())
    drift = next(t for t in tests["tests"] if t["name"] == "drift on too few rows")
    drift["alert_rule_test"][0]["exp_alerts"] = [{"exp_labels": {"severity": "warning"}}]
    tests["rule_files"] = [str(MON / "rules.yaml")]
    broken = tmp_path / "broken.test.yaml"
    broken.write_text(yaml.safe_dump(tests))
    assert promtool("test", "rules", str(broken)).returncode != 0
    bad_rule = tmp_path / "bad.yaml"
    bad_rule.write_text("groups: [{name: x, rules: [{alert: X, expr: 'sum(rate(x[5m]) >'}]}]\n")
    assert promtool("check", "rules", str(bad_rule)).returncode != 0


def test_generated_files_are_fresh_and_the_rule_is_the_plain_file():
    assert dashboards.stale() == [], "run `mlstack monitoring build`"
    rule = yaml.safe_load((MON / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    assert rule["spec"] == yaml.safe_load((MON / "rules.yaml").read_text())


def test_every_panel_query_parses(tmp_path):
    exprs = dashboards.expressions()
    assert len(exprs) >= 10
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [{"record": f"panel:{i}", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "panels.yaml"
    path.write_text(yaml.safe_dump(rules))
    done = promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr


# aggregation and join clauses: every one must keep the environment
CLAUSE = re.compile(r"\b(by|on|without|ignoring)\s*\(([^)]*)\)")
ENVIRONMENT_LABELS = {"namespace", "environment"}


def environment_dropped(expr: str) -> list[str]:
    """The clauses of ``expr`` that aggregate or join away the environment, and, for an expression
    with no clause at all, the expression itself (a bare selector keeps every label)."""
    found = []
    for kind, labels in CLAUSE.findall(expr):
        names = {x.strip() for x in labels.split(",") if x.strip()}
        kept = (
            not (names & ENVIRONMENT_LABELS)
            if kind in ("without", "ignoring")
            else (names & ENVIRONMENT_LABELS)
        )
        if not kept:
            found.append(f"{kind} ({labels})")
    if not CLAUSE.search(expr) and re.search(r"\b(sum|max|min|avg|count|absent)\s*\(", expr):
        found.append(expr)
    return found


def test_every_rule_and_panel_keeps_the_environment_apart():
    rules = yaml.safe_load((MON / "rules.yaml").read_text())
    exprs = [r["expr"] for g in rules["groups"] for r in g["rules"]] + dashboards.expressions()
    for expr in exprs:
        assert environment_dropped(expr) == [], expr
    # the checker bites: the rules as they were (by model_name only, absent())
    assert environment_dropped("sum by (model_name) (rate(x[5m]))") == ["by (model_name)"]
    assert environment_dropped('absent(up{job=~".*churn-predictor"} == 1)')
    assert environment_dropped("a and on (model_name) b") == ["on (model_name)"]
    # the retrain route notifies per environment too (a staging and a production alert are
    # separate notifications)
    [config] = [d for d in render(MON) if d["kind"] == "AlertmanagerConfig"]
    assert "namespace" in config["spec"]["route"]["groupBy"]
    # every panel is filtered by the dashboards' environment variable, which each board offers
    for expr in dashboards.expressions():
        assert f'namespace=~"${dashboards.ENV_VARIABLE}"' in expr, expr
    for uid in dashboards.DASHBOARDS:
        board = json.loads((MON / "dashboards" / f"{uid}.json").read_text())
        [var] = [v for v in board["templating"]["list"] if v["name"] == dashboards.ENV_VARIABLE]
        assert var["type"] == "query" and var["includeAll"] and var["allValue"] == ".*"
        assert "label_values(" in var["query"]["query"] and "namespace)" in var["query"]["query"]


def panel(title: str) -> str:
    [expr] = [p.expr for _, ps in dashboards.DASHBOARDS.values() for p in ps if p.title == title]
    return expr


def test_pod_panels_show_each_environments_predictor_pods(tmp_path):
    """The CPU, memory and restart panels over cAdvisor's and kube-state-metrics' series as
    kube-prometheus-stack stores them (promtool evaluates the panels' PromQL, the environment
    variable set to production): production's pods only, the pod cgroup and pause container and
    other pods left out, restarts counted."""
    pick = {"$namespace": "ml-production"}

    def expr(title: str) -> str:
        e = panel(title)
        for k, v in pick.items():
            e = e.replace(k, v)
        return e

    prod = 'namespace="ml-production",pod="churn-classifier-predictor-00002-deployment-a"'
    stag = 'namespace="ml-staging",pod="churn-classifier-predictor-00001-deployment-b"'
    cad = 'job="kubelet",metrics_path="/metrics/cadvisor"'
    ksm = 'job="kube-state-metrics",uid="u"'
    rules = {"groups": [{"name": "panels", "rules": [
        {"record": "panel:cpu", "expr": expr("Pod CPU (cores)")},
        {"record": "panel:memory", "expr": expr("Pod memory (working set)")},
        {"record": "panel:restarts", "expr": expr("Container restarts (1 h)")},
    ]}]}  # fmt: skip
    (tmp_path / "panels.yaml").write_text(yaml.safe_dump(rules))
    series = [
        (f'container_cpu_usage_seconds_total{{{cad},{prod},container="kserve-container"}}', "0+30x60"),
        (f'container_cpu_usage_seconds_total{{{cad},{prod},container=""}}', "0+60x60"),
        (f'container_cpu_usage_seconds_total{{{cad},{prod},container="POD"}}', "0+1x60"),
        (f'container_cpu_usage_seconds_total{{{cad},{stag},container="kserve-container"}}', "0+6x60"),
        (f'container_cpu_usage_seconds_total{{{cad},namespace="ml-production",pod="other-1",container="x"}}', "0+6x60"),
        (f'container_memory_working_set_bytes{{{cad},{prod},container="kserve-container"}}', "2e8x60"),
        (f'container_memory_working_set_bytes{{{cad},{stag},container="kserve-container"}}', "1e8x60"),
        (f'kube_pod_container_status_restarts_total{{{ksm},{prod},container="kserve-container"}}', "0x30 1x30"),
        (f'kube_pod_container_status_restarts_total{{{ksm},{stag},container="kserve-container"}}', "0x60"),
    ]  # fmt: skip
    samples = [
        ("panel:cpu", "kserve-container", 0.5),
        ("panel:memory", "kserve-container", 2e8),
        ("panel:restarts", "kserve-container", 1),
    ]
    tests = {"rule_files": ["panels.yaml"], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "promql_expr_test": [
            {"expr": name, "eval_time": "50m", "exp_samples": [{
                "labels": f'{name}{{container="{c}",{prod}}}', "value": value}]}
            for name, c, value in samples
        ],
    }]}  # fmt: skip
    (tmp_path / "panels.test.yaml").write_text(yaml.safe_dump(tests))
    done = promtool("test", "rules", str(tmp_path / "panels.test.yaml"))
    assert done.returncode == 0, done.stdout + done.stderr


def test_dashboards_ship_as_sidecar_configmaps():
    docs = render(MON)
    [maps] = [
        d
        for d in docs
        if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "grafana-dashboards-churn"
    ]
    assert maps["metadata"]["labels"]["grafana_dashboard"] == "1"
    titles = {json.loads(v)["title"] for v in maps["data"].values()}
    assert titles == {title for title, _ in dashboards.DASHBOARDS.values()}
    for uid in dashboards.DASHBOARDS:
        board = json.loads(maps["data"][f"{uid}.json"])
        assert board["uid"] == uid and all(p["targets"][0]["expr"] for p in board["panels"])


# --- the relay's wiring (its behaviour: tests/unit/test_relay.py) ---------------------------------


def test_alertmanager_sends_the_credential_the_relay_expects_from_one_secret():
    """The AlertmanagerConfig's webhook sends, as its bearer credential, the Secret key the relay
    reads as RELAY_WEBHOOK_TOKEN_FILE, and an ExternalSecret makes that Secret in monitoring."""
    docs = render(MON)
    [config] = [d for d in docs if d["kind"] == "AlertmanagerConfig"]
    [hook] = config["spec"]["receivers"][0]["webhookConfigs"]
    auth = hook["httpConfig"]["authorization"]
    assert auth.get("type", "Bearer") == "Bearer"
    secret, key = auth["credentials"]["name"], auth["credentials"]["key"]
    [relay] = [
        d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "retrain-relay"
    ]
    pod = relay["spec"]["template"]["spec"]
    [container] = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    path = PurePosixPath(env["RELAY_WEBHOOK_TOKEN_FILE"])
    [mount] = [m for m in container["volumeMounts"] if PurePosixPath(m["mountPath"]) == path.parent]
    [volume] = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert (volume["secret"]["secretName"], path.name) == (secret, key)
    assert "items" not in volume["secret"]  # the key is the file's name
    platform = render(code_root() / "manifests" / "platform" / "base")
    [made] = [
        d
        for d in platform
        if d["kind"] == "ExternalSecret"
        and d["metadata"]["namespace"] == config["metadata"].get("namespace", "monitoring")
        and d["spec"]["target"]["name"] == secret
    ]
    assert [d["secretKey"] for d in made["spec"]["data"]] == [key]
    assert config["metadata"]["namespace"] == relay["metadata"]["namespace"] == "monitoring"
