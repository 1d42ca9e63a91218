"""Alert rules with promtool unit tests, dashboards as code, the relay's wiring."""

import json
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
