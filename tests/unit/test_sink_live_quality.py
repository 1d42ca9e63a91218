"""The payload sink serves its own namespace's live quality on /metrics (what Prometheus scrapes
in each namespace): a real sink process over HTTP, the label store a local directory or moto's S3
reached with the sink's own credentials files; a missing or torn live-quality.json serves nothing
and is counted, never a 5xx."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlstack.monitor import labels, sink
from mlstack.monitor.labels import VersionQuality
from mlstack.settings import SinkSettings
from tests.conftest import free_port
from tests.support.servers import call, running

NAMESPACE = "ml-staging"


def quality(env: str, version: str, roc_auc: float | None, labelled: int = 300) -> VersionQuality:
    return VersionQuality(
        model_name="churn-classifier", model_version=version, environment=env,
        labelled=labelled, positives=60, window_start="2026-11-01T00:00:00+00:00",
        window_end="2026-11-29T00:00:00+00:00", roc_auc=roc_auc,
        f1=None if roc_auc is None else roc_auc - 0.1, note="" if roc_auc else "not enough labels",
    )  # fmt: skip


QUALITIES = [quality(NAMESPACE, "4", 0.9), quality("ml-production", "3", 0.6)]


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    out: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    status, _, body = call(f"{url}/metrics")
    assert status == 200, body
    return samples(body.decode())


def errors(got: dict, reason: str) -> float:
    return sum(
        v for labels_, v in got.get("payload_sink_live_quality_errors_total", [])
        if labels_ == {"reason": reason}
    )  # fmt: skip


def sink_argv(tmp: Path, port: int, cache: str = "0") -> list[str]:
    return [
        sys.executable, "-m", "mlstack.monitor.sink", "--namespace", NAMESPACE,
        "--root", str(tmp / "captures"), "--wal", str(tmp / "wal"),
        "--host", "127.0.0.1", "--port", str(port), "--live-quality-cache", cache,
    ]  # fmt: skip


def clean_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "MLSTACK_"))}
    return {**env, "MLSTACK_STATE_DIR": str(tmp / "state"), **extra}


@pytest.mark.reliability("sink-live-quality-file-missing-or-torn")
def test_the_sink_serves_its_namespaces_live_quality_and_survives_a_missing_or_torn_file(
    tmp_path: Path,
) -> None:
    store = tmp_path / "labels"
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = clean_env(tmp_path, MLSTACK_LABELS_DIR=str(store))
    with running(sink_argv(tmp_path, port), tmp_path / "sink.log", f"{url}/healthz", env=env):
        missing = scrape(url)
        store.mkdir()
        (store / labels.QUALITY_FILE).write_text('{"versions": [{"model_name": ')  # torn
        torn = scrape(url)
        labels.write_quality(store, QUALITIES)
        served = scrape(url)

    assert "model_live_roc_auc" not in missing and errors(missing, "missing") >= 1
    assert "model_live_roc_auc" not in torn and errors(torn, "unreadable") >= 1
    # only this namespace's version, without a namespace label: the scrape target's is the label
    assert served["model_live_roc_auc"] == [
        ({"model_name": "churn-classifier", "model_version": "4"}, 0.9)
    ]
    assert served["model_live_f1"] == [
        ({"model_name": "churn-classifier", "model_version": "4"}, pytest.approx(0.8))
    ]
    assert served["model_live_labelled_predictions"] == [
        ({"model_name": "churn-classifier", "model_version": "4"}, 300.0)
    ]
    assert "live quality not served" in (tmp_path / "sink.log").read_text()


def test_the_sink_reads_an_s3_label_store_with_its_own_credentials_files(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """As deployed: the label store beside the captures in the bucket, endpoint and keys only in
    the mounted Secret's files (MLSTACK_S3_CREDENTIALS_DIR), none in the sink's environment."""
    import boto3

    from tests.support.stand_ins import s3

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    creds = tmp_path / "s3"
    creds.mkdir()
    with s3(free_port()) as endpoint:
        for key, value in {
            "AWS_ACCESS_KEY_ID": "test-access-key",
            "AWS_SECRET_ACCESS_KEY": "test-secret-key",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            (creds / key).write_text(value + "\n")
            monkeypatch.setenv(key, value)
        monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mlstack-captures")
        store = "s3://mlstack-captures/labels"
        env = clean_env(
            tmp_path,
            MLSTACK_LABELS_DIR=store,
            MLSTACK_S3_CREDENTIALS_DIR=str(creds),
            AWS_DEFAULT_REGION="us-east-1",
        )
        with running(sink_argv(tmp_path, port), tmp_path / "sink.log", f"{url}/healthz", env=env):
            missing = scrape(url)
            labels.write_quality(store, QUALITIES)
            served = scrape(url)

    assert "model_live_roc_auc" not in missing and errors(missing, "missing") >= 1
    assert served["model_live_roc_auc"] == [
        ({"model_name": "churn-classifier", "model_version": "4"}, 0.9)
    ]
    assert errors(served, "unreadable") == 0


def test_a_scrape_within_the_cache_time_serves_what_was_read(tmp_path: Path) -> None:
    store = tmp_path / "labels"
    labels.write_quality(store, QUALITIES)
    s = sink.Sink(
        tmp_path / "c", tmp_path / "w", SinkSettings(live_quality_cache_s=3600), NAMESPACE, store
    )
    first = samples(generate_latest(s.metrics.registry).decode())
    labels.write_quality(store, [quality(NAMESPACE, "5", 0.95)])
    second = samples(generate_latest(s.metrics.registry).decode())
    fresh = sink.Sink(tmp_path / "c", tmp_path / "w2", SinkSettings(), NAMESPACE, store)
    third = samples(generate_latest(fresh.metrics.registry).decode())

    assert first["model_live_roc_auc"] == second["model_live_roc_auc"]
    assert [v for _, v in third["model_live_roc_auc"]] == [0.95]


def test_a_sink_without_a_namespace_of_its_own_serves_no_live_quality(tmp_path: Path) -> None:
    store = tmp_path / "labels"
    labels.write_quality(store, QUALITIES)
    s = sink.Sink(tmp_path / "c", tmp_path / "w", SinkSettings(), None, store)
    got = samples(generate_latest(s.metrics.registry).decode())
    assert not any(name.startswith("model_live_") for name in got)
