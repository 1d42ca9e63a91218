"""Alert rules with promtool unit tests, dashboards as code, the relay's logic."""

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import pytest
import yaml

from mlstack.monitor import dashboards
from mlstack.monitor.relay import Relay, make_server
from mlstack.settings import code_root
from tests.conftest import free_port
from tests.support.kube import render
from tests.support.servers import start, stop

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


# --- the relay's logic -----------------------------------------------------------------------------


def alert(status="firing", retrain="true", fingerprint="f1", feature="monthly_charges"):
    labels = {
        "alertname": "ChurnFeatureDrift",
        "model_name": "churn-classifier",
        "feature": feature,
    }
    if retrain:
        labels["retrain"] = retrain
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "drift"},
        "fingerprint": fingerprint,
    }


def test_relay_selects_firing_retrain_alerts_once_per_cooldown():
    now = [1000.0]
    relay = Relay("acme/churn", "t", cooldown_seconds=60, clock=lambda: now[0])
    payload = {
        "alerts": [
            alert(),
            alert(status="resolved", fingerprint="f2"),
            alert(retrain=None, fingerprint="f3"),
        ]
    }
    assert [a["fingerprint"] for a in relay.select(payload)] == ["f1"]
    assert relay.select(payload) == []  # Alertmanager's repeat, within the cooldown
    now[0] += 61
    assert [a["fingerprint"] for a in relay.select(payload)] == ["f1"]
    with pytest.raises(ValueError, match="'alerts' must be a list"):
        relay.select({"alerts": "x"})


def test_relay_http_refuses_bad_input_and_reports_github_failures(tmp_path):
    relay = Relay("acme/churn", "t", api_url="http://127.0.0.1:9", cooldown_seconds=60)
    server = make_server(relay, "127.0.0.1", 0)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}"
    try:

        def post(path, data: bytes):
            req = urllib.request.Request(url + path, data=data, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return r.status, json.loads(r.read())
            except urllib.error.HTTPError as e:
                return e.code, json.loads(e.read())

        assert post("/alertmanager", b"{not json")[0] == 400
        assert post("/alertmanager", b"[1]") == (400, {"error": "body must be a JSON object"})
        assert post("/nope", b"{}")[0] == 404
        assert post(
            "/alertmanager", json.dumps({"alerts": [alert(status="resolved")]}).encode()
        ) == (
            200,
            {"dispatched": 0},
        )
        status, body = post("/alertmanager", json.dumps({"alerts": [alert()]}).encode())
        assert status == 502 and "GitHub dispatch failed" in body["error"]
        assert relay.select({"alerts": [alert()]}) != []  # not marked sent: the next repeat retries
    finally:
        server.shutdown()


def test_relay_needs_its_token(monkeypatch):
    from mlstack.monitor.relay import main

    monkeypatch.delenv("GITHUB_TOKEN", raising=False)
    with pytest.raises(SystemExit, match="GITHUB_TOKEN"):
        main(["--repo", "acme/churn"])


def test_relay_stops_cleanly_on_sigterm(tmp_path):
    """The kubelet's SIGTERM ends the relay's process with exit 0 (without a handler it would die
    of the signal here, and be deaf to it as a container's PID 1: tests/integration's
    test_containers_as_declared.py stops the container as declared)."""
    port = free_port()
    env = {**os.environ, "GITHUB_TOKEN": "t", "GITHUB_API_URL": "http://127.0.0.1:9"}
    cmd = [sys.executable, "-m", "mlstack.monitor.relay", "--repo", "acme/churn",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    log = tmp_path / "relay.log"
    proc = start(cmd, log, f"http://127.0.0.1:{port}/healthz", env=env, timeout=60)
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0, log.read_text()
    finally:
        stop(proc)
    assert log.read_text().splitlines()[-1] == "relay: stopped"
