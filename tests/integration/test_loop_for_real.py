"""The whole loop from production back to training, on 127.0.0.1 (issue 13, item 6): a real
predictor serving the champion of a local MLflow store → a loopback stand-in for KServe's logger
agent (tests/support/logger.py) → a real payload sink (`mlstack capture sink`) writing Parquet
captures → `mlstack labels add` with delayed labels that make the live quality bad → a real
Prometheus scraping the sink with the project's ChurnModelLiveQualityLow rule (its `for`
shortened in the test's copy) firing for the served version → `mlstack data from-production`
committing a new DVC data version in a seeded repository → the local pipeline run on it → a
challenger registered whose lineage names the new data version."""

from __future__ import annotations

import io
import json
import os
import shutil
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from mlstack.data import generate, versions
from mlstack.monitor import capture
from mlstack.settings import Gates, Settings
from mlstack.train.training import HyperParams, TrainingLineage
from tests.conftest import free_port, git
from tests.integration.test_serving_http import rows_as_objects
from tests.support.cli import cli_argv, run_cli
from tests.support.logger import LoggerForwarder
from tests.support.servers import call, running, train_and_register
from tests.unit.test_labels_prometheus import fast_rule, query

PROMETHEUS = shutil.which("prometheus")
pytestmark = [
    pytest.mark.slow,  # the local pipeline alone takes minutes on a loaded machine
    pytest.mark.skipif(not PROMETHEUS, reason="make tools installs prometheus"),
]

ENV = "ml-production"
REQUESTS = 300  # one row each
LABELLED = 150  # the labels that have arrived, for the first requests
WORKERS = 4


def send(url: str, model: str, frame: pd.DataFrame, ids: list[str]) -> list[int]:
    """Post each row as one V1 request (its Ce-Id the id), from WORKERS threads; the statuses."""
    objects = rows_as_objects(frame)
    statuses = [0] * len(objects)

    def worker(share: range) -> None:
        for i in share:
            body = json.dumps(
                {"instances": [objects[i]], "parameters": {"probabilities": True}}
            ).encode()
            req = urllib.request.Request(
                f"{url}/v1/models/{model}:predict",
                data=body,
                method="POST",
                headers={"content-type": "application/json", "ce-id": ids[i]},
            )
            try:
                with urllib.request.urlopen(req, timeout=60) as resp:
                    resp.read()
                    statuses[i] = resp.status
            except OSError:
                statuses[i] = 0

    threads = [
        threading.Thread(target=worker, args=(range(w, len(objects), WORKERS),))
        for w in range(WORKERS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    return statuses


def wait_for(what: str, check, timeout: float):  # noqa: ANN001, ANN201
    """Poll ``check`` until it returns something other than None or []; fail naming ``what``
    after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got is not None and not (isinstance(got, list) and not got):
            return got
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_served_predictions_come_back_as_a_new_data_version_and_a_challenger(
    settings: Settings, tmp_path: Path
) -> None:
    from mlstack.pipeline.local import run_pipeline

    repo = settings.repo_root
    model = settings.model_name
    tracking = str(settings.tracking_uri)
    # the champion: trained on the seeded repository's data version, registered with its lineage
    first_md5 = versions.pointer_md5(repo / "data/churn.csv.dvc")
    train_and_register(
        repo / "data/churn.csv",
        params=HyperParams(),
        lineage=TrainingLineage(first_md5, "data/churn.csv", git(repo, "rev-parse", "HEAD")),
        model=model,
        tracking_uri=tracking,
        experiment=settings.experiment_name,
        gates=Gates(),
    )
    client = MlflowClient(tracking)
    champion = str(client.get_model_version_by_alias(model, "champion").version)

    state = settings.state_dir
    cli_env = {"MLSTACK_REPO_ROOT": str(repo), "MLSTACK_STATE_DIR": str(state)}
    env = {**os.environ, **cli_env, "MLFLOW_TRACKING_URI": tracking}
    predictor_port, sink_port, prom_port = free_port(), free_port(), free_port()
    predictor = [
        sys.executable, "-m", "serving", "--model_uri", f"models:/{model}@champion",
        "--model_name", model, "--host", "127.0.0.1", "--http_port", str(predictor_port),
        "--enable_grpc", "false",
    ]  # fmt: skip
    sink = cli_argv(
        "capture", "sink", "--namespace", ENV, "--root", str(state / "captures"),
        "--wal", str(tmp_path / "wal"), "--host", "127.0.0.1", "--port", str(sink_port),
        "--live-quality-cache", "1",
    )  # fmt: skip
    # what the Prometheus Operator makes of the sink's PodMonitor: the pod's namespace as a target
    # label, honor_labels false (as tests/unit/test_labels_prometheus.py)
    target = {"targets": [f"127.0.0.1:{sink_port}"], "labels": {"namespace": ENV}}
    (tmp_path / "prometheus.yml").write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "rule_files": [str(fast_rule(tmp_path))],
                "scrape_configs": [
                    {"job_name": "payload-sink", "honor_labels": False, "static_configs": [target]}
                ],
            }
        )
    )
    prom = f"http://127.0.0.1:{prom_port}"
    prometheus = [
        PROMETHEUS, f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prom_port}",
    ]  # fmt: skip

    # customers the champion never saw (charges 300 a month above any in its data, within the
    # data contract): the segment whose churn its delayed labels will contradict
    served = generate.generate(REQUESTS, 41)
    served["monthly_charges"] = (served["monthly_charges"] + 300).round(2)
    ids = [f"loop-{i:05d}" for i in range(REQUESTS)]
    with (
        running(predictor, tmp_path / "predictor.log",
                f"http://127.0.0.1:{predictor_port}/v2/health/ready", env=env, timeout=180),
        running(sink, tmp_path / "sink.log", f"http://127.0.0.1:{sink_port}/healthz", env=env),
        LoggerForwarder(("127.0.0.1", predictor_port), ("127.0.0.1", sink_port), name=model,
                        namespace=ENV,
                        annotations={"mlstack.io/model-version": champion}) as logger,
    ):  # fmt: skip
        statuses = send(logger.url, model, served, ids)
        assert statuses == [200] * REQUESTS
        assert sorted(logger.logged.answered) == ids
        assert not logger.logged.refusals, logger.logged.refusals[:3]
        assert len(logger.logged.sink_status) == 2 * REQUESTS

        # the sink writes its batch within batch_seconds (30 s by default)
        def stored() -> pd.DataFrame | None:
            frame = capture.read_captures(state / "captures")
            return frame if len(frame) == REQUESTS else None

        captured = wait_for("the captured batch", stored, timeout=300)
        assert sorted(captured["id"]) == ids
        assert set(captured["model_version"]) == {champion}
        assert set(captured["environment"]) == {ENV}

        # labels arrive for the first LABELLED ids, each the opposite of what was predicted: the
        # new segment churns the other way, so the served version's live quality is bad (and a
        # model trained on those rows can learn it, which the pipeline's gates check below)
        first = captured.set_index("id").loc[ids[:LABELLED]]
        labels_file = tmp_path / "labels.csv"
        pd.DataFrame(
            {"id": ids[:LABELLED], "label": 1 - first["prediction"].astype(int).to_numpy(),
             "labelled_at": datetime.now(UTC).date().isoformat()}
        ).to_csv(labels_file, index=False)  # fmt: skip
        added = run_cli("labels", "add", str(labels_file), "--output", "json", env=cli_env)
        assert added.returncode == 0, added.stderr
        report = json.loads(added.stdout)
        assert (report["added"], report["total"]) == (LABELLED, LABELLED)
        [quality] = report["quality"]
        assert (quality["environment"], quality["model_version"]) == (ENV, champion)
        assert quality["labelled"] == LABELLED
        assert quality["roc_auc"] < Gates().min_roc_auc

        with running(prometheus, tmp_path / "prometheus.log", f"{prom}/-/ready"):

            def firing() -> list[dict]:
                status, _, body = call(f"{prom}/api/v1/alerts")
                alerts = json.loads(body)["data"]["alerts"] if status == 200 else []
                return [a for a in alerts if a["state"] == "firing"]

            fired = wait_for("ChurnModelLiveQualityLow to fire", firing, timeout=180)
            series = query(prom, "model_live_roc_auc")

    assert [a["labels"] for a in fired] == [
        {
            "alertname": "ChurnModelLiveQualityLow",
            "model_name": model,
            "model_version": champion,
            "namespace": ENV,
            "retrain": "true",
            "severity": "warning",
        }
    ]
    [sample] = series
    assert float(sample["value"][1]) == pytest.approx(quality["roc_auc"])

    # the labelled captured rows become the next data version, committed like `data add`
    head = git(repo, "rev-parse", "HEAD")
    made = run_cli("data", "from-production", "--env", ENV, "--output", "json", env=cli_env)
    assert made.returncode == 0, made.stderr
    version = json.loads(made.stdout)
    assert (version["added"], version["duplicates"]) == (LABELLED, 0)
    assert git(repo, "rev-parse", "HEAD^") == head
    new_md5 = versions.pointer_md5(repo / "data/churn.csv.dvc")
    assert new_md5 == version["version"]["md5"] != first_md5

    # the retraining the alert starts: the local pipeline on HEAD registers a challenger
    summary = run_pipeline(settings, out=io.StringIO())

    assert (summary.git_sha, summary.data_md5) == (git(repo, "rev-parse", "HEAD"), new_md5)
    assert summary.model_version is not None
    challenger = client.get_model_version_by_alias(model, "challenger")
    assert str(challenger.version) == str(summary.model_version) != champion
    assert challenger.tags["data_md5"] == new_md5
    assert challenger.tags["data_path"] == "data/churn.csv"
    assert str(client.get_model_version_by_alias(model, "champion").version) == champion
