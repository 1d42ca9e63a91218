"""Live quality in a real Prometheus, served as the cluster serves it: each namespace's payload
sink (a real process per namespace, one label store) scraped as its PodMonitor scrapes it (the
target's namespace label, honor_labels off), and the project's ChurnModelLiveQualityLow rule (its
`for` shortened to 3 s) firing for the version below the gate's floor, and only for it."""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import urllib.parse
from pathlib import Path

import pandas as pd
import pytest
import yaml

from mlstack.monitor import capture, labels
from mlstack.settings import code_root
from tests.conftest import free_port
from tests.support.servers import call, running
from tests.unit.test_labels import predictions

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,  # a Prometheus and two sinks: ~20 s here
    pytest.mark.skipif(not PROMETHEUS, reason="make tools installs prometheus"),
]


def fast_rule(tmp: Path) -> Path:
    doc = yaml.safe_load((code_root() / "manifests/monitoring/rules.yaml").read_text())
    [rule] = [
        r for g in doc["groups"] for r in g["rules"] if r.get("alert") == "ChurnModelLiveQualityLow"
    ]
    rule["for"] = "3s"
    path = tmp / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "live-quality", "rules": [rule]}]}))
    return path


def query(prom: str, expr: str) -> list[dict]:
    status, _, body = call(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert status == 200, body
    return json.loads(body)["data"]["result"]


def test_prometheus_scrapes_live_quality_and_the_alert_fires_for_the_low_version(tmp_path):
    good, good_truth = predictions(300, seed=31, env="ml-staging", version="4", skill=1.0)
    bad, bad_truth = predictions(300, seed=32, env="ml-production", version="3", skill=0.0)
    capture.write_captures(tmp_path / "captures", pd.concat([good, bad], ignore_index=True))
    file = tmp_path / "labels.csv"
    pd.concat([good_truth, bad_truth]).to_csv(file, index=False)
    captured = capture.read_captures(tmp_path / "captures")
    store = tmp_path / "labels"
    labels.add_labels(store, labels.read_label_file(file), captured)
    quality = labels.live_quality(
        captured, labels.read_labels(store), window_days=28, min_labels=100
    )
    labels.write_quality(store, quality)
    by_env = {q.environment: q for q in quality}
    assert by_env["ml-production"].roc_auc < 0.75 < by_env["ml-staging"].roc_auc

    namespaces = ["ml-staging", "ml-production"]
    ports = {ns: free_port() for ns in namespaces}
    prom_port = free_port()
    # what the Prometheus Operator makes of the sink's PodMonitor: the pod's namespace, pod,
    # container and endpoint as target labels, honor_labels false
    targets = [
        {
            "targets": [f"127.0.0.1:{ports[ns]}"],
            "labels": {
                "namespace": ns,
                "pod": f"payload-sink-{ns}",
                "container": "sink",
                "endpoint": "http",
            },
        }
        for ns in namespaces
    ]
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(fast_rule(tmp_path))],
                "scrape_configs": [
                    {"job_name": "payload-sink", "honor_labels": False, "static_configs": targets}
                ],
            }
        )
    )
    prom = f"http://127.0.0.1:{prom_port}"

    def sink(ns: str) -> list[str]:
        return [
            sys.executable, "-m", "mlstack.monitor.sink", "--namespace", ns,
            "--root", str(tmp_path / "sink-captures"), "--wal", str(tmp_path / f"wal-{ns}"),
            "--host", "127.0.0.1", "--port", str(ports[ns]), "--live-quality-cache", "1",
        ]  # fmt: skip

    env = {**os.environ, "MLSTACK_LABELS_DIR": str(store), "MLSTACK_STATE_DIR": str(tmp_path)}
    prometheus = [
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
    ]  # fmt: skip
    with (
        running(sink(namespaces[0]), tmp_path / "sink-0.log",
                f"http://127.0.0.1:{ports[namespaces[0]]}/healthz", env=env),
        running(sink(namespaces[1]), tmp_path / "sink-1.log",
                f"http://127.0.0.1:{ports[namespaces[1]]}/healthz", env=env),
        running(prometheus, tmp_path / "prometheus.log", f"{prom}/-/ready"),
    ):  # fmt: skip
        firing: list[dict] = []
        deadline = time.monotonic() + 90
        while not firing and time.monotonic() < deadline:
            status, _, body = call(f"{prom}/api/v1/alerts")
            if status == 200:
                firing = [a for a in json.loads(body)["data"]["alerts"] if a["state"] == "firing"]
            time.sleep(0.5)
        series = query(prom, "model_live_roc_auc")

    assert [a["labels"] for a in firing] == [
        {
            "alertname": "ChurnModelLiveQualityLow",
            "model_name": "churn-classifier",
            "model_version": "3",
            "namespace": "ml-production",
            "retrain": "true",
            "severity": "warning",
        }
    ]
    # each series from its own namespace's sink, labelled by its target (no exported_namespace)
    assert all(s["metric"]["pod"] == f"payload-sink-{s['metric']['namespace']}" for s in series)
    assert not any("exported_namespace" in s["metric"] for s in series)
    got = {s["metric"]["namespace"]: float(s["value"][1]) for s in series}
    assert got == pytest.approx({e: q.roc_auc for e, q in by_env.items()})
