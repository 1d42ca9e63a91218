"""The payload sink's manifests: the logger's URL reaches it, only the predictor's pods (and
Prometheus) may, and Prometheus scrapes series the sink really exports."""

from __future__ import annotations

import functools
import urllib.parse
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlstack.monitor import sink
from mlstack.settings import SinkSettings, code_root
from tests.support.kube import render

OVERLAYS = ["staging", "production"]


@functools.cache
def rendered(env: str) -> list[dict]:
    return render(code_root() / "manifests" / "overlays" / env)


def find(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.mark.parametrize("env", OVERLAYS)
def test_the_loggers_url_is_the_sink_service_of_its_namespace(env: str) -> None:
    docs = rendered(env)
    logger = find(docs, "InferenceService", "churn-classifier")["spec"]["predictor"]["logger"]
    url = urllib.parse.urlsplit(logger["url"])
    assert logger["mode"] == "all" and logger["metadataAnnotations"] == [sink.VERSION_ANNOTATION]
    service = find(docs, "Service", url.hostname or "")  # a short name: this namespace's
    [port] = service["spec"]["ports"]
    assert (url.scheme, url.port or 80) == ("http", port["port"])
    deployment = find(docs, "Deployment", "payload-sink")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [container] = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports[port["targetPort"]] == 8080 and "--port" in container["command"]
    assert container["command"][container["command"].index("--port") + 1] == "8080"
    env_values = {e["name"]: e for e in container["env"]}
    assert env_values["MLSTACK_SINK_NAMESPACE"]["valueFrom"]["fieldRef"] == {
        "fieldPath": "metadata.namespace"
    }
    assert pod["spec"]["automountServiceAccountToken"] is False
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


@pytest.mark.parametrize("env", OVERLAYS)
def test_only_the_predictors_pods_and_prometheus_reach_the_sink(env: str) -> None:
    docs = rendered(env)
    sink_pod = find(docs, "Deployment", "payload-sink")["spec"]["template"]["metadata"]["labels"]
    policy = find(docs, "NetworkPolicy", "payload-sink")["spec"]
    assert policy["podSelector"]["matchLabels"].items() <= sink_pod.items()
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    peers = [peer for rule in policy["ingress"] for peer in rule["from"]]
    assert peers == [
        {
            "podSelector": {
                "matchLabels": {"serving.kserve.io/inferenceservice": "churn-classifier"}
            }
        },
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}},
    ]
    # and the predictor may send to it (its own policy denies egress by default)
    predictor = find(docs, "NetworkPolicy", "churn-predictor")["spec"]
    assert any(
        peer.get("podSelector", {}).get("matchLabels", {}).items() <= sink_pod.items()
        and peer.get("podSelector")
        and {"port": 8080, "protocol": "TCP"} in rule["ports"]
        for rule in predictor["egress"]
        for peer in rule.get("to", [])
    )


def test_prometheus_scrapes_series_the_sink_exports(tmp_path: Path) -> None:
    monitor = find(rendered("staging"), "PodMonitor", "payload-sink")["spec"]
    [endpoint] = monitor["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    s = sink.Sink(tmp_path / "c", tmp_path / "w", SinkSettings())
    s.start()
    try:
        from prometheus_client import generate_latest

        text = generate_latest(s.metrics.registry).decode()
    finally:
        s.close()
    names = {
        sample.name for family in text_string_to_metric_families(text) for sample in family.samples
    }
    assert {
        "payload_sink_rows_written_total",
        "payload_sink_flush_errors_total",
        "payload_sink_pending_events",
        "payload_sink_buffered_rows",
    } <= names


@pytest.mark.parametrize("env", OVERLAYS)
def test_the_sink_serves_live_quality_from_the_label_store_beside_its_captures(env: str) -> None:
    """The label store is in the captures' bucket (the credentials the sink already has), and the
    PodMonitor keeps Prometheus's own namespace label: the sink exports none (no honorLabels)."""
    docs = rendered(env)
    [container] = find(docs, "Deployment", "payload-sink")["spec"]["template"]["spec"]["containers"]
    values = {e["name"]: e.get("value") for e in container["env"]}
    bucket = urllib.parse.urlsplit(values["MLSTACK_CAPTURE_ROOT"]).netloc
    store = urllib.parse.urlsplit(values["MLSTACK_LABELS_DIR"])
    assert (store.scheme, store.netloc) == ("s3", bucket)
    [endpoint] = find(docs, "PodMonitor", "payload-sink")["spec"]["podMetricsEndpoints"]
    assert not endpoint.get("honorLabels", False)
