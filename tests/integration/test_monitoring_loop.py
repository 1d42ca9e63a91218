"""The loop closed on 127.0.0.1: predictor → Prometheus (the project's drift rule, short windows)
→ Alertmanager → relay → a local stand-in for GitHub's repository_dispatch endpoint."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from mlstack.data import generate
from mlstack.monitor.relay import Relay, make_server
from mlstack.settings import code_root
from mlstack.train.training import TrainingLineage
from serving.codec import NAMES
from tests.conftest import free_port
from tests.support.servers import call, registered_model, start, stop
from tests.support.stand_ins import FakeGitHub

pytestmark = pytest.mark.slow
MODEL = "churn-classifier"  # the rules select this model name
WINDOW = 200

PROMETHEUS = shutil.which("prometheus")
ALERTMANAGER = shutil.which("prometheus-alertmanager") or shutil.which("alertmanager")


def rows(df) -> list[dict]:
    out = []
    for rec in df[NAMES].to_dict(orient="records"):
        row = {}
        for k, v in rec.items():
            if v is None or (isinstance(v, float) and v != v) or str(v) == "<NA>":
                row[k] = None
            elif hasattr(v, "item"):
                row[k] = v.item()
            else:
                row[k] = v
        out.append(row)
    return out


def fast_rules(tmp: Path) -> Path:
    """The project's drift alert with test-sized windows (for 3 s, a 100-row minimum)."""
    doc = yaml.safe_load((code_root() / "manifests" / "monitoring" / "rules.yaml").read_text())
    [drift] = [
        r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "ChurnFeatureDrift"
    ]
    drift["for"] = "3s"
    drift["expr"] = drift["expr"].replace(">= 500", ">= 100")
    doc["groups"][0]["rules"] = [drift]
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def alerts(prom: str) -> list[dict]:
    status, _, body = call(f"{prom}/api/v1/alerts")
    return json.loads(body)["data"]["alerts"] if status == 200 else []


@pytest.mark.skipif(
    not (PROMETHEUS and ALERTMANAGER), reason="make setup installs prometheus and alertmanager"
)
def test_drift_fires_and_reaches_github_as_repository_dispatch(tmp_path):
    uri = registered_model(
        tmp_path, MODEL, TrainingLineage("md5", "data/churn.csv", "c" * 40, "kfp"), max_iter=40
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri}
    p_port, prom_port, am_port = free_port(), free_port(), free_port()
    predictor = f"http://127.0.0.1:{p_port}"
    github = FakeGitHub()
    relay = make_server(
        Relay("acme/churn", "test-token", "test-credential", github.url, cooldown_seconds=3600),
        "127.0.0.1",
        0,
    )
    threading.Thread(target=relay.serve_forever, daemon=True).start()
    relay_url = f"http://127.0.0.1:{relay.server_port}/alertmanager"

    (tmp_path / "alertmanager.yml").write_text(yaml.safe_dump({
        "route": {"receiver": "drop", "group_wait": "1s", "group_interval": "1s", "repeat_interval": "1h",
                  "routes": [{"matchers": ['retrain="true"'], "receiver": "relay"}]},
        "receivers": [{"name": "drop"}, {"name": "relay", "webhook_configs": [{
            "url": relay_url,
            # what the operator writes from the AlertmanagerConfig's httpConfig.authorization
            "http_config": {"authorization": {"type": "Bearer", "credentials": "test-credential"}},
        }]}],
    }))  # fmt: skip
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(fast_rules(tmp_path))],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [{"job_name": "churn-predictor",
                            "static_configs": [{"targets": [f"127.0.0.1:{p_port}"]}]}],
    }))  # fmt: skip
    procs = []
    try:
        procs.append(start(
            [sys.executable, "-m", "serving", "--model_uri", f"models:/{MODEL}@champion", "--host", "127.0.0.1",
             "--http_port", str(p_port), "--enable_grpc", "false", "--drift_window", str(WINDOW)],
            tmp_path / "predictor.log", f"{predictor}/v2/health/ready", env=env,
        ))  # fmt: skip
        procs.append(start(
            [ALERTMANAGER, f"--config.file={tmp_path / 'alertmanager.yml'}",
             f"--storage.path={tmp_path / 'am'}", f"--web.listen-address=127.0.0.1:{am_port}",
             "--cluster.listen-address="],
            tmp_path / "alertmanager.log", f"http://127.0.0.1:{am_port}/-/ready",
        ))  # fmt: skip
        prom = f"http://127.0.0.1:{prom_port}"
        procs.append(start(
            [PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
             f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
            tmp_path / "prometheus.log", f"{prom}/-/ready",
        ))  # fmt: skip
        url = f"{predictor}/v1/models/{MODEL}:predict"
        calm = rows(generate.generate(WINDOW, 70))
        for i in range(0, WINDOW, 50):
            assert call(url, {"instances": calm[i : i + 50]})[0] == 200
        time.sleep(4)  # scraped and evaluated: calm traffic raises nothing
        assert alerts(prom) == []

        drifted = rows(generate.generate(WINDOW, 71, drift=True))
        for i in range(0, WINDOW, 50):
            assert call(url, {"instances": drifted[i : i + 50]})[0] == 200
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while not github.requests and time.monotonic() < deadline:
            states = {
                a["state"] for a in alerts(prom) if a["labels"]["feature"] == "monthly_charges"
            }
            seen += sorted(states - set(seen))
            time.sleep(0.25)
        assert seen[:2] == ["pending", "firing"], seen
        assert github.requests, "no repository_dispatch reached GitHub"
        path, headers, body = github.requests[0]
        assert path == "/repos/acme/churn/dispatches"
        assert headers["Authorization"] == "Bearer test-token"
        assert body["event_type"] == "drift-detected"
        features = {a["feature"] for a in body["client_payload"]["alerts"]}
        assert "monthly_charges" in features
        assert all(a["alertname"] == "ChurnFeatureDrift" for a in body["client_payload"]["alerts"])
    finally:
        for proc in reversed(procs):
            stop(proc)
        relay.shutdown()
        github.close()
