"""Delayed labels joined to captured predictions (written through the capture module), the label
store's append-only rules, live quality per version and environment, its exporter over HTTP, and
the live-quality alert's floor."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import f1_score, roc_auc_score

from mlstack.data import generate
from mlstack.errors import StackError
from mlstack.monitor import capture, labels, live_quality
from mlstack.schema import TARGET, feature_names
from mlstack.settings import GATE_FLOORS, Gates, code_root
from tests.conftest import free_port
from tests.support.cli import run_cli

START = datetime(2026, 10, 1, tzinfo=UTC)


def predictions(
    n: int,
    *,
    seed: int,
    env: str,
    version: str,
    skill: float,
    start: datetime = START,
    prefix: str = "",
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(captured rows, their true labels): ``n`` one-instance requests, one per hour from
    ``start``. ``skill`` 1 gives scores that rank churners first, 0 random ones."""
    data = generate.generate(n, seed)
    rng = np.random.default_rng(seed)
    truth = data[TARGET].to_numpy()
    score = np.clip(skill * (0.25 + 0.5 * truth) + (1 - skill) * rng.uniform(size=n), 0, 1)
    score = np.clip(score + rng.normal(0, 0.2, n), 0, 1)
    ids = [f"{prefix}{env}-{version}-{i:05d}" for i in range(n)]
    frame = data[feature_names()].copy()
    frame.insert(0, "id", ids)
    frame.insert(1, "row", 0)
    frame.insert(2, "model_name", "churn-classifier")
    frame.insert(3, "model_version", version)
    frame.insert(4, "environment", env)
    frame.insert(5, "received_at", [start + timedelta(hours=i) for i in range(n)])
    frame["score"] = score
    frame["prediction"] = (score >= 0.5).astype(int)
    truth_frame = pd.DataFrame(
        {
            "id": ids,
            "label": truth,
            "labelled_at": [(start + timedelta(days=40, hours=i)).isoformat() for i in range(n)],
        }
    )
    return frame, truth_frame


@pytest.fixture
def store(tmp_path: Path) -> dict[str, object]:
    """Captures of two versions in two environments, written by the capture module, and the
    true labels of each; the env a CLI run needs to find them (state dir in tmp_path)."""
    state = tmp_path / "state"
    good, good_truth = predictions(300, seed=11, env="ml-production", version="3", skill=1.0)
    bad, bad_truth = predictions(300, seed=12, env="ml-staging", version="4", skill=0.0)
    capture.write_captures(state / "captures", pd.concat([good, bad], ignore_index=True))
    return {
        "state": state,
        "env": {"MLSTACK_STATE_DIR": str(state), "MLSTACK_REPO_ROOT": str(tmp_path)},
        "good": (good, good_truth),
        "bad": (bad, bad_truth),
    }


def add_direct(store: dict[str, object], file: Path) -> None:
    """What ``mlstack labels add FILE`` does, in this process (a test's setup: one CLI run per
    test keeps the fast suite fast)."""
    state = store["state"]
    captured = capture.read_captures(state / "captures")
    labels.add_labels(state / "labels", labels.read_label_file(file), captured)
    labels.write_quality(
        state / "labels",
        labels.live_quality(
            captured, labels.read_labels(state / "labels"), window_days=28, min_labels=100
        ),
    )


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def error_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.mark.slow  # one CLI run that imports sklearn: ~10 s on a loaded machine
def test_labels_add_joins_stores_and_reports_live_quality_per_version_and_environment(
    store, tmp_path
):
    good, good_truth = store["good"]
    bad, bad_truth = store["bad"]
    file = tmp_path / "labels.csv"
    pd.concat([good_truth, bad_truth]).to_csv(file, index=False)

    done = run_cli("labels", "add", str(file), env=store["env"])

    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("600 new label(s) stored, 0 already stored")
    assert (store["state"] / "labels" / "live-quality.json").exists()
    got = {
        (q.environment, q.model_version): q for q in labels.read_quality(store["state"] / "labels")
    }
    assert set(got) == {("ml-production", "3"), ("ml-staging", "4")}
    for (frame, truth), key in (
        (store["good"], ("ml-production", "3")),
        (store["bad"], ("ml-staging", "4")),
    ):
        q = got[key]
        assert q.labelled == 300 and q.note == ""
        assert q.roc_auc == pytest.approx(roc_auc_score(truth["label"], frame["score"]))
        assert q.f1 == pytest.approx(f1_score(truth["label"], frame["prediction"]))
    assert got[("ml-production", "3")].roc_auc > 0.9 > 0.6 > got[("ml-staging", "4")].roc_auc
    assert "ml-staging: 300 labelled, roc_auc" in done.stdout
    assert "BELOW the gate's minimum 0.75" in done.stdout


def test_adding_the_same_file_twice_changes_nothing(store, tmp_path):
    _, truth = store["good"]
    file = tmp_path / "labels.parquet"
    truth.assign(labelled_at=pd.to_datetime(truth["labelled_at"])).to_parquet(file)
    add_direct(store, file)
    before = snapshot(store["state"] / "labels")
    assert len([n for n in before if n.startswith("part-")]) == 1

    again = labels.add_labels(
        store["state"] / "labels",
        labels.read_label_file(file),
        capture.read_captures(store["state"] / "captures"),
    )

    assert (again.added, again.already, again.total, again.part) == (0, 300, 300, None)
    after = snapshot(store["state"] / "labels")
    assert {n: b for n, b in after.items() if n.startswith("part-")} == {
        n: b for n, b in before.items() if n.startswith("part-")
    }


@pytest.mark.reliability("label-conflict-refused")
def test_a_label_conflicting_with_a_stored_one_is_refused_and_nothing_is_stored(store, tmp_path):
    _, truth = store["good"]
    first = tmp_path / "first.csv"
    truth.iloc[:100].to_csv(first, index=False)
    add_direct(store, first)
    before = snapshot(store["state"] / "labels")
    flipped = truth.iloc[50:150].copy()
    flipped.loc[flipped.index[10], "label"] = 1 - flipped.loc[flipped.index[10], "label"]
    second = tmp_path / "second.csv"
    flipped.to_csv(second, index=False)

    done = run_cli("labels", "add", str(second), env=store["env"])

    line = error_line(done)
    ident = flipped.iloc[10]["id"]
    assert f"id '{ident}' row 0 is already labelled {1 - flipped.iloc[10]['label']}" in line
    assert "nothing was stored" in line
    assert snapshot(store["state"] / "labels") == before  # the 50 new labels were not stored


@pytest.mark.reliability("label-unknown-id-refused")
def test_labels_for_predictions_never_captured_are_refused(store, tmp_path):
    _, truth = store["good"]
    file = tmp_path / "labels.csv"
    stray = pd.DataFrame({"id": ["no-such-request"], "label": [1], "labelled_at": ["2026-11-20"]})
    pd.concat([truth.iloc[:20], stray]).to_csv(file, index=False)

    done = run_cli("labels", "add", str(file), env=store["env"])

    line = error_line(done)
    assert "1 of 21 labels name predictions that were never captured" in line
    assert "id 'no-such-request'" in line
    assert not list((store["state"] / "labels").glob("part-*"))


@pytest.mark.reliability("live-quality-one-class")
@pytest.mark.slow  # one CLI run that imports sklearn: ~10 s on a loaded machine
def test_a_window_of_one_class_reports_not_enough_labels_and_exports_no_roc_auc(store, tmp_path):
    _, truth = store["good"]
    retained = truth[truth["label"] == 0].iloc[:150]
    file = tmp_path / "labels.csv"
    retained.to_csv(file, index=False)

    done = run_cli("labels", "add", str(file), env=store["env"])

    assert done.returncode == 0, done.stderr
    assert (
        "churn-classifier v3 in ml-production: 150 labelled; not enough labels: all 150 "
        "labelled predictions are class 0; roc_auc needs both classes"
    ) in done.stdout
    (q,) = labels.read_quality(store["state"] / "labels")
    assert (q.roc_auc, q.f1, q.labelled) == (None, None, 150)
    families = {f.name: f for f in live_quality.registry(store["state"] / "labels").collect()}
    assert families["model_live_roc_auc"].samples == []
    assert [s.value for s in families["model_live_labelled_predictions"].samples] == [150.0]


def test_too_few_labels_and_the_window_are_applied_per_version():
    frame, truth = predictions(400, seed=13, env="ml-production", version="5", skill=1.0)
    store_frame = truth.assign(row=0, labelled_at=pd.to_datetime(truth["labelled_at"], utc=True))[
        labels.STORE_COLUMNS
    ]
    # 400 hourly predictions: a 7-day window ending at the newest holds the last 169
    (q,) = labels.live_quality(frame, store_frame, window_days=7, min_labels=100)
    assert q.labelled == 169
    window = frame.iloc[-169:]
    assert q.roc_auc == pytest.approx(roc_auc_score(truth["label"].iloc[-169:], window["score"]))
    (few,) = labels.live_quality(frame, store_frame, window_days=7, min_labels=200)
    assert few.roc_auc is None
    assert few.note == "not enough labels: 169 labelled predictions, at least 200 needed"


def test_a_request_of_several_instances_needs_the_row_column(tmp_path):
    frame, truth = predictions(4, seed=14, env="ml-production", version="3", skill=1.0)
    frame["id"] = "req-1"
    frame["row"] = range(4)
    capture.write_captures(tmp_path / "captures", frame)
    file = tmp_path / "labels.csv"
    truth.assign(id="req-1").iloc[:1].to_csv(file, index=False)
    captured = capture.read_captures(tmp_path / "captures")

    with pytest.raises(StackError, match="id 'req-1' is a request of 4 captured predictions"):
        labels.add_labels(tmp_path / "labels", labels.read_label_file(file), captured)

    truth.assign(id="req-1", row=range(4)).to_csv(file, index=False)
    done = labels.add_labels(tmp_path / "labels", labels.read_label_file(file), captured)
    assert (done.added, done.total) == (4, 4)


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("b,0,yes,2026-11-01", "column 'label': 'yes' is not a class (0, 1)"),
        ("b,0,0,soon", "column 'labelled_at': 'soon' is not a time"),
        ("b,-1,0,2026-11-01", "column 'row': '-1' is not a row number"),
        ("a,0,0,2026-11-02", "gives id 'a' row 0 two different labels"),
    ],
)
def test_a_malformed_labels_file_is_one_line(tmp_path, line, message):
    file = tmp_path / "labels.csv"
    file.write_text(f"id,row,label,labelled_at\na,0,1,2026-11-01\n{line}\n")
    with pytest.raises(StackError, match=re.escape(message)):
        labels.read_label_file(file)


def test_the_exporter_serves_the_stored_quality_over_http_and_stops_on_sigterm(store, tmp_path):
    good, good_truth = store["good"]
    bad, bad_truth = store["bad"]
    file = tmp_path / "labels.csv"
    pd.concat([good_truth, bad_truth]).to_csv(file, index=False)
    add_direct(store, file)
    port = free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlstack.monitor.live_quality",
            "--store",
            str(store["state"] / "labels"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                    text = r.read().decode()
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "the exporter never answered"
                time.sleep(0.2)
        samples = {
            (s.name, s.labels["namespace"], s.labels["model_version"]): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
        }
        quality = {
            (q.environment, q.model_version): q
            for q in labels.read_quality(store["state"] / "labels")
        }
        for (env, version), q in quality.items():
            assert samples[("model_live_roc_auc", env, version)] == pytest.approx(q.roc_auc)
            assert samples[("model_live_f1", env, version)] == pytest.approx(q.f1)
            assert samples[("model_live_labelled_predictions", env, version)] == 300
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)


def _quality_rule() -> dict:
    rules = yaml.safe_load((code_root() / "manifests/monitoring/rules.yaml").read_text())
    return next(
        r
        for g in rules["groups"]
        for r in g["rules"]
        if r.get("alert") == "ChurnModelLiveQualityLow"
    )


def test_the_live_quality_alert_threshold_is_the_gate_floor():
    expr = _quality_rule()["expr"]
    (threshold,) = re.findall(r"<\s*([0-9.]+)", expr)
    assert float(threshold) == GATE_FLOORS.min_roc_auc == Gates().min_roc_auc


def test_the_live_quality_alert_reads_series_the_exporter_emits(store, tmp_path):
    _, truth = store["good"]
    file = tmp_path / "labels.csv"
    truth.to_csv(file, index=False)
    add_direct(store, file)
    emitted = {
        (f.name, tuple(sorted(s.labels)))
        for f in live_quality.registry(store["state"] / "labels").collect()
        for s in f.samples
    }
    used = set(re.findall(r"\b(model_live_[a-z_0-9]+)\b", _quality_rule()["expr"]))
    assert used
    for name in used:
        assert (name, ("model_name", "model_version", "namespace")) in emitted, name


def test_an_s3_label_store_beside_s3_captures(monkeypatch, tmp_path):
    """The cluster's layout: captures and labels in MinIO (moto's S3 on 127.0.0.1 here)."""
    import boto3

    from tests.support.stand_ins import s3

    frame, truth = predictions(200, seed=15, env="ml-production", version="6", skill=1.0)
    file = tmp_path / "labels.csv"
    truth.to_csv(file, index=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test-access-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret-key")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    with s3(free_port()) as endpoint:
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="mlstack-captures")
        capture.write_captures("s3://mlstack-captures/captures", frame)
        store = "s3://mlstack-captures/labels"
        captured = capture.read_captures("s3://mlstack-captures/captures")

        first = labels.add_labels(store, labels.read_label_file(file), captured)
        again = labels.add_labels(store, labels.read_label_file(file), captured)
        labels.write_quality(
            store,
            labels.live_quality(
                captured, labels.read_labels(store), window_days=28, min_labels=100
            ),
        )
        families = {f.name: f for f in live_quality.registry(store).collect()}

    assert (first.added, again.added, again.already) == (200, 0, 200)
    assert first.part is not None and first.part.startswith(store + "/part-")
    [sample] = families["model_live_roc_auc"].samples
    assert sample.labels == {
        "model_name": "churn-classifier",
        "model_version": "6",
        "namespace": "ml-production",
    }
    assert sample.value == pytest.approx(roc_auc_score(truth["label"], frame["score"]))


def test_predictions_without_a_score_or_class_count_only_where_they_can():
    frame, truth = predictions(300, seed=16, env="ml-production", version="3", skill=1.0)
    stored = truth.assign(row=0, labelled_at=pd.to_datetime(truth["labelled_at"], utc=True))
    frame = capture.to_table(frame).to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    frame.loc[:49, "score"] = None  # V1 callers that did not ask for probabilities
    frame.loc[50:59, "prediction"] = pd.NA

    (q,) = labels.live_quality(frame, stored[labels.STORE_COLUMNS], window_days=28, min_labels=100)

    assert q.labelled == 300
    y = truth["label"].to_numpy()
    assert q.roc_auc == pytest.approx(roc_auc_score(y[50:], frame["score"][50:].astype(float)))
    keep = np.r_[0:50, 60:300]
    assert q.f1 == pytest.approx(
        f1_score(y[keep], frame["prediction"].to_numpy()[keep].astype(int))
    )
